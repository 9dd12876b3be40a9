package sdnotify

import (
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestNotify(t *testing.T) {
	for _, abstract := range []bool{false, true} {
		name := filepath.Join(t.TempDir(), "notify")
		addr := name
		if abstract {
			addr = "@hipsterd-test-" + filepath.Base(t.TempDir())
			name = "\x00" + addr[1:]
		}
		sock, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: name, Net: "unixgram"})
		if err != nil {
			t.Fatal(err)
		}
		t.Setenv("NOTIFY_SOCKET", addr)
		for _, state := range []string{Ready, Reloading(), Stopping, Ready + "\n" + Status("serving 1 frontend")} {
			if err := Notify(state); err != nil {
				t.Fatalf("%s: %v", addr, err)
			}
			buf := make([]byte, 256)
			sock.SetReadDeadline(time.Now().Add(10 * time.Second))
			n, err := sock.Read(buf)
			if err != nil || string(buf[:n]) != state {
				t.Errorf("%s: got %q, %v; want %q", addr, buf[:n], err, state)
			}
		}
		sock.Close()
	}
	if s := Reloading(); !strings.HasPrefix(s, "RELOADING=1\nMONOTONIC_USEC=") || strings.HasSuffix(s, "=0") {
		t.Errorf("Reloading() = %q", s)
	}
	if s := Status("reload failed:\n  bad\tkey "); s != "STATUS=reload failed: bad key" {
		t.Errorf("Status() = %q, want one line", s)
	}
	t.Setenv("NOTIFY_SOCKET", "")
	if err := Notify(Ready); err != nil {
		t.Errorf("without NOTIFY_SOCKET: %v", err)
	}
}
