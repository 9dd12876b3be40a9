package config

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/hipsterd/hipsterd/internal/testcert"
)

func TestACME(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	root, _ := testcert.Files(t, dir, "ca.test")
	c, err := parse(t, `
[global]
acme-ca = https://127.0.0.1:14000/dir
acme-ca-root = `+root+`
acme-email = admin@example.com
acme-storage = /srv/acme

[frontend http]
bind = :80
redirect-https = true

[frontend https]
bind = :443
https = true
hosts = example.com www.example.com:443 static.example.com

[host example.com www.example.com:443]
acme = true
backends = b

[host static.example.com]
backends = b

[backend b]
connect = 127.0.0.1:8000
`)
	if err != nil {
		t.Fatal(err)
	}
	want := ACME{CA: "https://127.0.0.1:14000/dir", CARoot: root, Email: "admin@example.com", Storage: "/srv/acme"}
	if c.Global.ACME != want {
		t.Errorf("[global] ACME = %+v, want %+v", c.Global.ACME, want)
	}
	if !c.HostFor("example.com").ACME || c.HostFor("static.example.com").ACME {
		t.Errorf("acme of the hosts: %v, %v", c.HostFor("example.com").ACME, c.HostFor("static.example.com").ACME)
	}
	if got := c.ACMENames(); !reflect.DeepEqual(got, []string{"example.com", "www.example.com"}) {
		t.Errorf("ACMENames = %q", got)
	}
}

func TestACMEDefaults(t *testing.T) {
	// Not parallel: it sets STATE_DIRECTORY.
	src := "[frontend f]\nbind = :80\nhosts = a.example\n[host a.example]\nacme = true\nbackends = b\n[backend b]\nconnect = x\n"
	t.Setenv("STATE_DIRECTORY", "")
	c, err := parse(t, src)
	if err != nil {
		t.Fatal(err)
	}
	if want := (ACME{CA: DefaultACMECA, Storage: "/var/lib/hipsterd/acme"}); c.Global.ACME != want {
		t.Errorf("outside systemd: %+v, want %+v", c.Global.ACME, want)
	}
	t.Setenv("STATE_DIRECTORY", "/var/lib/hipsterd:/var/lib/other")
	c, err = parse(t, src)
	if err != nil {
		t.Fatal(err)
	}
	if c.Global.ACME.Storage != "/var/lib/hipsterd/acme" {
		t.Errorf("under systemd: acme-storage = %q", c.Global.ACME.Storage)
	}
	t.Setenv("STATE_DIRECTORY", "/run/state")
	if c, _ = parse(t, src); c.Global.ACME.Storage != "/run/state/acme" {
		t.Errorf("STATE_DIRECTORY=/run/state: acme-storage = %q", c.Global.ACME.Storage)
	}
}

func TestACMEErrors(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	cert, key := testcert.Files(t, dir, "localhost")
	notPEM := filepath.Join(dir, "not.pem")
	os.WriteFile(notPEM, []byte("hello"), 0o644)
	const backend = "[backend b]\nconnect = 127.0.0.1:8000\n"
	const plain = "[frontend web]\nbind = :80\nhosts = a.example\n"
	tests := []struct {
		name string
		src  string
		want []string
	}{
		{"wildcard", plain + "[host a.example *.a.example]\nacme = true\nbackends = b\n" + backend,
			[]string{"[host a.example *.a.example] acme:", `"*.a.example" is a wildcard`, "DNS-01"}},
		{"acme and files", plain + "[host a.example]\nacme = true\ncertfile = " + cert + "\nkeyfile = " + key + "\nbackends = b\n" + backend,
			[]string{"[host a.example] acme:", "certfile/keyfile"}},
		{"not a public name", plain + "[host a.example localhost]\nacme = true\nbackends = b\n" + backend,
			[]string{"[host a.example localhost] acme:", `"localhost" is not a name`}},
		{"bad bool", plain + "[host a.example]\nacme = yes please\nbackends = b\n" + backend,
			[]string{"[host a.example] acme:", "not a boolean"}},
		{"acme on a frontend", "[frontend web]\nbind = :80\nbackends = b\nacme = true\n" + backend,
			[]string{"[frontend web] acme: unknown key", "belongs in a [host] section"}},
		{"ca not https", "[global]\nacme-ca = http://ca.example/dir\n" + plain + "[host a.example]\nbackends = b\n" + backend,
			[]string{"[global] acme-ca:", `"http://ca.example/dir" is not an https:// URL`}},
		{"ca root missing", "[global]\nacme-ca-root = /nonexistent/root.pem\n" + plain + "[host a.example]\nbackends = b\n" + backend,
			[]string{"[global] acme-ca-root:", "cannot read /nonexistent/root.pem"}},
		{"ca root not PEM", "[global]\nacme-ca-root = " + notPEM + "\n" + plain + "[host a.example]\nbackends = b\n" + backend,
			[]string{"[global] acme-ca-root:", "holds no PEM certificate"}},
		{"bad email", "[global]\nacme-email = Admin <admin@example.com>\n" + plain + "[host a.example]\nbackends = b\n" + backend,
			[]string{"[global] acme-email:", "is not an e-mail address"}},
		{"relative storage", "[global]\nacme-storage = state/acme\n" + plain + "[host a.example]\nbackends = b\n" + backend,
			[]string{"[global] acme-storage:", `"state/acme" is not an absolute path`}},
		{"no challenge possible", "[frontend tls]\nbind = :443\nhttps = true\ncertfile = " + cert + "\nkeyfile = " + key + "\nhosts = b.example\n[host b.example]\nbackends = b\n[host a.example]\nacme = true\nbackends = b\n" + backend,
			[]string{"[host a.example] acme:", "no frontend can answer the CA's challenge"}},
		{"https without files nor acme host", "[frontend tls]\nbind = :443\nhttps = true\nhosts = a.example\n[host a.example]\nbackends = b\n" + backend,
			[]string{"[frontend tls] certfile: missing"}},
		{"acme key in a frontend's place", "[frontend tls]\nbind = :443\nhttps = true\nhosts = a.example\ncertfile = " + cert + "\n[host a.example]\nacme = true\nbackends = b\n" + backend,
			[]string{"[frontend tls] keyfile: missing"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c, err := parse(t, tc.src)
			if err == nil {
				t.Fatalf("no error; config %+v", c)
			}
			line := firstMatching(err.Error(), tc.want[0])
			if line == "" {
				t.Fatalf("no error line contains %q:\n%v", tc.want[0], err)
			}
			rest := line
			for _, w := range tc.want {
				i := strings.Index(rest, w)
				if i < 0 {
					t.Fatalf("error line %q lacks %q", line, w)
				}
				rest = rest[i+len(w):]
			}
		})
	}
}

func TestACMEHTTPSWithoutFiles(t *testing.T) {
	t.Parallel()
	// TLS-ALPN-01 alone: an https frontend listing the host needs no files,
	// and no plain-HTTP frontend is needed.
	_, err := parse(t, "[frontend tls]\nbind = :443\nhttps = true\nhosts = a.example\n[host a.example]\nacme = true\nbackends = b\n[backend b]\nconnect = x\n")
	if err != nil {
		t.Fatal(err)
	}
}

func TestLoadChecksACMEStorage(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	file := filepath.Join(dir, "file")
	os.WriteFile(file, nil, 0o644)
	src := func(storage string) string {
		return "[global]\nacme-storage = " + storage + "\n[frontend f]\nbind = :80\nhosts = a.example\n[host a.example]\nacme = true\nbackends = b\n[backend b]\nconnect = x\n"
	}
	for _, tc := range []struct {
		storage, want string
	}{
		{filepath.Join(dir, "new", "acme"), ""},
		{filepath.Join(file, "acme"), "not a directory"},
	} {
		path := filepath.Join(t.TempDir(), "h.ini")
		os.WriteFile(path, []byte(src(tc.storage)), 0o644)
		_, err := Load(path)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("acme-storage = %s: %v", tc.storage, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), "[global] acme-storage: "+tc.storage) || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("acme-storage = %s: error %v, want one with %q", tc.storage, err, tc.want)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "new")); err == nil {
		t.Error("Load created the storage directory")
	}
}

func TestACMEHostServedNowhere(t *testing.T) {
	t.Parallel()
	c, err := parse(t, "[frontend web]\nbind = :80\nhosts = a.example\n[host a.example]\nacme = true\nbackends = b\n[backend b]\nconnect = x\n")
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Warnings) != 1 || !strings.Contains(c.Warnings[0], "[host a.example] acme: no https frontend lists the host") {
		t.Errorf("warnings: %q", c.Warnings)
	}
}
