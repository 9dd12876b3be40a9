//go:build linux

package tunnel

import (
	"io"
	"net"
	"sync"

	"golang.org/x/sys/unix"
)

// burstSize is the buffer a burst is first read into. A burst that fills
// it is bulk data, and the rest of what is queued is spliced.
const burstSize = 16 << 10

var burstPool = sync.Pool{New: func() any { b := make([]byte, burstSize); return &b }}

// copyStream copies src to dst until src ends. Between TCP sockets it works
// one burst at a time and holds nothing while it waits: a burst is read
// into a pooled buffer (one read and one write, the cheapest for WebSocket
// messages), and when it fills the buffer, whatever else is queued is
// spliced. io.Copy would splice too, but hold a pipe (two descriptors and a
// kernel buffer) per direction for the whole life of a tunnel, which idle
// WebSocket tunnels cannot afford.
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
	for {
		var bp *[]byte
		var n int
		var rerr error
		err := rc.Read(func(fd uintptr) bool {
			bp = burstPool.Get().(*[]byte)
			for {
				n, rerr = unix.Read(int(fd), *bp)
				if rerr != unix.EINTR {
					break
				}
			}
			if rerr == unix.EAGAIN {
				// Nothing queued: wait for the socket without a buffer.
				burstPool.Put(bp)
				bp = nil
				return false
			}
			return true
		})
		if err == nil {
			err = rerr
		}
		if err != nil || n <= 0 {
			if bp != nil {
				burstPool.Put(bp)
			}
			return total, err // n == 0 without an error is the end of the stream
		}
		w, err := dst.Write((*bp)[:n])
		total += int64(w)
		burstPool.Put(bp)
		if err != nil {
			return total, err
		}
		if n < burstSize {
			continue
		}
		var avail int
		rc.Control(func(fd uintptr) {
			avail, _ = unix.IoctlGetInt(int(fd), unix.TIOCINQ) // FIONREAD
		})
		if avail > 0 {
			m, err := io.CopyN(dst, s, int64(avail))
			total += m
			if err != nil && err != io.EOF {
				return total, err
			}
		}
	}
}
