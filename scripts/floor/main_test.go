package main

import (
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
)

// TestFloor runs both modes on the frontends of an INI file: proxy must
// reach the backend, round robin and with X-Forwarded-For; serve answers
// the bench's two sizes itself.
func TestFloor(t *testing.T) {
	t.Parallel()
	var hits [2]atomic.Int32
	backend := func(i int) *httptest.Server {
		return httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			hits[i].Add(1)
			io.WriteString(w, r.Header.Get("X-Forwarded-For")+" "+r.Host)
		}))
	}
	b1, b2 := backend(0), backend(1)
	defer b1.Close()
	defer b2.Close()
	path := filepath.Join(t.TempDir(), "bench.ini")
	ini := "[frontend bench]\nbind = 127.0.0.1:0\nbackends = b1 b2\n\n" +
		"[backend b1]\nconnect = " + b1.Listener.Addr().String() + "\n[backend b2]\nconnect = " + b2.Listener.Addr().String() + "\n"
	if err := os.WriteFile(path, []byte(ini), 0o644); err != nil {
		t.Fatal(err)
	}
	fronts, connect, err := load(path)
	if err != nil || len(fronts) != 1 || len(fronts[0].backends) != 2 {
		t.Fatalf("load = %+v, %v", fronts, err)
	}
	get := func(h http.Handler, path string) string {
		t.Helper()
		srv := httptest.NewServer(h)
		defer srv.Close()
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("GET %s: %d, %v", path, resp.StatusCode, err)
		}
		return string(body)
	}
	p, err := handler("proxy", fronts[0], connect, http.DefaultTransport)
	if err != nil {
		t.Fatal(err)
	}
	for range 4 {
		if got := get(p, "/small"); !strings.HasPrefix(got, "127.0.0.1 127.0.0.1:") {
			t.Errorf("proxied body = %q, want the client's address and the Host it was asked", got)
		}
	}
	if a, b := hits[0].Load(), hits[1].Load(); a != 2 || b != 2 {
		t.Errorf("backend hits = %d and %d, want round robin", a, b)
	}
	s, err := handler("serve", fronts[0], connect, nil)
	if err != nil {
		t.Fatal(err)
	}
	if n := len(get(s, "/small")); n != 100 {
		t.Errorf("serve /small: %d bytes, want 100", n)
	}
	if n := len(get(s, "/64k")); n != 65536 {
		t.Errorf("serve /64k: %d bytes, want 65536", n)
	}
	if _, err := handler("nope", fronts[0], connect, nil); err == nil {
		t.Error("an unknown mode was accepted")
	}
	fronts[0].backends = []string{"b3"}
	if _, err := handler("proxy", fronts[0], connect, nil); err == nil {
		t.Error("a frontend naming no known backend was accepted")
	}
}
