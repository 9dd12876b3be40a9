// Package hipsterd holds the release version. It is read from the file
// VERSION, which the Makefile and the Debian package read too, so that a
// release is named in one place.
package hipsterd

import (
	_ "embed"
	"strings"
)

//go:embed VERSION
var versionFile string

// Version is the release version, X.Y.Z.
var Version = strings.TrimSpace(versionFile)
