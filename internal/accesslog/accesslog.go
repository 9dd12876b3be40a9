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
// Lines are formatted without a lock into pooled buffers and appended to a
// buffered file, flushed at least every second, on Reopen and on Close.
package accesslog

import (
	"bufio"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/hipsterd/hipsterd/internal/exchange"
)

// FlushInterval bounds how long a line may sit in memory before it is written.
const FlushInterval = time.Second

// StatusClientGone is logged, as nginx does, for a request whose client went
// away before any response was sent.
const StatusClientGone = 499

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
type File struct {
	path string

	mu sync.Mutex
	f  *os.File
	w  *bufio.Writer

	stop chan struct{}
	done chan struct{}
}

// Open opens path for appending, creating it with FileMode if missing.
func Open(path string) (*File, error) {
	f, err := openFile(path)
	if err != nil {
		return nil, err
	}
	lf := &File{
		path: path,
		f:    f,
		w:    bufio.NewWriterSize(f, 64*1024),
		stop: make(chan struct{}),
		done: make(chan struct{}),
	}
	go lf.flushLoop()
	return lf, nil
}

func openFile(path string) (*os.File, error) {
	return os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, FileMode)
}

func (lf *File) flushLoop() {
	defer close(lf.done)
	t := time.NewTicker(FlushInterval)
	defer t.Stop()
	for {
		select {
		case <-lf.stop:
			return
		case <-t.C:
			lf.mu.Lock()
			lf.w.Flush()
			lf.mu.Unlock()
		}
	}
}

func (lf *File) write(line []byte) {
	lf.mu.Lock()
	lf.w.Write(line)
	lf.mu.Unlock()
}

// Reopen flushes the lines so far to the current file and continues in a
// freshly opened file at the same path, as logrotate expects after it
// renamed the file. If the new file cannot be opened, logging continues in
// the old one and the error is returned.
func (lf *File) Reopen() error {
	f, err := openFile(lf.path)
	if err != nil {
		return err
	}
	lf.mu.Lock()
	defer lf.mu.Unlock()
	flushErr := lf.w.Flush()
	old := lf.f
	lf.f = f
	lf.w.Reset(f)
	old.Close()
	return flushErr
}

// Close flushes and closes the file. No line may be written after it.
func (lf *File) Close() error {
	close(lf.stop)
	<-lf.done
	lf.mu.Lock()
	defer lf.mu.Unlock()
	err := lf.w.Flush()
	if cerr := lf.f.Close(); err == nil {
		err = cerr
	}
	return err
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

// Handler wraps next so that every request it serves is logged. For the JSON
// format it also puts an exchange.Info in the request's context (unless one
// is there already), for the backend pool to fill in.
func (l *Logger) Handler(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rw := &ResponseWriter{ResponseWriter: w, l: l, r: r}
		if l.format == JSON {
			rw.start = time.Now()
			if rw.info = exchange.FromContext(r.Context()); rw.info == nil {
				rw.info = &rw.ownInfo
				r = r.WithContext(exchange.NewContext(r.Context(), rw.info))
				rw.r = r
			}
		}
		// Deferred, so that a handler that aborts with a panic (as
		// ReverseProxy does when a response body breaks) is logged too.
		defer rw.log()
		next.ServeHTTP(rw, r)
	})
}

func (rw *ResponseWriter) log() {
	if rw.detached {
		return
	}
	status := rw.status
	if status == 0 {
		if rw.r.Context().Err() != nil {
			status = StatusClientGone
		} else {
			status = http.StatusOK
		}
	}
	req := rw.request()
	rw.l.write(&req, status, rw.bytes)
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
	info                                 *exchange.Info
}

func requestOf(r *http.Request) request {
	return request{remoteAddr: r.RemoteAddr, host: r.Host, method: r.Method, uri: r.RequestURI, proto: r.Proto}
}

// request returns what the line of rw's request tells.
func (rw *ResponseWriter) request() request {
	req := requestOf(rw.r)
	if rw.l.format != Hipster {
		h := rw.r.Header
		req.referer, req.userAgent = h.Get("Referer"), h.Get("User-Agent")
	}
	if rw.l.format == JSON {
		req.requestID = rw.r.Header.Get("X-Request-Id")
		req.start, req.info = rw.start, rw.info
	}
	return req
}

// ResponseWriter records the status and the body size of a response. Unwrap
// keeps the wrapped writer's Flush and Hijack reachable through
// http.ResponseController.
type ResponseWriter struct {
	http.ResponseWriter
	status   int
	bytes    int64
	l        *Logger
	r        *http.Request
	detached bool
	// For the JSON format: when the request came, and what it met on the
	// backend side (ownInfo, unless an outer handler provided one).
	start   time.Time
	info    *exchange.Info
	ownInfo exchange.Info
}

func (rw *ResponseWriter) WriteHeader(code int) {
	// 1xx responses other than 101 are interim; the final status follows.
	if rw.status == 0 && (code >= 200 || code == http.StatusSwitchingProtocols) {
		rw.status = code
	}
	rw.ResponseWriter.WriteHeader(code)
}

func (rw *ResponseWriter) Write(p []byte) (int, error) {
	if rw.status == 0 {
		rw.status = http.StatusOK
	}
	n, err := rw.ResponseWriter.Write(p)
	rw.bytes += int64(n)
	return n, err
}

// Unwrap returns the wrapped writer, for http.ResponseController.
func (rw *ResponseWriter) Unwrap() http.ResponseWriter { return rw.ResponseWriter }

// Detach leaves the line of a request whose hijacked connection outlives
// its handler to the function it returns, called when the connection has
// closed with the status sent on it and the bytes sent to the client. The
// duration logged is then the tunnel's lifetime.
func (rw *ResponseWriter) Detach() func(status int, bytesToClient int64) {
	rw.detached = true
	l, req := rw.l, rw.request()
	return func(status int, n int64) { l.write(&req, status, n) }
}
