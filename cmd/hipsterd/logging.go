package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/hipsterd/hipsterd/internal/config"
)

// logLevels are the values of -log-level.
var logLevels = map[string]slog.Level{"debug": slog.LevelDebug, "info": slog.LevelInfo, "warn": slog.LevelWarn, "error": slog.LevelError}

// newLogger returns the event logger -log-format and -log-level ask for,
// writing to stderr; journal says that stderr is a journald stream.
func newLogger(stderr io.Writer, format, level string, journal bool) (*slog.Logger, error) {
	lvl, ok := logLevels[level]
	if !ok {
		return nil, fmt.Errorf("-log-level %q: want debug, info, warn or error", level)
	}
	out := stderr
	var jo *journalOut
	if journal {
		jo = &journalOut{w: stderr}
		out = &jo.buf
	}
	opts := &slog.HandlerOptions{Level: lvl}
	var h slog.Handler
	switch format {
	case "text":
		h = slog.NewTextHandler(out, opts)
	case "json":
		h = slog.NewJSONHandler(out, opts)
	default:
		return nil, fmt.Errorf("-log-format %q: want text or json", format)
	}
	if journal {
		h = journalHandler{h, jo}
	}
	return slog.New(h), nil
}

// underJournal reports whether w is the stream that $JOURNAL_STREAM names:
// systemd sets it to the device and inode of the stderr it connects to the
// journal, so that a program can tell the journal from a redirection.
func underJournal(w io.Writer) bool {
	dev, ino, ok := strings.Cut(os.Getenv("JOURNAL_STREAM"), ":")
	f, isFile := w.(*os.File)
	if !ok || !isFile {
		return false
	}
	wantDev, err1 := strconv.ParseUint(dev, 10, 64)
	wantIno, err2 := strconv.ParseUint(ino, 10, 64)
	if err1 != nil || err2 != nil {
		return false
	}
	sc, err := f.SyscallConn()
	if err != nil {
		return false
	}
	var st unix.Stat_t
	var statErr error
	if err := sc.Control(func(fd uintptr) { statErr = unix.Fstat(int(fd), &st) }); err != nil || statErr != nil {
		return false
	}
	return uint64(st.Dev) == wantDev && uint64(st.Ino) == wantIno
}

// Syslog priorities, as journald reads them at the start of a line
// (sd-daemon(3)).
const (
	prioError   = "<3>"
	prioWarning = "<4>"
	prioInfo    = "<6>"
	prioDebug   = "<7>"
)

func priority(l slog.Level) string {
	switch {
	case l >= slog.LevelError:
		return prioError
	case l >= slog.LevelWarn:
		return prioWarning
	case l >= slog.LevelInfo:
		return prioInfo
	}
	return prioDebug
}

// journalOut is where a journalHandler and the handlers derived from it
// format their lines, one at a time, before each is written in one piece.
type journalOut struct {
	mu  sync.Mutex
	buf bytes.Buffer
	w   io.Writer
}

// journalHandler starts each line with its record's syslog priority, so
// that journalctl -p warning shows warnings and errors.
type journalHandler struct {
	slog.Handler // writes to out.buf
	out          *journalOut
}

func (h journalHandler) Handle(ctx context.Context, r slog.Record) error {
	h.out.mu.Lock()
	defer h.out.mu.Unlock()
	h.out.buf.Reset()
	h.out.buf.WriteString(priority(r.Level))
	if err := h.Handler.Handle(ctx, r); err != nil {
		return err
	}
	_, err := h.out.w.Write(h.out.buf.Bytes())
	return err
}

func (h journalHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return journalHandler{h.Handler.WithAttrs(as), h.out}
}

func (h journalHandler) WithGroup(name string) slog.Handler {
	return journalHandler{h.Handler.WithGroup(name), h.out}
}

// defaultLogsDirectory is where the shipped unit lets hipsterd write
// (LogsDirectory=hipsterd under ProtectSystem=strict).
const defaultLogsDirectory = "/var/log/hipsterd"

// systemdWarnings warns, when hipsterd runs under systemd (which sets
// $INVOCATION_ID), of access logs outside the directories the unit lets it
// write to: $LOGS_DIRECTORY, which systemd sets from LogsDirectory=, or
// /var/log/hipsterd. Under ProtectSystem=strict every other path is
// read-only, and opening the log would fail at start or on reload.
func systemdWarnings(cfg *config.Config) []string {
	if os.Getenv("INVOCATION_ID") == "" {
		return nil
	}
	dirs := []string{defaultLogsDirectory}
	if v := os.Getenv("LOGS_DIRECTORY"); v != "" {
		dirs = strings.Split(v, ":")
	}
	var out []string
	seen := map[string]bool{}
	for _, fc := range cfg.Frontends {
		if fc.AccessLog == "" || seen[fc.AccessLog] {
			continue
		}
		seen[fc.AccessLog] = true
		if within(fc.AccessLog, dirs) {
			continue
		}
		section := "frontend " + fc.Name
		if fc.AccessLog == cfg.Global.AccessLog {
			section = "global"
		}
		out = append(out, (&config.Error{File: cfg.File, Line: cfg.Line(section, "accesslog"), Section: section, Key: "accesslog",
			Msg: fmt.Sprintf("%s is outside %s: under the unit's ProtectSystem=strict hipsterd cannot write there (move the log, or add its directory to ReadWritePaths=)",
				fc.AccessLog, strings.Join(dirs, " and "))}).Error())
	}
	state := []string{defaultStateDirectory}
	if v := os.Getenv("STATE_DIRECTORY"); v != "" {
		state = strings.Split(v, ":")
	}
	if storage := cfg.Global.ACME.Storage; len(cfg.ACMENames()) > 0 && !within(storage, state) {
		out = append(out, (&config.Error{File: cfg.File, Line: cfg.Line("global", "acme-storage"), Section: "global", Key: "acme-storage",
			Msg: fmt.Sprintf("%s is outside %s: under the unit's ProtectSystem=strict hipsterd cannot keep its certificates there (leave acme-storage out, or add its directory to ReadWritePaths=)",
				storage, strings.Join(state, " and "))}).Error())
	}
	return out
}

// defaultStateDirectory is where the shipped unit keeps hipsterd's state
// (StateDirectory=hipsterd), writable under ProtectSystem=strict.
const defaultStateDirectory = "/var/lib/hipsterd"

// within reports whether path (relative to the working directory) lies in
// one of dirs.
func within(path string, dirs []string) bool {
	abs, err := filepath.Abs(path)
	if err != nil {
		return false
	}
	for _, d := range dirs {
		if rel, err := filepath.Rel(filepath.Clean(d), abs); err == nil && rel != ".." && !strings.HasPrefix(rel, "../") {
			return true
		}
	}
	return false
}
