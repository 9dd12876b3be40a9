//go:build !linux

package upstream

import "syscall"

// sockOps: no raw socket calls here; the buffered reader checks idle
// connections at their next use, and the sweep cannot look. rc stays nil:
// fit never finds a socket empty, so send never waits on it.
type sockOps struct{ rc syscall.RawConn }

func (pc *h1Conn) initSock() {}

func (pc *h1Conn) peekSocket() (stray []byte, open, ok bool) { return nil, false, false }
func (pc *h1Conn) peekRaw() (queued []byte, open, ok bool)   { return nil, false, false }
