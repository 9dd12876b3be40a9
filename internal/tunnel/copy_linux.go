//go:build linux

package tunnel

import (
	"io"
	"net"

	"golang.org/x/sys/unix"
)

// copyStream copies src to dst until src ends. Between TCP sockets it
// splices, one burst at a time: it waits for data without holding anything,
// learns how much arrived (FIONREAD) and splices exactly that. io.Copy
// would hold a splice pipe (two descriptors and a kernel buffer) for the
// whole life of the tunnel, which idle WebSocket tunnels cannot afford.
func copyStream(dst, src net.Conn) (int64, error) {
	s, ok1 := src.(*net.TCPConn)
	_, ok2 := dst.(*net.TCPConn)
	if !ok1 || !ok2 {
		return io.Copy(dst, src)
	}
	rc, err := s.SyscallConn()
	if err != nil {
		return io.Copy(dst, src)
	}
	var total int64
	var peek [1]byte
	for {
		avail, eof := 0, false
		var rerr error
		err := rc.Read(func(fd uintptr) bool {
			// Peek, so that "no data yet" is an EAGAIN, after which the
			// poller's wait is sound; FIONREAD alone cannot tell an empty
			// queue from the end of the stream.
			n, _, err := unix.Recvfrom(int(fd), peek[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
			switch {
			case err == unix.EAGAIN || err == unix.EINTR:
				return false
			case err != nil:
				rerr = err
			case n == 0:
				eof = true
			default:
				avail, rerr = unix.IoctlGetInt(int(fd), unix.TIOCINQ) // FIONREAD
			}
			return true
		})
		if err == nil {
			err = rerr
		}
		if err != nil {
			return total, err
		}
		if eof {
			return total, nil
		}
		n, err := io.CopyN(dst, s, int64(max(avail, 1)))
		total += n
		if err != nil {
			if err == io.EOF {
				return total, nil
			}
			return total, err
		}
	}
}
