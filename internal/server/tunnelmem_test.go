package server

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/hipsterd/hipsterd/internal/testutil"
)

// maxIdleTunnelBytes is the live heap one idle WebSocket tunnel may keep in
// the proxy, after a collection, for a frontend without and with an access
// log (which keeps the request's line and logged header fields). Each byte
// counts about twice in the process's memory, as GOGC=100 lets the heap grow
// to twice what is live. Measured 2026-12-03 (bare, logged): 2370 and 2650
// before the tunnel's exchange shrank; 1090-1215 and 1540-1590 since (with
// the sockets out of Go's poller, which also saves 512 bytes per socket
// outside the heap, not counted here); 1270-1300 and 1670-1710 with the
// client connection's state for net/http's background reads (reads.go).
var maxIdleTunnelBytes = map[string]int64{"bare": 1400, "logged": 1850}

// idleTunnels is how many tunnels TestAllocsRetainedByIdleTunnel opens:
// enough that what is shared (the reactor's tables, the registry's map)
// weighs little per tunnel.
const idleTunnels = 400

// peerEnv runs the test binary as the peer of TestAllocsRetainedByIdleTunnel.
const peerEnv = "HIPSTERD_TUNNEL_PEER"

func TestMain(m *testing.M) {
	if os.Getenv(peerEnv) == "1" {
		tunnelPeer()
		return
	}
	os.Exit(m.Run())
}

// TestAllocsRetainedByIdleTunnel measures what idle WebSocket tunnels keep
// in the proxy: the WebSocket backend and clients run in another process
// (this test binary as tunnelPeer), so that the memory of this one is the
// proxy's alone. It does not run in parallel: every goroutine's
// allocations count. Under the race detector sizes mean nothing.
func TestAllocsRetainedByIdleTunnel(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector changes what memory holds: sizes mean nothing under it")
	}
	peer := startTunnelPeer(t)
	backend := peer.said("backend")
	t.Run("bare", func(t *testing.T) {
		// As bench.sh's wsidle has it: no access log, no stats, a
		// client that sends no User-Agent.
		idleTunnelMemory(t, peer, "", backend, false)
	})
	t.Run("logged", func(t *testing.T) {
		global := "[global]\naccesslog = " + filepath.Join(t.TempDir(), "access.log") + "\naccesslog-format = json\nstats = 127.0.0.1:0\n"
		idleTunnelMemory(t, peer, global, backend, true)
	})
}

// idleTunnelMemory opens idleTunnels tunnels through a frontend to backend
// under the [global] section global, from a browser if browser is set, and
// checks the heap they keep.
func idleTunnelMemory(t *testing.T, peer *tunnelPeerProc, global, backend string, browser bool) {
	s, addrs := startQuiet(t, global+"[frontend ws]\nbind = 127.0.0.1:0\nbackends = echo\n[backend echo]\nconnect = "+backend+"\n")
	dial := fmt.Sprintf("dial ws://%s/socket?session=abcdef %%d %v", addrs["ws"], browser)

	// Warm up what is made once: the reactors, the pools, the tables.
	peer.tell(dial, 50)
	peer.said("open")
	peer.tell("close")
	peer.said("closed")
	testutil.Eventually(t, "the warm-up tunnels to close", func() bool { return s.OpenTunnels() == 0 })

	goroutines := runtime.NumGoroutine()
	before := liveHeap()
	peer.tell(dial, idleTunnels)
	if n := peer.said("open"); n != strconv.Itoa(idleTunnels) {
		t.Fatalf("the peer opened %s tunnels, want %d", n, idleTunnels)
	}
	testutil.Eventually(t, "the tunnels to open", func() bool { return s.OpenTunnels() == idleTunnels })
	// An idle tunnel has no goroutine: those of the handshakes end.
	testutil.Eventually(t, "the handshakes' goroutines to end", func() bool { return runtime.NumGoroutine() <= goroutines+5 })
	per := (liveHeap() - before) / idleTunnels
	t.Logf("%d bytes of heap per idle tunnel", per)
	if max := maxIdleTunnelBytes[t.Name()[strings.LastIndex(t.Name(), "/")+1:]]; per > max {
		t.Errorf("an idle tunnel keeps %d bytes, more than the %d allowed", per, max)
	}

	// They were idle, not dead: each still echoes.
	peer.tell("check")
	if n := peer.said("echoed"); n != strconv.Itoa(idleTunnels) {
		t.Errorf("%s of %d tunnels echoed", n, idleTunnels)
	}
	peer.tell("close")
	peer.said("closed")
	testutil.Eventually(t, "the tunnels to close", func() bool { return s.OpenTunnels() == 0 })
}

// liveHeap is the heap still in use after a collection. The second one
// empties the pools, whose items outlive one.
func liveHeap() int64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return int64(m.HeapAlloc)
}

// tunnelPeerProc is the process tunnelPeer runs in.
type tunnelPeerProc struct {
	t   *testing.T
	in  io.Writer
	out *bufio.Scanner
}

func startTunnelPeer(t *testing.T) *tunnelPeerProc {
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), peerEnv+"=1")
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		in.Close()
		cmd.Wait()
	})
	return &tunnelPeerProc{t: t, in: in, out: bufio.NewScanner(out)}
}

// tell sends the peer a command.
func (p *tunnelPeerProc) tell(format string, args ...any) {
	fmt.Fprintf(p.in, format+"\n", args...)
}

// said reads the peer's next line, which must start with word, and returns
// the rest.
func (p *tunnelPeerProc) said(word string) string {
	p.t.Helper()
	got := make(chan string, 1)
	go func() {
		if p.out.Scan() {
			got <- p.out.Text()
		}
		close(got)
	}()
	select {
	case line, ok := <-got:
		if f := strings.Fields(line); ok && len(f) > 0 && f[0] == word {
			return strings.Join(f[1:], " ")
		}
		p.t.Fatalf("the peer said %q, want %s", line, word)
	case <-time.After(time.Minute):
		p.t.Fatalf("the peer said nothing for a minute, want %s", word)
	}
	return ""
}

// tunnelPeer is the other process of TestAllocsRetainedByIdleTunnel: a
// WebSocket echo backend, whose address it prints first ("backend ADDR"),
// and the clients, which it opens, checks and closes as told on stdin:
//
//	dial URL N B opens N connections, then says "open N" (those that
//	             opened); as a browser, with a User-Agent and a Referer,
//	             if B is true
//	check        sends a message on each and says "echoed K"
//	close        closes them all and says "closed"
//
// It exits when stdin ends.
func tunnelPeer() {
	up := websocket.Upgrader{}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := up.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer c.Close()
		for {
			typ, msg, err := c.ReadMessage()
			if err != nil || c.WriteMessage(typ, msg) != nil {
				return
			}
		}
	})}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	go srv.Serve(ln)
	fmt.Printf("backend %s\n", ln.Addr())

	var conns []*websocket.Conn
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		f := strings.Fields(in.Text())
		switch {
		case len(f) == 4 && f[0] == "dial":
			n, _ := strconv.Atoi(f[2])
			var hdr http.Header
			if f[3] == "true" {
				hdr = http.Header{
					"User-Agent": {"Mozilla/5.0 (X11; Linux x86_64; rv:140.0) Gecko/20100101 Firefox/140.0"},
					"Referer":    {"https://app.example/board?view=all"},
				}
			}
			conns = make([]*websocket.Conn, n)
			forEachOf(n, func(i int) {
				c, _, err := websocket.DefaultDialer.Dial(f[1], hdr)
				if err == nil {
					conns[i] = c
				}
			})
			open := 0
			for _, c := range conns {
				if c != nil {
					open++
				}
			}
			fmt.Printf("open %d\n", open)
		case len(f) == 1 && f[0] == "check":
			var echoed atomic.Int64
			msg := []byte("are you still there?")
			forEachOf(len(conns), func(i int) {
				c := conns[i]
				if c == nil {
					return
				}
				c.SetReadDeadline(time.Now().Add(10 * time.Second))
				if c.WriteMessage(websocket.TextMessage, msg) != nil {
					return
				}
				if _, got, err := c.ReadMessage(); err == nil && string(got) == string(msg) {
					echoed.Add(1)
				}
			})
			fmt.Printf("echoed %d\n", echoed.Load())
		case len(f) == 1 && f[0] == "close":
			for _, c := range conns {
				if c != nil {
					c.Close()
				}
			}
			conns = nil
			fmt.Println("closed")
		}
	}
}

// forEachOf calls f(0..n-1) from at most 50 goroutines at a time.
func forEachOf(n int, f func(i int)) {
	var wg sync.WaitGroup
	var next atomic.Int64
	for range min(n, 50) {
		wg.Go(func() {
			for i := int(next.Add(1) - 1); i < n; i = int(next.Add(1) - 1) {
				f(i)
			}
		})
	}
	wg.Wait()
}
