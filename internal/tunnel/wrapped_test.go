package tunnel

import (
	"errors"
	"io"
	"net"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hipsterd/hipsterd/internal/testutil"
)

// closeCounter is a connection that counts its closes, as the server's
// connections counted against max-connections do, and offers its socket
// with TCP().
type closeCounter struct {
	*net.TCPConn
	closes *atomic.Int32
}

func (c closeCounter) Close() error {
	c.closes.Add(1)
	return c.TCPConn.Close()
}

func (c closeCounter) TCP() *net.TCPConn { return c.TCPConn }

// A wrapped connection runs on the reactor all the same, and the tunnel
// closes it through the wrapper, so that its slot is given back.
func TestWrappedConnUsesReactorAndItsClose(t *testing.T) {
	t.Parallel()
	if runtime.GOOS != "linux" {
		t.Skip("the reactor is Linux's")
	}
	var r Registry
	client, proxyA := testutil.Pair(t)
	proxyB, backend := testutil.Pair(t)
	var closes atomic.Int32
	done := make(chan struct{})
	r.Start(closeCounter{proxyA, &closes}, proxyB, Options{}, func(int64, int64, End) { close(done) })
	r.mu.Lock()
	var onReactor bool
	for tn := range r.open {
		onReactor = tn.sides != nil
	}
	r.mu.Unlock()
	if !onReactor {
		t.Error("a wrapper offering TCP() runs on goroutines, not on the reactor")
	}

	client.SetDeadline(time.Now().Add(10 * time.Second))
	backend.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := client.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4)
	if _, err := io.ReadFull(backend, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("backend read %q, %v", buf, err)
	}
	client.Close()
	backend.Close()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("the tunnel did not end")
	}
	if n := closes.Load(); n == 0 {
		t.Error("the tunnel never closed the wrapper")
	}
}

// A tunnel on the reactor takes its sockets out of Go's poller: the
// connections it was given are closed at once (their descriptors, each
// 512 bytes of the runtime's besides the net.TCPConn, go), bare ones are
// not kept, and bytes still flow both ways through the sockets.
func TestReactorTunnelLeavesPoller(t *testing.T) {
	t.Parallel()
	if runtime.GOOS != "linux" {
		t.Skip("the reactor is Linux's")
	}
	var r Registry
	client, proxyA := testutil.Pair(t)
	proxyB, backend := testutil.Pair(t)
	done := make(chan End, 1)
	r.Start(proxyA, proxyB, Options{}, func(_, _ int64, end End) { done <- end })
	r.mu.Lock()
	for tn := range r.open {
		if tn.sides == nil || tn.a != nil || tn.b != nil {
			t.Errorf("the tunnel keeps its connections (%v, %v) or runs on goroutines", tn.a, tn.b)
		}
	}
	r.mu.Unlock()
	for _, c := range []*net.TCPConn{proxyA, proxyB} {
		if _, err := c.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
			t.Errorf("a connection handed to the tunnel still writes (%v)", err)
		}
	}

	pingBothWays(t, client, backend)
	client.Close()
	backend.Close()
	select {
	case end := <-done:
		if end != Done {
			t.Errorf("ended %v, want Done", end)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the tunnel did not end")
	}
}

// A worker waiting for a peer that takes nothing (no timeout) waits in Go's
// poller, holding no thread, and the tunnel's close ends the wait: the
// tunnel reports, and the peer's connection closes.
func TestCloseEndsStalledWrite(t *testing.T) {
	t.Parallel()
	var r Registry
	client, backend, done := tunnelFor(t, &r, 0)
	client.SetDeadline(time.Now().Add(10 * time.Second))
	// The backend reads nothing: the client's bulk fills the sockets'
	// buffers, and the worker copying it waits.
	wrote := make(chan int64, 1)
	go func() {
		n, _ := client.Write(make([]byte, 64<<20))
		wrote <- int64(n)
	}()
	var waiting *side
	testutil.Eventually(t, "the worker to wait for the backend", func() bool {
		r.mu.Lock()
		defer r.mu.Unlock()
		for tn := range r.open {
			if tn.sides != nil && tn.sides.ab.wait.Load() != nil {
				waiting = &tn.sides.ab
			}
		}
		return waiting != nil
	})
	r.CloseAll()
	select {
	case res := <-done:
		if res.end != Closed || res.toB == 0 {
			t.Errorf("counted %+v, want bytes to the backend, Closed", res)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the tunnel did not end")
	}
	// Before the backend reads again, which would end the wait anyway.
	testutil.Eventually(t, "the worker's wait to end", func() bool { return waiting.wait.Load() == nil })
	backend.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.Copy(io.Discard, backend); err != nil {
		t.Errorf("the backend's connection ended with %v, want its end", err)
	}
	<-wrote
}
