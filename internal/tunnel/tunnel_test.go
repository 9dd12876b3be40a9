package tunnel

import (
	"io"
	"net"
	"testing"
	"time"
)

// pair returns the two ends of a loopback TCP connection.
func pair(t *testing.T) (*net.TCPConn, *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	s, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(); s.Close() })
	return c.(*net.TCPConn), s.(*net.TCPConn)
}

func TestHalfClose(t *testing.T) {
	t.Parallel()
	client, proxyA := pair(t)
	proxyB, backend := pair(t)
	var r Registry
	type result struct{ toA, toB int64 }
	done := make(chan result, 1)
	go func() {
		a, b := r.Splice(proxyA, proxyB)
		done <- result{a, b}
	}()
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
		if res.toA != 8 || res.toB != 7 {
			t.Errorf("counted %+v, want 8 to the client and 7 to the backend", res)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Splice did not return")
	}
	if r.Len() != 0 {
		t.Errorf("registry still holds %d tunnels", r.Len())
	}
}

func TestHalfCloseTimeoutAndCloseAll(t *testing.T) {
	t.Parallel()
	client, proxyA := pair(t)
	proxyB, backend := pair(t)
	r := Registry{HalfCloseTimeout: 50 * time.Millisecond}
	done := make(chan struct{})
	go func() {
		r.Splice(proxyA, proxyB)
		close(done)
	}()
	// The backend leaves; the client says nothing: the tunnel ends anyway.
	backend.Close()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("a half-closed tunnel outlived its timeout")
	}
	client.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := client.Read(make([]byte, 1)); err == nil {
		t.Error("client connection still open")
	}

	client2, proxyA2 := pair(t)
	proxyB2, _ := pair(t)
	done2 := make(chan struct{})
	go func() {
		r.Splice(proxyA2, proxyB2)
		close(done2)
	}()
	for deadline := time.Now().Add(10 * time.Second); r.Len() == 0; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the tunnel never registered")
		}
	}
	r.CloseAll()
	select {
	case <-done2:
	case <-time.After(10 * time.Second):
		t.Fatal("CloseAll did not end the tunnel")
	}
	client2.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := client2.Read(make([]byte, 1)); err == nil {
		t.Error("client connection still open after CloseAll")
	}
}
