// Package accesslog writes one line per request, in one of three formats:
//
//   - Hipster, drunken-hipster's own (the default):
//     frontend:NAME 2006/01/02 15:04:05.000000 REMOTEADDR HOST "METHOD URI PROTO" STATUS BYTES
//   - Combined, NCSA combined as nginx and Apache write it, for log analysers:
//     CLIENTIP - - [02/Jan/2006:15:04:05 -0700] "METHOD URI PROTO" STATUS BYTES "REFERER" "USER-AGENT"
//   - JSON, one object per line with the backend's side of the request too.
//
// Bytes that would break a line (a quote, a backslash, control characters
// and, in the text formats, any byte outside printable ASCII) are escaped as
// nginx does: \x22 in the text formats, JSON escapes in JSON.
//
// Lines are formatted without a lock into pooled buffers and appended to the
// file's buffer in memory, which a goroutine of its own writes out at least
// every second, on Reopen and on Close (see File).
package accesslog

import (
	"bytes"
	"log/slog"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hipsterd/hipsterd/internal/exchange"
)

// FlushInterval bounds how long a line may sit in memory before it is written.
const FlushInterval = time.Second

// flushAt is how many bytes of lines wake the writer before FlushInterval.
const flushAt = 64 * 1024

// maxPending bounds the bytes of lines waiting to be written: past it, while
// the file is slow or blocked, new lines are dropped and counted as lost,
// so that nothing that logs ever waits for the disk.
const maxPending = 4 << 20

// keepBuffer is the largest buffer of lines kept for reuse once written.
const keepBuffer = 1 << 20

// errorEvery is how often, at most, a failing file is reported again while
// it keeps failing.
const errorEvery = time.Minute

// FileMode is the mode of a log file hipsterd creates (less the umask):
// readable by the log's group, as Debian's logrotate creates nginx's.
const FileMode = 0o640

// Format is the layout of a logger's lines.
type Format uint8

// The formats.
const (
	Hipster  Format = iota // drunken-hipster's line
	Combined               // NCSA combined
	JSON                   // one JSON object per line
)

// File is an access log file, shared by every frontend that logs to it,
// whatever their formats.
//
// A line is appended to a buffer in memory, never written by the one who
// logs it: a goroutine of the file's own writes the buffer out, so that a
// slow, blocked or full disk stalls no request and no tunnel reactor. A
// write that fails loses its lines, which are counted (Lost) and reported
// to the event log, once and then at most once every errorEvery while the
// failure lasts; the next write goes on with the lines logged since, so
// that the log resumes by itself once there is room again.
type File struct {
	path string
	log  *slog.Logger
	lost atomic.Uint64

	mu      sync.Mutex // guards pending, lines and kicked
	pending []byte     // lines not yet handed to the writer
	lines   int        // in pending
	kicked  bool       // the writer was woken for pending

	kick chan struct{}
	stop chan struct{}
	done chan struct{}

	fmu sync.Mutex // guards the rest; held while writing
	f   *os.File
	out []byte // the lines being written
	// midLine: a write stopped within a line, which the next one ends.
	midLine bool
	failing bool
	// reported is when the failure was last reported; lostSince counts
	// the lines lost since the failure began.
	reported  time.Time
	lostSince uint64
}

// Open opens path for appending, creating it with FileMode if missing.
// Failed writes are reported to slog's default logger.
func Open(path string) (*File, error) { return OpenLogged(path, slog.Default()) }

// OpenLogged is Open, reporting failed writes to log.
func OpenLogged(path string, log *slog.Logger) (*File, error) {
	f, err := openFile(path)
	if err != nil {
		return nil, err
	}
	lf := &File{
		path: path,
		log:  log,
		f:    f,
		kick: make(chan struct{}, 1),
		stop: make(chan struct{}),
		done: make(chan struct{}),
	}
	go lf.writeLoop()
	return lf, nil
}

func openFile(path string) (*os.File, error) {
	return os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, FileMode)
}

// Path is the file's path.
func (lf *File) Path() string { return lf.path }

// Lost is the number of lines that could not be written: dropped while the
// file was too slow to take them, or lost with a write that failed.
func (lf *File) Lost() uint64 { return lf.lost.Load() }

func (lf *File) writeLoop() {
	defer close(lf.done)
	t := time.NewTicker(FlushInterval)
	defer t.Stop()
	for {
		select {
		case <-lf.stop:
			return
		case <-t.C:
		case <-lf.kick:
		}
		lf.fmu.Lock()
		lf.flush()
		lf.fmu.Unlock()
	}
}

// write appends a line for the writer, or counts it lost if too much waits.
func (lf *File) write(line []byte) {
	lf.mu.Lock()
	if len(lf.pending)+len(line) > maxPending {
		lf.mu.Unlock()
		lf.lost.Add(1)
		return
	}
	lf.pending = append(lf.pending, line...)
	lf.lines++
	wake := len(lf.pending) >= flushAt && !lf.kicked
	lf.kicked = lf.kicked || wake
	lf.mu.Unlock()
	if wake {
		select {
		case lf.kick <- struct{}{}:
		default:
		}
	}
}

// flush writes the pending lines out, until fewer than flushAt wait. The
// caller holds fmu.
func (lf *File) flush() {
	for {
		lf.mu.Lock()
		lf.out, lf.pending = lf.pending, lf.out[:0]
		lines := lf.lines
		lf.lines, lf.kicked = 0, false
		more := false
		lf.mu.Unlock()
		if len(lf.out) > 0 {
			lf.writeOut(lines)
			lf.mu.Lock()
			more = len(lf.pending) >= flushAt
			lf.mu.Unlock()
		}
		if cap(lf.out) > keepBuffer {
			lf.out = nil // a burst's buffer is not kept
		}
		if !more {
			return
		}
	}
}

// writeOut writes lf.out, which holds lines whole lines, and accounts for
// what could not be written. The caller holds fmu.
func (lf *File) writeOut(lines int) {
	if lf.midLine {
		if _, err := lf.f.Write([]byte{'\n'}); err != nil {
			lf.failed(err, uint64(lines))
			return
		}
		lf.midLine = false
	}
	n, err := lf.f.Write(lf.out)
	if err == nil {
		if lf.failing {
			lf.failing = false
			lf.log.Info("access log: writing again", "path", lf.path, "lost", lf.lostSince)
		}
		return
	}
	lf.midLine = n > 0 && lf.out[n-1] != '\n'
	lf.failed(err, uint64(bytes.Count(lf.out[n:], []byte{'\n'})))
}

// failed counts the lines a write lost, and reports the failure unless it
// did within errorEvery. The caller holds fmu.
func (lf *File) failed(err error, lost uint64) {
	lf.lost.Add(lost)
	now := time.Now()
	if !lf.failing {
		lf.failing, lf.lostSince = true, 0
	} else if now.Sub(lf.reported) < errorEvery {
		lf.lostSince += lost
		return
	}
	lf.lostSince += lost
	lf.reported = now
	lf.log.Error("access log: cannot write; its lines are lost until it can", "path", lf.path, "err", err, "lost", lf.lostSince)
}

// Reopen writes the lines so far to the current file and continues in a
// freshly opened file at the same path, as logrotate expects after it
// renamed the file. If the new file cannot be opened, logging continues in
// the old one and the error is returned.
func (lf *File) Reopen() error {
	f, err := openFile(lf.path)
	if err != nil {
		return err
	}
	lf.fmu.Lock()
	defer lf.fmu.Unlock()
	lf.flush()
	old := lf.f
	lf.f, lf.midLine = f, false
	return old.Close()
}

// Close writes the lines so far and closes the file. No line may be
// written after it.
func (lf *File) Close() error {
	close(lf.stop)
	<-lf.done
	lf.fmu.Lock()
	defer lf.fmu.Unlock()
	lf.flush()
	return lf.f.Close()
}

// Logger writes the lines of one frontend.
type Logger struct {
	format Format
	prefix string // "frontend:NAME " (combined's for its tcp lines); JSON: the name as a JSON string
	file   *File
}

// NewLogger returns a logger for frontend name writing lines of format to
// file.
func NewLogger(name string, file *File, format Format) *Logger {
	l := &Logger{format: format, file: file}
	switch format {
	case Hipster, Combined:
		l.prefix = string(appendEscaped([]byte("frontend:"), name)) + " "
	case JSON:
		l.prefix = string(appendJSONString(nil, name))
	}
	return l
}

var linePool = sync.Pool{New: func() any { b := make([]byte, 0, 256); return &b }}

// Begin does nothing: a line is written when its exchange ends
// (exchange.Sink).
func (l *Logger) Begin(*exchange.Exchange) {}

// Tunnel does nothing: the line of a WebSocket is written when its tunnel
// has closed, with the bytes it sent and, in JSON, its lifetime.
func (l *Logger) Tunnel(*exchange.Exchange) {}

// WritesLines tells a tunnel's exchange to keep its request's line
// (exchange.LineWriter).
func (l *Logger) WritesLines() {}

// End writes the line of x: a request's, or a tcp connection's (see TCP).
func (l *Logger) End(x *exchange.Exchange) {
	if !x.HTTP() {
		l.TCP(&TCPLine{RemoteAddr: x.RemoteAddr, Backend: x.Backend, BytesIn: x.BytesIn.Load(), BytesOut: x.BytesOut,
			Duration: time.Since(x.Start), Termination: x.Termination})
		return
	}
	req := l.request(x)
	l.write(&req, x.Status(), x.BytesOut)
}

// BadRequest is the request line logged for a request that the HTTP parser
// refused, whose parts are unknown: HAProxy's word for it.
const BadRequest = "<BADREQ>"

// Refused writes the line of a request from remoteAddr that the HTTP
// parser refused, answering status with a body of n bytes, before any
// handler saw it: its request line is BadRequest - -, its host and other
// fields unknown.
func (l *Logger) Refused(remoteAddr string, status int, n int64) {
	req := request{remoteAddr: remoteAddr, method: BadRequest, uri: "-", proto: "-"}
	l.write(&req, status, n)
}

func (l *Logger) write(req *request, status int, n int64) {
	bp := linePool.Get().(*[]byte)
	b := (*bp)[:0]
	now := time.Now()
	switch l.format {
	case Combined:
		b = appendCombined(b, now, req, status, n)
	case JSON:
		b = appendJSON(b, l.prefix, now, req, status, n)
	default:
		b = appendLine(b, l.prefix, now, req, status, n)
	}
	l.file.write(b)
	*bp = b
	linePool.Put(bp)
}

// request is what a line tells of a request. The fields past proto are
// filled in only for the formats that show them.
type request struct {
	remoteAddr, host, method, uri, proto string
	referer, userAgent, requestID        string
	start                                time.Time
	x                                    *exchange.Exchange
}

func requestOf(r *http.Request) request {
	return request{remoteAddr: r.RemoteAddr, host: r.Host, method: r.Method, uri: r.RequestURI, proto: r.Proto}
}

// request returns what the line of x's request tells: its request's, or
// the Line a tunnel kept of it.
func (l *Logger) request(x *exchange.Exchange) request {
	var req request
	if r := x.Request; r != nil {
		req = requestOf(r)
		if l.format != Hipster {
			req.referer, req.userAgent = r.Header.Get("Referer"), r.Header.Get("User-Agent")
		}
		if l.format == JSON {
			req.requestID = r.Header.Get("X-Request-Id")
		}
	} else {
		req.remoteAddr = x.RemoteAddr
		if k := x.Line; k != nil {
			req.host, req.method, req.uri, req.proto = k.Host, k.Method, k.RequestURI, k.Proto
			req.referer, req.userAgent, req.requestID = k.Referer, k.UserAgent, k.RequestID
		}
	}
	if l.format == JSON {
		req.start, req.x = x.Start, x
	}
	return req
}
