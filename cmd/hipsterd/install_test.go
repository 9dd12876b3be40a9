package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestMakeInstall installs into a temporary DESTDIR and checks what landed:
// the binary runs, the installed config passes -t, and systemd accepts the
// unit (when systemd-analyze is on the machine).
func TestMakeInstall(t *testing.T) {
	t.Parallel()
	if _, err := exec.LookPath("make"); err != nil {
		t.Skip("no make")
	}
	dest := t.TempDir()
	logDir := filepath.Join(dest, "logs")
	cmd := exec.Command("make", "-C", "../..", "install", "DESTDIR="+dest, "PREFIX=/usr", "LOGDIR="+logDir)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("make install: %v\n%s", err, out)
	}
	files := map[string]os.FileMode{
		"usr/bin/hipsterd":                        0o755,
		"etc/hipsterd/hipsterd.ini":               0o644,
		"usr/lib/systemd/system/hipsterd.service": 0o644,
		"usr/lib/sysusers.d/hipsterd.conf":        0o644,
		"etc/logrotate.d/hipsterd":                0o644,
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
	}
	unit, err := os.ReadFile(filepath.Join(dest, "usr/lib/systemd/system/hipsterd.service"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"Type=notify", "ExecStartPre=/usr/bin/hipsterd -t -config /etc/hipsterd/hipsterd.ini", "ExecReload=/bin/kill -HUP $MAINPID"} {
		if !strings.Contains(string(unit), want) {
			t.Errorf("unit lacks %q", want)
		}
	}
	if rotate, _ := os.ReadFile(filepath.Join(dest, "etc/logrotate.d/hipsterd")); !strings.Contains(string(rotate), logDir+"/*.log") || !strings.Contains(string(rotate), "USR1") {
		t.Errorf("logrotate file:\n%s", rotate)
	}

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
