//go:build !linux

package upstream

import "net"

// quiet cannot tell here; a request that finds the connection closed is
// retried or answered 502.
func quiet(net.Conn) bool { return true }
