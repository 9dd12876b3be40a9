package server

import (
	"bytes"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/hipsterd/hipsterd/internal/testcert"
	"github.com/hipsterd/hipsterd/internal/testutil"
)

// BenchmarkProxyRequest is a full proxied request through loopback: client,
// hipsterd, backend, all keep-alive, with the access log off and on.
func BenchmarkProxyRequest(b *testing.B) {
	body := make([]byte, 100)
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Write(body)
	}))
	defer backend.Close()
	withAndWithoutLog(b, backend.Listener.Addr().String(), func(b *testing.B, addr string) {
		url := "http://" + addr + "/small"
		client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 16}}
		b.ReportAllocs()
		b.ResetTimer()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				resp, err := client.Get(url)
				if err != nil {
					b.Error(err)
					return
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
		})
	})
}

// withAndWithoutLog runs bench against a hipsterd frontend in front of the
// backend at backendAddr, with the access log off and on, and with the
// stats counting (and the two together).
func withAndWithoutLog(b *testing.B, backendAddr string, bench func(b *testing.B, addr string)) {
	for _, tc := range []struct{ name, global string }{
		{"nolog", ""},
		{"accesslog", "[global]\naccesslog = " + b.TempDir() + "/access.log\n"},
		{"stats", "[global]\nstats = 127.0.0.1:0\n"},
		{"stats+accesslog", "[global]\nstats = 127.0.0.1:0\naccesslog = " + b.TempDir() + "/access.log\n"},
	} {
		b.Run(tc.name, func(b *testing.B) {
			_, addrs := startQuiet(b, tc.global+"[frontend f]\nbind = 127.0.0.1:0\nbackends = a\n[backend a]\nconnect = "+backendAddr+"\n")
			bench(b, addrs["f"])
		})
	}
}

// BenchmarkProxyOnly is a proxied request with a raw-socket client and
// backend that allocate nothing, so the allocations counted are the
// proxy's own.
func BenchmarkProxyOnly(b *testing.B) {
	response := []byte("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 100\r\n\r\n" + strings.Repeat("x", 100))
	addr := testutil.Serve(testutil.Listen(b), func(c net.Conn) { rawBackend(c, response) })
	withAndWithoutLog(b, addr, benchmarkRaw)
}

// benchmarkRaw measures requests from raw-socket clients to the frontend at
// addr.
func benchmarkRaw(b *testing.B, addr string) {
	request := []byte("GET /small HTTP/1.1\r\nHost: bench\r\nUser-Agent: bench\r\nAccept: */*\r\n\r\n")
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			b.Error(err)
			return
		}
		defer c.Close()
		buf := make([]byte, 4096)
		for pb.Next() {
			if _, err := c.Write(request); err != nil {
				b.Error(err)
				return
			}
			// The response ends with the 100-byte body.
			for got := 0; ; {
				n, err := c.Read(buf[got:])
				if err != nil {
					b.Error(err)
					return
				}
				got += n
				if end := bytes.Index(buf[:got], []byte("\r\n\r\n")); end >= 0 && got >= end+4+100 {
					break
				}
			}
		}
	})
}

// BenchmarkProxyConnection is a new client connection per request
// (Connection: close), the path of the accept loop and of a connection's
// setup and end; the allocations counted include the client's dial.
func BenchmarkProxyConnection(b *testing.B) {
	response := []byte("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 100\r\n\r\n" + strings.Repeat("x", 100))
	addr := testutil.Serve(testutil.Listen(b), func(c net.Conn) { rawBackend(c, response) })
	withAndWithoutLog(b, addr, func(b *testing.B, addr string) {
		request := []byte("GET /small HTTP/1.1\r\nHost: bench\r\nUser-Agent: bench\r\nConnection: close\r\n\r\n")
		b.ReportAllocs()
		b.ResetTimer()
		b.RunParallel(func(pb *testing.PB) {
			buf := make([]byte, 4096)
			for pb.Next() {
				c, err := net.Dial("tcp", addr)
				if err != nil {
					b.Error(err)
					return
				}
				_, err = c.Write(request)
				for err == nil {
					_, err = c.Read(buf)
				}
				c.Close()
				if err != io.EOF {
					b.Error(err)
					return
				}
			}
		})
	})
}

// rawBackend answers every request head on c with response.
func rawBackend(c net.Conn, response []byte) {
	defer c.Close()
	buf := make([]byte, 4096)
	have := 0
	for {
		n, err := c.Read(buf[have:])
		if err != nil {
			return
		}
		have += n
		for {
			end := bytes.Index(buf[:have], []byte("\r\n\r\n"))
			if end < 0 {
				break
			}
			if _, err := c.Write(response); err != nil {
				return
			}
			have = copy(buf, buf[end+4:have])
		}
	}
}

// BenchmarkProxyHTTP2 is a proxied request over HTTP/2 with TLS (streams of
// a few connections at once, as browsers send them), to the raw backend of
// BenchmarkProxyOnly: the path of serveOnWorker.
func BenchmarkProxyHTTP2(b *testing.B) {
	response := []byte("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 100\r\n\r\n" + strings.Repeat("x", 100))
	addr := testutil.Serve(testutil.Listen(b), func(c net.Conn) { rawBackend(c, response) })
	cert, key := testcert.Files(b, b.TempDir(), "localhost")
	_, addrs := startQuiet(b, fmt.Sprintf("[frontend f]\nbind = 127.0.0.1:0\nhttps = true\ncertfile = %s\nkeyfile = %s\nbackends = a\n[backend a]\nconnect = %s\n", cert, key, addr))
	client := &http.Client{Transport: &http.Transport{
		TLSClientConfig:   &tls.Config{RootCAs: testcert.Pool(b, cert), ServerName: "localhost"},
		ForceAttemptHTTP2: true,
	}}
	defer client.CloseIdleConnections()
	url := "https://" + addrs["f"] + "/small"
	b.ReportAllocs()
	b.SetParallelism(8)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			resp, err := client.Get(url)
			if err != nil {
				b.Error(err)
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.ProtoMajor != 2 {
				b.Errorf("%s, want HTTP/2", resp.Proto)
				return
			}
		}
	})
}
