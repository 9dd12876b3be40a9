// Command hostile measures what hostile clients cost legitimate ones (issue
// 12): it runs the real hipsterd binary in front of a backend of its own, on
// loopback only, and for each scenario sends legitimate requests at a fixed
// rate while the attackers hold their connections, then prints the
// legitimate requests' success rate and latency, and hipsterd's peak memory
// and file descriptors.
//
// Scenarios (each in a fresh hipsterd, each bounded by -duration):
//
//	baseline    legitimate traffic alone
//	slowheader  -slow-header clients send a header line every 5 s (slowloris)
//	slowbody    -slow-body clients send their body one byte every 5 s
//	stalled     -stalled clients ask for a large response and never read it
//	idle        2 × -max-connections connections that send nothing; skipped
//	            when -max-connections is 0 or hipsterd does not know the key
//	evict       issue 17's eviction scenario: [frontend] max-connections =
//	            -max-connections (50 if 0), 4 × as many attackers that connect,
//	            send nothing and reconnect when closed; legitimate traffic is
//	            10 keep-alive clients each POSTing every 100 ms and a client
//	            of one request every 300 ms, then 20 clients once the
//	            attackers left. Also shows the keep-alive clients' redials
//	            (connections closed under them: want 0).
//
// Usage, from the repository's root:
//
//	make build && go run ./scripts/hostile -hipsterd ./hipsterd -duration 10s -max-connections 1000
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

type options struct {
	binary         string
	duration       time.Duration
	rate           int
	slowHeader     int
	slowBody       int
	stalled        int
	maxConns       int
	clientTimeout  string
	scenarios      []string
	bigSize        int
	attackInterval time.Duration
}

func main() {
	var o options
	var scenarios string
	flag.StringVar(&o.binary, "hipsterd", "./hipsterd", "the hipsterd binary to run")
	flag.DurationVar(&o.duration, "duration", 10*time.Second, "how long legitimate traffic runs in each scenario")
	flag.IntVar(&o.rate, "rate", 200, "legitimate requests per second")
	flag.IntVar(&o.slowHeader, "slow-header", 1000, "slow-header clients (scenario slowheader)")
	flag.IntVar(&o.slowBody, "slow-body", 1000, "slow-body clients (scenario slowbody)")
	flag.IntVar(&o.stalled, "stalled", 200, "clients that stop reading a large response (scenario stalled)")
	flag.IntVar(&o.maxConns, "max-connections", 0, "[global] max-connections to set; scenario idle opens twice as many (0: skip it)")
	flag.StringVar(&o.clientTimeout, "client-timeout", "", "[global] client-timeout to set (default: hipsterd's)")
	flag.IntVar(&o.bigSize, "big", 8<<20, "size in bytes of the large response")
	flag.DurationVar(&o.attackInterval, "attack-interval", 5*time.Second, "how often slow clients send a byte or a header line")
	flag.StringVar(&scenarios, "scenarios", "baseline,slowheader,slowbody,stalled,idle", "scenarios to run, comma-separated")
	flag.Parse()
	o.scenarios = strings.Split(scenarios, ",")

	raiseFileLimit()
	backend, err := startBackend(o.bigSize)
	if err != nil {
		fail(err)
	}
	fmt.Printf("%-11s %9s %9s %9s %9s %9s %8s %10s %6s %s\n", "scenario", "attackers", "requests", "success", "p50", "p99", "p99/base", "peak RSS", "fds", "hipsterd log")
	var base time.Duration
	for _, name := range o.scenarios {
		if name == "evict" {
			if err := runEvict(o, backend); err != nil {
				fmt.Printf("%-11s %s\n", name, err)
			}
			continue
		}
		p99, err := run(o, name, backend, base)
		if err != nil {
			fmt.Printf("%-11s %s\n", name, err)
		}
		if name == "baseline" {
			base = p99
		}
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "hostile:", err)
	os.Exit(1)
}

// raiseFileLimit lets this process hold every attacker's connection and
// the backend's side of theirs.
func raiseFileLimit() {
	var lim syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim) == nil {
		lim.Cur = lim.Max
		syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim)
	}
}

// startBackend serves / (100 bytes), /big (size bytes) and /upload (reads
// the body) on a loopback port.
func startBackend(size int) (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	small := strings.Repeat("x", 100)
	big := make([]byte, size)
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, small) })
	mux.HandleFunc("/big", func(w http.ResponseWriter, r *http.Request) { w.Write(big) })
	mux.HandleFunc("/upload", func(w http.ResponseWriter, r *http.Request) {
		n, _ := io.Copy(io.Discard, r.Body)
		fmt.Fprintf(w, "%d bytes", n)
	})
	go http.Serve(ln, mux)
	return ln.Addr().String(), nil
}

// run runs one scenario in a fresh hipsterd and returns its p99; base is
// the baseline's, 0 when unknown.
func run(o options, name, backend string, base time.Duration) (time.Duration, error) {
	var attack func(addr string, stop <-chan struct{}, held *atomic.Int64)
	attackers, maxConns := 0, 0
	switch name {
	case "baseline":
	case "slowheader":
		attackers = o.slowHeader
		attack = func(addr string, stop <-chan struct{}, held *atomic.Int64) {
			slowClient(addr, "GET / HTTP/1.1\r\nHost: x\r\n", "X-Slow: 1\r\n", o.attackInterval, stop, held)
		}
	case "slowbody":
		attackers = o.slowBody
		attack = func(addr string, stop <-chan struct{}, held *atomic.Int64) {
			slowClient(addr, "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n", "x", o.attackInterval, stop, held)
		}
	case "stalled":
		attackers = o.stalled
		attack = stalledReader
	case "idle":
		if o.maxConns == 0 {
			return 0, errors.New("skipped: -max-connections not given")
		}
		attackers, maxConns = 2*o.maxConns, o.maxConns
		attack = idleClient
	default:
		return 0, fmt.Errorf("unknown scenario")
	}

	h, err := startHipsterd(o, backend, maxConns, 0)
	if err != nil {
		return 0, err
	}
	defer h.stop()
	addr := h.addr

	stop := make(chan struct{})
	var held atomic.Int64
	var wg sync.WaitGroup
	for i := 0; i < attackers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			attack(addr, stop, &held)
		}()
	}
	// The attackers get up to 5 s to connect.
	for deadline := time.Now().Add(5 * time.Second); held.Load() < int64(attackers) && time.Now().Before(deadline); {
		time.Sleep(50 * time.Millisecond)
	}

	peak := &peakSampler{pid: h.cmd.Process.Pid}
	sampling := peak.start()
	res := legitimate(addr, o.rate, o.duration)
	close(sampling)
	close(stop)
	wg.Wait()

	logNote := h.logNote()
	ratio := "-"
	if base > 0 {
		ratio = fmt.Sprintf("%.2f", float64(res.p99)/float64(base))
	}
	fmt.Printf("%-11s %9d %9d %8.2f%% %9s %9s %8s %6.1f MiB %6d %s\n", name, attackers, res.total,
		100*float64(res.ok)/float64(max(res.total, 1)), round(res.p50), round(res.p99), ratio,
		float64(peak.rssKiB.Load())/1024, peak.fds.Load(), logNote)
	return res.p99, nil
}

// hipsterd is a running hipsterd of a scenario.
type hipsterd struct {
	addr    string
	cmd     *exec.Cmd
	dir     string
	logFile *os.File
}

// startHipsterd starts hipsterd in front of backend, with [global]
// max-connections = maxConns and the frontend's = frontendMax, each unless
// 0, and waits until it listens.
func startHipsterd(o options, backend string, maxConns, frontendMax int) (*hipsterd, error) {
	dir, err := os.MkdirTemp("", "hostile")
	if err != nil {
		return nil, err
	}
	h := &hipsterd{dir: dir}
	fail := func(err error) (*hipsterd, error) {
		os.RemoveAll(dir)
		return nil, err
	}
	addr, err := freeAddr()
	if err != nil {
		return fail(err)
	}
	ini := fmt.Sprintf("[backend b]\nconnect = %s\n[frontend f]\nbind = %s\nbackends = b\n", backend, addr)
	global := ""
	if o.clientTimeout != "" {
		global += "client-timeout = " + o.clientTimeout + "\n"
	}
	if maxConns > 0 {
		global += "max-connections = " + strconv.Itoa(maxConns) + "\n"
	}
	if frontendMax > 0 {
		ini += "max-connections = " + strconv.Itoa(frontendMax) + "\n"
	}
	if global != "" {
		ini = "[global]\n" + global + ini
	}
	cfgPath := filepath.Join(dir, "hipsterd.ini")
	if err := os.WriteFile(cfgPath, []byte(ini), 0o644); err != nil {
		return fail(err)
	}
	if out, err := exec.Command(o.binary, "-t", "-config", cfgPath).CombinedOutput(); err != nil {
		if strings.Contains(string(out), "unknown key") {
			return fail(fmt.Errorf("skipped: this hipsterd does not know a key: %s", strings.TrimSpace(string(out))))
		}
		return fail(fmt.Errorf("hipsterd -t: %v: %s", err, out))
	}

	logFile, err := os.Create(filepath.Join(dir, "stderr"))
	if err != nil {
		return fail(err)
	}
	cmd := exec.Command(o.binary, "-config", cfgPath)
	cmd.Stderr = logFile
	if err := cmd.Start(); err != nil {
		return fail(err)
	}
	h.addr, h.cmd, h.logFile = addr, cmd, logFile
	if err := waitListening(addr, 5*time.Second); err != nil {
		h.stop()
		return fail(err)
	}
	return h, nil
}

// stop ends hipsterd and removes its files.
func (h *hipsterd) stop() {
	h.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { h.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		h.cmd.Process.Kill()
		<-done
	}
	h.logFile.Close()
	os.RemoveAll(h.dir)
}

// logNote sums up what hipsterd logged so far.
func (h *hipsterd) logNote() string {
	text, _ := os.ReadFile(h.logFile.Name())
	return fmt.Sprintf("%d errors, %d warnings", strings.Count(string(text), "level=ERROR"), strings.Count(string(text), "level=WARN"))
}

func round(d time.Duration) string { return d.Round(10 * time.Microsecond).String() }

func freeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

func waitListening(addr string, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("hipsterd not listening on %s: %v", addr, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// slowClient sends head, then tick every interval, reconnecting whenever
// hipsterd closes the connection, until stop.
func slowClient(addr, head, tick string, interval time.Duration, stop <-chan struct{}, held *atomic.Int64) {
	for {
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			select {
			case <-stop:
				return
			case <-time.After(time.Second):
				continue
			}
		}
		held.Add(1)
		closed := make(chan struct{})
		go func() {
			// Whatever comes back (a 408, a close) ends the connection.
			io.Copy(io.Discard, c)
			close(closed)
		}()
		_, err = io.WriteString(c, head)
		t := time.NewTicker(interval)
		for err == nil {
			select {
			case <-stop:
				err = net.ErrClosed
			case <-closed:
				err = io.EOF
			case <-t.C:
				_, err = io.WriteString(c, tick)
			}
		}
		t.Stop()
		c.Close()
		<-closed
		held.Add(-1)
		select {
		case <-stop:
			return
		default:
		}
	}
}

// stalledReader asks for the large response, reads its status line, and
// then nothing, until stop.
func stalledReader(addr string, stop <-chan struct{}, held *atomic.Int64) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return
	}
	defer c.Close()
	c.(*net.TCPConn).SetReadBuffer(4096)
	io.WriteString(c, "GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
	bufio.NewReaderSize(c, 16).ReadString('\n')
	held.Add(1)
	<-stop
}

// idleClient connects and sends nothing until stop.
func idleClient(addr string, stop <-chan struct{}, held *atomic.Int64) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return
	}
	defer c.Close()
	held.Add(1)
	<-stop
}

type result struct {
	total, ok int
	p50, p99  time.Duration
}

// legitimate sends GET / at rate requests per second for d, over
// keep-alive connections, each request allowed 5 s.
func legitimate(addr string, rate int, d time.Duration) result {
	client := &http.Client{
		Transport: &http.Transport{MaxIdleConnsPerHost: 64, DisableCompression: true},
		Timeout:   5 * time.Second,
	}
	defer client.CloseIdleConnections()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	var mu sync.Mutex
	var lat []time.Duration
	ok, total := 0, 0
	var wg sync.WaitGroup
	tick := time.NewTicker(time.Second / time.Duration(max(rate, 1)))
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			wg.Wait()
			slices.Sort(lat)
			r := result{total: total, ok: ok}
			if len(lat) > 0 {
				r.p50 = lat[len(lat)/2]
				r.p99 = lat[min(len(lat)-1, len(lat)*99/100)]
			}
			return r
		case <-tick.C:
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			start := time.Now()
			resp, err := client.Get("http://" + addr + "/")
			good := false
			if err == nil {
				_, err = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				good = err == nil && resp.StatusCode == 200
			}
			el := time.Since(start)
			mu.Lock()
			total++
			if good {
				ok++
			}
			// A failed request counts at its full time, so that
			// failures show in the latency too.
			lat = append(lat, el)
			mu.Unlock()
		}()
	}
}

// peakSampler records hipsterd's highest resident memory and open file
// descriptors, sampled every 200 ms.
type peakSampler struct {
	pid    int
	rssKiB atomic.Int64
	fds    atomic.Int64
}

func (p *peakSampler) start() chan struct{} {
	stop := make(chan struct{})
	go func() {
		t := time.NewTicker(200 * time.Millisecond)
		defer t.Stop()
		for {
			p.sample()
			select {
			case <-stop:
				return
			case <-t.C:
			}
		}
	}()
	return stop
}

func (p *peakSampler) sample() {
	if data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.pid)); err == nil {
		for _, line := range strings.Split(string(data), "\n") {
			if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
				kib, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
				if kib > p.rssKiB.Load() {
					p.rssKiB.Store(kib)
				}
			}
		}
	}
	if ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", p.pid)); err == nil && int64(len(ents)) > p.fds.Load() {
		p.fds.Store(int64(len(ents)))
	}
}

// runEvict runs the evict scenario (see the package's comment) and prints
// its line.
func runEvict(o options, backend string) error {
	limit := o.maxConns
	if limit == 0 {
		limit = 50
	}
	h, err := startHipsterd(o, backend, 0, limit)
	if err != nil {
		return err
	}
	defer h.stop()
	url := "http://" + h.addr + "/upload"

	var mu sync.Mutex
	var lat []time.Duration
	total, ok := 0, 0
	record := func(start time.Time, good bool) {
		el := time.Since(start)
		mu.Lock()
		defer mu.Unlock()
		total++
		if good {
			ok++
		}
		lat = append(lat, el)
	}
	// The keep-alive clients connect before the attack.
	var redials atomic.Int64
	clients := make([]*http.Client, 10)
	for i := range clients {
		var d net.Dialer
		var dials atomic.Int64
		clients[i] = &http.Client{
			Timeout: 5 * time.Second,
			Transport: &http.Transport{MaxIdleConnsPerHost: 1, DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				if dials.Add(1) > 1 {
					redials.Add(1)
				}
				return d.DialContext(ctx, network, addr)
			}},
		}
		start := time.Now()
		record(start, post(clients[i], url))
	}

	stop := make(chan struct{})
	var held atomic.Int64
	var attack sync.WaitGroup
	attackers := 4 * limit
	for range attackers {
		attack.Go(func() { reconnectingIdle(h.addr, stop, &held) })
	}
	for deadline := time.Now().Add(5 * time.Second); held.Load() < int64(limit) && time.Now().Before(deadline); {
		time.Sleep(50 * time.Millisecond)
	}

	peak := &peakSampler{pid: h.cmd.Process.Pid}
	sampling := peak.start()
	ctx, cancel := context.WithTimeout(context.Background(), o.duration)
	var legit sync.WaitGroup
	every := func(d time.Duration, request func() bool) {
		legit.Go(func() {
			t := time.NewTicker(d)
			defer t.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-t.C:
				}
				start := time.Now()
				record(start, request())
			}
		})
	}
	for _, c := range clients {
		every(100*time.Millisecond, func() bool { return post(c, url) })
	}
	every(300*time.Millisecond, func() bool { return oneRequest(h.addr) })
	legit.Wait()
	cancel()
	close(sampling)
	close(stop)
	attack.Wait()
	after := 0
	for range 20 {
		if oneRequest(h.addr) {
			after++
		}
	}

	slices.Sort(lat)
	p50, p99 := lat[len(lat)/2], lat[min(len(lat)-1, len(lat)*99/100)]
	fmt.Printf("%-11s %9d %9d %8.2f%% %9s %9s %8s %6.1f MiB %6d %s; max-connections %d, keep-alive redials %d, after the attack %d/20\n",
		"evict", attackers, total, 100*float64(ok)/float64(max(total, 1)), round(p50), round(p99), "-",
		float64(peak.rssKiB.Load())/1024, peak.fds.Load(), h.logNote(), limit, redials.Load(), after)
	return nil
}

// post sends a small POST on c and reports whether it was answered 200.
func post(c *http.Client, url string) bool {
	resp, err := c.Post(url, "text/plain", strings.NewReader("hello"))
	if err != nil {
		return false
	}
	_, err = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return err == nil && resp.StatusCode == http.StatusOK
}

// oneRequest sends GET / on a new connection, with Connection: close, and
// reports whether it was answered 200 within 5 s.
func oneRequest(addr string) bool {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return false
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"); err != nil {
		return false
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return false
	}
	_, err = io.Copy(io.Discard, resp.Body)
	return err == nil && resp.StatusCode == http.StatusOK
}

// reconnectingIdle connects and sends nothing, connecting again whenever
// hipsterd closes the connection, until stop.
func reconnectingIdle(addr string, stop <-chan struct{}, held *atomic.Int64) {
	for {
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err == nil {
			held.Add(1)
			closed := make(chan struct{})
			go func() {
				io.Copy(io.Discard, c)
				close(closed)
			}()
			select {
			case <-stop:
			case <-closed:
			}
			c.Close()
			held.Add(-1)
		}
		select {
		case <-stop:
			return
		default:
		}
	}
}
