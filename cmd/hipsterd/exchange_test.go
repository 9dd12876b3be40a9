package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hipsterd/hipsterd/internal/testutil"
)

// metricValue is the value of series (name and labels, as /metrics writes
// them) in the metrics text m; -1 when m has none.
func metricValue(m, series string) float64 {
	for line := range strings.SplitSeq(m, "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err == nil {
				return f
			}
		}
	}
	return -1
}

// The access log and the metrics tell one story: each request is one
// record, ended once, that both are handed. The statuses the log writes
// (a client that left: 499; a WebSocket: 101, once its tunnel closed) are
// the codes the metrics count, and the bytes the lines say were sent add
// up to the bytes the metrics say were sent.
func TestLogAndMetricsAgree(t *testing.T) {
	t.Parallel()
	arrived, gone := make(chan struct{}, 1), make(chan struct{}, 1)
	app := testutil.RawServer(t, func(c net.Conn) {
		br := bufio.NewReader(c)
		for {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			switch req.URL.Path {
			case "/ok":
				io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
			case "/upload":
				b, _ := io.ReadAll(req.Body)
				answer := fmt.Sprintf("got %d", len(b))
				fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s", len(answer), answer)
			case "/abandon":
				// No answer: hipsterd closes the connection when its
				// client leaves.
				arrived <- struct{}{}
				io.Copy(io.Discard, br)
				gone <- struct{}{}
				return
			case "/ws":
				io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
				io.Copy(c, br)
				return
			}
		}
	})
	front, stats := freePort(t, "tcp", "127.0.0.1"), freePort(t, "tcp", "127.0.0.1")
	logPath := filepath.Join(t.TempDir(), "access.log")
	startHipsterd(t, writeConfig(t, fmt.Sprintf(`
[global]
stats = %s
accesslog = %s
accesslog-format = json
[frontend web]
bind = %s
backends = app
[backend app]
connect = %s
`, stats, logPath, front, app)), front)

	if code, got := body(t, http.DefaultClient, "http://"+front+"/ok", ""); code != 200 || got != "hello" {
		t.Fatalf("GET /ok: %d %q", code, got)
	}
	resp, err := http.Post("http://"+front+"/upload", "text/plain", strings.NewReader("12345"))
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()

	// A client that leaves before any answer.
	c, err := net.Dial("tcp", front)
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(c, "GET /abandon HTTP/1.1\r\nHost: web\r\n\r\n")
	waitChan(t, arrived, "the abandoned request at the backend")
	c.Close()
	waitChan(t, gone, "the backend's request cancelled")

	// A WebSocket: counted as a 101 and an open tunnel while it runs,
	// logged when it has closed.
	ws, err := net.Dial("tcp", front)
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(ws, "GET /ws HTTP/1.1\r\nHost: web\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
	br := bufio.NewReader(ws)
	wsResp, err := http.ReadResponse(br, nil)
	if err != nil || wsResp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade: %v %v", wsResp, err)
	}
	io.WriteString(ws, "ping\n")
	if line, err := br.ReadString('\n'); line != "ping\n" {
		t.Fatalf("echo through the tunnel: %q, %v", line, err)
	}
	m := metricsText(t, stats)
	if v := metricValue(m, `hipsterd_tunnels_open{backend="app",frontend="web"}`); v != 1 {
		t.Errorf("tunnels open while the WebSocket runs: %v", v)
	}
	if v := metricValue(m, `hipsterd_requests_total{backend="app",code="101",frontend="web"}`); v != 1 {
		t.Errorf("101s counted while the WebSocket runs: %v", v)
	}
	ws.Close()

	type line struct {
		URI       string `json:"uri"`
		Status    int    `json:"status"`
		BytesSent int64  `json:"bytes_sent"`
		Backend   string `json:"backend"`
	}
	var lines []line
	testutil.Eventually(t, "4 lines in the access log", func() bool {
		data, _ := os.ReadFile(logPath)
		lines = lines[:0]
		for l := range strings.SplitSeq(strings.TrimSpace(string(data)), "\n") {
			var got line
			if json.Unmarshal([]byte(l), &got) == nil {
				lines = append(lines, got)
			}
		}
		return len(lines) == 4
	})
	want := map[string]int{"/ok": 200, "/upload": 200, "/abandon": 499, "/ws": 101}
	var sent int64
	codes := map[int]float64{}
	for _, l := range lines {
		if want[l.URI] != l.Status || l.Backend != "app" {
			t.Errorf("line of %s: status %d, backend %q; want %d, app", l.URI, l.Status, l.Backend, want[l.URI])
		}
		sent += l.BytesSent
		codes[l.Status]++
	}
	var openTunnels float64
	testutil.Eventually(t, "the tunnel counted closed", func() bool {
		m = metricsText(t, stats)
		openTunnels = metricValue(m, `hipsterd_tunnels_open{backend="app",frontend="web"}`)
		return openTunnels == 0
	})
	for code, n := range codes {
		if got := metricValue(m, fmt.Sprintf(`hipsterd_requests_total{backend="app",code="%d",frontend="web"}`, code)); got != n {
			t.Errorf("metrics count %v %ds, the log %v", got, code, n)
		}
	}
	if got := metricValue(m, `hipsterd_sent_bytes_total{frontend="web"}`); got != float64(sent) {
		t.Errorf("metrics say %v bytes sent, the log's lines %d", got, sent)
	}
	if got := metricValue(m, `hipsterd_received_bytes_total{frontend="web"}`); got != 5 {
		t.Errorf("metrics say %v bytes received, want the upload's 5", got)
	}
	if got := metricValue(m, `hipsterd_requests_in_flight{frontend="web"}`); got != 0 {
		t.Errorf("requests in flight at the end: %v", got)
	}
}

// waitChan waits for a value on ch, failing the test after 10s.
func waitChan(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(testutil.Patience):
		t.Fatalf("timed out waiting for %s", what)
	}
}
