package upstream

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/hipsterd/hipsterd/internal/config"
)

// TestStatusBelow100 is a FuzzBackendResponse finding: http.ReadResponse
// takes any three digits as a status code; one below 100 was taken for an
// interim response, and ReverseProxy's WriteHeader of it panicked. The
// client gets a 502.
func TestStatusBelow100(t *testing.T) {
	t.Parallel()
	for _, status := range []string{"000 Zero", "099 Below", "042 Other"} {
		t.Run(status, func(t *testing.T) {
			t.Parallel()
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { ln.Close() })
			go func() {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				defer c.Close()
				if _, err := http.ReadRequest(bufio.NewReader(c)); err != nil {
					return
				}
				io.WriteString(c, "HTTP/1.1 "+status+"\r\nContent-Length: 2\r\n\r\nok")
			}()
			front := httptest.NewServer(NewPool([]*Backend{newBackend("b", ln.Addr().String(), 1)}, config.RoundRobin, false, discard))
			t.Cleanup(front.Close)
			resp, err := http.Get(front.URL)
			if err != nil {
				t.Fatal(err) // the proxy's handler panicked and closed the connection
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusBadGateway {
				t.Errorf("status %d, want 502", resp.StatusCode)
			}
		})
	}
}
