// Package accesslog writes one line per request in drunken-hipster's format:
//
//	frontend:NAME 2006/01/02 15:04:05.000000 REMOTEADDR HOST "METHOD URI PROTO" STATUS BYTES
//
// Lines are formatted without a lock into pooled buffers and appended to a
// buffered file, flushed at least every second, on Reopen and on Close.
package accesslog

import (
	"bufio"
	"net/http"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// FlushInterval bounds how long a line may sit in memory before it is written.
const FlushInterval = time.Second

// StatusClientGone is logged, as nginx does, for a request whose client went
// away before any response was sent.
const StatusClientGone = 499

// File is an access log file, shared by every frontend that logs to it.
type File struct {
	path string

	mu sync.Mutex
	f  *os.File
	w  *bufio.Writer

	stop chan struct{}
	done chan struct{}
}

// Open opens path for appending, creating it with mode 0600 if missing.
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
	return os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
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
	prefix string // "frontend:NAME "
	file   *File
}

// NewLogger returns a logger for frontend name writing to file.
func NewLogger(name string, file *File) *Logger {
	return &Logger{prefix: "frontend:" + name + " ", file: file}
}

var linePool = sync.Pool{New: func() any { b := make([]byte, 0, 256); return &b }}

// Handler wraps next so that every request it serves is logged.
func (l *Logger) Handler(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rw := &ResponseWriter{ResponseWriter: w, l: l, r: r}
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
	rw.l.write(requestOf(rw.r), status, rw.bytes)
}

func (l *Logger) write(req request, status int, n int64) {
	bp := linePool.Get().(*[]byte)
	b := appendLine((*bp)[:0], l.prefix, time.Now(), &req, status, n)
	l.file.write(b)
	*bp = b
	linePool.Put(bp)
}

// request is what a line tells of a request.
type request struct {
	remoteAddr, host, method, uri, proto string
}

func requestOf(r *http.Request) request {
	return request{r.RemoteAddr, r.Host, r.Method, r.RequestURI, r.Proto}
}

func appendLine(b []byte, prefix string, now time.Time, r *request, status int, n int64) []byte {
	b = append(b, prefix...)
	b = appendTime(b, now)
	b = append(b, ' ')
	b = append(b, r.remoteAddr...)
	b = append(b, ' ')
	if r.host == "" {
		b = append(b, '-')
	} else {
		b = append(b, r.host...)
	}
	b = append(b, " \""...)
	b = append(b, r.method...)
	b = append(b, ' ')
	b = append(b, r.uri...)
	b = append(b, ' ')
	b = append(b, r.proto...)
	b = append(b, "\" "...)
	b = strconv.AppendInt(b, int64(status), 10)
	b = append(b, ' ')
	b = strconv.AppendInt(b, n, 10)
	return append(b, '\n')
}

// second is a formatted second of the log's time stamps, kept while it
// lasts: formatting a date costs more than the rest of a line.
type second struct {
	unix int64
	text string // 2006/01/02 15:04:05
}

var lastSecond atomic.Pointer[second]

// appendTime appends now as 2006/01/02 15:04:05.000000.
func appendTime(b []byte, now time.Time) []byte {
	sec := lastSecond.Load()
	if sec == nil || sec.unix != now.Unix() {
		sec = &second{unix: now.Unix(), text: now.Format("2006/01/02 15:04:05")}
		lastSecond.Store(sec)
	}
	b = append(b, sec.text...)
	us := now.Nanosecond() / 1000
	return append(b, '.',
		byte('0'+us/100000), byte('0'+us/10000%10), byte('0'+us/1000%10),
		byte('0'+us/100%10), byte('0'+us/10%10), byte('0'+us%10))
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
// closed with the status sent on it and the bytes sent to the client.
func (rw *ResponseWriter) Detach() func(status int, bytesToClient int64) {
	rw.detached = true
	l, req := rw.l, requestOf(rw.r)
	return func(status int, n int64) { l.write(req, status, n) }
}
