package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// The demo's fixed addresses, from configs/hipster.ini and scripts/demo.sh.
var demoAddrs = []string{"127.0.0.1:9000", "127.0.0.1:8001", "127.0.0.1:8002", "127.0.0.1:8404"}

// TestMakeDemo runs the README's first command as a user would: with port
// 9000 taken by another server it must stop with hipsterd's own error and
// send nothing to that server; with the ports free it must serve, show the
// two backends taking turns, answer on the status page and echo WebSocket
// messages, and stop everything it started on Ctrl-C. The demo's ports are
// fixed, so it runs alone, under a lock other checkouts' tests take too.
func TestMakeDemo(t *testing.T) {
	if _, err := exec.LookPath("curl"); err != nil {
		t.Fatal("make demo needs curl")
	}
	lock, err := os.OpenFile("/tmp/hipsterd-demo-test.lock", os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	for _, addr := range demoAddrs {
		waitFree(t, addr)
	}

	t.Run("port taken", func(t *testing.T) {
		l, err := net.Listen("tcp", "127.0.0.1:9000")
		if err != nil {
			t.Fatal(err)
		}
		impostor := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			http.Error(w, "IMPOSTOR", http.StatusNotFound)
		})}
		go impostor.Serve(l)
		defer impostor.Close()

		cmd := demoCommand(t)
		out, err := cmd.CombinedOutput()
		if err == nil {
			t.Errorf("make demo succeeded with port 9000 taken:\n%s", out)
		}
		for _, want := range []string{"hipsterd: frontend demo: cannot listen on 127.0.0.1:9000", "make demo: hipsterd could not start"} {
			if !strings.Contains(string(out), want) {
				t.Errorf("make demo with port 9000 taken does not say %q:\n%s", want, out)
			}
		}
		for _, bad := range []string{"IMPOSTOR", "is serving", "four requests"} {
			if strings.Contains(string(out), bad) {
				t.Errorf("make demo with port 9000 taken went on (%q):\n%s", bad, out)
			}
		}
		// The backends it started are gone with it.
		for _, addr := range demoAddrs[1:] {
			waitFree(t, addr)
		}
	})

	t.Run("serving", func(t *testing.T) {
		cmd := demoCommand(t)
		r, w, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		cmd.Stdout, cmd.Stderr = w, w
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		w.Close()
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		lines := make(chan string, 1000)
		go func() {
			s := bufio.NewScanner(r)
			for s.Scan() {
				lines <- s.Text()
			}
			close(lines)
		}()
		var out strings.Builder
		deadline := time.After(2 * time.Minute)
	wait:
		for {
			select {
			case line, ok := <-lines:
				if !ok {
					t.Fatalf("make demo ended:\n%s", out.String())
				}
				out.WriteString(line + "\n")
				if strings.Contains(line, "is serving on http://127.0.0.1:9000/") {
					break wait
				}
			case <-deadline:
				t.Fatalf("make demo not serving after 2 minutes:\n%s", out.String())
			}
		}
		want := "hello from backend 127.0.0.1:8001: GET /hello?n=1 (Host: 127.0.0.1:9000)\n" +
			"hello from backend 127.0.0.1:8002: GET /hello?n=2 (Host: 127.0.0.1:9000)\n" +
			"hello from backend 127.0.0.1:8001: GET /hello?n=3 (Host: 127.0.0.1:9000)\n" +
			"hello from backend 127.0.0.1:8002: GET /hello?n=4 (Host: 127.0.0.1:9000)\n"
		if !strings.Contains(out.String(), want) {
			t.Errorf("make demo's requests did not take turns over the two backends:\n%s", out.String())
		}

		for path, want := range map[string]string{"/healthz": "ok", "/": "hipsterd", "/metrics": `hipsterd_requests_total{backend="demo1",code="200",frontend="demo"}`} {
			resp, err := http.Get("http://127.0.0.1:8404" + path)
			if err != nil {
				t.Errorf("the demo's stats listener: %v", err)
				continue
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 || !strings.Contains(string(body), want) {
				t.Errorf("GET 127.0.0.1:8404%s: %d, body lacks %q", path, resp.StatusCode, want)
			}
		}

		ws, _, err := websocket.DefaultDialer.Dial("ws://127.0.0.1:9000/ws", nil)
		if err != nil {
			t.Fatalf("WebSocket through the demo: %v", err)
		}
		ws.SetReadDeadline(time.Now().Add(10 * time.Second))
		for i := range 3 {
			msg := fmt.Sprintf("hello %d", i)
			if err := ws.WriteMessage(websocket.TextMessage, []byte(msg)); err != nil {
				t.Fatal(err)
			}
			if _, got, err := ws.ReadMessage(); err != nil || string(got) != msg {
				t.Errorf("WebSocket echo: %q, %v; want %q", got, err, msg)
			}
		}
		ws.Close()

		// Ctrl-C: SIGINT to the whole foreground process group.
		syscall.Kill(-cmd.Process.Pid, syscall.SIGINT)
		select {
		case <-done:
		case <-time.After(time.Minute):
			t.Fatal("make demo still running a minute after SIGINT")
		}
		for _, addr := range demoAddrs {
			waitFree(t, addr)
		}
	})
}

// demoCommand is make demo in its own process group, which is killed if
// the test ends first.
func demoCommand(t *testing.T) *exec.Cmd {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	t.Cleanup(cancel)
	cmd := exec.CommandContext(ctx, "make", "-C", "../..", "--no-print-directory", "demo")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	t.Cleanup(func() {
		if cmd.Process != nil && cmd.ProcessState == nil {
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		}
	})
	return cmd
}

// waitFree waits until addr can be listened on (what the demo left has
// gone), or fails after 10 s naming it.
func waitFree(t *testing.T, addr string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		l, err := net.Listen("tcp", addr)
		if err == nil {
			l.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s is taken (by a demo left running, or another program): %v", addr, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
