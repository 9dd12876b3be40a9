package proxy

import (
	"bufio"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestOpaqueRequestTargetRefused(t *testing.T) {
	t.Parallel()
	for _, target := range []string{"a:0000000", "http:foo", "mailto:a@b"} {
		req, err := http.ReadRequest(bufio.NewReader(strings.NewReader("GET " + target + " HTTP/1.1\r\nHost: x\r\n\r\n")))
		if err != nil {
			t.Fatal(err)
		}
		w := httptest.NewRecorder()
		// No router: the request must be refused before routing.
		(&Handler{}).ServeHTTP(w, req)
		if w.Code != http.StatusBadRequest {
			t.Errorf("GET %s: %d, want 400", target, w.Code)
		}
	}
}

func TestIsWebSocket(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		upgrade    []string
		connection []string
		want       bool
	}{
		{"plain", []string{"websocket"}, []string{"Upgrade"}, true},
		{"any case", []string{"WebSocket"}, []string{"upgrade"}, true},
		{"firefox", []string{"websocket"}, []string{"keep-alive, Upgrade"}, true},
		{"two connection lines", []string{"websocket"}, []string{"keep-alive", "Upgrade"}, true},
		{"no connection token", []string{"websocket"}, []string{"keep-alive"}, false},
		{"h2c", []string{"h2c"}, []string{"Upgrade, HTTP2-Settings"}, false},
		{"no upgrade", nil, []string{"Upgrade"}, false},
		{"token inside a word", []string{"websocket"}, []string{"upgraded"}, false},
	}
	for _, tc := range tests {
		h := http.Header{}
		if tc.upgrade != nil {
			h["Upgrade"] = tc.upgrade
		}
		h["Connection"] = tc.connection
		if got := IsWebSocket(h); got != tc.want {
			t.Errorf("%s: IsWebSocket = %v, want %v", tc.name, got, tc.want)
		}
	}
}

func BenchmarkIsWebSocket(b *testing.B) {
	plain := http.Header{"Connection": {"keep-alive"}, "Accept": {"*/*"}}
	ws := http.Header{"Connection": {"keep-alive, Upgrade"}, "Upgrade": {"websocket"}}
	b.ReportAllocs()
	for b.Loop() {
		IsWebSocket(plain)
		IsWebSocket(ws)
	}
}
