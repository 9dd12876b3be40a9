package main

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/hipsterd/hipsterd/internal/testpeer"
)

func TestMedian(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		in   []float64
		want float64
	}{
		{"none", nil, 0},
		{"one", []float64{3}, 3},
		{"odd", []float64{5, 1, 3}, 3},
		{"even", []float64{4, 1, 3, 2}, 2.5},
	} {
		if got := median(tc.in); got != tc.want {
			t.Errorf("%s: median(%v) = %v, want %v", tc.name, tc.in, got, tc.want)
		}
	}
}

func TestProcReaders(t *testing.T) {
	t.Parallel()
	pid := os.Getpid()
	if rss := rssKiB(pid); rss <= 0 {
		t.Errorf("rssKiB(self) = %d, want > 0", rss)
	}
	if n := fdCount(pid); n < 3 {
		t.Errorf("fdCount(self) = %d, want at least stdin, stdout, stderr", n)
	}
	// Spin until the kernel has charged a tick to this process.
	deadline := time.Now().Add(5 * time.Second)
	for cpuTicks(pid) == 0 && time.Now().Before(deadline) {
	}
	if cpuTicks(pid) == 0 {
		t.Error("cpuTicks(self) stayed 0 through 5 s of spinning")
	}
}

// TestEchoCheckIdle runs the echo backend's handler, and the check and the
// idle scenario straight against it (no proxy: the RSS read is this test's).
func TestEchoCheckIdle(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go echoConn(c.(*net.TCPConn))
		}
	}()
	addr := ln.Addr().String()
	if err := check(addr); err != nil {
		t.Fatalf("check: %v", err)
	}
	res, err := stream(addr, os.Getpid(), 2, 0, 100*time.Millisecond)
	if err != nil {
		t.Fatalf("stream: %v", err)
	}
	if res.mbps <= 0 {
		t.Errorf("stream: %v MB/s", res.mbps)
	}
	ir, err := idle(addr, os.Getpid(), 20, 1)
	if err != nil {
		t.Fatalf("idle: %v", err)
	}
	if ir.open != 20 || ir.verified != 20 {
		t.Errorf("idle: %d open, %d verified, want 20 and 20 (first error: %v)", ir.open, ir.verified, ir.firstErr)
	}
}

func TestHAProxyConfigAccepted(t *testing.T) {
	t.Parallel()
	bin, err := exec.LookPath("haproxy")
	if err != nil {
		testpeer.Missing(t, "haproxy is not installed (apt-get install haproxy)")
	}
	for _, splice := range []bool{false, true} {
		cfg := filepath.Join(t.TempDir(), "haproxy.cfg")
		o := options{idle: 100, conns: 2, haproxySplice: splice}
		if err := os.WriteFile(cfg, []byte(haproxyConfig("127.0.0.1:1", "127.0.0.1:2", o)), 0o644); err != nil {
			t.Fatal(err)
		}
		if out, err := exec.Command(bin, "-c", "-f", cfg).CombinedOutput(); err != nil {
			t.Errorf("splice %v: haproxy -c: %v\n%s", splice, err, out)
		}
	}
}
