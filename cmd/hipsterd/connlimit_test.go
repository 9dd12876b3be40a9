package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// launchLimited starts the binary on config under a shell that first runs
// ulimit with args.
func launchLimited(t *testing.T, ulimit, config, addr string) *proc {
	t.Helper()
	cmd := exec.Command("sh", "-c", "ulimit "+ulimit+" && exec \"$0\" -config \"$1\"", binary, config)
	return waitListening(t, launchCmd(t, cmd), addr)
}

// getOn sends a GET on c and returns the status of the answer, or 0 if none
// came within wait.
func getOn(t *testing.T, c net.Conn, br *bufio.Reader, wait time.Duration) int {
	t.Helper()
	c.SetDeadline(time.Now().Add(wait))
	if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	return statusOn(t, c, br, wait)
}

// statusOn reads a response and returns its status, or 0 if none came
// within wait.
func statusOn(t *testing.T, c net.Conn, br *bufio.Reader, wait time.Duration) int {
	t.Helper()
	c.SetDeadline(time.Now().Add(wait))
	resp, err := http.ReadResponse(br, nil)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return 0
	}
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

type client struct {
	c  net.Conn
	br *bufio.Reader
}

func dial(t *testing.T, addr string) client {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return client{c, bufio.NewReader(c)}
}

// At max-connections, clients wait in the backlog and are served in turn
// as connections close; reaching the limit is logged once, and nothing per
// attempt.
func TestMaxConnectionsClientsWait(t *testing.T) {
	t.Parallel()
	front, p := startOneFrontend(t, newServer(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/hold" {
			<-r.Context().Done() // until its client leaves
			return
		}
		io.WriteString(w, "b")
	}), "max-connections = 1", "")
	// A client with a request in flight: not idle, so not reclaimed.
	held := dial(t, front)
	io.WriteString(held.c, "GET /hold HTTP/1.1\r\nHost: x\r\n\r\n")
	var waiting []client
	for range 3 {
		w := dial(t, front)
		if got := getOn(t, w.c, w.br, 300*time.Millisecond); got != 0 {
			t.Fatalf("a client past max-connections got %d at once", got)
		}
		waiting = append(waiting, w)
	}
	held.c.Close()
	for i, w := range waiting {
		if got := statusOn(t, w.c, w.br, 10*time.Second); got != http.StatusOK {
			t.Fatalf("waiting client %d: %d once a connection closed, want 200", i, got)
		}
		w.c.Close()
	}
	log := p.stderr.String()
	if n := strings.Count(log, "max-connections reached"); n != 1 {
		t.Errorf("the limit is logged %d times, want once:\n%s", n, log)
	}
	if strings.Contains(log, "level=ERROR") || strings.Contains(log, "accept") {
		t.Errorf("an error was logged:\n%s", log)
	}
}

// hipsterd raises its soft file descriptor limit to the hard one, says so,
// and works out max-connections from it.
func TestFileLimitRaised(t *testing.T) {
	t.Parallel()
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	if lim.Max == ^uint64(0) || lim.Max <= 256 {
		t.Skipf("hard limit %d: nothing to raise to", lim.Max)
	}
	front := freePort(t, "tcp", "127.0.0.1")
	cfg := writeConfig(t, fmt.Sprintf("[frontend f]\nbind = %s\nbackends = b\n[backend b]\nconnect = %s\n", front, backend(t, "b", nil)))
	p := launchLimited(t, "-Sn 256", cfg, front)
	hard := strconv.FormatUint(lim.Max, 10)
	p.waitStderr(t, "file descriptor limit set to the hard limit\" limit="+hard, 1)
	p.waitStderr(t, "file-descriptors="+hard, 1)
}

// Out of file descriptors, hipsterd answers 503 without holding it against
// the backend: no failed connect counted, no failed health check, no
// backend DOWN.
func TestLocalEMFILEDoesNotMarkBackendDown(t *testing.T) {
	t.Parallel()
	// Each request needs a new backend connection.
	b := newServer(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Connection", "close")
		io.WriteString(w, "b")
	})
	front := freePort(t, "tcp", "127.0.0.1")
	cfg := writeConfig(t, fmt.Sprintf(`
[global]
max-connections = 1000
[frontend f]
bind = %s
backends = b
[backend b]
connect = %s
health-check = tcp
health-interval = 50ms
health-fall = 1
`, front, b))
	// 64 descriptors, soft and hard: clients run out of them before
	// max-connections stops accepting.
	p := launchLimited(t, "-n 64", cfg, front)
	var clients []client
	got503 := false
	for range 100 {
		c := dial(t, front)
		clients = append(clients, c)
		switch got := getOn(t, c.c, c.br, 10*time.Second); got {
		case http.StatusOK:
			continue
		case http.StatusServiceUnavailable:
			got503 = true
		default:
			t.Fatalf("status %d, want 200 or, out of file descriptors, 503", got)
		}
		break
	}
	if !got503 {
		t.Fatal("100 idle connections did not exhaust 64 file descriptors")
	}
	// The 503 may have come one descriptor short of the limit, a health
	// check holding the last for a moment: the checks would then keep
	// connecting. One more client takes that descriptor (and gets a 503),
	// or waits in the backlog when there is none; its answer is not the
	// point.
	extra := dial(t, front)
	clients = append(clients, extra)
	if _, err := io.WriteString(extra.c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	// Health checks run meanwhile, and cannot connect either.
	p.waitStderr(t, "health check not run", 2)
	for _, c := range clients {
		c.c.Close()
	}
	// hipsterd closes its ends as it notices the clients left.
	got := 0
	for deadline := time.Now().Add(10 * time.Second); got != http.StatusOK && time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		c := dial(t, front)
		got = getOn(t, c.c, c.br, 10*time.Second)
		c.c.Close()
	}
	if got != http.StatusOK {
		t.Errorf("once descriptors were free again: %d, want 200", got)
	}
	if log := p.stderr.String(); strings.Contains(log, "backend is DOWN") {
		t.Errorf("the backend was marked DOWN for hipsterd's own EMFILE:\n%s", log)
	}
}
