// Command hipsterd is a WebSocket-aware, TLS-capable HTTP reverse proxy and
// load balancer configured by one INI file.
//
//	hipsterd -config /etc/hipsterd/hipsterd.ini      run
//	hipsterd -t -config /etc/hipsterd/hipsterd.ini   check the file and exit
//	hipsterd -config FILE -route URL [-frontend NAME]
//	                                                 explain where a request for URL goes
//	hipsterd -version                                print the version and exit
//
// Events go to stderr (-log-format text or json, -log-level debug, info,
// warn or error). Under journald each line starts with its syslog priority.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/hipsterd/hipsterd"
	"github.com/hipsterd/hipsterd/internal/config"
	"github.com/hipsterd/hipsterd/internal/router"
	"github.com/hipsterd/hipsterd/internal/sdnotify"
	"github.com/hipsterd/hipsterd/internal/server"
)

// commit names the source the binary was built from. The Makefile may set
// it (make COMMIT=…, for a build outside a git checkout); otherwise it is
// read from what go build recorded of the checkout.
var commit = ""

// version is the release and the commit, as -version prints it:
// "1.0.0 (0123456789ab)", with "-dirty" after the commit when the checkout
// had changes.
func version() string {
	c := commit
	if c == "" {
		c = "unknown"
		if info, ok := debug.ReadBuildInfo(); ok {
			var rev, modified string
			for _, s := range info.Settings {
				switch s.Key {
				case "vcs.revision":
					rev = s.Value
				case "vcs.modified":
					modified = s.Value
				}
			}
			if rev != "" {
				c = rev[:min(12, len(rev))]
				if modified == "true" {
					c += "-dirty"
				}
			}
		}
	}
	return hipsterd.Version + " (" + c + ")"
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("hipsterd", flag.ContinueOnError)
	fs.SetOutput(stderr)
	configPath := fs.String("config", "", "configuration `file` (INI)")
	var check bool
	fs.BoolVar(&check, "t", false, "check the configuration and exit")
	fs.BoolVar(&check, "check", false, "same as -t")
	showVersion := fs.Bool("version", false, "print the version and exit")
	logFormat := fs.String("log-format", "text", "events on stderr as `text` or json")
	logLevel := fs.String("log-level", "info", "the least important events logged: debug, info, warn or error")
	routeURL := fs.String("route", "", "explain where a request for `URL` would go, and exit (binds nothing)")
	frontend := fs.String("frontend", "", "with -route: the frontend `NAME` (default: the one whose bind has the URL's port)")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: hipsterd -config FILE [-t] [-log-format text|json] [-log-level LEVEL]\n       hipsterd -config FILE -route URL [-frontend NAME]\n       hipsterd -version\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *showVersion {
		fmt.Fprintf(stdout, "hipsterd %s\n", version())
		return 0
	}
	if *configPath == "" || fs.NArg() > 0 || *frontend != "" && *routeURL == "" {
		fs.Usage()
		return 2
	}
	// Lines outside the event log get a priority under journald too.
	journal := underJournal(stderr)
	prio := func(p string) string {
		if journal {
			return p
		}
		return ""
	}
	log, err := newLogger(stderr, *logFormat, *logLevel, journal)
	if err != nil {
		fmt.Fprintf(stderr, "hipsterd: %v\n", err)
		fs.Usage()
		return 2
	}

	cfg, err := config.Load(*configPath)
	if err != nil {
		for _, e := range config.List(err) {
			fmt.Fprintf(stderr, "%shipsterd: %v\n", prio(prioError), e)
		}
		return 1
	}
	if *routeURL != "" {
		if err := router.Explain(stdout, cfg, *routeURL, *frontend); err != nil {
			fmt.Fprintf(stderr, "hipsterd: %v\n", err)
			return 1
		}
		return 0
	}
	if check {
		for _, w := range warnings(cfg) {
			fmt.Fprintf(stderr, "%shipsterd: warning: %s\n", prio(prioWarning), w)
		}
		fmt.Fprintln(stdout, "configuration OK")
		return 0
	}

	warn(log, cfg)
	logFileLimit(log, raiseFileLimit())
	srv := server.New(log)
	srv.SetVersion(version())
	// Signals are caught before binding, so a TERM during start is not lost.
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP, syscall.SIGUSR1)
	defer signal.Stop(sigs)
	if err := srv.Start(cfg); err != nil {
		fmt.Fprintf(stderr, "%shipsterd: %v\n", prio(prioError), err)
		return 1
	}
	log.Info("hipsterd started", "version", version(), "config", *configPath)
	notify(log, sdnotify.Ready, sdnotify.Status(serving(cfg, srv)))

	for {
		select {
		case err := <-srv.Errors():
			log.Error("shutting down", "err", err)
			shutdown(log, srv, cfg.Global.ShutdownTimeout)
			return 1
		case sig := <-sigs:
			switch sig {
			case syscall.SIGUSR1:
				log.Info("reopening access logs")
				srv.ReopenLogs()
			case syscall.SIGHUP:
				notify(log, sdnotify.Reloading())
				next, err := reload(log, srv, *configPath)
				at := time.Now().Format(statusTime)
				var status string
				if err != nil {
					status = fmt.Sprintf("reload failed at %s: %v; serving the previous configuration", at, err)
				} else {
					cfg = next
					status = fmt.Sprintf("reloaded at %s; %s", at, serving(cfg, srv))
				}
				notify(log, sdnotify.Ready, sdnotify.Status(status))
			default:
				log.Info("shutting down", "signal", sig.String(), "timeout", cfg.Global.ShutdownTimeout)
				shutdown(log, srv, cfg.Global.ShutdownTimeout)
				log.Info("stopped")
				return 0
			}
		}
	}
}

// fileLimit is the limit on open file descriptors, as raiseFileLimit left it.
type fileLimit struct {
	soft, hard uint64
	err        error // why the soft limit could not be raised
}

// raiseFileLimit raises the soft limit on open file descriptors to the hard
// one, which max-connections' default is worked out from. Go's runtime
// does so already at start when it can (and gives child processes the
// original back); this covers a hard limit of "unlimited", which Linux
// caps at fs.nr_open.
func raiseFileLimit() fileLimit {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return fileLimit{err: err}
	}
	if lim.Cur >= lim.Max {
		return fileLimit{soft: lim.Cur, hard: lim.Max}
	}
	want := lim
	want.Cur = lim.Max
	err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &want)
	if err != nil {
		if b, rerr := os.ReadFile("/proc/sys/fs/nr_open"); rerr == nil {
			if n, perr := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64); perr == nil && n > lim.Cur && n < lim.Max {
				want.Cur = n
				err = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &want)
			}
		}
	}
	if err != nil {
		return fileLimit{soft: lim.Cur, hard: lim.Max, err: err}
	}
	return fileLimit{soft: want.Cur, hard: lim.Max}
}

func logFileLimit(log *slog.Logger, fl fileLimit) {
	switch {
	case fl.err != nil:
		log.Warn("cannot raise the file descriptor limit to the hard limit", "limit", fl.soft, "hard-limit", fl.hard, "err", fl.err)
	case fl.soft == fl.hard:
		log.Info("file descriptor limit set to the hard limit", "limit", fl.soft)
	default:
		log.Info("file descriptor limit raised to fs.nr_open", "limit", fl.soft, "hard-limit", fl.hard)
	}
}

// reload applies the configuration file at path and returns it, or logs
// every problem and returns the first, leaving the running configuration as
// it is.
func reload(log *slog.Logger, srv *server.Server, path string) (*config.Config, error) {
	log.Info("reloading", "config", path)
	cfg, err := config.Load(path)
	if err == nil {
		err = srv.Reload(cfg)
	} else {
		srv.ReloadFailed(err)
	}
	if err != nil {
		errs := config.List(err)
		for _, e := range errs {
			log.Error("reload failed; the running configuration stays", "err", e)
		}
		return nil, errs[0]
	}
	warn(log, cfg)
	log.Info("reloaded", "config", path)
	return cfg, nil
}

// warnings are the configuration's own warnings and those about how
// systemd runs hipsterd.
func warnings(cfg *config.Config) []string {
	return append(cfg.Warnings[:len(cfg.Warnings):len(cfg.Warnings)], systemdWarnings(cfg)...)
}

func warn(log *slog.Logger, cfg *config.Config) {
	for _, w := range warnings(cfg) {
		log.Warn(w)
	}
}

// statusTime is how times are written in systemd's status line.
const statusTime = "2006-01-02 15:04:05 MST"

// serving describes the frontends being served, for systemd's status line:
// "serving 2 frontends: web on 0.0.0.0:80, api on 127.0.0.1:8080".
func serving(cfg *config.Config, srv *server.Server) string {
	addrs := srv.Addrs()
	list := make([]string, 0, len(cfg.Frontends))
	for _, fc := range cfg.Frontends {
		addr := fc.Bind
		if a := addrs[fc.Name]; a != nil {
			addr = a.String()
		}
		list = append(list, fc.Name+" on "+addr)
	}
	noun := "frontends"
	if len(list) == 1 {
		noun = "frontend"
	}
	return fmt.Sprintf("serving %d %s: %s", len(list), noun, strings.Join(list, ", "))
}

// notify sends states to systemd, in one message.
func notify(log *slog.Logger, states ...string) {
	if err := sdnotify.Notify(strings.Join(states, "\n")); err != nil {
		log.Warn("cannot notify systemd", "err", err)
	}
}

func shutdown(log *slog.Logger, srv *server.Server, timeout time.Duration) {
	status := "shutting down: letting requests and tunnels finish"
	if timeout > 0 {
		status += " (for up to " + timeout.String() + ")"
	}
	notify(log, sdnotify.Stopping, sdnotify.Status(status))
	ctx := context.Background()
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	srv.Shutdown(ctx)
}
