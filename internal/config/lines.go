package config

import (
	"bytes"
	"fmt"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"

	"gopkg.in/ini.v1"
)

// lineIndex tells on which line of the file each section starts and each
// key is set. gopkg.in/ini.v1 keeps no line numbers, so the file is read a
// second time here, line by line as ini.v1 reads it (LoadOptions of
// parseFile): comments, quoted key names, backslash continuations and
// """…""" or `…` values spanning lines.
type lineIndex struct {
	// sections are by canonical name (sectionKey), each occurrence in file
	// order; "" holds the keys before the first section header.
	sections map[string][]*sectionLines
}

// sectionLines is one occurrence of a section.
type sectionLines struct {
	header int              // 0 for the keys before any header
	keys   map[string][]int // by lower-case name: every line that sets it
}

// sectionKey is the name under which a section's lines are indexed: its
// type in lower case and its names, single-spaced, so that [Frontend  web]
// and "frontend web" find the same section. ini.v1's DEFAULT section (keys
// outside any section) is "".
func sectionKey(name string) string {
	if name == ini.DefaultSection {
		return ""
	}
	f := strings.Fields(name)
	if len(f) == 0 {
		return name
	}
	f[0] = strings.ToLower(f[0])
	return strings.Join(f, " ")
}

// syntaxError is a line ini.v1 would refuse.
type syntaxError struct {
	line int
	msg  string
}

// indexLines reads data as ini.v1 does, noting where each section and key
// is; the error is the first line ini.v1 would refuse.
func indexLines(data []byte) (*lineIndex, *syntaxError) {
	data = bytes.TrimPrefix(data, []byte("\ufeff"))
	x := &lineIndex{sections: map[string][]*sectionLines{}}
	sec := &sectionLines{keys: map[string][]int{}}
	x.sections[""] = []*sectionLines{sec}
	r := lineReader{data: data}
	autoIncrement := 1
	for !r.eof() {
		n, raw := r.next()
		line := strings.TrimLeftFunc(raw, unicode.IsSpace)
		switch {
		case line == "", line[0] == '#', line[0] == ';':
			continue
		case line[0] == '[':
			end := strings.LastIndexByte(line, ']')
			if end < 0 {
				return nil, &syntaxError{n, fmt.Sprintf("unclosed section header %q", strings.TrimSpace(line))}
			}
			if end == 1 {
				return nil, &syntaxError{n, "empty section name []"}
			}
			name := sectionKey(line[1:end])
			sec = &sectionLines{header: n, keys: map[string][]int{}}
			x.sections[name] = append(x.sections[name], sec)
			autoIncrement = 1
			continue
		}
		key, offset, msg := keyName(line)
		if msg != "" {
			return nil, &syntaxError{n, fmt.Sprintf("%s: %q", msg, strings.TrimSpace(line))}
		}
		if key == "-" {
			key = "#" + strconv.Itoa(autoIncrement)
			autoIncrement++
		}
		key = strings.ToLower(key)
		sec.keys[key] = append(sec.keys[key], n)
		if msg := r.skipValue(line[offset:]); msg != "" {
			return nil, &syntaxError{n, msg}
		}
	}
	return x, nil
}

// keyName reads the key name of a key line as ini.v1's readKeyName does,
// and returns where its value starts; msg says why the line is no key.
func keyName(line string) (name string, offset int, msg string) {
	quote := ""
	switch {
	case len(line) > 6 && strings.HasPrefix(line, `"""`):
		quote = `"""`
	case line[0] == '"':
		quote = `"`
	case line[0] == '`':
		quote = "`"
	}
	if quote != "" {
		start := len(quote)
		pos := strings.Index(line[start:], quote)
		if pos < 0 {
			return "", 0, "no closing quote of the key name"
		}
		pos += start
		i := strings.IndexAny(line[pos+start:], "=:")
		if i < 0 {
			return "", 0, `no "=" between key and value`
		}
		name = strings.TrimSpace(line[start:pos])
		if name == "" {
			return "", 0, "empty key name"
		}
		return name, pos + i + start + 1, ""
	}
	end := strings.IndexAny(line, "=:")
	switch {
	case end < 0:
		return "", 0, `no "=" between key and value`
	case end == 0:
		return "", 0, "no key name before the \"=\""
	}
	return strings.TrimSpace(line[:end]), end + 1, ""
}

// lineReader hands out the lines of a file with their numbers.
type lineReader struct {
	data []byte
	n    int // the number of the last line handed out
	done bool
}

func (r *lineReader) eof() bool { return r.done }

// next returns the next line, with its end of line, as bufio's
// ReadBytes('\n') does; the last one may be empty.
func (r *lineReader) next() (int, string) {
	r.n++
	i := bytes.IndexByte(r.data, '\n')
	if i < 0 {
		line := string(r.data)
		r.data, r.done = nil, true
		return r.n, line
	}
	line := string(r.data[:i+1])
	r.data = r.data[i+1:]
	return r.n, line
}

// skipValue reads past the lines a value spans, as ini.v1's readValue
// does; msg says why the value does not end.
func (r *lineReader) skipValue(in string) (msg string) {
	line := strings.TrimLeftFunc(in, unicode.IsSpace)
	if line == "" {
		return ""
	}
	quote := ""
	if len(line) > 3 && strings.HasPrefix(line, `"""`) {
		quote = `"""`
	} else if line[0] == '`' {
		quote = "`"
	}
	if quote != "" {
		if strings.Contains(line[len(quote):], quote) {
			return ""
		}
		start := r.n
		for {
			if r.eof() {
				return fmt.Sprintf("value opened with %s on line %d is never closed", quote, start)
			}
			_, next := r.next()
			pos := strings.LastIndex(next, quote)
			if pos < 0 {
				continue
			}
			rest := strings.TrimRight(next[pos+len(quote):], "\r\n")
			if !strings.HasSuffix(strings.TrimSpace(rest), `\`) {
				return ""
			}
		}
	}
	if !strings.HasSuffix(strings.TrimSpace(line), `\`) {
		return ""
	}
	// Backslash continuation: on to the first blank line or line that
	// does not end in a backslash.
	for !r.eof() {
		_, next := r.next()
		next = strings.TrimSpace(next)
		if next == "" || !strings.HasSuffix(next, `\`) {
			return ""
		}
	}
	return ""
}

// textProblem checks that data is UTF-8 text. binary says why it is not a
// text file at all: a NUL byte, or a control character other than tab or
// the CR of a CRLF; such a file is not quoted to a terminal in errors, and
// the names and values errors quote cannot move the cursor. Otherwise
// badLine is the first line holding a byte that is not UTF-8, and bad
// that byte: names become metric labels and log fields, which must be
// UTF-8.
func textProblem(data []byte) (binary string, badLine int, bad byte) {
	line := 1
	for i := 0; i < len(data); {
		c, size := utf8.DecodeRune(data[i:])
		switch {
		case c == utf8.RuneError && size == 1:
			if badLine == 0 {
				badLine, bad = line, data[i]
			}
		case c == 0:
			return fmt.Sprintf("NUL byte at line %d", line), 0, 0
		case c == '\n':
			line++
		case c == '\t' || c == '\r' && i+1 < len(data) && data[i+1] == '\n':
		case c < 0x20 || c == 0x7f || (c >= 0x80 && c < 0xa0):
			return fmt.Sprintf("control character %U at line %d", c, line), 0, 0
		}
		i += size
	}
	return "", badLine, bad
}

// occurrence is the section occurrence that errors of the section called
// name are about now; nil when the file has none.
func (p *parser) occurrence(name string) *sectionLines {
	key := sectionKey(name)
	if occ, i := p.lines.sections[key], p.occ[key]; i < len(occ) {
		return occ[i]
	}
	return nil
}

// line returns the line of key in the section called name (its first
// setting), else the section's header; 0 when neither is in the file.
func (p *parser) line(section, key string) int {
	name := sectionKey(section)
	return lineIn(p.lines.sections[name], p.occ[name], key)
}

// lineIn returns the line of key in the n-th of occurrences (its first
// setting), else that occurrence's header; 0 when neither is in the file.
func lineIn(occurrences []*sectionLines, n int, key string) int {
	if n >= len(occurrences) {
		return 0
	}
	s := occurrences[n]
	if lines := s.keys[strings.ToLower(key)]; len(lines) > 0 {
		return lines[0]
	}
	return s.header
}

// keyLines returns every line setting key in the section called name.
func (p *parser) keyLines(section, key string) []int {
	if s := p.occurrence(section); s != nil {
		return s.keys[strings.ToLower(key)]
	}
	return nil
}

// lineList writes lines as "3 and 7" or "3, 7 and 9".
func lineList(lines []int) string {
	s := make([]string, len(lines))
	for i, n := range lines {
		s[i] = strconv.Itoa(n)
	}
	if len(s) < 2 {
		return strings.Join(s, "")
	}
	return strings.Join(s[:len(s)-1], ", ") + " and " + s[len(s)-1]
}
