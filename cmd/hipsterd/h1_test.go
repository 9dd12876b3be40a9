package main

// End-to-end tests of what crosses hipsterd between client and backend on
// the HTTP/1.1 path: status codes, request trailers, response bodies.

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"
)

// A status code outside 100–599 is a broken response: the client gets a
// 502, not the code.
func TestStatusOutOfRange(t *testing.T) {
	t.Parallel()
	for _, status := range []string{"999 Weird", "600 Past", "099 Below"} {
		t.Run(status, func(t *testing.T) {
			t.Parallel()
			backend := headBackend(t, func(c *net.TCPConn, br *bufio.Reader, req *http.Request) {
				io.WriteString(c, "HTTP/1.1 "+status+"\r\nContent-Length: 2\r\n\r\nok")
			})
			front := oneFrontend(t, backend, "", "")
			resp, err := http.Get("http://" + front + "/")
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusBadGateway {
				t.Errorf("status %d, want 502", resp.StatusCode)
			}
		})
	}
}

// Request trailers that name routing, framing or forwarding fields do not
// reach the backend, announced or sent; others do.
func TestRequestTrailersFiltered(t *testing.T) {
	t.Parallel()
	type seen struct {
		announced string
		trailer   http.Header
		body      string
	}
	got := make(chan seen, 1)
	backend := newServer(t, func(w http.ResponseWriter, r *http.Request) {
		// net/http moves the announced names from the header to the
		// keys of Trailer.
		var names []string
		for k := range r.Trailer {
			names = append(names, k)
		}
		slices.Sort(names)
		announced := strings.Join(names, ",")
		b, _ := io.ReadAll(r.Body)
		got <- seen{announced, r.Trailer, string(b)}
	})
	front := oneFrontend(t, backend, "add-x-forwarded-for = true", "")
	c := dialRaw(t, front)
	io.WriteString(c, "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"+
		"Trailer: Host, X-Forwarded-For, Connection, Forwarded, X-Check\r\n\r\n"+
		"5\r\nhello\r\n0\r\n"+
		"Host: evil.example\r\nX-Forwarded-For: 6.6.6.6\r\nConnection: keep-alive, x-check\r\nForwarded: for=6.6.6.6\r\nX-Check: ok\r\n\r\n")
	resp, _ := c.response(t, 5*time.Second)
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	s := <-got
	if s.body != "hello" {
		t.Errorf("body %q", s.body)
	}
	if s.announced != "X-Check" {
		t.Errorf("Trailer announced to the backend: %q, want X-Check only", s.announced)
	}
	var keys []string
	for k := range s.trailer {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	if strings.Join(keys, ",") != "X-Check" || s.trailer.Get("X-Check") != "ok" {
		t.Errorf("trailers at the backend: %v, want X-Check: ok only", fmt.Sprint(s.trailer))
	}
}
