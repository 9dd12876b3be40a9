package server

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/hipsterd/hipsterd/internal/testcert"
	"github.com/hipsterd/hipsterd/internal/testutil"
)

// Many keep-alive clients at once, over plain and TLS frontends, whose
// requests take random times around bgReadWait at the backend, so that
// net/http's background reads are called off just before, as and after
// their wait runs out; some clients send two requests at once, some leave
// mid-request. Every client that waits gets its own answers, in order,
// and every connection ends (none is held by a background read that was
// never woken).
func TestBackgroundReadsUnderLoad(t *testing.T) {
	t.Parallel()
	cert, key := testcert.Files(t, t.TempDir(), "localhost")
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		d, _ := strconv.Atoi(r.URL.Query().Get("d"))
		select {
		case <-time.After(time.Duration(d) * time.Millisecond): // a slow backend
		case <-r.Context().Done():
			return
		}
		io.WriteString(w, r.URL.RequestURI())
	}))
	t.Cleanup(backend.Close)
	s, addrs := start(t, fmt.Sprintf(`
[frontend plain]
bind = 127.0.0.1:0
backends = b
[frontend tls]
bind = 127.0.0.1:0
backends = b
https = true
certfile = %s
keyfile = %s
http2 = false
[backend b]
connect = %s
`, cert, key, backend.Listener.Addr()))
	const clients, ops = 16, 6
	dial := func(fe string) (net.Conn, error) {
		if fe == "tls" {
			return tls.Dial("tcp", addrs[fe], &tls.Config{RootCAs: testcert.Pool(t, cert), ServerName: "localhost"})
		}
		return net.Dial("tcp", addrs[fe])
	}
	errs := make(chan error, 2*clients)
	var wg sync.WaitGroup
	for _, fe := range []string{"plain", "tls"} {
		for i := range clients {
			wg.Go(func() {
				var c net.Conn
				var br *bufio.Reader
				defer func() {
					if c != nil {
						c.Close()
					}
				}()
				read := func(want string) error {
					resp, err := http.ReadResponse(br, nil)
					if err != nil {
						return err
					}
					body, err := io.ReadAll(resp.Body)
					if err != nil || string(body) != want {
						return fmt.Errorf("%d %q, %v; want %q", resp.StatusCode, body, err, want)
					}
					return nil
				}
				for j := range ops {
					if c == nil {
						var err error
						if c, err = dial(fe); err != nil {
							errs <- err
							return
						}
						c.SetDeadline(time.Now().Add(testutil.Patience))
						br = bufio.NewReader(c)
					}
					uri := func(k int) string {
						return fmt.Sprintf("/%s/%d/%d/%d?d=%d", fe, i, j, k, 30+rand.IntN(40))
					}
					a, b := uri(0), uri(1)
					switch rand.IntN(4) {
					case 0: // two at once
						fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: x\r\n\r\nGET %s HTTP/1.1\r\nHost: x\r\n\r\n", a, b)
						if err := read(a); err != nil {
							errs <- fmt.Errorf("%s: %v", a, err)
							return
						}
						if err := read(b); err != nil {
							errs <- fmt.Errorf("%s: %v", b, err)
							return
						}
					case 1: // leaves mid-request, at a random moment
						fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: x\r\n\r\n", a)
						time.Sleep(rand.N(80 * time.Millisecond)) // a random moment, not a synchronisation
						c.Close()
						c = nil
					default:
						fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: x\r\n\r\n", a)
						if err := read(a); err != nil {
							errs <- fmt.Errorf("%s: %v", a, err)
							return
						}
					}
				}
			})
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	for _, fe := range []string{"plain", "tls"} {
		testutil.Eventually(t, fe+": every client connection closed", func() bool {
			// net/http's count: a connection whose background read is
			// never woken is never closed.
			for _, c := range s.connCounts() {
				if c.Frontend == fe {
					return c.Open == 0
				}
			}
			return false
		})
	}
}
