//go:build !linux

package tunnel

import "net"

// watch reports that there is no reactor here: every tunnel runs on
// goroutines.
func watch(a, b net.Conn) (*tunnel, func()) { return nil, nil }

// sides are a reactor's: there are none here.
type sides struct{}

func (*sides) unwatch() {}
func (*sides) close()   {}
func (*sides) reset()   {}
