package upstream

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"syscall"
	"testing"
)

func TestStatusFor(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		err  error
		want int
	}{
		{"refused", &ConnectError{&net.OpError{Op: "dial", Err: errors.New("connection refused")}}, 502},
		{"connect timeout", &ConnectError{&net.OpError{Op: "dial", Err: os.ErrDeadlineExceeded}}, 502},
		{"TLS handshake", &ConnectError{errors.New("TLS handshake with b: bad certificate")}, 502},
		{"out of file descriptors", &ConnectError{&net.OpError{Op: "dial", Err: os.NewSyscallError("socket", syscall.EMFILE)}}, 503},
		{"bad request body", &ClientError{io.ErrUnexpectedEOF}, 400},
		{"request body stalled (HTTP/1)", &ClientError{&net.OpError{Op: "read", Err: os.ErrDeadlineExceeded}}, 408},
		{"request body stalled (HTTP/2)", &ClientError{fmt.Errorf("%w", os.ErrDeadlineExceeded)}, 408},
		{"header timeout", &net.OpError{Op: "read", Err: os.ErrDeadlineExceeded}, 504},
		{"reset", &net.OpError{Op: "read", Err: errors.New("connection reset by peer")}, 502},
		{"all down", ErrNoBackend, 503},
		{"queue full", fmt.Errorf("backend b: %w", ErrQueueFull), 503},
		{"other", context.Canceled, 502},
	}
	for _, tc := range tests {
		if got := StatusFor(tc.err); got != tc.want {
			t.Errorf("%s: StatusFor(%v) = %d, want %d", tc.name, tc.err, got, tc.want)
		}
	}
}

func TestAppendForwardedFor(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		in     []string
		remote string
		want   string
	}{
		{"none sent", nil, "1.2.3.4:5678", "1.2.3.4"},
		{"one sent", []string{"10.0.0.1"}, "1.2.3.4:5678", "10.0.0.1, 1.2.3.4"},
		{"two lines folded", []string{"10.0.0.1", "10.0.0.2"}, "[::1]:80", "10.0.0.1, 10.0.0.2, ::1"},
	}
	for _, tc := range tests {
		in, out := http.Header{}, http.Header{}
		if tc.in != nil {
			in["X-Forwarded-For"] = tc.in
		}
		AppendForwardedFor(out, in, tc.remote)
		if got := out["X-Forwarded-For"]; len(got) != 1 || got[0] != tc.want {
			t.Errorf("%s: got %q, want one line %q", tc.name, got, tc.want)
		}
	}
}
