package stats

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"google.golang.org/protobuf/proto"

	"github.com/hipsterd/hipsterd/internal/exchange"
)

func TestQuantile(t *testing.T) {
	t.Parallel()
	bucket := func(le float64, n uint64) *dto.Bucket {
		return &dto.Bucket{UpperBound: proto.Float64(le), CumulativeCount: proto.Uint64(n)}
	}
	h := &dto.Histogram{SampleCount: proto.Uint64(100), Bucket: []*dto.Bucket{bucket(0.1, 50), bucket(0.2, 90), bucket(1, 100)}}
	tests := []struct {
		name string
		q    float64
		want float64
	}{
		{"median at a bound", 0.5, 0.1},
		{"within a bucket", 0.7, 0.15},
		{"last bucket", 0.95, 0.6},
	}
	for _, tc := range tests {
		if got := quantile(tc.q, h); got < tc.want-1e-9 || got > tc.want+1e-9 {
			t.Errorf("%s: quantile(%v) = %v, want %v", tc.name, tc.q, got, tc.want)
		}
	}
	// Past the last finite bound, the last bound.
	h.Bucket = append(h.Bucket[:2], bucket(1, 90))
	if got := quantile(0.99, h); got != 1 {
		t.Errorf("beyond the bounds: %v, want 1", got)
	}
}

func TestHandlerCounts(t *testing.T) {
	t.Parallel()
	f := newFrontend("web", "http")
	app := f.Route("app")
	h := (&exchange.Frontend{Sinks: []exchange.Sink{f}}).Handler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		info := exchange.FromContext(r.Context())
		if info == nil {
			t.Error("no exchange in the request's context")
			return
		}
		switch r.URL.Path {
		case "/app":
			info.Backend, info.Series, info.Header = "app", app, time.Millisecond
			io.Copy(io.Discard, r.Body)
			io.WriteString(w, "hello")
		case "/gone":
			// The client left before anything was sent.
		case "/panic":
			info.Backend, info.Series = "app", app
			w.WriteHeader(http.StatusBadGateway)
			panic(http.ErrAbortHandler)
		default:
			http.Error(w, "no", http.StatusServiceUnavailable)
		}
	}))
	serve := func(path, body string, ctx context.Context) {
		r := httptest.NewRequestWithContext(ctx, "POST", path, strings.NewReader(body))
		defer func() { recover() }()
		h.ServeHTTP(httptest.NewRecorder(), r)
	}
	serve("/app", "12345", context.Background())
	serve("/none", "", context.Background())
	gone, cancel := context.WithCancel(context.Background())
	cancel()
	serve("/gone", "", gone)
	serve("/panic", "", context.Background())

	if n := app.codes[200].Load(); n != 1 {
		t.Errorf("app 200s: %d", n)
	}
	if n := app.codes[502].Load(); n != 1 {
		t.Errorf("app 502s (the handler panicked): %d", n)
	}
	if n := f.none.codes[503].Load(); n != 1 {
		t.Errorf("no-backend 503s: %d", n)
	}
	if n := f.none.codes[exchange.StatusClientGone].Load(); n != 1 {
		t.Errorf("no-backend 499s: %d", n)
	}
	if in, out := f.bytesIn.Load(), f.bytesOut.Load(); in != 5 || out != uint64(len("hello")+len("no\n")) {
		t.Errorf("bytes in %d, out %d", in, out)
	}
	if n := f.inflight.Load(); n != 0 {
		t.Errorf("in flight after the requests: %d", n)
	}
}

// endSink records the status of each exchange that ended.
type endSink struct{ ended chan int }

func (endSink) Begin(*exchange.Exchange)   {}
func (endSink) Tunnel(*exchange.Exchange)  {}
func (e endSink) End(x *exchange.Exchange) { e.ended <- x.Status() }

func TestTunnelCounts(t *testing.T) {
	t.Parallel()
	f := newFrontend("web", "http")
	echo := f.Route("echo")
	other := endSink{ended: make(chan int, 1)}
	var end exchange.TunnelEnd
	h := (&exchange.Frontend{Sinks: []exchange.Sink{f, other}}).Handler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		x := exchange.FromContext(r.Context())
		x.Series = echo
		end = x.Tunnel(10)
	}))
	h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest("GET", "/", nil))
	if n := echo.codes[101].Load(); n != 1 {
		t.Errorf("101s when the tunnel opened: %d", n)
	}
	if n := echo.tunnels.Load(); n != 1 {
		t.Errorf("open tunnels: %d", n)
	}
	if n := f.inflight.Load(); n != 0 {
		t.Errorf("in flight once the tunnel opened: %d", n)
	}
	select {
	case got := <-other.ended:
		t.Fatalf("the exchange ended (%d) before its tunnel", got)
	default:
	}
	end.EndTunnel(42)
	if n := echo.tunnels.Load(); n != 0 {
		t.Errorf("open tunnels after the end: %d", n)
	}
	if got := <-other.ended; got != 101 {
		t.Errorf("the other sink heard %d", got)
	}
	if n := f.bytesOut.Load(); n != 42 {
		t.Errorf("bytes out %d", n)
	}
}

// A tcp connection is a tunnel once a backend took it; one no backend took
// (the pool named the backend it tried) is neither counted open nor closed.
func TestTCPCounts(t *testing.T) {
	t.Parallel()
	f := newFrontend("raw", "tcp")
	echo := f.Route("echo")
	front := &exchange.Frontend{Sinks: []exchange.Sink{f}}
	refused := front.NewTCP(context.Background(), "192.0.2.1:1", time.Now())
	refused.Series = echo
	refused.End()
	if n, r := echo.tunnels.Load(), f.inflight.Load(); n != 0 || r != 0 || echo.codes[200].Load() != 0 {
		t.Errorf("after a connection no backend took: %d tunnels open, %d requests in flight, %d 200s", n, r, echo.codes[200].Load())
	}
	x := front.NewTCP(context.Background(), "192.0.2.1:2", time.Now())
	x.Series, x.Tunneled = echo, true
	x.BytesIn.Store(3)
	x.Begin()
	if n := echo.tunnels.Load(); n != 1 {
		t.Errorf("open tunnels: %d", n)
	}
	x.BytesIn.Add(4)
	x.BytesOut = 5
	x.End()
	if n := echo.tunnels.Load(); n != 0 {
		t.Errorf("open tunnels after the end: %d", n)
	}
	if in, out := f.bytesIn.Load(), f.bytesOut.Load(); in != 7 || out != 5 {
		t.Errorf("bytes in %d, out %d; want 7, 5", in, out)
	}
}
