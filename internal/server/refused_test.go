package server

import "testing"

func TestRefusal(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		written    string
		status     int
		body       int64
		isNetHTTPs bool
	}{
		{"HTTP/1.1 400 Bad Request" + refusalHeader + "400 Bad Request", 400, 15, true},
		{"HTTP/1.1 431 Request Header Fields Too Large" + refusalHeader + "431 Request Header Fields Too Large", 431, 35, true},
		{"HTTP/1.1 505 HTTP Version Not Supported: unsupported protocol version" + refusalHeader + "505 HTTP Version Not Supported: unsupported protocol version", 505, 60, true},
		// Answers through a handler always carry Date.
		{"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\nDate: Mon, 01 Jan 2026 00:00:00 GMT\r\nConnection: close\r\n\r\nx", 0, 0, false},
		{"HTTP/1.1 200 OK" + refusalHeader, 0, 0, false},
		{"HTTP/1.1 100 Continue\r\n\r\n", 0, 0, false},
		{"HTTP/1.1 4x0 Bad" + refusalHeader, 0, 0, false},
		{"HTTP/1.1 400", 0, 0, false},
		{"\x16\x03\x01", 0, 0, false},
	} {
		status, body, ok := refusal([]byte(tc.written))
		if status != tc.status || body != tc.body || ok != tc.isNetHTTPs {
			t.Errorf("refusal(%.50q) = %d, %d, %v; want %d, %d, %v", tc.written, status, body, ok, tc.status, tc.body, tc.isNetHTTPs)
		}
	}
}
