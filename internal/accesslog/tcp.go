package accesslog

import (
	"strconv"
	"time"
)

// TCPLine is what the line of a connection to a tcp frontend tells.
type TCPLine struct {
	// RemoteAddr is the client's host:port.
	RemoteAddr string
	// Backend is the name of the backend reached; "" when none was.
	Backend string
	// BytesIn are the bytes the client sent, BytesOut those it was sent.
	BytesIn, BytesOut int64
	// Duration is from accept to close.
	Duration time.Duration
	// Termination is how the connection ended (shown in JSON only).
	Termination string
}

// TCP writes the line of a connection to a tcp frontend, when it closed.
// In the hipster and combined formats (combined has no room for it) it is
//
//	frontend:NAME 2006/01/02 15:04:05.000000 REMOTEADDR BACKEND "TCP" BYTES_IN BYTES_OUT DURATION
//
// with BACKEND "-" when no backend was reached and DURATION in seconds, to
// the millisecond (12.345s); in the JSON format it is an object of the
// same, with "mode":"tcp" and the termination.
func (l *Logger) TCP(line *TCPLine) {
	bp := linePool.Get().(*[]byte)
	now := time.Now()
	var b []byte
	if l.format == JSON {
		b = appendTCPJSON((*bp)[:0], l.prefix, now, line)
	} else {
		b = appendTCPLine((*bp)[:0], l.prefix, now, line)
	}
	l.file.write(b)
	*bp = b
	linePool.Put(bp)
}

func appendTCPLine(b []byte, prefix string, now time.Time, l *TCPLine) []byte {
	b = append(b, prefix...)
	b = appendTime(b, now)
	b = append(b, ' ')
	b = appendEscapedOrDash(b, l.RemoteAddr)
	b = append(b, ' ')
	b = appendEscapedOrDash(b, l.Backend)
	b = append(b, ` "TCP" `...)
	b = strconv.AppendInt(b, l.BytesIn, 10)
	b = append(b, ' ')
	b = strconv.AppendInt(b, l.BytesOut, 10)
	b = append(b, ' ')
	ms := l.Duration.Milliseconds()
	b = strconv.AppendInt(b, ms/1000, 10)
	b = append(b, '.', byte('0'+ms/100%10), byte('0'+ms/10%10), byte('0'+ms%10), 's', '\n')
	return b
}

// appendTCPJSON appends the JSON object of a tcp connection; name is the
// frontend's name, already a JSON string. As in a request's object, the
// client is its IP address and the duration is in seconds.
func appendTCPJSON(b []byte, name string, now time.Time, l *TCPLine) []byte {
	b = append(b, `{"time":"`...)
	b = append(b, jsonTime.text(now)...)
	b = appendMicros(b, now)
	b = append(b, jsonZone.text(now)...)
	b = append(b, `","mode":"tcp","frontend":`...)
	b = append(b, name...)
	b = append(b, `,"client":`...)
	b = appendJSONString(b, clientIP(l.RemoteAddr))
	b = append(b, `,"backend":`...)
	b = appendJSONStringOrNull(b, l.Backend)
	b = append(b, `,"bytes_in":`...)
	b = strconv.AppendInt(b, l.BytesIn, 10)
	b = append(b, `,"bytes_out":`...)
	b = strconv.AppendInt(b, l.BytesOut, 10)
	b = append(b, `,"duration":`...)
	b = appendSeconds(b, l.Duration)
	b = append(b, `,"termination":`...)
	b = appendJSONStringOrNull(b, l.Termination)
	return append(b, "}\n"...)
}
