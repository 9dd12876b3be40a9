package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestMakeInstall builds, then installs into a temporary DESTDIR without Go
// (as `sudo make install` runs, with no Go in root's PATH), and checks what
// landed: the binary runs, the installed config passes -t, the logrotate
// script signals hipsterd and fails when that fails, and systemd accepts
// the unit (when systemd-analyze is on the machine).
func TestMakeInstall(t *testing.T) {
	t.Parallel()
	if _, err := exec.LookPath("make"); err != nil {
		t.Skip("no make")
	}
	dest := t.TempDir()
	logDir := filepath.Join(dest, "logs")
	if out, err := exec.Command("make", "-C", "../..", "build").CombinedOutput(); err != nil {
		t.Fatalf("make build: %v\n%s", err, out)
	}
	cmd := exec.Command("make", "-C", "../..", "install", "GO=/nonexistent/go", "DESTDIR="+dest, "PREFIX=/usr", "LOGDIR="+logDir)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("make install: %v\n%s", err, out)
	}
	files := map[string]os.FileMode{
		"usr/bin/hipsterd":                        0o755,
		"etc/hipsterd/hipsterd.ini":               0o644,
		"usr/lib/systemd/system/hipsterd.service": 0o644,
		"usr/lib/sysusers.d/hipsterd.conf":        0o644,
		"etc/logrotate.d/hipsterd":                0o644,
		"usr/share/man/man8/hipsterd.8":           0o644,
		"usr/share/man/man5/hipsterd.ini.5":       0o644,
	}
	for name, mode := range files {
		fi, err := os.Stat(filepath.Join(dest, name))
		if err != nil {
			t.Errorf("%s not installed: %v", name, err)
			continue
		}
		if fi.Mode().Perm() != mode {
			t.Errorf("%s has mode %v, want %v", name, fi.Mode().Perm(), mode)
		}
	}
	if fi, err := os.Stat(filepath.Join(dest, logDir)); err != nil || !fi.IsDir() || fi.Mode().Perm() != 0o750 {
		t.Errorf("LOGDIR not installed as a 0750 directory: %v %v", fi, err)
	}
	// LOGDIR names the directory on the target system, which DESTDIR
	// stands for; -t checks that the access log can be written there.
	if err := os.MkdirAll(logDir, 0o750); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dest, "usr/bin/hipsterd")
	conf := filepath.Join(dest, "etc/hipsterd/hipsterd.ini")
	out, err := exec.Command(bin, "-t", "-config", conf).CombinedOutput()
	if err != nil || string(out) != "configuration OK\n" {
		t.Errorf("installed config: %v %s", err, out)
	}
	if data, _ := os.ReadFile(conf); !strings.Contains(string(data), "accesslog = "+logDir+"/access.log") {
		t.Errorf("installed config does not log to %s:\n%s", logDir, data)
	} else if !strings.Contains(string(data), "man hipsterd.ini") {
		t.Errorf("installed config is not the commented sample configs/hipsterd.ini:\n%s", data)
	}
	checkVersion(t, bin)
	unit, err := os.ReadFile(filepath.Join(dest, "usr/lib/systemd/system/hipsterd.service"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"Type=notify", "ExecStartPre=/usr/bin/hipsterd -t -config /etc/hipsterd/hipsterd.ini", "ExecReload=/bin/kill -HUP $MAINPID"} {
		if !strings.Contains(string(unit), want) {
			t.Errorf("unit lacks %q", want)
		}
	}
	rotate, _ := os.ReadFile(filepath.Join(dest, "etc/logrotate.d/hipsterd"))
	if !strings.Contains(string(rotate), logDir+"/*.log") || !strings.Contains(string(rotate), "create 0640 hipsterd hipsterd") {
		t.Errorf("logrotate file:\n%s", rotate)
	}
	checkPostrotate(t, string(rotate))

	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Log("systemd-analyze not found; unit not verified")
		return
	}
	// verify checks that the commands exist: point them at the DESTDIR.
	local := filepath.Join(t.TempDir(), "hipsterd.service")
	if err := os.WriteFile(local, []byte(strings.ReplaceAll(string(unit), "/usr/bin/hipsterd", bin)), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(analyze, "verify", local).CombinedOutput(); err != nil || len(out) > 0 {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
}

// checkVersion checks that the binary make built names the release in
// VERSION and, where git is at hand, the commit of the checkout.
func checkVersion(t *testing.T, bin string) {
	t.Helper()
	release, err := os.ReadFile("../../VERSION")
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(bin, "-version").Output()
	if err != nil {
		t.Fatalf("%s -version: %v", bin, err)
	}
	want := "hipsterd " + strings.TrimSpace(string(release)) + " ("
	if !strings.HasPrefix(string(out), want) {
		t.Errorf("-version printed %q, want it to start with %q", out, want)
	}
	head, err := exec.Command("git", "rev-parse", "--short=12", "HEAD").Output()
	if err != nil {
		t.Logf("no git commit to compare -version with: %v", err)
		return
	}
	if commit := strings.TrimSpace(string(head)); !strings.HasPrefix(string(out), want+commit) {
		t.Errorf("-version printed %q, want the commit %s", out, commit)
	}
}

// checkPostrotate runs the logrotate file's postrotate script, as logrotate
// does (sh -c), against a stand-in systemctl: it signals only the main
// process, with options every systemd accepts, and a failure to signal
// fails the script.
func checkPostrotate(t *testing.T, rotate string) {
	t.Helper()
	_, rest, ok1 := strings.Cut(rotate, "postrotate\n")
	script, _, ok2 := strings.Cut(rest, "endscript")
	if !ok1 || !ok2 {
		t.Fatalf("no postrotate script in:\n%s", rotate)
	}
	for _, tc := range []struct {
		name             string
		active, killExit int
		wantExit         int
		wantKill         bool
	}{
		{"running", 0, 0, 0, true},
		{"signal fails", 0, 1, 1, true},
		{"stopped", 3, 0, 0, false},
	} {
		bin := t.TempDir()
		calls := filepath.Join(bin, "calls")
		fake := fmt.Sprintf("#!/bin/sh\necho \"$*\" >> %s\ncase \"$*\" in *is-active*) exit %d;; *kill*) echo 'Failed to kill unit' >&2; exit %d;; esac\n", calls, tc.active, tc.killExit)
		if tc.killExit == 0 {
			fake = strings.Replace(fake, "echo 'Failed to kill unit' >&2; ", "", 1)
		}
		if err := os.WriteFile(filepath.Join(bin, "systemctl"), []byte(fake), 0o755); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command("/bin/sh", "-c", script)
		cmd.Env = append(os.Environ(), "PATH="+bin+":"+os.Getenv("PATH"))
		out, err := cmd.CombinedOutput()
		exit := 0
		if ee, ok := err.(*exec.ExitError); ok {
			exit = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		data, _ := os.ReadFile(calls)
		killed := strings.Contains(string(data), "kill --signal=USR1 --kill-who=main hipsterd.service")
		if (exit != 0) != (tc.wantExit != 0) || killed != tc.wantKill {
			t.Errorf("postrotate, %s: exit %d, systemctl called with %q; want exit %d and kill %v", tc.name, exit, data, tc.wantExit, tc.wantKill)
		}
		if tc.killExit != 0 && !strings.Contains(string(out), "Failed to kill unit") {
			t.Errorf("postrotate, %s: systemctl's error hidden; output %q", tc.name, out)
		}
	}
}
