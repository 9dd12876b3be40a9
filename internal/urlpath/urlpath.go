// Package urlpath puts a request path in the form a backend reads it, so
// that routes match what the backend will serve, however the client dressed
// the path: percent-encoded unreserved characters decoded (RFC 3986,
// section 6.2.2.2), runs of / merged into one, and dot-segments removed
// (section 5.2.4).
package urlpath

import (
	"errors"
	"strings"
)

// Errors of Normalize.
var (
	ErrNotAbsolute = errors.New("the path does not start with /")
	ErrBadEscape   = errors.New("the path has a % not followed by two hexadecimal digits")
	ErrAboveRoot   = errors.New("the path's .. segments climb above /")
)

// Normalize returns the escaped path p in normal form: every
// percent-encoded unreserved character (letters, digits, - . _ ~) decoded,
// other escapes with upper-case digits, runs of / merged, "." and ".."
// segments resolved. Slashes are merged, as nginx does for its locations,
// because most backends (nginx, Apache, Tomcat, Go's path.Clean, Python's
// http.server) read //admin as /admin: a route that left it unmatched
// would let /admin's requests go where /admin's rules do not apply.
// A path already normal is returned as it is, without allocating. A ..
// above the root is an error, as nginx makes it, rather than dropped: such
// a path was written to probe, not to be served.
func Normalize(p string) (string, error) {
	if p == "" || p[0] != '/' {
		return "", ErrNotAbsolute
	}
	if !strings.Contains(p, "%") && !strings.Contains(p, "//") && !hasDotSegment(p) {
		return p, nil
	}
	if strings.Contains(p, "%") {
		var err error
		if p, err = decodeUnreserved(p); err != nil {
			return "", err
		}
	}
	if strings.Contains(p, "//") {
		p = mergeSlashes(p)
	}
	if !hasDotSegment(p) {
		return p, nil
	}
	return removeDotSegments(p)
}

// Match reports whether the normal path p is under prefix, a normal path:
// prefix itself, or prefix followed by a / (or any path, if prefix ends
// in /). It returns the path after the prefix, at least "/".
func Match(p, prefix string) (rest string, ok bool) {
	if !strings.HasPrefix(p, prefix) {
		return "", false
	}
	if len(p) != len(prefix) && prefix[len(prefix)-1] != '/' && p[len(prefix)] != '/' {
		return "", false
	}
	rest = p[len(strings.TrimSuffix(prefix, "/")):]
	if rest == "" {
		rest = "/"
	}
	return rest, true
}

func mergeSlashes(p string) string {
	var b strings.Builder
	b.Grow(len(p))
	for i := 0; i < len(p); i++ {
		if p[i] == '/' && i > 0 && p[i-1] == '/' {
			continue
		}
		b.WriteByte(p[i])
	}
	return b.String()
}

func hasDotSegment(p string) bool {
	for i := 0; i < len(p); i++ {
		if p[i] != '/' || i+1 >= len(p) || p[i+1] != '.' {
			continue
		}
		j := i + 2
		if j < len(p) && p[j] == '.' {
			j++
		}
		if j == len(p) || p[j] == '/' {
			return true
		}
	}
	return false
}

func unhex(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10, true
	case 'A' <= c && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}

func unreserved(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' ||
		c == '-' || c == '.' || c == '_' || c == '~'
}

const upperHex = "0123456789ABCDEF"

func decodeUnreserved(p string) (string, error) {
	var b strings.Builder
	b.Grow(len(p))
	for i := 0; i < len(p); i++ {
		if p[i] != '%' {
			b.WriteByte(p[i])
			continue
		}
		if i+2 >= len(p) {
			return "", ErrBadEscape
		}
		hi, ok1 := unhex(p[i+1])
		lo, ok2 := unhex(p[i+2])
		if !ok1 || !ok2 {
			return "", ErrBadEscape
		}
		if c := hi<<4 | lo; unreserved(c) {
			b.WriteByte(c)
		} else {
			b.WriteByte('%')
			b.WriteByte(upperHex[hi])
			b.WriteByte(upperHex[lo])
		}
		i += 2
	}
	return b.String(), nil
}

func removeDotSegments(p string) (string, error) {
	segs := strings.Split(p[1:], "/")
	out := segs[:0]
	for i, s := range segs {
		last := i == len(segs)-1
		switch s {
		case ".":
		case "..":
			if len(out) == 0 {
				return "", ErrAboveRoot
			}
			out = out[:len(out)-1]
		default:
			out = append(out, s)
			continue
		}
		// "/a/." and "/a/b/.." name a directory: the trailing / stays.
		if last {
			out = append(out, "")
		}
	}
	return "/" + strings.Join(out, "/"), nil
}
