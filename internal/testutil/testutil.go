// Package testutil holds what the tests of several packages need: loopback
// TCP servers and connections, and polling a condition with a deadline
// (instead of sleeping). Certificates are package testcert's.
package testutil

import (
	"bytes"
	"fmt"
	"net"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Listen returns a loopback TCP listener on a free port, closed when the
// test ends.
func Listen(t testing.TB) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

// Serve accepts connections on ln until it is closed, and serves each with
// serve on a goroutine of its own; serve owns the connection. It returns
// ln's address.
func Serve(ln net.Listener, serve func(c net.Conn)) string {
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go serve(c)
		}
	}()
	return ln.Addr().String()
}

// RawServer is a raw TCP server on loopback that serves each connection
// with serve on a goroutine of its own, then closes it. It returns its
// address; it stops when the test ends.
func RawServer(t testing.TB, serve func(c net.Conn)) string {
	t.Helper()
	return Serve(Listen(t), func(c net.Conn) {
		defer c.Close()
		serve(c)
	})
}

// Pair returns the two ends of a loopback TCP connection, the client's and
// the server's, closed when the test ends.
func Pair(t testing.TB) (client, server *net.TCPConn) {
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
		c.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(); s.Close() })
	return c.(*net.TCPConn), s.(*net.TCPConn)
}

// Patience is how long Eventually waits: long enough for a loaded machine
// running the race detector.
const Patience = 10 * time.Second

// Eventually polls cond until it holds, and fails the test, naming what it
// waited for, if it does not within Patience.
func Eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(Patience)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Buffer collects what is written to it (a logger's lines, a process's
// output), safe to read while it is written.
type Buffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *Buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// RefusingAddr returns a loopback address that refuses connections for as
// long as t runs: a socket bound to it that never listens holds the port, so
// no other listener of the suite, in this process or another, can take it
// (a port merely closed again may go to the next bind on port 0).
func RefusingAddr(t testing.TB) string {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("127.0.0.1:%d", sa.(*syscall.SockaddrInet4).Port)
}
