package tunnel

import (
	"errors"
	"io"
	"os"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/hipsterd/hipsterd/internal/testutil"
)

// These tests change the process's descriptor limit: they are not parallel,
// so they run alone (parallel tests wait for the sequential ones).

// openFDs counts the process's open descriptors.
func openFDs(t *testing.T) int {
	t.Helper()
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skip("no /proc/self/fd")
	}
	return len(fds)
}

// atFDLimit lowers the process's descriptor limit just above the highest
// descriptor open and fills what is left below it, but for free; it returns
// what gives the filler back. The limit is restored at the test's end.
func atFDLimit(t *testing.T, free int) (release func()) {
	t.Helper()
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skip("no /proc/self/fd")
	}
	highest := 0
	for _, e := range fds {
		if n, err := strconv.Atoi(e.Name()); err == nil {
			highest = max(highest, n)
		}
	}
	var old syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &old); err != nil {
		t.Fatal(err)
	}
	low := old
	low.Cur = uint64(highest + 64)
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &low); err != nil {
		t.Fatal(err)
	}
	var filler []int
	release = func() {
		for _, fd := range filler {
			syscall.Close(fd)
		}
		filler = nil
	}
	t.Cleanup(func() {
		release()
		syscall.Setrlimit(syscall.RLIMIT_NOFILE, &old)
	})
	for {
		fd, err := syscall.Dup(0)
		if errors.Is(err, syscall.EMFILE) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		filler = append(filler, fd)
	}
	for range free {
		syscall.Close(filler[len(filler)-1])
		filler = filler[:len(filler)-1]
	}
	return release
}

// warmReactors starts the reactors, whose epoll sets stay open, before a
// test counts descriptors.
func warmReactors(t *testing.T) {
	t.Helper()
	var r Registry
	client, backend, done := tunnelFor(t, &r, 0)
	client.Close()
	backend.Close()
	<-done
}

// At the descriptor limit a tunnel that cannot take its second socket out
// of Go's poller runs on goroutines, and the duplicate of its first is
// closed; nothing is left open once the tunnel has ended.
func TestReactorRefusedAtFDLimitLeaksNothing(t *testing.T) {
	warmReactors(t)
	before := openFDs(t)
	var r Registry
	client, proxyA := testutil.Pair(t)
	proxyB, backend := testutil.Pair(t)
	done := make(chan End, 1)
	release := atFDLimit(t, 1)
	r.Start(proxyA, proxyB, Options{}, func(_, _ int64, end End) { done <- end })
	release()
	r.mu.Lock()
	for tn := range r.open {
		if tn.sides != nil {
			t.Error("the tunnel runs on the reactor with one descriptor to spare")
		}
	}
	r.mu.Unlock()

	pingBothWays(t, client, backend)
	client.Close()
	backend.Close()
	if end := <-done; end != Done {
		t.Errorf("ended %v, want Done", end)
	}
	testutil.Eventually(t, "the tunnel's descriptors to close", func() bool { return openFDs(t) <= before })
}

// At the descriptor limit, a reactor tunnel's bulk data to a slow reader
// still goes through whole: without a pipe for splice(2) or a duplicate to
// wait on in Go's poller, its worker copies through its buffer and waits in
// poll(2). Its descriptors all close when it ends.
func TestReactorBulkAtFDLimit(t *testing.T) {
	warmReactors(t)
	before := openFDs(t)
	var r Registry
	client, backend, done := tunnelFor(t, &r, 10*time.Second)
	release := atFDLimit(t, 0)
	const size = 8 << 20
	wrote := make(chan error, 1)
	go func() {
		_, err := client.Write(make([]byte, size))
		wrote <- err
	}()
	backend.SetDeadline(time.Now().Add(20 * time.Second))
	// Slowly at first, so that the worker waits for the backend.
	got := 0
	buf := make([]byte, 4<<10)
	for range 16 {
		n, err := backend.Read(buf)
		if err != nil {
			t.Fatalf("the backend read %d bytes, then %v", got, err)
		}
		got += n
		time.Sleep(5 * time.Millisecond) // a slow reader, not synchronisation
	}
	n, err := io.CopyN(io.Discard, backend, int64(size-got))
	if err != nil {
		t.Fatalf("the backend read %d bytes of %d, then %v", got+int(n), size, err)
	}
	if err := <-wrote; err != nil {
		t.Fatal(err)
	}
	release()
	client.Close()
	backend.Close()
	if res := <-done; res.end != Done || res.toB != size {
		t.Errorf("counted %+v, want %d bytes to the backend, Done", res, size)
	}
	testutil.Eventually(t, "the tunnel's descriptors to close", func() bool { return openFDs(t) <= before })
}
