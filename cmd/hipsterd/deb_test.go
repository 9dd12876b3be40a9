package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/hipsterd/hipsterd"
)

// TestDebianPackage builds the .deb with make deb, installs it with dpkg on
// this machine, runs the installed hipsterd -t on the installed config as
// the service's user, installs it again over an edited config, then purges
// it and checks that nothing of it is left but the user hipsterd, which
// Debian's policy lets a package leave. It changes the machine, so it runs
// alone: not in parallel, and under a lock that other test processes (other
// checkouts' make test) take too. It needs root and dpkg, and fails without
// them, saying so.
func TestDebianPackage(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("TestDebianPackage installs the .deb with dpkg -i: run the tests as root (CI does)")
	}
	for _, tool := range []string{"dpkg", "dpkg-deb", "make"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("TestDebianPackage needs %s, on a Debian machine: %v", tool, err)
		}
	}
	lock, err := os.OpenFile("/tmp/hipsterd-deb-test.lock", os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	if installed() {
		t.Fatal("the package hipsterd is installed on this machine, and this test would purge it: dpkg --purge hipsterd first")
	}

	dir := t.TempDir()
	mustRun(t, "make", "-C", "../..", "deb", "DEBDIR="+dir)
	arch := strings.TrimSpace(mustRun(t, "dpkg", "--print-architecture"))
	deb := filepath.Join(dir, "hipsterd_"+hipsterd.Version+"_"+arch+".deb")
	if got := mustRun(t, "dpkg-deb", "-f", deb, "Package", "Version", "Architecture"); got != "Package: hipsterd\nVersion: "+hipsterd.Version+"\nArchitecture: "+arch+"\n" {
		t.Errorf("control fields:\n%s", got)
	}
	if got := mustRun(t, "dpkg-deb", "-I", deb, "conffiles"); got != "/etc/hipsterd/hipsterd.ini\n/etc/logrotate.d/hipsterd\n" {
		t.Errorf("conffiles:\n%s", got)
	}
	var files, dirs []string
	for line := range strings.Lines(mustRun(t, "dpkg-deb", "-c", deb)) {
		fields := strings.Fields(line)
		path := strings.TrimPrefix(fields[len(fields)-1], ".")
		if strings.HasPrefix(fields[0], "d") {
			dirs = append(dirs, strings.TrimSuffix(path, "/"))
		} else {
			files = append(files, path)
		}
	}
	for _, want := range []string{
		"/usr/bin/hipsterd", "/etc/hipsterd/hipsterd.ini", "/usr/lib/systemd/system/hipsterd.service",
		"/usr/lib/sysusers.d/hipsterd.conf", "/etc/logrotate.d/hipsterd",
		"/usr/share/man/man8/hipsterd.8.gz", "/usr/share/man/man5/hipsterd.ini.5.gz",
		"/usr/share/doc/hipsterd/copyright",
	} {
		if !slices.Contains(files, want) {
			t.Errorf("the package lacks %s", want)
		}
	}
	if !slices.Contains(dirs, "/var/log/hipsterd") {
		t.Error("the package lacks /var/log/hipsterd")
	}

	t.Cleanup(func() {
		if installed() {
			exec.Command("dpkg", "--purge", "hipsterd").Run()
		}
	})
	mustRun(t, "dpkg", "-i", deb)
	for _, f := range files {
		if _, err := os.Stat(f); err != nil {
			t.Errorf("after dpkg -i: %v", err)
		}
	}
	uid := strings.Split(strings.TrimSpace(mustRun(t, "getent", "passwd", "hipsterd")), ":")[2]
	if fi, err := os.Stat("/var/log/hipsterd"); err != nil {
		t.Error(err)
	} else if st := fi.Sys().(*syscall.Stat_t); strconv.Itoa(int(st.Uid)) != uid || fi.Mode().Perm() != 0o750 {
		t.Errorf("/var/log/hipsterd: owner %d mode %v; want the user hipsterd (%s) and 0750", st.Uid, fi.Mode().Perm(), uid)
	}
	// Enabled and started by nobody.
	if links, _ := filepath.Glob("/etc/systemd/system/*/hipsterd.service"); len(links) > 0 {
		t.Errorf("the service was enabled: %v", links)
	}
	if pids := running("/usr/bin/hipsterd"); len(pids) > 0 {
		t.Errorf("hipsterd was started: pids %v", pids)
	}
	if got := mustRun(t, "/usr/bin/hipsterd", "-version"); !strings.HasPrefix(got, "hipsterd "+hipsterd.Version+" (") {
		t.Errorf("installed hipsterd -version: %q", got)
	}
	// The unit runs -t as the user hipsterd: the access log must be its to write.
	check := exec.Command("runuser", "-u", "hipsterd", "--", "/usr/bin/hipsterd", "-t", "-config", "/etc/hipsterd/hipsterd.ini")
	var stderr bytes.Buffer
	check.Stderr = &stderr
	if out, err := check.Output(); err != nil || string(out) != "configuration OK\n" {
		t.Errorf("installed hipsterd -t on the installed config, as hipsterd: %v, %q\n%s", err, out, stderr.Bytes())
	}

	// Installed again (as an upgrade runs the scripts), the administrator's
	// edit of the config stays, and so do the logs.
	conf, err := os.ReadFile("/etc/hipsterd/hipsterd.ini")
	if err != nil {
		t.Fatal(err)
	}
	edited := append(conf, "; edited by TestDebianPackage\n"...)
	if err := os.WriteFile("/etc/hipsterd/hipsterd.ini", edited, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile("/var/log/hipsterd/access.log", []byte("a line\n"), 0o640); err != nil {
		t.Fatal(err)
	}
	mustRun(t, "dpkg", "-i", deb)
	if got, _ := os.ReadFile("/etc/hipsterd/hipsterd.ini"); !bytes.Equal(got, edited) {
		t.Error("installing again replaced the edited /etc/hipsterd/hipsterd.ini")
	}
	if _, err := os.Stat("/var/log/hipsterd/access.log"); err != nil {
		t.Errorf("installing again: %v", err)
	}

	mustRun(t, "dpkg", "--purge", "hipsterd")
	if installed() {
		t.Error("hipsterd is still installed after dpkg --purge")
	}
	for _, f := range files {
		if _, err := os.Lstat(f); err == nil {
			t.Errorf("%s is left after dpkg --purge", f)
		}
	}
	for _, d := range dirs {
		if strings.Contains(d, "hipsterd") {
			if _, err := os.Lstat(d); err == nil {
				t.Errorf("%s is left after dpkg --purge", d)
			}
		}
	}
	t.Logf("the user hipsterd (uid %s) stays after purge, as Debian's policy allows", uid)
}

// installed reports whether dpkg has the package hipsterd installed.
func installed() bool {
	out, err := exec.Command("dpkg-query", "-W", "-f", "${db:Status-Status}", "hipsterd").Output()
	return err == nil && string(out) == "installed"
}

// running returns the pids of the processes running exe.
func running(exe string) []string {
	var pids []string
	procs, _ := filepath.Glob("/proc/[0-9]*/exe")
	for _, p := range procs {
		if target, err := os.Readlink(p); err == nil && target == exe {
			pids = append(pids, filepath.Base(filepath.Dir(p)))
		}
	}
	return pids
}

func mustRun(t *testing.T, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s%s", name, strings.Join(args, " "), err, out, stderr.Bytes())
	}
	return string(out)
}

// TestDebPostinstCreatesTheUser runs the package's postinst against
// stand-in commands, on a machine without the user hipsterd: it creates the
// user with systemd-sysusers where that is installed, else adduser, else
// useradd, and, with systemd not running, calls no systemctl.
func TestDebPostinstCreatesTheUser(t *testing.T) {
	t.Parallel()
	systemd := false
	if _, err := os.Stat("/run/systemd/system"); err == nil {
		systemd = true
	}
	for _, tc := range []struct {
		tools []string
		want  string
	}{
		{[]string{"systemd-sysusers", "adduser", "useradd"}, "systemd-sysusers /usr/lib/sysusers.d/hipsterd.conf"},
		{[]string{"adduser", "useradd"}, "adduser --system --group"},
		{[]string{"useradd"}, "useradd --system --user-group"},
	} {
		bin := t.TempDir()
		calls := filepath.Join(bin, "calls")
		stub := func(name, script string) {
			if err := os.WriteFile(filepath.Join(bin, name), []byte("#!/bin/sh\necho \""+name+" $*\" >> "+calls+"\n"+script), 0o755); err != nil {
				t.Fatal(err)
			}
		}
		stub("getent", "exit 2\n") // no such user
		for _, name := range append(tc.tools, "chown", "chmod", "systemctl") {
			stub(name, "")
		}
		cmd := exec.Command("/bin/sh", "../../packaging/deb/postinst", "configure", "")
		cmd.Env = []string{"PATH=" + bin}
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("postinst with %v: %v\n%s", tc.tools, err, out)
			continue
		}
		got, _ := os.ReadFile(calls)
		if !strings.Contains(string(got), "\n"+tc.want) || strings.Count(string(got), "hipsterd") < 3 {
			t.Errorf("postinst with %v ran:\n%s\nwant %q, then chown and chmod of /var/log/hipsterd", tc.tools, got, tc.want)
		}
		if !systemd && strings.Contains(string(got), "systemctl") {
			t.Errorf("postinst called systemctl where systemd is not running:\n%s", got)
		}
	}
}
