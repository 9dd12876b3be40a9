package upstream

import (
	"bufio"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/textproto"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// expectContinueTimeout is how long the body of a request with Expect:
// 100-continue waits for the backend's 100 Continue before it is sent
// anyway, as net/http's Transport does by default: some backends never
// send one.
const expectContinueTimeout = time.Second

// errBodyNotSent is a body not sent: the backend gave its final answer to
// a head that asked for 100 Continue.
var errBodyNotSent = errors.New("final response before 100 Continue: body not sent")

// expectsContinue reports whether req asks for 100 Continue before its
// body.
func expectsContinue(req *http.Request) bool {
	for _, v := range req.Header["Expect"] {
		if strings.EqualFold(textproto.TrimString(v), "100-continue") {
			return true
		}
	}
	return false
}

// bodyWriter sends a request body while the response is awaited.
type bodyWriter struct {
	conn net.Conn
	done chan struct{} // closed when the body is sent or failed
	err  error         // set before done closes
	// client tells that err is the client's (reading its body failed).
	client bool
	// cont, for a request with Expect: 100-continue, gets true when the
	// backend asks for the body, false when it answered without it; nil
	// for other requests.
	cont chan bool
	// asked is set once cont got its one value.
	asked atomic.Bool

	mu       sync.Mutex
	response bool // the response header came
	finished bool // err is set: done closes
	// kept is the connection whose response was read whole before the
	// body was done: the writer keeps it if the body goes out whole.
	kept *h1Conn
}

// run sends req's body on pc (for Expect: 100-continue, once the backend
// asks for it), then arms the response timeout, unless the response came
// first. A client whose body breaks before the answer came aborts the
// exchange: the backend got a truncated request. So does a backend that
// takes no byte of the body for the response timeout, before answering:
// the upload would otherwise stall for ever, and the wait for its answer
// with it.
func (w *bodyWriter) run(t *h1Transport, pc *h1Conn, req *http.Request) {
	client, err := false, w.awaitContinue(req)
	if err == nil {
		client, err = writeBody(pc.bw, req, pc.Conn, t.timeout)
	}
	if err == nil {
		err = pc.bw.Flush()
	}
	w.mu.Lock()
	w.err, w.client = err, client
	switch {
	case err == nil && !w.response && t.timeout > 0:
		pc.SetReadDeadline(time.Now().Add(t.timeout))
		if req.Context().Err() != nil {
			pc.abort() // the client left as the deadline was set
		}
	case !client && IsTimeout(err) && !w.response:
		pc.abort()
	}
	// Once the answer came, it is passed on whole: a body that broke
	// only keeps the connection from being reused.
	abort := client && !w.response
	w.finished = true
	kept := w.kept
	w.mu.Unlock()
	close(w.done)
	switch {
	case abort:
		pc.abort()
	case kept != nil && err == nil:
		t.keep(kept)
	case kept != nil:
		kept.Close()
	}
}

// awaitContinue waits, for a request with Expect: 100-continue, until the
// backend asks for the body, or expectContinueTimeout passes; it fails if
// the backend answered without it, or the client left.
func (w *bodyWriter) awaitContinue(req *http.Request) error {
	if w.cont == nil {
		return nil
	}
	timer := time.NewTimer(expectContinueTimeout)
	defer timer.Stop()
	select {
	case send := <-w.cont:
		if !send {
			return errBodyNotSent
		}
	case <-timer.C:
	case <-req.Context().Done():
		return req.Context().Err()
	}
	return nil
}

// proceed tells a writer that awaits 100 Continue whether to send the
// body; only the first word counts.
func (w *bodyWriter) proceed(send bool) {
	if w.cont != nil && w.asked.CompareAndSwap(false, true) {
		w.cont <- send
	}
}

// answered tells the writer that the response header came; the response
// timeout no longer applies, and a body still awaiting 100 Continue is not
// sent.
func (w *bodyWriter) answered() {
	w.proceed(false)
	w.mu.Lock()
	w.response = true
	w.conn.SetReadDeadline(time.Time{})
	w.mu.Unlock()
}

// keepAfter is called when the response was read whole. A writer still at
// work takes pc (taken), to keep it once the body went out whole; a write
// blocked on a backend that reads no more of it fails now, which closes pc.
// Otherwise sent reports whether the whole body went out.
func (w *bodyWriter) keepAfter(pc *h1Conn) (taken, sent bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.finished {
		w.kept = pc
		pc.SetWriteDeadline(time.Unix(1, 0))
		return true, false
	}
	return false, w.err == nil
}

// clientErr is the client's error, if its body failed already.
func (w *bodyWriter) clientErr() error {
	if w == nil {
		return nil
	}
	select {
	case <-w.done:
		if w.client {
			return &ClientError{w.err}
		}
	default:
	}
	return nil
}

// writeBody copies req's body to bw, chunked when its length is unknown,
// with its trailers; client reports that err came from reading the body.
// Each write to conn, bw's connection, must make progress within timeout
// (0: no limit); the client's pace does not count.
func writeBody(bw *bufio.Writer, req *http.Request, conn net.Conn, timeout time.Duration) (client bool, err error) {
	buf := bufferPool.Get()
	defer bufferPool.Put(buf)
	var dst io.Writer = bw
	var cw io.WriteCloser
	if req.ContentLength < 0 {
		cw = httputil.NewChunkedWriter(bw)
		dst = cw
	}
	for {
		n, rerr := req.Body.Read(buf)
		if n > 0 {
			if err := armWrite(conn, req, timeout); err != nil {
				return false, err
			}
			if _, err := dst.Write(buf[:n]); err != nil {
				return false, err
			}
			// A streamed upload reaches the backend as it comes.
			if err := bw.Flush(); err != nil {
				return false, err
			}
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			return true, rerr
		}
	}
	if cw == nil {
		return false, nil
	}
	// The client may have taken its time to end the body.
	if err := armWrite(conn, req, timeout); err != nil {
		return false, err
	}
	if err := cw.Close(); err != nil {
		return false, err
	}
	for k, vv := range req.Trailer {
		k = http.CanonicalHeaderKey(k)
		if dropTrailer(k) {
			continue
		}
		for _, v := range vv {
			writeField(bw, k, v)
		}
	}
	_, err = bw.WriteString("\r\n")
	return false, err
}

// armWrite gives the next write of req's body to conn timeout to make
// progress (0: no limit), unless the client left meanwhile: the deadline
// in the past that aborted the exchange must not be undone.
func armWrite(conn net.Conn, req *http.Request, timeout time.Duration) error {
	if timeout <= 0 {
		return nil
	}
	conn.SetWriteDeadline(time.Now().Add(timeout))
	return req.Context().Err()
}

// trailersDropped are the fields a request trailer may not set (RFC 9110
// §6.5.1): a backend that merges trailers into the header would take them
// for what routed, framed or forwarded the request, which hipsterd checked
// or wrote in the head. Keys are canonical.
var trailersDropped = []string{
	"Authorization", "Cache-Control", "Connection", "Content-Encoding",
	"Content-Length", "Content-Range", "Content-Type", "Cookie", "Expect",
	"Forwarded", "Host", "If-Match", "If-Modified-Since", "If-None-Match",
	"If-Range", "If-Unmodified-Since", "Keep-Alive", "Max-Forwards", "Pragma",
	"Proxy-Authorization", "Proxy-Connection", "Range", "Te", "Trailer",
	"Transfer-Encoding", "Upgrade", "Via", "X-Forwarded-For",
	"X-Forwarded-Host", "X-Forwarded-Proto", "X-Real-Ip",
}

// dropTrailer reports whether the request trailer field k (canonical) is
// left out.
func dropTrailer(k string) bool { return slices.Contains(trailersDropped, k) }

// newlineToSpace keeps a header value on its line, as net/http does.
var newlineToSpace = strings.NewReplacer("\r", " ", "\n", " ")

// keysPool lends writeRequest a slice to sort header names in.
var keysPool = sync.Pool{New: func() any { s := make([]string, 0, 32); return &s }}

// writeRequest writes req's head as net/http's Transport does (Request.write):
// the request line with URL.RequestURI, Host, User-Agent, the framing
// headers, then the other headers sorted by name, values trimmed and on
// one line.
func writeRequest(w *bufio.Writer, req *http.Request) {
	// No CONNECT comes here: the proxy answers it 405.
	uri := req.URL.RequestURI()
	w.WriteString(req.Method)
	w.WriteByte(' ')
	w.WriteString(uri)
	w.WriteString(" HTTP/1.1\r\nHost: ")
	host := req.Host
	if host == "" {
		host = req.URL.Host
	}
	w.WriteString(host)
	w.WriteString("\r\n")
	// ReverseProxy sets an empty User-Agent to mean "send none".
	if ua := req.Header.Get("User-Agent"); ua != "" {
		writeField(w, "User-Agent", ua)
	}
	switch body := hasBody(req); {
	case body && req.ContentLength > 0:
		w.WriteString("Content-Length: ")
		w.Write(strconv.AppendInt(w.AvailableBuffer(), req.ContentLength, 10))
		w.WriteString("\r\n")
	case body:
		w.WriteString("Transfer-Encoding: chunked\r\n")
	case req.Method == "POST" || req.Method == "PUT" || req.Method == "PATCH":
		// As net/http does: servers expect a length for these methods.
		w.WriteString("Content-Length: 0\r\n")
	}
	if len(req.Trailer) > 0 && hasBody(req) && req.ContentLength < 0 {
		names := make([]string, 0, len(req.Trailer))
		for k := range req.Trailer {
			if k = http.CanonicalHeaderKey(k); !dropTrailer(k) {
				names = append(names, k)
			}
		}
		if len(names) > 0 {
			slices.Sort(names)
			writeField(w, "Trailer", strings.Join(names, ","))
		}
	}
	kp := keysPool.Get().(*[]string)
	keys := (*kp)[:0]
	for k := range req.Header {
		switch k {
		case "Host", "User-Agent", "Content-Length", "Transfer-Encoding", "Trailer":
			continue
		}
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		for _, v := range req.Header[k] {
			writeField(w, k, v)
		}
	}
	clear(keys)
	*kp = keys[:0]
	keysPool.Put(kp)
	w.WriteString("\r\n")
}

func writeField(w *bufio.Writer, k, v string) {
	if strings.ContainsAny(v, "\r\n") {
		v = newlineToSpace.Replace(v)
	}
	w.WriteString(k)
	w.WriteString(": ")
	w.WriteString(textproto.TrimString(v))
	w.WriteString("\r\n")
}
