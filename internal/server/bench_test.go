package server

import (
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/hipsterd/hipsterd/internal/config"
)

// BenchmarkProxyRequest is a full proxied request through loopback: client,
// hipsterd, backend, all keep-alive, with the access log off and on.
func BenchmarkProxyRequest(b *testing.B) {
	body := make([]byte, 100)
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Write(body)
	}))
	defer backend.Close()
	for _, tc := range []struct{ name, global string }{
		{"nolog", ""},
		{"accesslog", "[global]\naccesslog = " + b.TempDir() + "/access.log\n"},
	} {
		b.Run(tc.name, func(b *testing.B) {
			cfg, err := config.Parse("bench.ini", []byte(tc.global+"[frontend f]\nbind = 127.0.0.1:0\nbackends = a\n[backend a]\nconnect = "+backend.Listener.Addr().String()+"\n"))
			if err != nil {
				b.Fatal(err)
			}
			s := New(slog.New(slog.NewTextHandler(io.Discard, nil)))
			if err := s.Start(cfg); err != nil {
				b.Fatal(err)
			}
			defer s.Shutdown(b.Context())
			url := "http://" + s.Addrs()["f"].String() + "/small"
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
}
