package main

// End-to-end tests of the event log: its flags, journald priorities, and
// the warnings of -t under systemd.

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// stderrFile is a file to give the binary as its stderr, and the
// JOURNAL_STREAM value that names it, as systemd sets it.
func stderrFile(t *testing.T) (*os.File, string) {
	t.Helper()
	f, err := os.Create(filepath.Join(t.TempDir(), "stderr"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	var st syscall.Stat_t
	if err := syscall.Fstat(int(f.Fd()), &st); err != nil {
		t.Fatal(err)
	}
	return f, fmt.Sprintf("%d:%d", st.Dev, st.Ino)
}

// runWithStderr runs the binary to completion with stderr going to a file
// and env added to its environment; it returns the exit code and stderr.
func runWithStderr(t *testing.T, env []string, args ...string) (int, string) {
	t.Helper()
	f, stream := stderrFile(t)
	cmd := exec.Command(binary, args...)
	cmd.Env = append(os.Environ(), expand(env, stream)...)
	cmd.Stderr = f
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	data, _ := os.ReadFile(f.Name())
	return code, string(data)
}

// expand replaces $STREAM in env with the JOURNAL_STREAM value of stderr.
func expand(env []string, stream string) []string {
	out := make([]string, len(env))
	for i, e := range env {
		out[i] = strings.ReplaceAll(e, "$STREAM", stream)
	}
	return out
}

// journalRun runs hipsterd with stderr in a file, lets a health check take a
// backend down (a warning), fails a reload (errors) and stops it; it
// returns stderr's lines.
func journalRun(t *testing.T, env []string, args ...string) []string {
	t.Helper()
	front, closed := freePort(t, "tcp", "127.0.0.1"), freePort(t, "tcp", "127.0.0.1")
	text := fmt.Sprintf("[frontend f]\nbind = %s\nbackends = down\n[backend down]\nconnect = %s\nhealth-check = tcp\nhealth-interval = 50ms\nhealth-fall = 1\n", front, closed)
	path := writeConfig(t, text)
	f, stream := stderrFile(t)
	cmd := exec.Command(binary, append([]string{"-config", path}, args...)...)
	cmd.Env = append(os.Environ(), expand(env, stream)...)
	cmd.Stderr = f
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() {
		cmd.Process.Kill()
		<-exited
	}()
	read := func() string {
		data, _ := os.ReadFile(f.Name())
		return string(data)
	}
	waitFile := func(substr string) {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); !strings.Contains(read(), substr); {
			if time.Now().After(deadline) {
				t.Fatalf("stderr has no %q:\n%s", substr, read())
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	waitFile("backend is DOWN")
	if err := os.WriteFile(path, []byte(text+"bakends = x\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd.Process.Signal(syscall.SIGHUP)
	waitFile("reload failed")
	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-exited:
		exited <- err
		if err != nil {
			t.Fatalf("exit: %v\n%s", err, read())
		}
	case <-time.After(20 * time.Second):
		t.Fatal("hipsterd did not exit")
	}
	return strings.Split(strings.TrimSuffix(read(), "\n"), "\n")
}

func TestJournalPriorities(t *testing.T) {
	t.Parallel()
	lines := journalRun(t, []string{"JOURNAL_STREAM=$STREAM"})
	prio := map[string]string{"level=DEBUG": "<7>", "level=INFO": "<6>", "level=WARN": "<4>", "level=ERROR": "<3>"}
	seen := map[string]bool{}
	for _, l := range lines {
		want := ""
		for level, p := range prio {
			if strings.Contains(l, " "+level+" ") {
				want = p
				seen[level] = true
			}
		}
		if want == "" || !strings.HasPrefix(l, want+"time=") {
			t.Errorf("line %q does not start with its priority", l)
		}
	}
	for _, level := range []string{"level=INFO", "level=WARN", "level=ERROR"} {
		if !seen[level] {
			t.Errorf("no %s line:\n%s", level, strings.Join(lines, "\n"))
		}
	}
}

// Outside journald (or with JOURNAL_STREAM naming another file, as when
// stderr is redirected by a process started from a unit), nothing changes.
func TestNoJournalNoPriorities(t *testing.T) {
	t.Parallel()
	for _, env := range [][]string{nil, {"JOURNAL_STREAM=1:1"}} {
		for _, l := range journalRun(t, env) {
			if !strings.HasPrefix(l, "time=") {
				t.Errorf("%v: line %q, want it to start with time=", env, l)
			}
		}
	}
}

func TestLogFlags(t *testing.T) {
	t.Parallel()
	lines := journalRun(t, []string{"JOURNAL_STREAM=$STREAM"}, "-log-format", "json", "-log-level", "warn")
	levels := map[string]bool{}
	for _, l := range lines {
		var rec struct{ Level, Msg string }
		p, rest, ok := strings.Cut(l, ">")
		if !ok || json.Unmarshal([]byte(rest), &rec) != nil {
			t.Errorf("line %q is not <N> and a JSON object", l)
			continue
		}
		if want := map[string]string{"WARN": "<4", "ERROR": "<3"}[rec.Level]; p != want {
			t.Errorf("%s line %q has priority %s>", rec.Level, l, p)
		}
		levels[rec.Level] = true
	}
	if !levels["WARN"] || !levels["ERROR"] || levels["INFO"] {
		t.Errorf("-log-level warn logged levels %v, want WARN and ERROR only:\n%s", levels, strings.Join(lines, "\n"))
	}

	good := writeConfig(t, "[frontend f]\nbind = 127.0.0.1:1\nbackends = b\n[backend b]\nconnect = 127.0.0.1:2\n")
	for _, args := range [][]string{{"-log-format", "xml"}, {"-log-level", "loud"}} {
		code, stderr := runWithStderr(t, nil, append(args, "-config", good)...)
		if code != 2 || !strings.Contains(stderr, args[0]) || !strings.Contains(stderr, "usage:") {
			t.Errorf("%v: exit %d, stderr %q; want 2 and the flag named", args, code, stderr)
		}
	}
}

// -t, as the unit's ExecStartPre, under journald: errors and warnings carry
// their priorities, and an access log that ProtectSystem=strict would make
// read-only is warned about.
func TestCheckUnderSystemd(t *testing.T) {
	t.Parallel()
	logs := t.TempDir()
	conf := func(accesslog string) string {
		return writeConfig(t, fmt.Sprintf("[global]\naccesslog = %s\n[frontend f]\nbind = 127.0.0.1:1\nbackends = b\n[backend b]\nconnect = 127.0.0.1:2\n", accesslog))
	}
	// -t checks that each access log's directory exists.
	for _, d := range []string{logs + "/sub", logs + "-old"} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() { os.RemoveAll(logs + "-old") })
	outside, inside := conf("/tmp/hipsterd-access.log"), conf(logs+"/sub/access.log")
	tests := []struct {
		name, config string
		env          []string
		warning      bool
	}{
		{"outside, under systemd", outside, []string{"INVOCATION_ID=1", "JOURNAL_STREAM=$STREAM"}, true},
		{"outside, not under systemd", outside, nil, false},
		{"in LOGS_DIRECTORY", inside, []string{"INVOCATION_ID=1", "LOGS_DIRECTORY=" + logs}, false},
		{"outside LOGS_DIRECTORY", outside, []string{"INVOCATION_ID=1", "LOGS_DIRECTORY=" + logs}, true},
		{"in a look-alike of LOGS_DIRECTORY", conf(logs + "-old/access.log"), []string{"INVOCATION_ID=1", "LOGS_DIRECTORY=" + logs}, true},
	}
	// The default, /var/log/hipsterd, where the machine has it (make
	// install creates it); tests make nothing under /var/log.
	if _, err := os.Stat("/var/log/hipsterd"); err == nil {
		tests = append(tests, struct {
			name, config string
			env          []string
			warning      bool
		}{"in the default", conf("/var/log/hipsterd/access.log"), []string{"INVOCATION_ID=1"}, false})
	}
	for _, tc := range tests {
		code, stderr := runWithStderr(t, tc.env, "-t", "-config", tc.config)
		if code != 0 {
			t.Errorf("%s: exit %d: %s", tc.name, code, stderr)
		}
		warned := strings.Contains(stderr, tc.config+":2: [global] accesslog: ") && strings.Contains(stderr, "ProtectSystem=strict")
		if warned != tc.warning {
			t.Errorf("%s: stderr %q; warning wanted: %v", tc.name, stderr, tc.warning)
		}
		if warned && strings.Contains(strings.Join(tc.env, " "), "JOURNAL_STREAM") && !strings.HasPrefix(stderr, "<4>hipsterd: warning: ") {
			t.Errorf("%s: warning %q lacks <4> under journald", tc.name, stderr)
		}
	}
	bad := writeConfig(t, "[frontend f]\nbakends = b\n")
	code, stderr := runWithStderr(t, []string{"JOURNAL_STREAM=$STREAM"}, "-t", "-config", bad)
	for _, l := range strings.Split(strings.TrimSpace(stderr), "\n") {
		if code != 1 || !strings.HasPrefix(l, "<3>hipsterd: ") {
			t.Errorf("bad config under journald: exit %d, line %q; want 1 and <3>", code, l)
		}
	}
}
