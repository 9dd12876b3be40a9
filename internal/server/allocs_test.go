package server

import (
	"bytes"
	"net"
	"strings"
	"testing"

	"github.com/hipsterd/hipsterd/internal/testutil"
)

// maxAllocsPerRequest is what one proxied small keep-alive request may
// allocate in hipsterd, with or without the access log and the stats.
// Measured: 50 on 2026-12-03 (BenchmarkProxyOnly/nolog, before and after
// the h1-path work; with the access log and the stats 54 before the
// exchange work, 50 since), most of it net/http's server and ReverseProxy
// (the request, its header maps and contexts, the outgoing clone, the
// response). The bound
// leaves one for a background timer that lands in the count; an
// allocation added to the hot path fails the test, and must be paid for
// here.
const maxAllocsPerRequest = 51

// TestAllocsPerRequest counts the allocations of BenchmarkProxyOnly's
// request: a raw-socket client and backend that allocate nothing, so the
// count is the proxy's own. It does not run in parallel: every goroutine's
// allocations count.
func TestAllocsPerRequest(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector makes sync.Pool drop items at random: counts mean nothing under it")
	}
	t.Run("nolog", func(t *testing.T) { allocsPerRequest(t, "") })
	t.Run("stats+accesslog", func(t *testing.T) {
		allocsPerRequest(t, "[global]\nstats = 127.0.0.1:0\naccesslog = "+t.TempDir()+"/access.log\n")
	})
}

// allocsPerRequest checks the allocations of a request to a frontend under
// the [global] section global.
func allocsPerRequest(t *testing.T, global string) {
	response := []byte("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 100\r\n\r\n" + strings.Repeat("x", 100))
	addr := testutil.Serve(testutil.Listen(t), func(c net.Conn) { rawBackend(c, response) })
	_, addrs := startQuiet(t, global+"[frontend f]\nbind = 127.0.0.1:0\nbackends = a\n[backend a]\nconnect = "+addr+"\n")
	c, err := net.Dial("tcp", addrs["f"])
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	request := []byte("GET /small HTTP/1.1\r\nHost: bench\r\nUser-Agent: bench\r\nAccept: */*\r\n\r\n")
	buf := make([]byte, 4096)
	failed := false
	one := func() {
		if failed {
			return
		}
		if _, err := c.Write(request); err != nil {
			failed = true
			return
		}
		for got := 0; ; {
			n, err := c.Read(buf[got:])
			if err != nil {
				failed = true
				return
			}
			got += n
			if end := bytes.Index(buf[:got], []byte("\r\n\r\n")); end >= 0 && got >= end+4+100 {
				return
			}
		}
	}
	for range 50 { // pools and buffers warm
		one()
	}
	n := testing.AllocsPerRun(500, one)
	if failed {
		t.Fatal("a request failed")
	}
	t.Logf("%.0f allocations per request", n)
	if n > maxAllocsPerRequest {
		t.Errorf("%.0f allocations per proxied request, more than the %d allowed", n, maxAllocsPerRequest)
	}
}
