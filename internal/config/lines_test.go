package config

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"gopkg.in/ini.v1"
)

// errorLines parses src and returns its errors, one a line.
func errorLines(t *testing.T, src string) []string {
	t.Helper()
	_, err := parse(t, src)
	if err == nil {
		t.Fatal("no error")
	}
	return strings.Split(err.Error(), "\n")
}

// TestErrorLines checks that errors name the line at fault, whatever
// ini.v1 syntax lies before it: comments, continuations, values in
// triple quotes, keys in other cases, repeated sections.
func TestErrorLines(t *testing.T) {
	t.Parallel()
	src := `; a comment
# another

[global]
Idle-Timeout = soon
[frontend web]
bind = :9000
backends = app \
    missing \
    other
banner = """first
second"""
hosts = a.com
BALANCE = random

[host a.com]
backends = app
[host b.com]
backends = app
weight = 2

[backend app]
connect = 127.0.0.1:1
  connect-timeout = 5

[Backend  app]
connect = 127.0.0.1:2
[backend other]
connect = 127.0.0.1:3
Connect = 127.0.0.1:4
connect = 127.0.0.1:3
[frontnd x]
[frontnd x]
`
	got := errorLines(t, src)
	for _, want := range []string{
		`test.ini:5: [global] idle-timeout: "soon" is not a duration (write it as 500ms, 5s, 2m or 1h30m)`,
		`test.ini:8: [frontend web] backends: unknown backend "missing"`,
		`test.ini:11: [frontend web] banner: unknown key`,
		`test.ini:14: [frontend web] balance: "random" is not roundrobin, leastconn or source`,
		`test.ini:20: [host b.com] weight: unknown key (weight belongs in a [backend] section)`,
		`test.ini:24: [backend app] connect-timeout: "5" is not a duration (write it as 500ms, 5s, 2m or 1h30m)`,
		`test.ini:26: [Backend  app]: section defined twice (first at line 22)`,
		`test.ini:30: [backend other] connect: key set 3 times (lines 29, 30 and 31); set it once`,
		`test.ini:32: [frontnd x]: unknown section type "frontnd" (did you mean "frontend"?) (sections are global, frontend NAME, host NAME…, backend NAME, route NAME)`,
		`test.ini:33: [frontnd x]: unknown section type "frontnd" (did you mean "frontend"?) (sections are global, frontend NAME, host NAME…, backend NAME, route NAME)`,
	} {
		if !slices.Contains(got, want) {
			t.Errorf("no error line\n%s\nin\n%s", want, strings.Join(got, "\n"))
		}
	}
}

// TestErrorLinesAfterResolve checks errors found once every section is read,
// and those of a section whose duplicate comes first in the file's order
// of checks, point at the section in force.
func TestErrorLinesAfterResolve(t *testing.T) {
	t.Parallel()
	got := errorLines(t, `[frontend a]
bind = :9000
backends = b
[frontend b]
backends = b
bind = 127.0.0.1:9000
[frontend b]
bind = :1
[backend b]
connect = x
`)
	for _, want := range []string{
		`test.ini:6: [frontend b] bind: "127.0.0.1:9000" conflicts with [frontend a]'s ":9000" (a wildcard takes its port on every address of its family)`,
		`test.ini:7: [frontend b]: section defined twice (first at line 4)`,
	} {
		if !slices.Contains(got, want) {
			t.Errorf("no error line\n%s\nin\n%s", want, strings.Join(got, "\n"))
		}
	}
}

func TestErrorLineless(t *testing.T) {
	t.Parallel()
	e := &Error{File: "x.ini", Section: "global", Key: "stats", Msg: "bad"}
	if got := e.Error(); got != "x.ini: [global] stats: bad" {
		t.Errorf("without a line: %q", got)
	}
	e.Line = 7
	if got := e.Error(); got != "x.ini:7: [global] stats: bad" {
		t.Errorf("with a line: %q", got)
	}
}

func TestSyntaxErrorLines(t *testing.T) {
	t.Parallel()
	tests := []struct{ name, src, want string }{
		{"no delimiter", "[frontend f]\nbind = :1\n\njust words\n", `test.ini:4: not a valid INI file: no "=" between key and value: "just words"`},
		{"no key name", "[frontend f]\n= :1\n", `test.ini:2: not a valid INI file: no key name before the "=": "= :1"`},
		{"unclosed quote", "[frontend f]\nbind = :1\nbackends = \"\"\"a\nb\n", `test.ini:3: not a valid INI file: value opened with """ on line 3 is never closed`},
		{"empty section", "[frontend f]\nbind = :1\n[]\n", `test.ini:3: not a valid INI file: empty section name []`},
		{"after continuation", "[frontend f]\nbackends = a \\\n b \\\n c\nnope\n", `test.ini:5: not a valid INI file: no "=" between key and value: "nope"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			if got := errorLines(t, tc.src); len(got) != 1 || got[0] != tc.want {
				t.Errorf("got\n%s\nwant\n%s", strings.Join(got, "\n"), tc.want)
			}
		})
	}
}

// TestLinesAgreeWithINI checks the line index against ini.v1 on syntax it
// accepts: the same sections, in order, with the same keys.
func TestLinesAgreeWithINI(t *testing.T) {
	t.Parallel()
	src := "\ufeffearly = 1\n[frontend f] ; comment\nbind = :1 ; a comment\n`quoted` = \"x\"\n\"key\" = 1\nbackends = `a\nb`\nlong = a \\\n c \\\n\n- = auto\n- = auto2\nmulti = \"\"\"x\n[not a section]\n\"\"\"\n  [backend b]\nconnect: x\n[frontend f]\nBind = 2\n"
	x := checkIndexAgrees(t, []byte(src))
	if x == nil {
		t.Fatal("ini.v1 refused the file")
	}
	want := map[string]int{"bind": 3, "quoted": 4, "key": 5, "backends": 6, "long": 8, "#1": 11, "#2": 12, "multi": 13}
	sec := x.sections["frontend f"]
	if len(sec) != 2 || sec[0].header != 2 || sec[1].header != 18 {
		t.Fatalf("frontend f: %+v", sec)
	}
	for k, line := range want {
		if got := sec[0].keys[k]; len(got) != 1 || got[0] != line {
			t.Errorf("%s: lines %v, want [%d]", k, got, line)
		}
	}
	if b := x.sections["backend b"]; len(b) != 1 || b[0].header != 16 || b[0].keys["connect"][0] != 17 {
		t.Errorf("backend b: %+v", b[0])
	}
	if got := x.sections[""][0].keys["early"]; len(got) != 1 || got[0] != 1 {
		t.Errorf("early: %v", got)
	}
}

// checkIndexAgrees checks that the line index of data finds what ini.v1
// does: a syntax error where ini.v1 refuses the file, else the same
// sections, in order, with the same keys. It returns the index, nil when
// ini.v1 refuses the file.
func checkIndexAgrees(t *testing.T, data []byte) *lineIndex {
	t.Helper()
	x, bad := indexLines(data)
	f, err := ini.LoadSources(iniOptions, data)
	if err != nil {
		if bad == nil {
			t.Fatalf("ini.v1 refuses the file (%v), the line index does not", err)
		}
		return nil
	}
	if bad != nil {
		t.Fatalf("the line index refuses the file (line %d: %s), ini.v1 does not", bad.line, bad.msg)
	}
	n := map[string]int{}
	for _, sec := range f.Sections() {
		key := sectionKey(sec.Name())
		occ := x.sections[key]
		if n[key] >= len(occ) {
			t.Fatalf("[%s]: not in the index", sec.Name())
		}
		lines := occ[n[key]]
		n[key]++
		var got []string
		for k := range lines.keys {
			got = append(got, k)
		}
		slices.Sort(got)
		want := sec.KeyStrings()
		slices.Sort(want)
		if !slices.Equal(got, want) {
			t.Fatalf("[%s]: keys %q, ini.v1 has %q", sec.Name(), got, want)
		}
	}
	for key, occ := range x.sections {
		if n[key] != len(occ) {
			t.Fatalf("%q: %d sections in the index, %d in ini.v1", key, len(occ), n[key])
		}
	}
	return x
}

func TestNotText(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		data string
		want string
	}{
		{"NUL", "[global]\n\n\x00\x01ELF", "test.ini: not a text file (NUL byte at line 3)"},
		{"control", "[frontend f]\nbind = \x1b[31m:1\n", "test.ini: not a text file (control character U+001B at line 2)"},
		{"lone CR", "[frontend f]\rbind = :1\n", "test.ini: not a text file (control character U+000D at line 1)"},
		{"latin-1", "# caf\xe9\n[frontend f]\n\n[frontend caf\xe9]\n", "test.ini:1: byte 0xe9 is not UTF-8: save the file as UTF-8"},
		{"UTF-16", "\xff\xfe[\x00g\x00]\x00", "test.ini: not a text file (NUL byte at line 1)"},
		{"C1 control", "[frontend f]\n\u009b31m\n", "test.ini: not a text file (control character U+009B at line 2)"},
		{"binary after bad bytes", "\xe9\n\x00", "test.ini: not a text file (NUL byte at line 2)"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			if got := errorLines(t, tc.data); len(got) != 1 || got[0] != tc.want {
				t.Errorf("got %q, want %q", got, tc.want)
			}
		})
	}
	// Text in other scripts, tabs and CRLF line ends are text.
	if _, err := parse(t, "# café, 東京\r\n[frontend f]\r\nbind\t= :1\r\nbackends = b\r\n[backend b]\r\nconnect = x\r\n"); err != nil {
		t.Errorf("text refused: %v", err)
	}
}

func TestNoFrontend(t *testing.T) {
	t.Parallel()
	for _, src := range []string{"", "\n# nothing\n", "[global]\n", "[global]\nstats = 127.0.0.1:8404\n[backend b]\nconnect = x\n"} {
		got := errorLines(t, src)
		if !slices.Contains(got, "test.ini: no [frontend] section: hipsterd would listen nowhere") {
			t.Errorf("%q: %q", src, got)
		}
	}
	// A frontend section with its own problems is a frontend section.
	got := errorLines(t, "[frontend]\nbind = :1\n")
	if len(got) != 1 || !strings.Contains(got[0], "exactly one name") {
		t.Errorf("nameless frontend: %q", got)
	}
}

func TestUnusedWarnings(t *testing.T) {
	t.Parallel()
	c, err := parse(t, `[frontend web]
bind = :9000
hosts = a.com
[frontend db]
bind = :9001
mode = tcp
backends = pg
hosts = c.com
[host a.com]
backends = app
[host b.com B2.com]
backends = old
[host c.com]
backends = viahost
[backend app]
connect = x
[backend old]
connect = x
[backend pg]
connect = x
[backend viahost]
connect = x
[backend spare]
connect = x
`)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"test.ini:11: [host b.com B2.com]: not used: no frontend lists these names in its hosts",
		"test.ini:17: [backend old]: not used: no frontend names it in backends, nor any [host] section an http frontend lists, nor any [route] a frontend lists",
		"test.ini:21: [backend viahost]: not used: no frontend names it in backends, nor any [host] section an http frontend lists, nor any [route] a frontend lists",
		"test.ini:23: [backend spare]: not used: no frontend names it in backends, nor any [host] section an http frontend lists, nor any [route] a frontend lists",
	}
	for _, w := range want {
		if !slices.Contains(c.Warnings, w) {
			t.Errorf("no warning\n%s\nin\n%s", w, strings.Join(c.Warnings, "\n"))
		}
	}
	for _, w := range c.Warnings {
		if strings.Contains(w, "]: not used") && !slices.Contains(want, w) {
			t.Errorf("unexpected warning %s", w)
		}
	}
}

func TestLoadChecksBindAddress(t *testing.T) {
	t.Parallel()
	// An address of TEST-NET-3, unless this machine has it.
	const foreign = "203.0.113.77"
	if ln, err := net.Listen("tcp4", foreign+":0"); err == nil {
		ln.Close()
		t.Skipf("this machine can bind %s", foreign)
	}
	path := filepath.Join(t.TempDir(), "c.ini")
	load := func(src string) error {
		t.Helper()
		if err := os.WriteFile(path, []byte(src+"[backend b]\nconnect = x\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		_, err := Load(path)
		return err
	}
	// A port in use on the address is start's concern, not -t's: the
	// address is the machine's.
	busy, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	for _, bind := range []string{"*:9000", "0.0.0.0:9000", "[::]:9000", "127.0.0.2:9000", busy.Addr().String()} {
		if err := load("[frontend f]\nbind = " + bind + "\nbackends = b\n"); err != nil {
			t.Errorf("bind = %s: %v", bind, err)
		}
	}
	err = load("[global]\nstats = " + foreign + ":8404\n[frontend f]\nbind = " + foreign + ":9000\nbackends = b\n")
	var es Errors
	if !errors.As(err, &es) || len(es) != 2 {
		t.Fatalf("err = %v, want two errors", err)
	}
	for i, want := range []string{
		path + `:2: [global] stats: "` + foreign + `:8404": this machine has no address ` + foreign,
		path + `:4: [frontend f] bind: "` + foreign + `:9000": this machine has no address ` + foreign,
	} {
		if got := es[i].Error(); got != want {
			t.Errorf("got  %s\nwant %s", got, want)
		}
	}
	// Parse looks at nothing on the machine.
	if _, err := Parse(path, []byte("[frontend f]\nbind = "+foreign+":9000\nbackends = b\n[backend b]\nconnect = x\n")); err != nil {
		t.Errorf("Parse: %v", err)
	}
}

// TestConfigLine places problems found after loading.
func TestConfigLine(t *testing.T) {
	t.Parallel()
	c, err := parse(t, "[global]\naccesslog = /tmp/a.log\n\n[Frontend  web]\nbind = :1\nbackends = b\n[backend b]\nconnect = x\n")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		section, key string
		want         int
	}{
		{"global", "accesslog", 2},
		{"global", "stats", 1},
		{"frontend web", "BIND", 5},
		{"backend b", "", 7},
		{"backend none", "connect", 0},
	} {
		if got := c.Line(tc.section, tc.key); got != tc.want {
			t.Errorf("Line(%q, %q) = %d, want %d", tc.section, tc.key, got, tc.want)
		}
	}
	if got := (&Config{}).Line("global", "stats"); got != 0 {
		t.Errorf("a Config not from a file: line %d", got)
	}
}
