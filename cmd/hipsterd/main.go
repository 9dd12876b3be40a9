// Command hipsterd is a WebSocket-aware, TLS-capable HTTP reverse proxy and
// load balancer configured by one INI file.
//
//	hipsterd -config /etc/hipsterd.ini      run
//	hipsterd -t -config /etc/hipsterd.ini   check the file and exit
//	hipsterd -version                       print the version and exit
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/hipsterd/hipsterd/internal/config"
	"github.com/hipsterd/hipsterd/internal/sdnotify"
	"github.com/hipsterd/hipsterd/internal/server"
)

// version is set at build time with -ldflags "-X main.version=…".
var version = "dev"

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
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: hipsterd -config FILE [-t]\n       hipsterd -version\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *showVersion {
		fmt.Fprintf(stdout, "hipsterd %s\n", version)
		return 0
	}
	if *configPath == "" || fs.NArg() > 0 {
		fs.Usage()
		return 2
	}

	cfg, err := config.Load(*configPath)
	if err != nil {
		for _, e := range config.List(err) {
			fmt.Fprintf(stderr, "hipsterd: %v\n", e)
		}
		return 1
	}
	if check {
		for _, w := range cfg.Warnings {
			fmt.Fprintf(stderr, "hipsterd: warning: %s\n", w)
		}
		fmt.Fprintln(stdout, "configuration OK")
		return 0
	}

	log := slog.New(slog.NewTextHandler(stderr, nil))
	warn(log, cfg)
	srv := server.New(log)
	// Signals are caught before binding, so a TERM during start is not lost.
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP, syscall.SIGUSR1)
	defer signal.Stop(sigs)
	if err := srv.Start(cfg); err != nil {
		fmt.Fprintf(stderr, "hipsterd: %v\n", err)
		return 1
	}
	log.Info("hipsterd started", "version", version, "config", *configPath)
	notify(log, sdnotify.Ready)

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
				if next := reload(log, srv, *configPath); next != nil {
					cfg = next
				}
				notify(log, sdnotify.Ready)
			default:
				log.Info("shutting down", "signal", sig.String(), "timeout", cfg.Global.ShutdownTimeout)
				shutdown(log, srv, cfg.Global.ShutdownTimeout)
				log.Info("stopped")
				return 0
			}
		}
	}
}

// reload applies the configuration file at path and returns it, or logs
// every problem and returns nil, leaving the running configuration as it is.
func reload(log *slog.Logger, srv *server.Server, path string) *config.Config {
	log.Info("reloading", "config", path)
	cfg, err := config.Load(path)
	if err == nil {
		err = srv.Reload(cfg)
	}
	if err != nil {
		for _, e := range config.List(err) {
			log.Error("reload failed; the running configuration stays", "err", e)
		}
		return nil
	}
	warn(log, cfg)
	log.Info("reloaded", "config", path)
	return cfg
}

func warn(log *slog.Logger, cfg *config.Config) {
	for _, w := range cfg.Warnings {
		log.Warn(w)
	}
}

func notify(log *slog.Logger, state string) {
	if err := sdnotify.Notify(state); err != nil {
		log.Warn("cannot notify systemd", "err", err)
	}
}

func shutdown(log *slog.Logger, srv *server.Server, timeout time.Duration) {
	notify(log, sdnotify.Stopping)
	ctx := context.Background()
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	srv.Shutdown(ctx)
}
