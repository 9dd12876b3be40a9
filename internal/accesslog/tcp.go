package accesslog

import (
	"strconv"
	"time"
)

// TCP writes the line of a connection to a tcp frontend, when it closed:
//
//	frontend:NAME 2006/01/02 15:04:05.000000 REMOTEADDR BACKEND "TCP" BYTES_IN BYTES_OUT DURATION
//
// BACKEND is "-" when no backend was reached; BYTES_IN are the bytes the
// client sent, BYTES_OUT those it was sent; DURATION is in seconds, to the
// millisecond (12.345s), from accept to close.
func (l *Logger) TCP(remoteAddr, backend string, bytesIn, bytesOut int64, d time.Duration) {
	bp := linePool.Get().(*[]byte)
	b := appendTCPLine((*bp)[:0], l.prefix, time.Now(), remoteAddr, backend, bytesIn, bytesOut, d)
	l.file.write(b)
	*bp = b
	linePool.Put(bp)
}

func appendTCPLine(b []byte, prefix string, now time.Time, remoteAddr, backend string, in, out int64, d time.Duration) []byte {
	b = append(b, prefix...)
	b = appendTime(b, now)
	b = append(b, ' ')
	b = append(b, remoteAddr...)
	b = append(b, ' ')
	if backend == "" {
		backend = "-"
	}
	b = append(b, backend...)
	b = append(b, ` "TCP" `...)
	b = strconv.AppendInt(b, in, 10)
	b = append(b, ' ')
	b = strconv.AppendInt(b, out, 10)
	b = append(b, ' ')
	ms := d.Milliseconds()
	b = strconv.AppendInt(b, ms/1000, 10)
	b = append(b, '.', byte('0'+ms/100%10), byte('0'+ms/10%10), byte('0'+ms%10), 's', '\n')
	return b
}
