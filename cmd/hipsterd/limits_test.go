package main

import (
	"strings"
	"testing"
)

func TestCheckWarnsOfNoHeaderTimeout(t *testing.T) {
	t.Parallel()
	path := writeConfig(t, "[frontend f]\nbind = 127.0.0.1:1\nbackends = b\nread-header-timeout = 0\nclient-timeout = 30s\n[backend b]\nconnect = 127.0.0.1:2\n")
	code, stdout, stderr := runBinary(t, "-t", "-config", path)
	if code != 0 || stdout != "configuration OK\n" {
		t.Errorf("-t: exit %d, stdout %q: read-header-timeout = 0 is allowed", code, stdout)
	}
	if want := path + ":4: [frontend f] read-header-timeout: 0 leaves no limit"; !strings.Contains(stderr, want) {
		t.Errorf("-t stderr %q lacks %q", stderr, want)
	}
}
