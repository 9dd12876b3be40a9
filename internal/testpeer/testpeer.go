// Package testpeer decides what a test does when a real peer it needs (a
// Debian package such as haproxy or chromium) is missing: in CI, where
// .ci/run installs every peer, that is a failure; elsewhere the test skips,
// saying what to install.
package testpeer

import (
	"os"
	"testing"
)

// Missing fails t under CI (CI set, as .ci/run runs) and skips it elsewhere,
// with msg either way.
func Missing(t testing.TB, msg string) {
	t.Helper()
	if os.Getenv("CI") != "" {
		t.Fatal(msg + " (CI installs it: .ci/run)")
	}
	t.Skip(msg)
}
