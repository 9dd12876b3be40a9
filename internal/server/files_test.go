package server

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/hipsterd/hipsterd/internal/config"
	"github.com/hipsterd/hipsterd/internal/testcert"
)

// The server builds its TLS from the certificate, key and CA files as they
// were read to check the configuration: files changed or gone between the
// check and the start change nothing.
func TestTLSFromCheckedFiles(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	cert, key := testcert.Files(t, dir, "localhost")
	backendCert, backendKey := testcert.Files(t, filepath.Join(dir, "backend"), "localhost")
	pair, err := tls.LoadX509KeyPair(backendCert, backendKey)
	if err != nil {
		t.Fatal(err)
	}
	backend := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "verified")
	}))
	backend.TLS = &tls.Config{Certificates: []tls.Certificate{pair}}
	backend.StartTLS()
	t.Cleanup(backend.Close)

	cfg, err := config.Parse("test.ini", []byte(fmt.Sprintf(
		"[frontend tls]\nbind = 127.0.0.1:0\nbackends = b\nhttps = true\ncertfile = %s\nkeyfile = %s\n[backend b]\nconnect = https://%s\nca-file = %s\ntls-server-name = localhost\n",
		cert, key, backend.Listener.Addr(), backendCert)))
	if err != nil {
		t.Fatal(err)
	}
	roots := testcert.Pool(t, cert)
	for _, f := range []string{cert, key, backendCert} {
		if err := os.WriteFile(f, []byte("changed after the check"), 0o600); err != nil {
			t.Fatal(err)
		}
	}

	s := New(slog.New(slog.NewTextHandler(testWriter{t}, nil)))
	if err := s.Start(cfg); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		s.Shutdown(ctx)
	})
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots, ServerName: "localhost"}}}
	defer client.CloseIdleConnections()
	resp, err := client.Get("https://" + s.Addrs()["tls"].String() + "/")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(body) != "verified" {
		t.Errorf("through the checked certificates: %d %q, want 200 verified", resp.StatusCode, body)
	}
}
