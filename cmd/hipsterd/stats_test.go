package main

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"syscall"
	"testing"

	"github.com/hipsterd/hipsterd"
)

// metricsText fetches the stats listener's /metrics at addr.
func metricsText(t *testing.T, addr string) string {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

func TestStatsListenerEndToEnd(t *testing.T) {
	t.Parallel()
	app := backend(t, "app", nil)
	front := freePort(t, "tcp", "127.0.0.1")
	stats1, stats2 := freePort(t, "tcp", "127.0.0.1"), freePort(t, "tcp", "127.0.0.1")
	conf := func(stats string) string {
		return fmt.Sprintf("[global]\nstats = %s\n[frontend web]\nbind = %s\nbackends = app\n[backend app]\nconnect = %s\n", stats, front, app)
	}
	if code, _, stderr := runBinary(t, "-t", "-config", writeConfig(t, conf("localhost"))); code != 1 || !strings.Contains(stderr, "[global] stats:") {
		t.Errorf("-t with stats = localhost: exit %d, %s", code, stderr)
	}

	path := writeConfig(t, conf(stats1))
	p := startHipsterd(t, path, front)
	if code, got := body(t, http.DefaultClient, "http://"+front+"/", ""); code != 200 || !strings.HasPrefix(got, "app") {
		t.Fatalf("GET through hipsterd: %d %q", code, got)
	}
	m := metricsText(t, stats1)
	for _, want := range []string{
		`hipsterd_requests_total{backend="app",code="200",frontend="web"} 1`,
		`hipsterd_backend_up{backend="app"} 1`,
		`hipsterd_config_generation 1`,
	} {
		if !strings.Contains(m, want+"\n") {
			t.Errorf("/metrics lacks %s", want)
		}
	}

	if want := `hipsterd_build_info{version="` + hipsterd.Version + ` (`; !strings.Contains(m, want) {
		t.Errorf("/metrics lacks %s…", want)
	}

	// A configuration that does not load is a failed reload, counted.
	p.reload(t, path, conf("nowhere"), "reload failed", 1)
	if m := metricsText(t, stats1); !strings.Contains(m, `hipsterd_reloads_total{result="failed"} 1`+"\n") {
		t.Errorf("the failed reload is not counted:\n%s", m)
	}
	// Moved, the listener follows; the count goes on.
	p.reload(t, path, conf(stats2), "reloaded", 1)
	if c, err := net.Dial("tcp", stats1); err == nil {
		c.Close()
		t.Errorf("the old stats address %s still accepts", stats1)
	}
	m = metricsText(t, stats2)
	for _, want := range []string{
		`hipsterd_requests_total{backend="app",code="200",frontend="web"} 1`,
		`hipsterd_reloads_total{result="ok"} 1`,
		`hipsterd_config_generation 2`,
	} {
		if !strings.Contains(m, want+"\n") {
			t.Errorf("after the move, /metrics lacks %s", want)
		}
	}
	p.signal(t, syscall.SIGTERM)
	if code := p.wait(t); code != 0 {
		t.Errorf("exit %d", code)
	}
}
