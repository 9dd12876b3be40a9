package server

import (
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/hipsterd/hipsterd/internal/config"
	"github.com/hipsterd/hipsterd/internal/stats"
	"github.com/hipsterd/hipsterd/internal/testcert"
	"github.com/hipsterd/hipsterd/internal/testutil"
)

// scrape fetches /metrics from the stats listener of s and parses it with
// Prometheus's own text parser.
func scrape(t *testing.T, s *Server) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := http.Get("http://" + statsAddr(t, s) + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain; version=0.0.4") {
		t.Errorf("/metrics Content-Type = %q", ct)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("Prometheus's parser rejects /metrics: %v", err)
	}
	return fams
}

func statsAddr(t *testing.T, s *Server) string {
	t.Helper()
	a := s.StatsAddr()
	if a == nil {
		t.Fatal("no stats listener")
	}
	return a.String()
}

// series returns the values of family name by their labels, written
// "k=v,k=v" in the order of the labels' names; a histogram's value is its
// count.
func series(fams map[string]*dto.MetricFamily, name string) map[string]float64 {
	out := map[string]float64{}
	f := fams[name]
	if f == nil {
		return out
	}
	for _, m := range f.Metric {
		var labels []string
		for _, l := range m.Label {
			labels = append(labels, l.GetName()+"="+l.GetValue())
		}
		sort.Strings(labels)
		var v float64
		switch {
		case m.Counter != nil:
			v = m.Counter.GetValue()
		case m.Gauge != nil:
			v = m.Gauge.GetValue()
		case m.Histogram != nil:
			v = float64(m.Histogram.GetSampleCount())
		}
		out[strings.Join(labels, ",")] = v
	}
	return out
}

// wantSeries compares the whole family name with want.
func wantSeries(t *testing.T, fams map[string]*dto.MetricFamily, name string, want map[string]float64) {
	t.Helper()
	got := series(fams, name)
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("%s:\n got %v\nwant %v", name, got, want)
	}
}

// refusingAddr is an address on which nothing listens.
func refusingAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

func TestMetricsCountExactly(t *testing.T) {
	t.Parallel()
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		if r.URL.Path == "/missing" {
			http.NotFound(w, r)
			return
		}
		io.WriteString(w, "app")
	}))
	t.Cleanup(app.Close)
	echo, _ := echoServer(t)
	// With the access log around the counting, both see every request.
	logPath := filepath.Join(t.TempDir(), "access.log")
	s, addrs := start(t, fmt.Sprintf(`
[global]
stats = 127.0.0.1:0
accesslog = %s
accesslog-format = json

[frontend web]
bind = 127.0.0.1:0
hosts = app.test dead.test ws.test

[host app.test]
backends = app
[host dead.test]
backends = dead
[host ws.test]
backends = echo

[backend app]
connect = %s
[backend dead]
connect = %s
[backend echo]
connect = %s
`, logPath, app.Listener.Addr(), refusingAddr(t), echo))
	web := "http://" + addrs["web"]
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	do := func(method, host, path, body string, want int) {
		t.Helper()
		req, _ := http.NewRequest(method, web+path, strings.NewReader(body))
		req.Host = host
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Fatalf("%s %s%s: %d, want %d", method, host, path, resp.StatusCode, want)
		}
	}
	for range 3 {
		do("GET", "app.test", "/", "", 200)
	}
	do("POST", "app.test", "/", "hello", 200)
	do("GET", "app.test", "/missing", "", 404)
	do("GET", "app.test", "/missing", "", 404)
	do("GET", "dead.test", "/", "", 502)
	do("GET", "dead.test", "/", "", 502)
	do("GET", "nopool.test", "/", "", 503)

	fams := scrape(t, s)
	codes := map[string]float64{
		"backend=app,code=200,frontend=web":  4,
		"backend=app,code=404,frontend=web":  2,
		"backend=dead,code=502,frontend=web": 2,
		"backend=-,code=503,frontend=web":    1,
	}
	wantSeries(t, fams, "hipsterd_requests_total", codes)
	wantSeries(t, fams, "hipsterd_request_duration_seconds", map[string]float64{
		"backend=-,frontend=web": 1, "backend=app,frontend=web": 6, "backend=dead,frontend=web": 2, "backend=echo,frontend=web": 0,
	})
	wantSeries(t, fams, "hipsterd_backend_header_duration_seconds", map[string]float64{
		"backend=app,frontend=web": 6, "backend=dead,frontend=web": 0, "backend=echo,frontend=web": 0,
	})
	wantSeries(t, fams, "hipsterd_backend_up", map[string]float64{"backend=app": 1, "backend=dead": 1, "backend=echo": 1})
	wantSeries(t, fams, "hipsterd_backend_connect_failures_total", map[string]float64{"backend=app": 0, "backend=dead": 2, "backend=echo": 0})
	wantSeries(t, fams, "hipsterd_backend_retries_total", map[string]float64{"backend=app": 0, "backend=dead": 0, "backend=echo": 0})
	wantSeries(t, fams, "hipsterd_connections_total", map[string]float64{"frontend=web": 9})
	wantSeries(t, fams, "hipsterd_requests_in_flight", map[string]float64{"frontend=web": 0})
	// Bodies: "app" 4 times, "404 page not found\n" twice, "Bad
	// Gateway\n" twice and the 503's words with a newline.
	sent := 4*len("app") + 2*len("404 page not found\n") + 2*len("Bad Gateway\n") + len("no suitable backend found for request\n")
	wantSeries(t, fams, "hipsterd_sent_bytes_total", map[string]float64{"frontend=web": float64(sent)})
	wantSeries(t, fams, "hipsterd_received_bytes_total", map[string]float64{"frontend=web": 5})
	wantSeries(t, fams, "hipsterd_config_generation", map[string]float64{"": 1})
	wantSeries(t, fams, "hipsterd_reloads_total", map[string]float64{"result=failed": 0, "result=ok": 0})
	for _, name := range []string{"go_goroutines", "process_open_fds", "hipsterd_build_info"} {
		if fams[name] == nil {
			t.Errorf("no %s", name)
		}
	}

	// A WebSocket is a 101 of its backend, and a tunnel while it is open.
	c, _, err := websocket.DefaultDialer.Dial("ws://"+addrs["web"]+"/echo", http.Header{"Host": {"ws.test"}})
	if err != nil {
		t.Fatal(err)
	}
	fams = scrape(t, s)
	codes["backend=echo,code=101,frontend=web"] = 1
	wantSeries(t, fams, "hipsterd_requests_total", codes)
	wantSeries(t, fams, "hipsterd_tunnels_open", map[string]float64{"backend=app,frontend=web": 0, "backend=dead,frontend=web": 0, "backend=echo,frontend=web": 1})
	wantSeries(t, fams, "hipsterd_connections_open", map[string]float64{"frontend=web": 1}) // the WebSocket's
	c.Close()
	testutil.Eventually(t, "the tunnel to be counted closed", func() bool {
		return series(scrape(t, s), "hipsterd_tunnels_open")["backend=echo,frontend=web"] == 0
	})
	lines := readLog(t, logPath, 10)
	if last := lines[9]; !strings.Contains(last, `"status":101`) || !strings.Contains(last, `"backend":"echo"`) {
		t.Errorf("the WebSocket's access log line: %s", last)
	}

	// A reload that keeps the frontend and its backends keeps their
	// counts; a backend taken out of it leaves the metrics.
	cfg, err := config.Parse("test.ini", []byte(fmt.Sprintf(`
[global]
stats = 127.0.0.1:0
[frontend web]
bind = 127.0.0.1:0
hosts = app.test
[host app.test]
backends = app
[backend app]
connect = %s
response-timeout = 5s
`, app.Listener.Addr())))
	if err != nil {
		t.Fatal(err)
	}
	before := statsAddr(t, s)
	if err := s.Reload(cfg); err != nil {
		t.Fatal(err)
	}
	if after := statsAddr(t, s); after != before {
		t.Errorf("the stats listener moved from %s to %s though its address stayed", before, after)
	}
	fams = scrape(t, s)
	wantSeries(t, fams, "hipsterd_requests_total", map[string]float64{
		"backend=app,code=200,frontend=web": 4, "backend=app,code=404,frontend=web": 2, "backend=-,code=503,frontend=web": 1,
	})
	wantSeries(t, fams, "hipsterd_backend_up", map[string]float64{"backend=app": 1})
	wantSeries(t, fams, "hipsterd_config_generation", map[string]float64{"": 2})
	wantSeries(t, fams, "hipsterd_reloads_total", map[string]float64{"result=failed": 0, "result=ok": 1})
}

func TestFailingChecksShowDown(t *testing.T) {
	t.Parallel()
	sick := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "not well", http.StatusInternalServerError)
	}))
	t.Cleanup(sick.Close)
	s, _ := start(t, fmt.Sprintf(`
[global]
stats = 127.0.0.1:0
[frontend web]
bind = 127.0.0.1:0
backends = sick ok
[backend sick]
connect = %s
health-check = /health
health-interval = 20ms
health-fall = 2
[backend ok]
connect = %s
`, sick.Listener.Addr(), namedBackend(t, "ok")))
	testutil.Eventually(t, "hipsterd_backend_up 0 for the failing backend", func() bool {
		return series(scrape(t, s), "hipsterd_backend_up")["backend=sick"] == 0
	})
	fams := scrape(t, s)
	if got := series(fams, "hipsterd_backend_up"); len(got) != 2 || got["backend=ok"] != 1 {
		t.Errorf("hipsterd_backend_up = %v, want one series per backend, ok up", got)
	}
	if n := series(fams, "hipsterd_backend_checks_total")["backend=sick,result=failed"]; n < 2 {
		t.Errorf("failed checks = %v, want 2 or more", n)
	}
	if _, ok := series(fams, "hipsterd_backend_checks_total")["backend=ok,result=passed"]; ok {
		t.Errorf("checks counted for a backend without checks")
	}

	resp, err := http.Get("http://" + statsAddr(t, s) + "/status.json")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var st stats.Status
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		t.Fatal(err)
	}
	if len(st.Frontends) != 1 || len(st.Frontends[0].Backends) != 2 {
		t.Fatalf("status.json: %+v", st)
	}
	b := st.Frontends[0].Backends[0]
	if b.Name != "sick" || b.State != "DOWN" || !strings.Contains(b.LastCheck, "500") {
		t.Errorf("status.json shows %+v, want sick DOWN with its check's 500", b)
	}
	if b := st.Frontends[0].Backends[1]; b.State != "UP" || len(b.Pools) != 1 || b.Pools[0] != "backends" {
		t.Errorf("status.json shows %+v, want UP in the pool of backends", b)
	}
	if total := st.Frontends[0].BackendsTotal; total.Up != 1 || total.Count != 2 {
		t.Errorf("status.json's backends_total: %+v, want 1 of 2 up", total)
	}
}

func TestStatsListenerFollowsReloads(t *testing.T) {
	t.Parallel()
	backend := namedBackend(t, "app")
	conf := func(stats string) *config.Config {
		t.Helper()
		cfg, err := config.Parse("test.ini", []byte(fmt.Sprintf("[global]\n%s\n[frontend web]\nbind = 127.0.0.1:0\nbackends = app\n[backend app]\nconnect = %s\n", stats, backend)))
		if err != nil {
			t.Fatal(err)
		}
		return cfg
	}
	s, _ := start(t, fmt.Sprintf("[frontend web]\nbind = 127.0.0.1:0\nbackends = app\n[backend app]\nconnect = %s\n", backend))
	if s.StatsAddr() != nil {
		t.Fatal("a stats listener without [global] stats")
	}
	if err := s.Reload(conf("stats = 127.0.0.1:0")); err != nil {
		t.Fatal(err)
	}
	first := statsAddr(t, s)
	if code, body := get(t, "http://"+first+"/healthz", ""); code != 200 || body != "ok\n" {
		t.Errorf("/healthz: %d %q", code, body)
	}

	// An address taken by another socket fails the reload, and the
	// listener stays.
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	err = s.Reload(conf("stats = " + taken.Addr().String()))
	if err == nil || !strings.Contains(err.Error(), "[global] stats: cannot listen on "+taken.Addr().String()) {
		t.Errorf("reload onto a taken address: %v", err)
	}
	if got := statsAddr(t, s); got != first {
		t.Errorf("after a failed reload the stats listener is on %s, want %s", got, first)
	}

	// Removed, it closes.
	if err := s.Reload(conf("")); err != nil {
		t.Fatal(err)
	}
	if s.StatsAddr() != nil {
		t.Error("the stats listener outlived its key")
	}
	if c, err := net.Dial("tcp", first); err == nil {
		c.Close()
		t.Errorf("%s still accepts after stats was removed", first)
	}
	fams := func() map[string]*dto.MetricFamily {
		if err := s.Reload(conf("stats = 127.0.0.1:0")); err != nil {
			t.Fatal(err)
		}
		return scrape(t, s)
	}()
	wantSeries(t, fams, "hipsterd_reloads_total", map[string]float64{"result=failed": 1, "result=ok": 3})
}

func TestHealthzDuringShutdown(t *testing.T) {
	t.Parallel()
	arrived, release := make(chan struct{}), make(chan struct{})
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(arrived)
		<-release
		io.WriteString(w, "late")
	}))
	t.Cleanup(slow.Close)
	s, addrs := start(t, fmt.Sprintf("[global]\nstats = 127.0.0.1:0\n[frontend web]\nbind = 127.0.0.1:0\nbackends = slow\n[backend slow]\nconnect = %s\n", slow.Listener.Addr()))
	healthz := "http://" + statsAddr(t, s) + "/healthz"
	if code, body := get(t, healthz, ""); code != 200 || body != "ok\n" {
		t.Fatalf("/healthz while serving: %d %q", code, body)
	}
	answered := make(chan int)
	go func() {
		resp, err := http.Get("http://" + addrs["web"] + "/")
		if err != nil {
			answered <- 0
			return
		}
		resp.Body.Close()
		answered <- resp.StatusCode
	}()
	<-arrived
	stopped := make(chan struct{})
	go func() {
		s.Shutdown(t.Context())
		close(stopped)
	}()
	testutil.Eventually(t, "/healthz to answer 503 while the last request finishes", func() bool {
		resp, err := http.Get(healthz)
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusServiceUnavailable
	})
	close(release)
	if code := <-answered; code != 200 {
		t.Errorf("the request in flight got %d", code)
	}
	<-stopped
	if s.StatsAddr() != nil {
		t.Error("the stats listener outlived shutdown")
	}
}

func TestTCPFrontendMetrics(t *testing.T) {
	t.Parallel()
	backendAddr := testutil.RawServer(t, func(c net.Conn) {
		io.Copy(c, c)
	})
	s, addrs := start(t, fmt.Sprintf("[global]\nstats = 127.0.0.1:0\nmax-connections = 100\n[frontend raw]\nbind = 127.0.0.1:0\nmode = tcp\nmax-connections = 10\nbackends = echo\n[backend echo]\nconnect = %s\n", backendAddr))
	c, err := net.Dial("tcp", addrs["raw"])
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(c, "hello")
	if _, err := io.ReadFull(c, make([]byte, 5)); err != nil {
		t.Fatal(err)
	}
	fams := scrape(t, s)
	wantSeries(t, fams, "hipsterd_tunnels_open", map[string]float64{"backend=echo,frontend=raw": 1})
	wantSeries(t, fams, "hipsterd_connections_open", map[string]float64{"frontend=raw": 1})
	wantSeries(t, fams, "hipsterd_connections_total", map[string]float64{"frontend=raw": 1})
	wantSeries(t, fams, "hipsterd_connections_max", map[string]float64{"frontend=raw": 10})
	wantSeries(t, fams, "hipsterd_global_connections_max", map[string]float64{"": 100})
	wantSeries(t, fams, "hipsterd_global_connections_open", map[string]float64{"": 1})
	c.Close()
	testutil.Eventually(t, "the connection to be counted closed", func() bool {
		return series(scrape(t, s), "hipsterd_connections_open")["frontend=raw"] == 0
	})
	fams = scrape(t, s)
	wantSeries(t, fams, "hipsterd_tunnels_open", map[string]float64{"backend=echo,frontend=raw": 0})
	wantSeries(t, fams, "hipsterd_received_bytes_total", map[string]float64{"frontend=raw": 5})
	wantSeries(t, fams, "hipsterd_sent_bytes_total", map[string]float64{"frontend=raw": 5})
	wantSeries(t, fams, "hipsterd_requests_total", map[string]float64{})
}

func TestRetriesAndCertificateExpiry(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	notAfter := time.Now().Add(10 * 24 * time.Hour).Truncate(time.Second)
	cert, key := testcert.Make(t, dir, testcert.Options{Names: []string{"web.test", "www.web.test"}, NotAfter: notAfter})
	apiCert, apiKey := testcert.Make(t, filepath.Join(dir, "api"), testcert.Options{Names: []string{"api.test"}})
	s, addrs := start(t, fmt.Sprintf(`
[global]
stats = 127.0.0.1:0
[frontend web]
bind = 127.0.0.1:0
https = true
certfile = %s
keyfile = %s
hosts = api.test
backends = dead app
[host api.test]
backends = app
certfile = %s
keyfile = %s
[backend dead]
connect = %s
[backend app]
connect = %s
`, cert, key, apiCert, apiKey, refusingAddr(t), namedBackend(t, "app")))
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	// Every pick moves round-robin on by one, the retry's too: each
	// request tries dead first, whose refused connect sends it on to app.
	for range 2 {
		resp, err := client.Get("https://" + addrs["web"] + "/")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("status %d", resp.StatusCode)
		}
	}
	fams := scrape(t, s)
	wantSeries(t, fams, "hipsterd_requests_total", map[string]float64{"backend=app,code=200,frontend=web": 2})
	wantSeries(t, fams, "hipsterd_backend_connect_failures_total", map[string]float64{"backend=app": 0, "backend=dead": 2})
	wantSeries(t, fams, "hipsterd_backend_retries_total", map[string]float64{"backend=app": 0, "backend=dead": 2})
	expiry := series(fams, "hipsterd_certificate_expiry_seconds")
	if len(expiry) != 2 {
		t.Fatalf("certificate expiry series: %v, want web.test's and api.test's", expiry)
	}
	if left := time.Until(notAfter).Seconds(); expiry["frontend=web,name=web.test"] > left+1 || expiry["frontend=web,name=web.test"] < left-60 {
		t.Errorf("web.test expires in %v s, want about %v", expiry["frontend=web,name=web.test"], left)
	}
	if _, ok := expiry["frontend=web,name=api.test"]; !ok {
		t.Errorf("no expiry for the [host] section's certificate: %v", expiry)
	}
}

func TestQueuedRequestsShown(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		<-release
		io.WriteString(w, "done")
	}))
	t.Cleanup(slow.Close)
	s, addrs := start(t, fmt.Sprintf("[global]\nstats = 127.0.0.1:0\n[frontend web]\nbind = 127.0.0.1:0\nbackends = slow\n[backend slow]\nconnect = %s\nmax-connections = 1\nqueue-timeout = 10s\n", slow.Listener.Addr()))
	done := make(chan int, 2)
	for range 2 {
		go func() {
			resp, err := http.Get("http://" + addrs["web"] + "/")
			if err != nil {
				done <- 0
				return
			}
			resp.Body.Close()
			done <- resp.StatusCode
		}()
	}
	testutil.Eventually(t, "one request in flight and one queued", func() bool {
		fams := scrape(t, s)
		return series(fams, "hipsterd_backend_in_flight")["backend=slow"] == 1 && series(fams, "hipsterd_backend_queued")["backend=slow"] == 1
	})
	if got := series(scrape(t, s), "hipsterd_requests_in_flight")["frontend=web"]; got != 2 {
		t.Errorf("requests in flight at the frontend: %v, want 2", got)
	}
	close(release)
	for range 2 {
		if code := <-done; code != 200 {
			t.Errorf("status %d", code)
		}
	}
	wantSeries(t, scrape(t, s), "hipsterd_backend_queued", map[string]float64{"backend=slow": 0})
}
