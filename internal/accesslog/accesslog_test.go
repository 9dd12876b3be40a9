package accesslog

import (
	"bytes"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/hipsterd/hipsterd/internal/exchange"
	"github.com/hipsterd/hipsterd/internal/testutil"
)

func TestLineFormat(t *testing.T) {
	t.Parallel()
	r := httptest.NewRequest("GET", "/a?b=c", nil)
	r.RemoteAddr = "192.0.2.1:1234"
	r.Host = "example.com"
	now := time.Date(2012, 11, 3, 14, 5, 6, 789012000, time.Local)
	req := requestOf(r)
	got := string(appendLine(nil, "frontend:web ", now, &req, 200, 42))
	want := "frontend:web 2012/11/03 14:05:06.789012 192.0.2.1:1234 example.com \"GET /a?b=c HTTP/1.1\" 200 42\n"
	if got != want {
		t.Errorf("line\n%q, want\n%q", got, want)
	}
	req.host = ""
	if got := string(appendLine(nil, "p ", now, &req, 499, 0)); !strings.Contains(got, "192.0.2.1:1234 - \"GET") {
		t.Errorf("empty host: %q", got)
	}
}

func TestAppendTime(t *testing.T) {
	t.Parallel()
	base := time.Date(2026, 11, 24, 23, 59, 58, 0, time.Local)
	for _, d := range []time.Duration{0, 5 * time.Microsecond, 999999 * time.Microsecond, time.Second + 1234, 1500 * time.Millisecond, 36 * time.Hour} {
		now := base.Add(d)
		if got, want := string(appendTime(nil, now)), now.Format("2006/01/02 15:04:05.000000"); got != want {
			t.Errorf("%v: %q, want %q", d, got, want)
		}
	}
}

// logged wraps next so that each of its requests is an exchange logged by l.
func logged(l *Logger, next http.Handler) http.Handler {
	return (&exchange.Frontend{Sinks: []exchange.Sink{l}}).Handler(next)
}

func TestTunnelLine(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "access.log")
	f, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	var end exchange.TunnelEnd
	h := logged(NewLogger("ws", f, Hipster), http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		end = exchange.FromContext(r.Context()).Tunnel(0)
	}))
	h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest("GET", "/chat", nil))
	f.Reopen() // flushes
	if data, _ := os.ReadFile(path); len(data) != 0 {
		t.Fatalf("a tunnel's request was logged when its handler returned: %q", data)
	}
	end.EndTunnel(1234)
	f.Close()
	if data, _ := os.ReadFile(path); !strings.HasSuffix(string(data), `"GET /chat HTTP/1.1" 101 1234`+"\n") {
		t.Errorf("line when the tunnel closed: %q", data)
	}
}

func TestFileConcurrentAndReopen(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	path := filepath.Join(dir, "access.log")
	f, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	// The test's umask (022 or 002, usually) leaves 0640 as it is.
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o640 {
		t.Errorf("mode %v, %v; want 0640", fi.Mode(), err)
	}
	l := NewLogger("f", f, Hipster)
	h := logged(l, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	var wg sync.WaitGroup
	const writers, each = 8, 500
	for i := 0; i < writers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := 0; j < each; j++ {
				h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest("GET", "/", nil))
				if j == each/2 && i == 0 {
					os.Rename(path, path+".1")
					if err := f.Reopen(); err != nil {
						t.Error(err)
					}
				}
			}
		}()
	}
	wg.Wait()
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	total := 0
	for _, p := range []string{path, path + ".1"} {
		data, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(strings.TrimSuffix(string(data), "\n"), "\n") {
			if !strings.HasPrefix(line, "frontend:f ") || !strings.HasSuffix(line, " 200 0") {
				t.Fatalf("torn line %q in %s", line, p)
			}
			total++
		}
	}
	if total != writers*each {
		t.Errorf("%d lines across both files, want %d", total, writers*each)
	}
}

func BenchmarkLogLine(b *testing.B) {
	for _, format := range []Format{Hipster, Combined, JSON} {
		b.Run(formatNames[format], func(b *testing.B) {
			f, err := Open(filepath.Join(b.TempDir(), "access.log"))
			if err != nil {
				b.Fatal(err)
			}
			defer f.Close()
			log := typicalExchange(NewLogger("bench", f, format))
			b.ReportAllocs()
			for b.Loop() {
				log()
			}
		})
	}
}

// A file whose writes fail (a full disk: /dev/full) loses its lines, counts
// them, and says so once, not once per write.
func TestFileFailingWritesCountedAndReportedOnce(t *testing.T) {
	t.Parallel()
	var events testutil.Buffer
	f, err := OpenLogged("/dev/full", slog.New(slog.NewTextHandler(&events, nil)))
	if err != nil {
		t.Skipf("no /dev/full: %v", err)
	}
	for range 3 {
		for range 10 {
			f.write([]byte("a line\n"))
		}
		if err := f.Reopen(); err != nil { // writes the lines
			t.Fatal(err)
		}
	}
	if got := f.Lost(); got != 30 {
		t.Errorf("Lost() = %d, want 30", got)
	}
	log := events.String()
	if n := strings.Count(log, "cannot write"); n != 1 {
		t.Errorf("reported %d times, want once:\n%s", n, log)
	}
	if !strings.Contains(log, "path=/dev/full") || !strings.Contains(log, "no space left on device") {
		t.Errorf("the report names neither the file nor the error:\n%s", log)
	}
	f.Close()
}

// A file whose writes block (a pipe nobody reads) keeps no one who logs
// waiting: lines wait in memory up to maxPending, then are dropped and
// counted, and all that waited is written once the pipe drains.
func TestFileBlockedWritesNeverWait(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "fifo")
	if err := syscall.Mkfifo(path, 0o600); err != nil {
		t.Skipf("mkfifo: %v", err)
	}
	// Opened read-write, so that the logger's open does not wait for a
	// reader; nothing is read until the end.
	r, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	f, err := OpenLogged(path, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	line := []byte(strings.Repeat("x", 99) + "\n")
	n := 2 * maxPending / len(line)
	start := time.Now()
	for range n {
		f.write(line)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("%d lines took %v to log into a blocked file", n, took)
	}
	lost := f.Lost()
	if lost < uint64(n/4) || lost > uint64(n) {
		t.Errorf("Lost() = %d of %d lines, want about half", lost, n)
	}
	// Drained, the file takes every line that was kept.
	var read atomic.Int64
	go func() {
		buf := make([]byte, 64*1024)
		for {
			m, err := r.Read(buf)
			read.Add(int64(bytes.Count(buf[:m], []byte{'\n'})))
			if err != nil {
				return
			}
		}
	}()
	f.Close()
	want := int64(n) - int64(lost)
	for deadline := time.Now().Add(10 * time.Second); read.Load() < want && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	if got := read.Load(); got != want {
		t.Errorf("%d lines reached the pipe, want %d (%d logged, %d lost)", got, want, n, lost)
	}
}
