//go:build !linux

package upstream

import "net"

// peekSocket cannot look at a socket here: the buffered reader does.
func peekSocket(net.Conn) (stray []byte, open, ok bool) { return nil, false, false }

// Idle connections are checked at their next use only.
func watchIdle(*h1Conn)   {}
func unwatchIdle(*h1Conn) {}
