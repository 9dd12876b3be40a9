//go:build !linux

package tunnel

import (
	"io"
	"net"
)

func copyStream(dst, src net.Conn) (int64, error) { return io.Copy(dst, src) }
