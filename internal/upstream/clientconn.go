package upstream

import (
	"context"
	"sync"
)

// ClientConn is one client connection of an HTTP frontend, as send-proxy
// backends see it. A connection to such a backend opens with a PROXY
// header that names one client, so it carries that client connection's
// requests only, kept alive between them, and closes with it (as HAProxy
// does). Its zero value is ready to use.
type ClientConn struct {
	mu     sync.Mutex
	idle   map[*h1Transport]*h1Conn
	closed bool
}

type clientConnKey struct{}

// WithClientConn returns ctx, of a client connection, carrying cc.
func WithClientConn(ctx context.Context, cc *ClientConn) context.Context {
	return context.WithValue(ctx, clientConnKey{}, cc)
}

func clientConnOf(ctx context.Context) *ClientConn {
	cc, _ := ctx.Value(clientConnKey{}).(*ClientConn)
	return cc
}

// get returns cc's idle connection to t's backend, or nil.
func (cc *ClientConn) get(t *h1Transport) *h1Conn {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	pc := cc.idle[t]
	delete(cc.idle, t)
	return pc
}

// put keeps pc for cc's next request; false when cc is closed or already
// keeps one for that backend.
func (cc *ClientConn) put(pc *h1Conn) bool {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	if cc.closed || cc.idle[pc.t] != nil {
		return false
	}
	if cc.idle == nil {
		cc.idle = map[*h1Transport]*h1Conn{}
	}
	cc.idle[pc.t] = pc
	return true
}

// Close closes the backend connections kept for cc: the client connection
// has closed.
func (cc *ClientConn) Close() {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	cc.closed = true
	for _, pc := range cc.idle {
		pc.Close()
	}
	// cc lives on with its client connection (a tunnel, after an upgrade).
	cc.idle = nil
}
