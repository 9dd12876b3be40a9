package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// tinyDisk mounts a 64 KiB tmpfs and returns its directory, unmounted when
// the test ends: a disk that fills at once.
func tinyDisk(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "disk")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size=64k"); err != nil {
		t.Fatalf("this test mounts a 64 KiB tmpfs for a disk that fills, which needs root (CAP_SYS_ADMIN): %v", err)
	}
	t.Cleanup(func() {
		if err := syscall.Unmount(dir, syscall.MNT_DETACH); err != nil {
			t.Errorf("unmounting %s: %v", dir, err)
		}
	})
	return dir
}

// fill writes path until its disk is full.
func fill(t *testing.T, path string) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	block := make([]byte, 4096)
	for {
		if _, err := f.Write(block); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatal(err)
			}
			return
		}
	}
}

// lostLines returns hipsterd_accesslog_lost_lines_total of path, or -1.
func lostLines(t *testing.T, stats, path string) int {
	t.Helper()
	m := regexp.MustCompile(`(?m)^hipsterd_accesslog_lost_lines_total\{path="` + regexp.QuoteMeta(path) + `"\} (\d+)$`).FindStringSubmatch(metricsText(t, stats))
	if m == nil {
		return -1
	}
	n, _ := strconv.Atoi(m[1])
	return n
}

// A full disk does not silence the access log for good (issue 18, item 1):
// the failure is reported once, naming the file and the error; the lines
// lost are counted on /metrics; requests are served all along; and once
// there is room again, the next lines are written, with no signal.
func TestAccessLogSurvivesFullDisk(t *testing.T) {
	t.Parallel()
	disk := tinyDisk(t)
	logPath := filepath.Join(disk, "access.log")
	front, stats := freePort(t, "tcp", "127.0.0.1"), freePort(t, "tcp", "127.0.0.1")
	cfg := writeConfig(t, fmt.Sprintf(`
[global]
stats = %s
[frontend f]
bind = %s
backends = b
accesslog = %s
[backend b]
connect = %s
`, stats, front, logPath, backend(t, "b", nil)))
	p := startHipsterd(t, cfg, front)
	get := func(path string) {
		t.Helper()
		if code, _ := body(t, http.DefaultClient, "http://"+front+path, ""); code != http.StatusOK {
			t.Fatalf("GET %s: %d, want 200", path, code)
		}
	}
	get("/before")
	waitLogged(t, logPath, `"GET /before HTTP/1.1" 200`)
	fill(t, filepath.Join(disk, "filler"))

	// Lines go on being logged, into a full disk, for two flushes at least.
	deadline := time.Now().Add(10 * time.Second)
	for i := 0; lostLines(t, stats, logPath) < 2; i++ {
		if time.Now().After(deadline) {
			t.Fatalf("no lost lines counted with the disk full:\n%s", metricsText(t, stats))
		}
		get("/full-" + strconv.Itoa(i))
		time.Sleep(50 * time.Millisecond)
	}
	p.waitStderr(t, "access log: cannot write", 1)
	for deadline := time.Now().Add(1500 * time.Millisecond); time.Now().Before(deadline); {
		get("/still-full")
		time.Sleep(50 * time.Millisecond)
	}
	log := p.stderr.String()
	if n := strings.Count(log, "access log: cannot write"); n != 1 {
		t.Errorf("the full disk was reported %d times, want once:\n%s", n, log)
	}
	if !strings.Contains(log, "path="+logPath) || !strings.Contains(log, "no space left on device") {
		t.Errorf("the report names neither the file nor the error:\n%s", log)
	}

	// Room again: the next request's line is written, by itself.
	if err := os.Remove(filepath.Join(disk, "filler")); err != nil {
		t.Fatal(err)
	}
	get("/room-again")
	waitLogged(t, logPath, `"GET /room-again HTTP/1.1" 200`)
	p.waitStderr(t, "access log: writing again", 1)
	if data, _ := os.ReadFile(logPath); !strings.Contains(string(data), `"GET /before HTTP/1.1" 200`) {
		t.Errorf("the line from before the disk filled is gone:\n%s", data)
	}
}

// waitLogged waits until the file at path holds want.
func waitLogged(t *testing.T, path, want string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		data, _ := os.ReadFile(path)
		if strings.Contains(string(data), want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s has no %s:\n%s", path, want, data)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A blocked log write (a pipe nobody reads) stalls no request and no tunnel
// (issue 18, item 1): http requests and tcp connections, whose lines are
// written when the tunnel reactor sees them end, are served as usual; the
// lines kept meanwhile are written once the pipe drains.
func TestBlockedAccessLogStallsNothing(t *testing.T) {
	t.Parallel()
	fifo := filepath.Join(t.TempDir(), "access.fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	// Read-write, so that hipsterd's open finds a reader; nothing is read
	// until the end.
	pipe, err := os.OpenFile(fifo, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer pipe.Close()
	front, tcpFront := freePort(t, "tcp", "127.0.0.1"), freePort(t, "tcp", "127.0.0.1")
	cfg := writeConfig(t, fmt.Sprintf(`
[global]
accesslog = %s
[frontend f]
bind = %s
backends = b
[frontend t]
bind = %s
mode = tcp
backends = echo
[backend b]
connect = %s
[backend echo]
connect = %s
`, fifo, front, tcpFront, backend(t, "b", nil), lineEcho(t, "echo", nil)))
	startHipsterd(t, cfg, front)

	client := &http.Client{Timeout: 5 * time.Second}
	request := func(i int) time.Duration {
		start := time.Now()
		resp, err := client.Get("http://" + front + "/r" + strconv.Itoa(i))
		if err != nil {
			t.Fatalf("request %d with the access log blocked: %v", i, err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return time.Since(start)
	}
	tunnel := func(i int) {
		c, err := net.DialTimeout("tcp", tcpFront, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		fmt.Fprintf(c, "hello %d\n", i)
		c.(*net.TCPConn).CloseWrite()
		got, err := io.ReadAll(c)
		if err != nil || !strings.Contains(string(got), fmt.Sprintf("hello %d\n", i)) {
			t.Fatalf("tcp connection %d with the access log blocked: %q, %v", i, got, err)
		}
	}
	// Well past the 64 KiB a pipe holds, and the writer's first batch.
	const requests = 2000
	var slowest time.Duration
	for i := range requests {
		slowest = max(slowest, request(i))
		if i%100 == 0 {
			tunnel(i)
		}
	}
	// The pipe is full: more lines than it holds were logged.
	if queued, err := queuedBytes(pipe); err != nil || queued < 60*1024 {
		t.Fatalf("the pipe holds %d bytes (%v): the log never blocked", queued, err)
	}
	for i := range 20 {
		slowest = max(slowest, request(requests+i))
		tunnel(requests + i)
	}
	if slowest > 2*time.Second {
		t.Errorf("the slowest request took %v with the access log blocked", slowest)
	}

	// Drained, the pipe gets every line, the last request's included.
	var lines atomic.Int64
	found := make(chan struct{})
	go func() {
		br := bufio.NewReader(pipe)
		last := []byte(fmt.Sprintf(`"GET /r%d HTTP/1.1"`, requests+19))
		for {
			line, err := br.ReadBytes('\n')
			if err != nil {
				return
			}
			lines.Add(1)
			if bytes.Contains(line, last) {
				close(found)
				return
			}
		}
	}()
	select {
	case <-found:
	case <-time.After(10 * time.Second):
		t.Fatalf("the last request's line never reached the log (%d lines read)", lines.Load())
	}
}

// queuedBytes returns the bytes waiting to be read in f (FIONREAD).
func queuedBytes(f *os.File) (int, error) {
	rc, err := f.SyscallConn()
	if err != nil {
		return 0, err
	}
	n := 0
	if cerr := rc.Control(func(fd uintptr) { n, err = unix.IoctlGetInt(int(fd), unix.SIOCINQ) }); cerr != nil {
		return 0, cerr
	}
	return n, err
}
