// Command tcpbench measures a tcp frontend of hipsterd against HAProxy's
// `mode tcp` on the same machine, in one run (issue 13), on loopback only:
//
//	stream  -conns connections through the proxy to an echo backend, each
//	        writing 64 KiB blocks as fast as it can while it reads the echo
//	        back, for -duration after a warm-up; MB/s echoed (10^6 bytes
//	        received back per second; each byte crossed the proxy twice) and
//	        the proxy's CPU seconds (user + system) per GB echoed. -rounds
//	        times, the proxies taking turns, in reverse order every other
//	        round; the table shows the median.
//	idle    a freshly started proxy, warmed with 1 s of stream, then -idle
//	        connections each established through to the backend (one byte
//	        echoed) and left idle: (RSS after − RSS before) / connections,
//	        in KiB, RSS being the proxy's VmRSS. Every connection is checked
//	        to still echo afterwards.
//
// As in ../shared/bench/bench.sh: one worker per proxy (HAProxy `nbthread
// 1`, hipsterd GOMAXPROCS=1), never both running at once, no access log;
// with two CPUs and taskset, this process (the load) runs on the first CPU,
// the echo backend (this program started again) and the proxy on the
// second. HAProxy runs with its defaults otherwise (no splicing, as in the
// harness); -haproxy-splice adds `option splice-auto`.
//
// Every process started is ended on return, on error, on SIGINT/SIGTERM and
// after -max-time; the children also get SIGKILL if this process dies.
//
// Usage, from the repository's root (a load test: not on a shared machine):
//
//	make build && go run ./scripts/tcpbench
package main

import (
	"bytes"
	"crypto/rand"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

const (
	blockSize = 64 << 10
	// userHZ is the unit of utime and stime in /proc/PID/stat: USER_HZ,
	// 100 on every Linux architecture Go supports.
	userHZ = 100
	// roleEnv, set to an address, makes this program the echo backend.
	roleEnv = "TCPBENCH_ECHO_ADDR"
	// dialers is how many idle connections are dialled at a time.
	dialers = 50
	// ioTimeout bounds every single dial, check and idle round trip.
	ioTimeout = 10 * time.Second
)

type options struct {
	hipsterd, haproxy string
	duration, warmup  time.Duration
	conns, idle       int
	rounds            int
	pin               bool
	haproxySplice     bool
	maxTime           time.Duration
}

func main() {
	if addr := os.Getenv(roleEnv); addr != "" {
		runEcho(addr)
		return
	}
	var o options
	flag.StringVar(&o.hipsterd, "hipsterd", "./hipsterd", "the hipsterd binary")
	flag.StringVar(&o.haproxy, "haproxy", "haproxy", "the haproxy binary")
	flag.DurationVar(&o.duration, "duration", 5*time.Second, "measured time of each stream round")
	flag.DurationVar(&o.warmup, "warmup", time.Second, "unmeasured stream before each measured one")
	flag.IntVar(&o.conns, "conns", 8, "stream connections")
	flag.IntVar(&o.idle, "idle", 5000, "idle connections (0: skip the idle scenario)")
	flag.IntVar(&o.rounds, "rounds", 2, "stream rounds per proxy")
	flag.BoolVar(&o.pin, "pin", true, "pin the load to one CPU, the backend and the proxy to another (needs 2 CPUs and taskset)")
	flag.BoolVar(&o.haproxySplice, "haproxy-splice", false, "give HAProxy `option splice-auto`")
	flag.DurationVar(&o.maxTime, "max-time", 10*time.Minute, "end the whole run, and every process it started, after this long")
	quick := flag.Bool("quick", false, "shorter, noisier run: -duration 2s -warmup 500ms -rounds 1 -idle 1000, unless given")
	flag.Parse()
	if *quick {
		given := map[string]bool{}
		flag.Visit(func(f *flag.Flag) { given[f.Name] = true })
		for name, v := range map[string]string{"duration": "2s", "warmup": "500ms", "rounds": "1", "idle": "1000"} {
			if !given[name] {
				flag.Set(name, v)
			}
		}
	}
	if o.conns < 1 || o.rounds < 1 || o.idle < 0 || o.duration <= 0 || o.warmup < 0 {
		fail(errors.New("-conns and -rounds must be at least 1, -duration positive, -idle and -warmup not negative"))
	}

	dir, err := os.MkdirTemp("", "tcpbench")
	if err != nil {
		fail(err)
	}
	var ps procs
	cleanup := func() {
		ps.stopAll()
		os.RemoveAll(dir)
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		s := <-sig
		fmt.Fprintf(os.Stderr, "tcpbench: %v: stopping\n", s)
		cleanup()
		os.Exit(130)
	}()
	time.AfterFunc(o.maxTime, func() {
		fmt.Fprintf(os.Stderr, "tcpbench: -max-time %v exceeded: stopping\n", o.maxTime)
		cleanup()
		os.Exit(1)
	})
	err = run(o, &ps, dir)
	cleanup()
	if err != nil {
		fail(err)
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "tcpbench:", err)
	os.Exit(1)
}

func logf(format string, a ...any) {
	fmt.Fprintf(os.Stderr, "tcpbench: "+format+"\n", a...)
}

// proxy is one column of the table.
type proxy struct {
	name string
	// start starts the proxy listening on addr in front of backend.
	start func(addr, backend string) (*proc, error)
}

// run measures, with the processes it starts in ps and their files in dir.
func run(o options, ps *procs, dir string) error {
	for _, bin := range []string{o.hipsterd, o.haproxy} {
		if _, err := exec.LookPath(bin); err != nil {
			return fmt.Errorf("%v (make build first for ./hipsterd; see -hipsterd and -haproxy)", err)
		}
	}
	limit := raiseFileLimit()
	// The proxy holds two descriptors per connection, and hipsterd keeps
	// about 330 for itself (see "Limits and timeouts" in docs/configuration.md).
	if most := int(limit)/2 - o.conns - 400; o.idle > most {
		logf("open-file limit %d: idle connections lowered from %d to %d", limit, o.idle, max(most, 0))
		o.idle = max(most, 0)
	}

	loadCPU, serverCPU := "", ""
	if o.pin {
		var err error
		if loadCPU, serverCPU, err = pin(); err != nil {
			logf("not pinned: %v", err)
		}
	}

	backend, err := freeAddr()
	if err != nil {
		return err
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	echo, err := ps.start("echo", dir, serverCPU, []string{roleEnv + "=" + backend, "GOMAXPROCS=1"}, self)
	if err != nil {
		return err
	}
	if err := waitListening(backend, echo); err != nil {
		return err
	}

	haproxy := proxy{name: "haproxy", start: func(addr, backend string) (*proc, error) {
		cfg := filepath.Join(dir, "haproxy.cfg")
		if err := os.WriteFile(cfg, []byte(haproxyConfig(addr, backend, o)), 0o644); err != nil {
			return nil, err
		}
		return ps.start("haproxy", dir, serverCPU, nil, o.haproxy, "-db", "-f", cfg)
	}}
	hipsterd := proxy{name: "hipsterd", start: func(addr, backend string) (*proc, error) {
		cfg := filepath.Join(dir, "hipsterd.ini")
		ini := fmt.Sprintf("[frontend t]\nbind = %s\nmode = tcp\nbackends = echo\n\n[backend echo]\nconnect = %s\n", addr, backend)
		if err := os.WriteFile(cfg, []byte(ini), 0o644); err != nil {
			return nil, err
		}
		return ps.start("hipsterd", dir, serverCPU, []string{"GOMAXPROCS=1"}, o.hipsterd, "-config", cfg)
	}}
	cols := []proxy{haproxy, hipsterd}

	// Each cell runs in a freshly started proxy, stopped before the next.
	cell := func(px proxy, f func(addr string, p *proc) error) error {
		addr, err := freeAddr()
		if err != nil {
			return err
		}
		p, err := px.start(addr, backend)
		if err != nil {
			return err
		}
		defer p.stop()
		if err := waitListening(addr, p); err != nil {
			return err
		}
		if err := check(addr); err != nil {
			return fmt.Errorf("%s: 64 KiB echo check: %v%s", px.name, err, p.logTail())
		}
		if err := f(addr, p); err != nil {
			return fmt.Errorf("%s: %v%s", px.name, err, p.logTail())
		}
		if !p.alive() {
			return fmt.Errorf("%s exited during the run%s", px.name, p.logTail())
		}
		return nil
	}

	var t table
	mbps, cpu := map[string][]float64{}, map[string][]float64{}
	for r := 1; r <= o.rounds; r++ {
		order := slices.Clone(cols)
		if r%2 == 0 {
			slices.Reverse(order)
		}
		for _, px := range order {
			err := cell(px, func(addr string, p *proc) error {
				res, err := stream(addr, p.pid(), o.conns, o.warmup, o.duration)
				if err != nil {
					return err
				}
				logf("stream %s round %d: %.1f MB/s, %.3f CPU s/GB", px.name, r, res.mbps, res.cpuPerGB)
				mbps[px.name] = append(mbps[px.name], res.mbps)
				cpu[px.name] = append(cpu[px.name], res.cpuPerGB)
				return nil
			})
			if err != nil {
				t.fail(fmt.Sprintf("stream round %d: %v", r, err))
			}
			if !echo.alive() {
				return errors.New("the echo backend exited" + echo.logTail())
			}
		}
	}
	label := fmt.Sprintf("tcp echo 64 KiB blocks x%d", o.conns)
	t.add(label, "MB/s", false, median(mbps["haproxy"]), median(mbps["hipsterd"]))
	t.add(label, "CPU s/GB (lower)", true, median(cpu["haproxy"]), median(cpu["hipsterd"]))

	if o.idle > 0 {
		kib := map[string][]float64{}
		for _, px := range cols {
			err := cell(px, func(addr string, p *proc) error {
				res, err := idle(addr, p.pid(), o.idle, o.conns)
				if err != nil {
					return err
				}
				logf("idle %s: RSS %d -> %d KiB for %d connections, %d still echo", px.name, res.rss0, res.rss1, res.open, res.verified)
				kib[px.name] = append(kib[px.name], float64(res.rss1-res.rss0)/float64(res.open))
				if res.open != o.idle {
					t.note(fmt.Sprintf("idle %s: only %d of %d connections opened: %v", px.name, res.open, o.idle, res.firstErr))
				}
				if res.verified != res.open {
					t.note(fmt.Sprintf("idle %s: %d of %d held connections still echoed", px.name, res.verified, res.open))
				}
				if !res.settled {
					t.note(fmt.Sprintf("idle %s: RSS had not settled after 10 s", px.name))
				}
				return nil
			})
			if err != nil {
				t.fail(fmt.Sprintf("idle: %v", err))
			}
		}
		t.add(fmt.Sprintf("idle tcp connections x%d", o.idle), "KiB/conn (lower)", true, median(kib["haproxy"]), median(kib["hipsterd"]))
	}
	if o.rounds > 1 {
		t.note(fmt.Sprintf("stream: median of %d rounds; per round, MB/s haproxy %s, hipsterd %s", o.rounds, fmtList(mbps["haproxy"]), fmtList(mbps["hipsterd"])))
	}
	if loadCPU != "" {
		t.note(fmt.Sprintf("pinned: load on CPU %s, echo backend and proxy on CPU %s", loadCPU, serverCPU))
	}
	t.print()
	if t.failed {
		return errors.New("some cells were not measured: see the notes")
	}
	return nil
}

func haproxyConfig(addr, backend string, o options) string {
	maxconn := o.idle + o.conns + 100
	splice := ""
	if o.haproxySplice {
		splice = "\toption splice-auto\n"
	}
	return fmt.Sprintf(`# written by tcpbench
global
	nbthread 1
	maxconn %d

defaults
	mode tcp
	maxconn %d
	timeout connect 5s
	timeout client 1h
	timeout server 1h
%s
frontend t
	bind %s backlog 4096
	default_backend echo

backend echo
	server echo %s
`, maxconn, maxconn, splice, addr, backend)
}

// raiseFileLimit raises the open-file limit to the hard limit, for this
// process and the ones it starts, and returns it.
func raiseFileLimit() uint64 {
	var lim syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim) != nil {
		return 1024
	}
	lim.Cur = lim.Max
	syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim)
	syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim)
	return lim.Cur
}

// pin moves every thread of this process to the first CPU it may run on,
// and returns that CPU and the one for the backend and the proxy, for
// taskset.
func pin() (load, server string, err error) {
	if _, err := exec.LookPath("taskset"); err != nil {
		return "", "", err
	}
	var set unix.CPUSet
	if err := unix.SchedGetaffinity(0, &set); err != nil {
		return "", "", err
	}
	var cpus []int
	for i := 0; i < len(set)*64 && len(cpus) < 2; i++ {
		if set.IsSet(i) {
			cpus = append(cpus, i)
		}
	}
	if len(cpus) < 2 {
		return "", "", errors.New("fewer than 2 CPUs")
	}
	var one unix.CPUSet
	one.Set(cpus[0])
	// A thread made while this runs inherits its maker's mask: go over
	// the threads until a pass finds none new.
	done := map[int]bool{}
	for {
		tasks, err := os.ReadDir("/proc/self/task")
		if err != nil {
			return "", "", err
		}
		fresh := false
		for _, t := range tasks {
			tid, err := strconv.Atoi(t.Name())
			if err != nil || done[tid] {
				continue
			}
			if err := unix.SchedSetaffinity(tid, &one); err != nil {
				return "", "", err
			}
			done[tid], fresh = true, true
		}
		if !fresh {
			break
		}
	}
	runtime.GOMAXPROCS(1)
	return strconv.Itoa(cpus[0]), strconv.Itoa(cpus[1]), nil
}

// runEcho is the backend: it echoes every connection's bytes until the
// client half-closes.
func runEcho(addr string) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		fail(err)
	}
	for {
		c, err := ln.Accept()
		if err != nil {
			// Out of descriptors, most likely: say so, and go on.
			logf("echo: %v", err)
			time.Sleep(10 * time.Millisecond)
			continue
		}
		go echoConn(c.(*net.TCPConn))
	}
}

func echoConn(c *net.TCPConn) {
	defer c.Close()
	// TCPConn to TCPConn: the kernel splices, so the backend costs little
	// of the CPU it shares with the proxy.
	io.Copy(c, c)
	c.CloseWrite()
}

// procs are the processes started, ended by stopAll.
type procs struct {
	mu      sync.Mutex
	list    []*proc
	stopped bool
}

type proc struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	done    chan struct{}
	once    sync.Once
}

// start runs argv (under taskset -c cpu when cpu is set) with env added,
// its output in dir/NAME.log.
func (ps *procs) start(name, dir, cpu string, env []string, argv ...string) (*proc, error) {
	if cpu != "" {
		argv = append([]string{"taskset", "-c", cpu}, argv...)
	}
	p := &proc{name: name, logPath: filepath.Join(dir, name+".log"), done: make(chan struct{})}
	out, err := os.Create(p.logPath)
	if err != nil {
		return nil, err
	}
	p.cmd = exec.Command(argv[0], argv[1:]...)
	p.cmd.Env = append(os.Environ(), env...)
	p.cmd.Stdout, p.cmd.Stderr = out, out
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	ps.mu.Lock()
	defer ps.mu.Unlock()
	if ps.stopped {
		out.Close()
		return nil, errors.New("stopping")
	}
	if err := p.cmd.Start(); err != nil {
		out.Close()
		return nil, fmt.Errorf("%s: %v", name, err)
	}
	ps.list = append(ps.list, p)
	go func() {
		p.cmd.Wait()
		out.Close()
		close(p.done)
	}()
	return p, nil
}

func (ps *procs) stopAll() {
	ps.mu.Lock()
	ps.stopped = true
	list := ps.list
	ps.mu.Unlock()
	for _, p := range list {
		p.stop()
	}
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

func (p *proc) alive() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// stop ends the process: SIGTERM, then SIGKILL after 5 s.
func (p *proc) stop() {
	p.once.Do(func() {
		p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(5 * time.Second):
			p.cmd.Process.Kill()
			<-p.done
		}
	})
}

// logTail is the end of the process's output, for error messages.
func (p *proc) logTail() string {
	b, _ := os.ReadFile(p.logPath)
	b = bytes.TrimSpace(b)
	if len(b) == 0 {
		return ""
	}
	if len(b) > 600 {
		b = b[len(b)-600:]
	}
	return fmt.Sprintf("\n  %s's output: %s", p.name, b)
}

func freeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

// waitListening polls addr until it accepts, p exits or 10 s pass.
func waitListening(addr string, p *proc) error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		if !p.alive() {
			return fmt.Errorf("%s exited at start%s", p.name, p.logTail())
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not listening on %s after 10 s: %v%s", p.name, addr, err, p.logTail())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// check sends 64 KiB of random bytes through addr and expects them back.
func check(addr string) error {
	c, err := net.DialTimeout("tcp", addr, ioTimeout)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(ioTimeout))
	want := make([]byte, blockSize)
	rand.Read(want)
	errc := make(chan error, 1)
	go func() {
		_, err := c.Write(want)
		errc <- err
	}()
	got := make([]byte, blockSize)
	if _, err := io.ReadFull(c, got); err != nil {
		return err
	}
	if err := <-errc; err != nil {
		return err
	}
	if !bytes.Equal(got, want) {
		return errors.New("the bytes echoed differ from those sent")
	}
	return nil
}

type streamResult struct {
	mbps, cpuPerGB float64
}

// stream runs conns connections through addr, each writing 64 KiB blocks
// and reading the echo back, for warmup and then d, and measures the bytes
// received back and the CPU time of pid during d.
func stream(addr string, pid, conns int, warmup, d time.Duration) (streamResult, error) {
	cs := make([]net.Conn, 0, conns)
	defer func() {
		for _, c := range cs {
			c.Close()
		}
	}()
	for range conns {
		c, err := net.DialTimeout("tcp", addr, ioTimeout)
		if err != nil {
			return streamResult{}, err
		}
		cs = append(cs, c)
	}
	var received atomic.Int64
	var stopping atomic.Bool
	var firstErr error
	var errOnce sync.Once
	failed := func(err error) {
		if !stopping.Load() {
			errOnce.Do(func() { firstErr = err })
		}
	}
	block := make([]byte, blockSize)
	rand.Read(block)
	var wg sync.WaitGroup
	for _, c := range cs {
		// No call may block past the end of the run by much.
		c.SetDeadline(time.Now().Add(warmup + d + ioTimeout))
		wg.Add(2)
		go func() {
			defer wg.Done()
			for !stopping.Load() {
				if _, err := c.Write(block); err != nil {
					failed(fmt.Errorf("write: %v", err))
					return
				}
			}
		}()
		go func() {
			defer wg.Done()
			buf := make([]byte, blockSize)
			for {
				n, err := c.Read(buf)
				received.Add(int64(n))
				if err != nil {
					failed(fmt.Errorf("read: %v", err))
					return
				}
			}
		}()
	}
	time.Sleep(warmup)
	b0, cpu0, t0 := received.Load(), cpuTicks(pid), time.Now()
	time.Sleep(d)
	b1, cpu1, t1 := received.Load(), cpuTicks(pid), time.Now()
	stopping.Store(true)
	for _, c := range cs {
		c.SetDeadline(time.Now())
	}
	wg.Wait()
	if firstErr != nil {
		return streamResult{}, firstErr
	}
	got := float64(b1 - b0)
	if got == 0 {
		return streamResult{}, errors.New("no byte came back")
	}
	return streamResult{
		mbps:     got / t1.Sub(t0).Seconds() / 1e6,
		cpuPerGB: float64(cpu1-cpu0) / userHZ / (got / 1e9),
	}, nil
}

type idleResult struct {
	rss0, rss1     int64 // KiB
	open, verified int
	settled        bool
	firstErr       error
}

// idle warms the proxy at addr with a second of stream, then opens n
// connections through it, each carrying one byte to the backend and back,
// and reads pid's RSS before and after.
func idle(addr string, pid, n, warmConns int) (idleResult, error) {
	fds0 := fdCount(pid)
	if _, err := stream(addr, pid, warmConns, 0, time.Second); err != nil {
		return idleResult{}, fmt.Errorf("warm-up: %v", err)
	}
	// The proxy has closed the warm-up's connections when it holds as few
	// descriptors as before.
	for deadline := time.Now().Add(10 * time.Second); fdCount(pid) > fds0 && time.Now().Before(deadline); {
		time.Sleep(50 * time.Millisecond)
	}
	var res idleResult
	var ok bool
	res.rss0, ok = settledRSS(pid)
	res.settled = ok

	conns := make([]net.Conn, n)
	defer func() {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
	}()
	var errOnce sync.Once
	forEach(n, dialers, func(i int) {
		c, err := net.DialTimeout("tcp", addr, ioTimeout)
		if err == nil {
			if err = roundTrip(c, 'i'); err != nil {
				c.Close()
			}
		}
		if err != nil {
			errOnce.Do(func() { res.firstErr = err })
			return
		}
		conns[i] = c
	})
	for _, c := range conns {
		if c != nil {
			res.open++
		}
	}
	if res.open == 0 {
		return res, fmt.Errorf("no idle connection opened: %v", res.firstErr)
	}
	res.rss1, ok = settledRSS(pid)
	res.settled = res.settled && ok

	var verified atomic.Int64
	forEach(n, dialers, func(i int) {
		if conns[i] != nil && roundTrip(conns[i], 'v') == nil {
			verified.Add(1)
		}
	})
	res.verified = int(verified.Load())
	return res, nil
}

// roundTrip sends b and expects it back.
func roundTrip(c net.Conn, b byte) error {
	c.SetDeadline(time.Now().Add(ioTimeout))
	defer c.SetDeadline(time.Time{})
	if _, err := c.Write([]byte{b}); err != nil {
		return err
	}
	got := []byte{0}
	if _, err := io.ReadFull(c, got); err != nil {
		return err
	}
	if got[0] != b {
		return fmt.Errorf("sent %q, got %q back", b, got[0])
	}
	return nil
}

// forEach calls f(0..n-1) from at most par goroutines at a time.
func forEach(n, par int, f func(i int)) {
	var wg sync.WaitGroup
	var next atomic.Int64
	for range min(n, par) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := int(next.Add(1) - 1); i < n; i = int(next.Add(1) - 1) {
				f(i)
			}
		}()
	}
	wg.Wait()
}

// settledRSS reads pid's RSS every half second until two readings in a
// row differ by at most 0.5 %, for at most 10 s; false if it did not
// settle.
func settledRSS(pid int) (int64, bool) {
	prev := rssKiB(pid)
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); {
		time.Sleep(500 * time.Millisecond)
		cur := rssKiB(pid)
		if diff := cur - prev; diff*200 <= cur && -diff*200 <= cur {
			return cur, true
		}
		prev = cur
	}
	return prev, false
}

// rssKiB is VmRSS of /proc/PID/status, in KiB; 0 if unknown.
func rssKiB(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			n, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return n
		}
	}
	return 0
}

// cpuTicks is utime + stime of /proc/PID/stat, in USER_HZ ticks.
func cpuTicks(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// The fields after "(comm) ": state is the 1st, utime the 12th, stime
	// the 13th; comm may hold spaces and parentheses.
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(f) < 13 {
		return 0
	}
	u, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return u + st
}

func fdCount(pid int) int {
	fds, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	return len(fds)
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Sorted(slices.Values(v))
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func fmtList(v []float64) string {
	parts := make([]string, len(v))
	for i, x := range v {
		parts[i] = fmtNum(x)
	}
	return strings.Join(parts, " ")
}

// fmtNum prints four significant digits or so; 0 (no measure) as "-".
func fmtNum(x float64) string {
	switch {
	case x == 0:
		return "-"
	case x >= 1000:
		return strconv.FormatFloat(x, 'f', 0, 64)
	case x >= 100:
		return strconv.FormatFloat(x, 'f', 1, 64)
	case x >= 10:
		return strconv.FormatFloat(x, 'f', 2, 64)
	default:
		return strconv.FormatFloat(x, 'f', 3, 64)
	}
}

type table struct {
	rows   [][5]string
	notes  []string
	failed bool
}

// add appends a row; on lower-is-better rows a ratio above 1 means
// hipsterd is worse.
func (t *table) add(scenario, unit string, lower bool, haproxy, hipsterd float64) {
	ratio := "-"
	if haproxy > 0 && hipsterd > 0 {
		ratio = fmt.Sprintf("%.2f", hipsterd/haproxy)
	}
	t.rows = append(t.rows, [5]string{scenario, unit, fmtNum(haproxy), fmtNum(hipsterd), ratio})
}

func (t *table) note(s string) { t.notes = append(t.notes, s) }

// fail notes a cell that could not be measured.
func (t *table) fail(s string) {
	t.note(s)
	t.failed = true
}

func (t *table) print() {
	fmt.Printf("%-30s %-18s %9s %9s %17s\n", "scenario", "unit", "haproxy", "hipsterd", "hipsterd/haproxy")
	for _, r := range t.rows {
		fmt.Printf("%-30s %-18s %9s %9s %17s\n", r[0], r[1], r[2], r[3], r[4])
	}
	for _, n := range t.notes {
		fmt.Println("note:", n)
	}
}
