package accesslog

import (
	"strconv"
	"sync/atomic"
	"time"
	"unicode/utf8"
)

// appendLine appends drunken-hipster's line:
//
//	frontend:NAME 2006/01/02 15:04:05.000000 REMOTEADDR HOST "METHOD URI PROTO" STATUS BYTES
func appendLine(b []byte, prefix string, now time.Time, r *request, status int, n int64) []byte {
	b = append(b, prefix...)
	b = appendTime(b, now)
	b = append(b, ' ')
	b = appendEscapedOrDash(b, r.remoteAddr)
	b = append(b, ' ')
	b = appendEscapedOrDash(b, r.host)
	b = append(b, " \""...)
	b = appendRequestLine(b, r)
	b = append(b, "\" "...)
	b = strconv.AppendInt(b, int64(status), 10)
	b = append(b, ' ')
	b = strconv.AppendInt(b, n, 10)
	return append(b, '\n')
}

// appendCombined appends the NCSA combined line, as nginx's default
// "combined" log_format writes it:
//
//	$remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent "$http_referer" "$http_user_agent"
func appendCombined(b []byte, now time.Time, r *request, status int, n int64) []byte {
	b = appendEscapedOrDash(b, clientIP(r.remoteAddr))
	b = append(b, " - - ["...)
	b = append(b, combinedTime.text(now)...)
	b = append(b, "] \""...)
	b = appendRequestLine(b, r)
	b = append(b, "\" "...)
	b = strconv.AppendInt(b, int64(status), 10)
	b = append(b, ' ')
	b = strconv.AppendInt(b, n, 10)
	b = append(b, " \""...)
	b = appendEscapedOrDash(b, r.referer)
	b = append(b, "\" \""...)
	b = appendEscapedOrDash(b, r.userAgent)
	return append(b, "\"\n"...)
}

// appendJSON appends one JSON object; name is the frontend's name, already
// a JSON string. Durations are in seconds; what is unknown or absent is
// null.
func appendJSON(b []byte, name string, now time.Time, r *request, status int, n int64) []byte {
	b = append(b, `{"time":"`...)
	b = append(b, jsonTime.text(now)...)
	b = appendMicros(b, now)
	b = append(b, jsonZone.text(now)...)
	b = append(b, `","frontend":`...)
	b = append(b, name...)
	b = append(b, `,"client":`...)
	b = appendJSONString(b, clientIP(r.remoteAddr))
	b = append(b, `,"host":`...)
	b = appendJSONString(b, r.host)
	b = append(b, `,"method":`...)
	b = appendJSONString(b, r.method)
	b = append(b, `,"uri":`...)
	b = appendJSONString(b, r.uri)
	b = append(b, `,"protocol":`...)
	b = appendJSONString(b, r.proto)
	b = append(b, `,"status":`...)
	b = strconv.AppendInt(b, int64(status), 10)
	b = append(b, `,"bytes_sent":`...)
	b = strconv.AppendInt(b, n, 10)
	b = append(b, `,"duration":`...)
	if r.start.IsZero() {
		b = append(b, "null"...)
	} else {
		b = appendSeconds(b, now.Sub(r.start))
	}
	var backend, route string
	var header time.Duration
	var retries int
	if r.x != nil {
		backend, header, retries, route = r.x.Backend, r.x.Header, r.x.Retries, r.x.Route
	}
	b = append(b, `,"backend":`...)
	b = appendJSONStringOrNull(b, backend)
	b = append(b, `,"route":`...)
	b = appendJSONStringOrNull(b, route)
	b = append(b, `,"header_time":`...)
	if header > 0 {
		b = appendSeconds(b, header)
	} else {
		b = append(b, "null"...)
	}
	b = append(b, `,"retries":`...)
	b = strconv.AppendInt(b, int64(retries), 10)
	b = append(b, `,"user_agent":`...)
	b = appendJSONStringOrNull(b, r.userAgent)
	b = append(b, `,"referer":`...)
	b = appendJSONStringOrNull(b, r.referer)
	b = append(b, `,"request_id":`...)
	b = appendJSONStringOrNull(b, r.requestID)
	return append(b, "}\n"...)
}

// appendRequestLine appends METHOD URI PROTO, escaped.
func appendRequestLine(b []byte, r *request) []byte {
	b = appendEscaped(b, r.method)
	b = append(b, ' ')
	b = appendEscaped(b, r.uri)
	b = append(b, ' ')
	return appendEscaped(b, r.proto)
}

// clientIP returns the host part of a host:port address (as net/http sets
// RemoteAddr), without the brackets of an IPv6 address.
func clientIP(addr string) string {
	for i := len(addr) - 1; i >= 0; i-- {
		if addr[i] == ':' {
			addr = addr[:i]
			break
		}
	}
	if len(addr) > 1 && addr[0] == '[' && addr[len(addr)-1] == ']' {
		addr = addr[1 : len(addr)-1]
	}
	return addr
}

const hexDigits = "0123456789ABCDEF"

// appendEscaped appends s with '"', '\\' and every byte outside printable
// ASCII written as \xHH, as nginx's default log escaping does.
func appendEscaped(b []byte, s string) []byte {
	start := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 0x20 && c < 0x7f && c != '"' && c != '\\' {
			continue
		}
		b = append(b, s[start:i]...)
		b = append(b, '\\', 'x', hexDigits[c>>4], hexDigits[c&0xf])
		start = i + 1
	}
	return append(b, s[start:]...)
}

func appendEscapedOrDash(b []byte, s string) []byte {
	if s == "" {
		return append(b, '-')
	}
	return appendEscaped(b, s)
}

// appendJSONString appends s as a JSON string that is always valid, and
// one line: quotes, backslashes and control characters are escaped (as
// nginx's escape=json does), and a byte that is not part of valid UTF-8
// becomes U+FFFD, as encoding/json does.
func appendJSONString(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != 0x7f && c != '"' && c != '\\' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i++
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}

func appendJSONStringOrNull(b []byte, s string) []byte {
	if s == "" {
		return append(b, "null"...)
	}
	return appendJSONString(b, s)
}

// appendSeconds appends d in seconds, to the microsecond.
func appendSeconds(b []byte, d time.Duration) []byte {
	return strconv.AppendFloat(b, d.Seconds(), 'f', 6, 64)
}

// appendMicros appends now's fraction of a second: .000000.
func appendMicros(b []byte, now time.Time) []byte {
	us := now.Nanosecond() / 1000
	return append(b, '.',
		byte('0'+us/100000), byte('0'+us/10000%10), byte('0'+us/1000%10),
		byte('0'+us/100%10), byte('0'+us/10%10), byte('0'+us%10))
}

// appendTime appends now as 2006/01/02 15:04:05.000000.
func appendTime(b []byte, now time.Time) []byte {
	b = append(b, hipsterTime.text(now)...)
	return appendMicros(b, now)
}

// A stampCache keeps the text of the current second in one layout:
// formatting a date costs more than the rest of a line.
type stampCache struct {
	layout string
	last   atomic.Pointer[stamp]
}

type stamp struct {
	unix int64
	text string
}

func (c *stampCache) text(now time.Time) string {
	s := c.last.Load()
	if s == nil || s.unix != now.Unix() {
		s = &stamp{unix: now.Unix(), text: now.Format(c.layout)}
		c.last.Store(s)
	}
	return s.text
}

var (
	hipsterTime  = stampCache{layout: "2006/01/02 15:04:05"}
	combinedTime = stampCache{layout: "02/Jan/2006:15:04:05 -0700"}
	// RFC 3339 with the offset always in digits, as nginx's $time_iso8601.
	jsonTime = stampCache{layout: "2006-01-02T15:04:05"}
	jsonZone = stampCache{layout: "-07:00"}
)
