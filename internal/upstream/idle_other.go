//go:build !linux

package upstream

// sockOps: no raw socket calls here; the buffered reader checks idle
// connections at their next use, and the sweep cannot look.
type sockOps struct{}

func (pc *h1Conn) initSock() {}

func (pc *h1Conn) peekSocket() (stray []byte, open, ok bool) { return nil, false, false }
func (pc *h1Conn) peekRaw() (queued []byte, open, ok bool)   { return nil, false, false }
