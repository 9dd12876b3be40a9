package server

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"testing"

	"github.com/hipsterd/hipsterd/internal/testcert"
	"github.com/hipsterd/hipsterd/internal/testutil"
)

// A handler's panic reaches the goroutine net/http called, which turns
// http.ErrAbortHandler into a reset stream and logs any other.
func TestServeOnWorkerPanics(t *testing.T) {
	t.Parallel()
	catch := func(value any) (p any) {
		defer func() { p = recover() }()
		serveOnWorker(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { panic(value) }), nil, nil)
		return nil
	}
	if got := catch(http.ErrAbortHandler); got != http.ErrAbortHandler {
		t.Errorf("http.ErrAbortHandler came back as %v", got)
	}
	// Another panic keeps its value and gains the stack where it happened.
	if got, _ := catch("boom").(string); !strings.HasPrefix(got, "boom\n") || !strings.Contains(got, "TestServeOnWorkerPanics") {
		t.Errorf("panic(\"boom\") came back as %q", got)
	}
	ran := false
	serveOnWorker(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { ran = true }), nil, nil)
	if !ran {
		t.Error("the handler did not run")
	}
}

// HTTP/2 streams, served by workers: many at once each get their own
// answer, and a backend that cuts its body short resets that stream only.
func TestHTTP2Workers(t *testing.T) {
	t.Parallel()
	cert, key := testcert.Files(t, t.TempDir(), "localhost")
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/cut" {
			c, bw, err := http.NewResponseController(w).Hijack()
			if err != nil {
				t.Error(err)
				return
			}
			bw.WriteString("HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nonly this")
			bw.Flush()
			c.Close()
			return
		}
		io.WriteString(w, r.URL.Path)
	}))
	t.Cleanup(backend.Close)
	_, addrs, _ := startLogged(t, fmt.Sprintf("[frontend tls]\nbind = 127.0.0.1:0\nbackends = b\nhttps = true\ncertfile = %s\nkeyfile = %s\n[backend b]\nconnect = %s\n",
		cert, key, backend.Listener.Addr()))
	client := &http.Client{Transport: &http.Transport{
		TLSClientConfig:   &tls.Config{RootCAs: testcert.Pool(t, cert), ServerName: "localhost"},
		ForceAttemptHTTP2: true,
	}}
	t.Cleanup(client.CloseIdleConnections)
	get := func(path string) (string, error) {
		resp, err := client.Get("https://" + addrs["tls"] + path)
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		if resp.ProtoMajor != 2 {
			return "", fmt.Errorf("%s, want HTTP/2", resp.Proto)
		}
		b, err := io.ReadAll(bufio.NewReader(resp.Body))
		return string(b), err
	}
	var wg sync.WaitGroup
	for i := range 300 {
		wg.Go(func() {
			path := fmt.Sprintf("/%d", i)
			if got, err := get(path); got != path || err != nil {
				t.Errorf("GET %s: %q, %v", path, got, err)
			}
		})
	}
	wg.Wait()
	got, err := get("/cut")
	if err == nil || !strings.HasPrefix(got, "only this") && got != "" {
		t.Errorf("a body cut short: %q, %v; want its start and a stream error", got, err)
	}
	if got, err := get("/after"); got != "/after" || err != nil {
		t.Errorf("after the reset: %q, %v", got, err)
	}
}

// workers counts the goroutines in h2Worker, busy or idle.
func workers() int {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			return strings.Count(string(buf[:n]), "server.h2Worker(")
		}
		buf = make([]byte, 2*len(buf))
	}
}

// A burst of handlers wider than the idle workers kept leaves no more
// than cap(h2IdleLimit) workers behind once it is over, and they serve the
// next calls.
func TestIdleWorkersBounded(t *testing.T) {
	t.Parallel()
	const burst = 1000
	release := make(chan struct{})
	var started, done sync.WaitGroup
	started.Add(burst)
	for range burst {
		done.Go(func() {
			serveOnWorker(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {
				started.Done()
				<-release
			}), nil, nil)
		})
	}
	started.Wait()
	if n := workers(); n < burst {
		t.Fatalf("%d workers for %d handlers at once", n, burst)
	}
	close(release)
	done.Wait()
	testutil.Eventually(t, "the idle workers to be bounded", func() bool { return workers() <= cap(h2IdleLimit) })
	ran := false
	serveOnWorker(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { ran = true }), nil, nil)
	if !ran {
		t.Error("the handler did not run after the burst")
	}
}
