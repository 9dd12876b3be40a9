package tunnel

import (
	"bytes"
	"crypto/tls"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"runtime"
	"syscall"
	"testing"
	"time"

	"github.com/hipsterd/hipsterd/internal/testcert"
	"github.com/hipsterd/hipsterd/internal/testutil"
)

// counts are the bytes a tunnel copied to each side, and how it ended.
type counts struct {
	toA, toB int64
	end      End
}

// tunnelFor starts a tunnel of r between a client's and a backend's
// connection, and returns their other ends, and where the tunnel's counts
// arrive when it has ended.
func tunnelFor(t *testing.T, r *Registry, timeout time.Duration) (client, backend *net.TCPConn, done <-chan counts) {
	t.Helper()
	return tunnelWith(t, r, Options{Timeout: timeout})
}

func tunnelWith(t *testing.T, r *Registry, o Options) (client, backend *net.TCPConn, done <-chan counts) {
	t.Helper()
	client, proxyA := testutil.Pair(t)
	proxyB, backend := testutil.Pair(t)
	ch := make(chan counts, 1)
	r.Start(proxyA, proxyB, o, func(toA, toB int64, end End) { ch <- counts{toA, toB, end} })
	return client, backend, ch
}

// tlsTunnelFor is tunnelFor with TLS between the client and the tunnel, as
// on an https frontend: the tunnel runs on goroutines.
func tlsTunnelFor(t *testing.T, r *Registry, timeout time.Duration) (client *tls.Conn, backend *net.TCPConn, done <-chan counts) {
	t.Helper()
	certFile, keyFile := testcert.Files(t, t.TempDir(), "localhost")
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	rawClient, rawProxyA := testutil.Pair(t)
	client = tls.Client(rawClient, &tls.Config{RootCAs: testcert.Pool(t, certFile), ServerName: "localhost"})
	proxyA := tls.Server(rawProxyA, &tls.Config{Certificates: []tls.Certificate{cert}})
	deadline := time.Now().Add(10 * time.Second)
	client.SetDeadline(deadline)
	proxyA.SetDeadline(deadline)
	handshake := make(chan error, 1)
	go func() { handshake <- client.Handshake() }()
	if err := proxyA.Handshake(); err != nil {
		t.Fatal(err)
	}
	if err := <-handshake; err != nil {
		t.Fatal(err)
	}
	client.SetDeadline(time.Time{})
	proxyA.SetDeadline(time.Time{})
	proxyB, backend := testutil.Pair(t)
	ch := make(chan counts, 1)
	r.Start(proxyA, proxyB, Options{Timeout: timeout}, func(toA, toB int64, end End) { ch <- counts{toA, toB, end} })
	return client, backend, ch
}

// kinds are the two ways a tunnel runs, for tests of both.
var kinds = []struct {
	name  string
	start func(t *testing.T, r *Registry, timeout time.Duration) (client net.Conn, backend *net.TCPConn, done <-chan counts)
}{
	{"reactor", func(t *testing.T, r *Registry, timeout time.Duration) (net.Conn, *net.TCPConn, <-chan counts) {
		return tunnelFor(t, r, timeout)
	}},
	{"tls", func(t *testing.T, r *Registry, timeout time.Duration) (net.Conn, *net.TCPConn, <-chan counts) {
		return tlsTunnelFor(t, r, timeout)
	}},
}

func TestHalfClose(t *testing.T) {
	t.Parallel()
	var r Registry
	client, backend, done := tunnelFor(t, &r, 0)
	deadline := time.Now().Add(10 * time.Second)
	client.SetDeadline(deadline)
	backend.SetDeadline(deadline)

	// The client sends its request and shuts down its sending side.
	io.WriteString(client, "request")
	client.CloseWrite()
	got, err := io.ReadAll(backend)
	if err != nil || string(got) != "request" {
		t.Fatalf("backend read %q, %v; want the request, then EOF", got, err)
	}
	// The other direction still works after the half-close.
	io.WriteString(backend, "response")
	backend.Close()
	got, err = io.ReadAll(client)
	if err != nil || string(got) != "response" {
		t.Fatalf("client read %q, %v", got, err)
	}
	select {
	case res := <-done:
		if res.toA != 8 || res.toB != 7 || res.end != Done {
			t.Errorf("counted %+v, want 8 to the client and 7 to the backend, Done", res)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the tunnel did not end")
	}
	if r.Len() != 0 {
		t.Errorf("registry still holds %d tunnels", r.Len())
	}
}

func TestHalfCloseTimeoutAndCloseAll(t *testing.T) {
	t.Parallel()
	var r Registry
	client, backend, done := tunnelWith(t, &r, Options{HalfClosed: 50 * time.Millisecond})
	// The backend leaves; the client says nothing: the tunnel ends anyway.
	backend.Close()
	select {
	case res := <-done:
		if res.end != Timeout {
			t.Errorf("ended %v, want Timeout", res.end)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a half-closed tunnel outlived its timeout")
	}
	client.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := client.Read(make([]byte, 1)); err == nil {
		t.Error("client connection still open")
	}

	client2, _, done2 := tunnelFor(t, &r, 0)
	if r.Len() != 1 {
		t.Fatalf("%d tunnels registered, want 1", r.Len())
	}
	r.CloseAll()
	select {
	case res := <-done2:
		if res.end != Closed {
			t.Errorf("ended %v, want Closed", res.end)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("CloseAll did not end the tunnel")
	}
	client2.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := client2.Read(make([]byte, 1)); err == nil {
		t.Error("client connection still open after CloseAll")
	}
}

func TestBulkBothWays(t *testing.T) {
	t.Parallel()
	var r Registry
	client, backend, done := tunnelFor(t, &r, 0)

	// Bursts of every size, bulk among them, both ways at once, each
	// direction read while the other is written.
	const size = 3<<20 + 12345
	up, down := make([]byte, size), make([]byte, size)
	rand.NewChaCha8([32]byte{1}).Read(up)
	rand.NewChaCha8([32]byte{2}).Read(down)
	send := func(c *net.TCPConn, data []byte) {
		for off, n := 0, 1; off < len(data); off, n = off+n, n*3%70001+1 {
			if _, err := c.Write(data[off:min(off+n, len(data))]); err != nil {
				t.Error(err)
				return
			}
		}
		c.CloseWrite()
	}
	deadline := time.Now().Add(20 * time.Second)
	client.SetDeadline(deadline)
	backend.SetDeadline(deadline)
	go send(client, up)
	go send(backend, down)
	var atBackend []byte
	readDone := make(chan struct{})
	go func() {
		atBackend, _ = io.ReadAll(backend)
		close(readDone)
	}()
	atClient, err := io.ReadAll(client)
	<-readDone
	if err != nil || !bytes.Equal(atClient, down) || !bytes.Equal(atBackend, up) {
		t.Fatalf("client got %d bytes (%v), backend %d; want %d each, unchanged", len(atClient), err, len(atBackend), size)
	}
	select {
	case res := <-done:
		if res.toA != size || res.toB != size {
			t.Errorf("counted %+v, want %d each way", res, size)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the tunnel did not end")
	}
}

func TestIdleTunnelsHoldNoGoroutine(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("tunnels run on goroutines here")
	}
	var r Registry
	before := runtime.NumGoroutine()
	const n = 50
	clients := make([]*net.TCPConn, n)
	for i := range clients {
		// With a timeout: watching for idleness costs no goroutine either.
		c, backend, _ := tunnelFor(t, &r, time.Hour)
		clients[i] = c
		// An echoing backend, to show that the tunnel works.
		go io.Copy(backend, backend)
	}
	for _, c := range clients {
		c.SetDeadline(time.Now().Add(10 * time.Second))
		io.WriteString(c, "ping")
		buf := make([]byte, 4)
		if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "ping" {
			t.Fatalf("echo: %q, %v", buf, err)
		}
	}
	// Each echoing backend is one goroutine; the tunnels may add the
	// reactors' and nothing per tunnel.
	if got := runtime.NumGoroutine() - before - n; got > runtime.GOMAXPROCS(0)+2 {
		t.Errorf("%d goroutines for %d idle tunnels", got, n)
	}
	r.CloseAll()
	if r.Len() != 0 {
		t.Errorf("%d tunnels left after CloseAll", r.Len())
	}
}

// The timeout is wide against the test's ticks: under -race on a loaded
// machine a goroutine can wait hundreds of milliseconds for a CPU, and a
// tick that late would close the tunnel for real.
func TestIdleTimeout(t *testing.T) {
	t.Parallel()
	const timeout = time.Second
	for _, k := range kinds {
		t.Run(k.name, func(t *testing.T) {
			t.Parallel()
			var r Registry
			client, backend, done := k.start(t, &r, timeout)
			deadline := time.Now().Add(10 * time.Second)
			client.SetDeadline(deadline)
			backend.SetDeadline(deadline)

			// Bulk to the client, which goes through a blocking write with
			// a deadline: one that outlived its write would end the tunnel
			// below.
			const bulk = 1 << 20
			go backend.Write(make([]byte, bulk))
			if _, err := io.ReadFull(client, make([]byte, bulk)); err != nil {
				t.Fatal(err)
			}

			// Bytes one way only, for one and a half timeouts: the tunnel
			// stays.
			const rounds = 6
			tick := time.NewTicker(timeout / 4)
			defer tick.Stop()
			for range rounds {
				<-tick.C
				if _, err := io.WriteString(client, "x"); err != nil {
					t.Fatal(err)
				}
				if _, err := io.ReadFull(backend, make([]byte, 1)); err != nil {
					t.Fatalf("tunnel closed while bytes moved: %v", err)
				}
			}
			io.WriteString(backend, "y")
			if _, err := io.ReadFull(client, make([]byte, 1)); err != nil {
				t.Fatalf("tunnel closed while bytes moved: %v", err)
			}

			// Then nothing moves: the tunnel closes, not before its time.
			quiet := time.Now()
			select {
			case res := <-done:
				if waited := time.Since(quiet); waited < timeout/2 {
					t.Errorf("closed %v after the last byte, want about %v", waited, timeout)
				}
				if res.toB != rounds || res.toA != bulk+1 || res.end != Timeout {
					t.Errorf("counted %+v, want %d bytes to the client and %d to the backend", res, bulk+1, rounds)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("an idle tunnel outlived its timeout")
			}
			if _, err := backend.Read(make([]byte, 1)); err == nil {
				t.Error("backend connection still open")
			}
			if _, err := client.Read(make([]byte, 1)); err == nil {
				t.Error("client connection still open")
			}
			if r.Len() != 0 {
				t.Errorf("registry still holds %d tunnels", r.Len())
			}
		})
	}
}

// A client that stops reading while it goes on sending: the tunnel's write
// to it makes no progress, and closes the tunnel though bytes still move
// the other way.
func TestStalledWriteTimeout(t *testing.T) {
	t.Parallel()
	// Wide enough that the client's first write, a tick in, comes before
	// the tunnel closes even when the test waits for a CPU.
	const timeout = time.Second
	for _, k := range kinds {
		t.Run(k.name, func(t *testing.T) {
			t.Parallel()
			var r Registry
			client, backend, done := k.start(t, &r, timeout)
			deadline := time.Now().Add(10 * time.Second)
			client.SetDeadline(deadline)
			backend.SetDeadline(deadline)

			go io.Copy(io.Discard, backend)
			go func() {
				bulk := make([]byte, 64<<10)
				for {
					if _, err := backend.Write(bulk); err != nil {
						return
					}
				}
			}()
			ticker := time.NewTicker(timeout / 8)
			defer ticker.Stop()
			tick, giveUp := ticker.C, time.After(10*time.Second)
			for {
				select {
				case res := <-done:
					if res.toB == 0 {
						t.Errorf("counted %+v: the client's bytes never reached the backend", res)
					}
					return
				case <-tick:
					if _, err := client.Write(make([]byte, 1<<10)); err != nil {
						tick = nil // the tunnel is closing
					}
				case <-giveUp:
					t.Fatal("a tunnel whose write stalled was not closed")
				}
			}
		})
	}
}

// BenchmarkEcho is a 128-byte round trip through a tunnel to an echoing
// peer, as a WebSocket message and its echo.
func BenchmarkEcho(b *testing.B) {
	var r Registry
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	dial := func() (*net.TCPConn, *net.TCPConn) {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			b.Fatal(err)
		}
		s, err := ln.Accept()
		if err != nil {
			b.Fatal(err)
		}
		return c.(*net.TCPConn), s.(*net.TCPConn)
	}
	client, proxyA := dial()
	proxyB, backend := dial()
	defer client.Close()
	go io.Copy(backend, backend)
	r.Start(proxyA, proxyB, Options{Timeout: time.Hour}, func(int64, int64, End) { backend.Close() })
	msg, buf := make([]byte, 128), make([]byte, 128)
	b.SetBytes(int64(len(msg)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := client.Write(msg); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(client, buf); err != nil {
			b.Fatal(err)
		}
	}
	r.CloseAll()
}

// Without HalfClosed, the direction left open after a half-close runs on
// as long as bytes move, under the timeout alone, in both kinds.
func TestHalfClosedUnderTimeout(t *testing.T) {
	t.Parallel()
	// Generous, so that a loaded machine's pauses between the pieces
	// below stay well within it.
	const timeout = time.Second
	for _, k := range kinds {
		t.Run(k.name, func(t *testing.T) {
			t.Parallel()
			var r Registry
			client, backend, done := k.start(t, &r, timeout)
			deadline := time.Now().Add(10 * time.Second)
			client.SetDeadline(deadline)
			backend.SetDeadline(deadline)
			io.WriteString(client, "q")
			client.(interface{ CloseWrite() error }).CloseWrite()
			if got, err := io.ReadAll(backend); err != nil || string(got) != "q" {
				t.Fatalf("backend read %q, %v", got, err)
			}
			// An answer in pieces, over two timeouts.
			tick := time.NewTicker(timeout / 4)
			defer tick.Stop()
			for range 9 {
				<-tick.C
				io.WriteString(backend, "a")
				if _, err := io.ReadFull(client, make([]byte, 1)); err != nil {
					t.Fatalf("half-closed tunnel cut: %v", err)
				}
			}
			select {
			case res := <-done:
				if res.end != Timeout || res.toA != 9 {
					t.Errorf("ended %+v, want Timeout after 9 bytes to the client", res)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("a quiet half-closed tunnel outlived its timeout")
			}
		})
	}
}

// pingBothWays sends a few bytes each way through the tunnel between client
// and backend, and checks they arrive.
func pingBothWays(t *testing.T, client, backend *net.TCPConn) {
	t.Helper()
	client.SetDeadline(time.Now().Add(10 * time.Second))
	backend.SetDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 4)
	for _, dir := range []struct{ from, to *net.TCPConn }{{client, backend}, {backend, client}} {
		if _, err := dir.from.Write([]byte("ping")); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(dir.to, buf); err != nil || string(buf) != "ping" {
			t.Fatalf("read %q, %v", buf, err)
		}
	}
}

// reset closes c with a TCP reset.
func reset(c net.Conn) {
	for {
		if tc, ok := c.(*tls.Conn); ok {
			c = tc.NetConn()
			continue
		}
		break
	}
	c.(*net.TCPConn).SetLinger(0)
	c.Close()
}

// A side that resets its connection has the other side's reset too, so
// that its peer does not take the cut stream for a complete one; both
// ways, in both kinds.
func TestResetPassedOn(t *testing.T) {
	t.Parallel()
	for _, k := range kinds {
		for _, who := range []string{"backend", "client"} {
			t.Run(k.name+"/"+who, func(t *testing.T) {
				t.Parallel()
				var r Registry
				client, backend, done := k.start(t, &r, 0)
				deadline := time.Now().Add(10 * time.Second)
				client.SetDeadline(deadline)
				backend.SetDeadline(deadline)
				// Bytes both ways first, so that the tunnel runs.
				io.WriteString(client, "c")
				io.WriteString(backend, "b")
				if _, err := io.ReadFull(backend, make([]byte, 1)); err != nil {
					t.Fatal(err)
				}
				if _, err := io.ReadFull(client, make([]byte, 1)); err != nil {
					t.Fatal(err)
				}
				resetter, other, want := net.Conn(backend), net.Conn(client), FailedB
				if who == "client" {
					resetter, other, want = client, backend, FailedA
				}
				reset(resetter)
				_, err := io.ReadAll(other)
				if !errors.Is(err, syscall.ECONNRESET) {
					t.Errorf("the other side read to %v, want a reset", err)
				}
				select {
				case res := <-done:
					if res.end != want {
						t.Errorf("ended %v, want %v", res.end, want)
					}
				case <-time.After(10 * time.Second):
					t.Fatal("the tunnel did not end")
				}
			})
		}
	}
}
