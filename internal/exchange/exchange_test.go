package exchange

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
)

// hijackable is a ResponseWriter that also flushes and hijacks.
type hijackable struct {
	flushed, hijacked bool
}

func (h *hijackable) Header() http.Header         { return http.Header{} }
func (h *hijackable) WriteHeader(int)             {}
func (h *hijackable) Write(p []byte) (int, error) { return len(p), nil }
func (h *hijackable) Flush()                      { h.flushed = true }

func (h *hijackable) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	h.hijacked = true
	return nil, nil, nil
}

// recorder is a sink that keeps what it was told.
type recorder struct {
	begun, tunnels atomic.Int32
	tunnel         *Exchange // the last tunnel's
	ended          []*Exchange
}

func (r *recorder) Begin(*Exchange) { r.begun.Add(1) }
func (r *recorder) Tunnel(x *Exchange) {
	r.tunnels.Add(1)
	r.tunnel = x
}
func (r *recorder) End(x *Exchange) { r.ended = append(r.ended, x) }
func (r *recorder) one(t *testing.T) *Exchange {
	t.Helper()
	if len(r.ended) != 1 || r.begun.Load() != 1 {
		t.Fatalf("begun %d, ended %d times, want once each", r.begun.Load(), len(r.ended))
	}
	return r.ended[0]
}

// lineRecorder is a recorder that writes request lines, as the access log
// does.
type lineRecorder struct{ *recorder }

func (lineRecorder) WritesLines() {}

func serve(f *Frontend, w http.ResponseWriter, r *http.Request, h http.HandlerFunc) {
	defer func() { recover() }()
	f.Handler(h).ServeHTTP(w, r)
}

func TestWriter(t *testing.T) {
	t.Parallel()
	var rec recorder
	f := &Frontend{Sinks: []Sink{&rec}}
	inner := &hijackable{}
	serve(f, inner, httptest.NewRequest("GET", "/", nil), func(w http.ResponseWriter, r *http.Request) {
		if FromContext(r.Context()) == nil {
			t.Error("no exchange in the request's context")
		}
		w.WriteHeader(http.StatusEarlyHints)
		w.WriteHeader(http.StatusNotFound)
		w.Write([]byte("abc"))
		rc := http.NewResponseController(w)
		if err := rc.Flush(); err != nil || !inner.flushed {
			t.Errorf("Flush not reachable: %v", err)
		}
		if _, _, err := rc.Hijack(); err != nil || !inner.hijacked {
			t.Errorf("Hijack not reachable: %v", err)
		}
	})
	x := rec.one(t)
	if x.Status() != 404 || x.BytesOut != 3 {
		t.Errorf("status %d bytes %d, want 404 3 (1xx is interim)", x.Status(), x.BytesOut)
	}
}

// The one rule for a request that got no answer: 499 if its client went
// away, else 200 (what net/http sends); a panic ends the exchange too.
func TestStatusWithoutAnswer(t *testing.T) {
	var released atomic.Int32
	t.Parallel()
	gone, cancel := context.WithCancel(context.Background())
	cancel()
	for _, c := range []struct {
		name  string
		ctx   context.Context
		panic bool
		want  int
	}{
		{"silent", context.Background(), false, 200},
		{"client gone", gone, false, StatusClientGone},
		{"panic, client gone", gone, true, StatusClientGone},
	} {
		var rec recorder
		f := &Frontend{Sinks: []Sink{&rec}, Release: func() { released.Add(1) }}
		serve(f, httptest.NewRecorder(), httptest.NewRequestWithContext(c.ctx, "GET", "/", nil), func(http.ResponseWriter, *http.Request) {
			if c.panic {
				panic(http.ErrAbortHandler)
			}
		})
		if got := rec.one(t).Status(); got != c.want {
			t.Errorf("%s: status %d, want %d", c.name, got, c.want)
		}
	}
	if n := released.Load(); n != 3 {
		t.Errorf("the configuration let go %d times for 3 requests", n)
	}
}

func TestBodyCounted(t *testing.T) {
	t.Parallel()
	var rec recorder
	f := &Frontend{Sinks: []Sink{&rec}}
	orig := httptest.NewRequest("POST", "/", strings.NewReader("12345"))
	serve(f, httptest.NewRecorder(), orig, func(w http.ResponseWriter, r *http.Request) {
		if r == orig || r.Body == orig.Body {
			t.Error("the handler got the server's request, not the exchange's copy")
		}
		io.Copy(io.Discard, r.Body)
	})
	if n := rec.one(t).BytesIn.Load(); n != 5 {
		t.Errorf("bytes in %d, want 5", n)
	}
}

type slot struct{ released atomic.Int32 }

func (s *slot) Release() { s.released.Add(1) }

// A tunnel outlives its handler: the exchange ends when End is called,
// once, releasing its slot and the configuration it held.
func TestTunnelEndsOnce(t *testing.T) {
	t.Parallel()
	var rec recorder
	var released atomic.Int32
	f := &Frontend{Sinks: []Sink{&lineRecorder{&rec}}, Release: func() { released.Add(1) }}
	var end TunnelEnd
	var s slot
	req := httptest.NewRequest("GET", "/ws", nil)
	req.Header.Set("User-Agent", "ua")
	req.Header.Set("X-Request-Id", "r1")
	req.Header.Set("Cookie", "secret")
	serve(f, httptest.NewRecorder(), req, func(w http.ResponseWriter, r *http.Request) {
		x := FromContext(r.Context())
		x.Keep(&s)
		end = x.Tunnel(20)
	})
	x := rec.tunnel
	if len(rec.ended) != 0 || rec.tunnels.Load() != 1 {
		t.Fatalf("at the handler's return: ended %d, tunnels %d; want 0 1", len(rec.ended), rec.tunnels.Load())
	}
	if s.released.Load() != 0 || released.Load() != 0 {
		t.Fatal("slot or configuration let go while the tunnel runs")
	}
	// An idle tunnel's exchange holds nothing of net/http's connection:
	// not the request, its context or its header.
	if x.Request != nil || x.Context.Done() != nil || !x.HTTP() {
		t.Error("the tunnel's exchange holds the request or its context, or is not an HTTP exchange")
	}
	want := Line{Method: "GET", RequestURI: "/ws", Proto: "HTTP/1.1", Host: "example.com", UserAgent: "ua", RequestID: "r1"}
	if x.Line == nil || *x.Line != want {
		t.Errorf("the tunnel keeps the line %+v, want %+v", x.Line, want)
	}
	if x.BytesOut != 20 {
		t.Errorf("the tunnel's head counts %d bytes sent, want 20", x.BytesOut)
	}
	end.EndTunnel(120)
	got := rec.one(t)
	if got.Status() != http.StatusSwitchingProtocols || got.BytesOut != 120 || !got.Tunneled {
		t.Errorf("tunnel record: status %d, bytes %d, tunneled %v", got.Status(), got.BytesOut, got.Tunneled)
	}
	if s.released.Load() != 1 || released.Load() != 1 {
		t.Errorf("slot released %d times, configuration %d times; want once each", s.released.Load(), released.Load())
	}
}

// A frontend that writes no request lines has its tunnels keep none.
func TestTunnelWithoutLines(t *testing.T) {
	t.Parallel()
	var rec recorder
	f := &Frontend{Sinks: []Sink{&rec}}
	var end TunnelEnd
	serve(f, httptest.NewRecorder(), httptest.NewRequest("GET", "/ws", nil), func(w http.ResponseWriter, r *http.Request) {
		end = FromContext(r.Context()).Tunnel(20)
	})
	if x := rec.tunnel; x == nil || x.Line != nil || x.Request != nil || !x.HTTP() {
		t.Fatalf("the tunnel's exchange is %+v; want one without line or request, an HTTP one", x)
	}
	end.EndTunnel(50)
	if got := rec.one(t); got.Status() != http.StatusSwitchingProtocols || got.BytesOut != 50 {
		t.Errorf("tunnel record: status %d, bytes %d", got.Status(), got.BytesOut)
	}
}

// A frontend without sinks reads no record: its tunnels keep none, and
// still let go of their slot and configuration once, at their end.
func TestTunnelWithoutSinks(t *testing.T) {
	t.Parallel()
	var released atomic.Int32
	f := &Frontend{Release: func() { released.Add(1) }}
	var end TunnelEnd
	var s slot
	serve(f, httptest.NewRecorder(), httptest.NewRequest("GET", "/ws", nil), func(w http.ResponseWriter, r *http.Request) {
		x := FromContext(r.Context())
		x.Keep(&s)
		end = x.Tunnel(20)
	})
	if _, ok := end.(*Exchange); ok {
		t.Error("a tunnel of a frontend without sinks keeps an exchange")
	}
	if s.released.Load() != 0 || released.Load() != 0 {
		t.Fatal("slot or configuration let go while the tunnel runs")
	}
	end.EndTunnel(50)
	if s.released.Load() != 1 || released.Load() != 1 {
		t.Errorf("slot released %d times, configuration %d times; want once each", s.released.Load(), released.Load())
	}
}
