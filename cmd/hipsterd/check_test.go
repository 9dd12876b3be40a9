package main

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"unicode"
)

// checkFails runs -t on path and returns its stderr, failing the test unless
// it exits 1 with nothing on stdout.
func checkFails(t *testing.T, path string) string {
	t.Helper()
	code, stdout, stderr := runBinary(t, "-t", "-config", path)
	if code != 1 || stdout != "" {
		t.Errorf("-t: exit %d, stdout %q, stderr %q; want exit 1", code, stdout, stderr)
	}
	return stderr
}

// wantLines fails the test unless every line of want is a line of got.
func wantLines(t *testing.T, got string, want ...string) {
	t.Helper()
	lines := strings.Split(got, "\n")
	for _, w := range want {
		found := false
		for _, l := range lines {
			found = found || l == w
		}
		if !found {
			t.Errorf("no line\n%s\nin\n%s", w, got)
		}
	}
}

// -t names the file and line of every problem, both lines of a section
// defined twice.
func TestCheckNamesLines(t *testing.T) {
	t.Parallel()
	path := writeConfig(t, `# the site
[frontend web]
bind = 127.0.0.1:1
backends = app \
    nope

[backend app]
connect = 127.0.0.1:2
connect-timeout = soon
[backend app]
connect = 127.0.0.1:3
`)
	wantLines(t, checkFails(t, path),
		"hipsterd: "+path+`:4: [frontend web] backends: unknown backend "nope"`,
		"hipsterd: "+path+`:9: [backend app] connect-timeout: "soon" is not a duration (write it as 500ms, 5s, 2m or 1h30m)`,
		"hipsterd: "+path+`:10: [backend app]: section defined twice (first at line 7)`,
	)
}

// An empty configuration, or one without a frontend, would start a
// process that listens nowhere.
func TestCheckNoFrontend(t *testing.T) {
	t.Parallel()
	for _, src := range []string{"", "[global]\n"} {
		path := writeConfig(t, src)
		if got, want := checkFails(t, path), "hipsterd: "+path+": no [frontend] section: hipsterd would listen nowhere\n"; got != want {
			t.Errorf("%q: stderr %q, want %q", src, got, want)
		}
	}
}

// A binary file gets one short line, without its bytes.
func TestCheckBinaryFile(t *testing.T) {
	t.Parallel()
	data := make([]byte, 4096)
	copy(data, "\x7fELF\x02\x01\x01\n\n\x1b[2J")
	for i := 64; i < len(data); i++ {
		data[i] = byte(i * 7)
	}
	path := filepath.Join(t.TempDir(), "hipsterd.bin")
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	got := checkFails(t, path)
	if want := "hipsterd: " + path + ": not a text file (control character U+007F at line 1)\n"; got != want {
		t.Errorf("stderr %q, want %q", got, want)
	}
	if strings.ContainsFunc(got, func(r rune) bool { return unicode.IsControl(r) && r != '\n' }) {
		t.Errorf("a control character reached stderr: %q", got)
	}
}

// -t passes a configuration with unused sections, and says which.
func TestCheckWarnsOfUnusedSections(t *testing.T) {
	t.Parallel()
	path := writeConfig(t, `[frontend web]
bind = 127.0.0.1:1
backends = app
[host old.example.com]
backends = old
[backend app]
connect = 127.0.0.1:2
[backend old]
connect = 127.0.0.1:3
[backend spare]
connect = 127.0.0.1:4
`)
	code, stdout, stderr := runBinary(t, "-t", "-config", path)
	if code != 0 || stdout != "configuration OK\n" {
		t.Fatalf("-t: exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
	wantLines(t, stderr,
		"hipsterd: warning: "+path+":4: [host old.example.com]: not used: no frontend lists these names in its hosts",
		"hipsterd: warning: "+path+":8: [backend old]: not used: no frontend names it in backends, nor any [host] section an http frontend lists, nor any [route] a frontend lists",
		"hipsterd: warning: "+path+":10: [backend spare]: not used: no frontend names it in backends, nor any [host] section an http frontend lists, nor any [route] a frontend lists",
	)
	if n := strings.Count(stderr, "not used"); n != 3 {
		t.Errorf("%d warnings of unused sections, want 3:\n%s", n, stderr)
	}
}

// -t, and start, refuse a bind on an address this machine does not have;
// the port is not bound.
func TestCheckBindAddress(t *testing.T) {
	t.Parallel()
	const foreign = "203.0.113.77" // TEST-NET-3
	if ln, err := net.Listen("tcp4", foreign+":0"); err == nil {
		ln.Close()
		t.Skipf("this machine can bind %s", foreign)
	}
	// The port is in use: -t does not bind it, so it passes.
	busy, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	good := writeConfig(t, "[frontend local]\nbind = "+busy.Addr().String()+"\nbackends = b\n[backend b]\nconnect = 127.0.0.1:2\n")
	if code, stdout, stderr := runBinary(t, "-t", "-config", good); code != 0 {
		t.Errorf("-t on a bind whose port is taken: exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
	bad := writeConfig(t, "[frontend web]\nbind = "+foreign+":80\nbackends = b\n[backend b]\nconnect = 127.0.0.1:2\n")
	want := "hipsterd: " + bad + `:2: [frontend web] bind: "` + foreign + `:80": this machine has no address ` + foreign + "\n"
	if got := checkFails(t, bad); got != want {
		t.Errorf("-t stderr %q, want %q", got, want)
	}
	code, _, stderr := runBinary(t, "-config", bad)
	if code != 1 || stderr != want {
		t.Errorf("start: exit %d, stderr %q, want exit 1 and %q", code, stderr, want)
	}
}
