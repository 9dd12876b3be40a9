package upstream

import (
	"errors"
	"net"
	"slices"
	"syscall"
)

// fault is where an exchange with a backend failed: what Pool.try needs to
// decide whether the request may go again, and whether the backend is to
// blame.
type fault uint8

const (
	faultNone fault = iota
	// faultConnect: connecting, TLS handshake included, failed. Nothing
	// reached the backend: any request may go to another.
	faultConnect
	// faultUnsent: the connection was lost before any byte of the request
	// left this process. Any request may go again.
	faultUnsent
	// faultLost: the connection was lost after the request, or part of
	// it, went out, and before any byte of a response. The backend may
	// have acted on it: only a request that may be sent twice goes again.
	faultLost
	// faultTimeout: no response within response-timeout.
	faultTimeout
	// faultClient: the client's body broke or stalled, or the client
	// left. Not the backend's fault; nothing goes again.
	faultClient
	// faultLocal: this process lacked a resource (IsLocal). Not the
	// backend's fault; nothing goes again.
	faultLocal
	// faultBroken: the backend broke the exchange (a malformed or
	// oversized head, a wrong 101) or the connection failed in a way not
	// above.
	faultBroken
)

// exchangeError is how the transport reports a failed exchange.
type exchangeError struct {
	kind fault
	// reused: on a kept-alive connection, which the backend may have
	// closed as the request went out (its idle timeout) without any fault.
	reused bool
	err    error
}

func (e *exchangeError) Error() string { return e.err.Error() }
func (e *exchangeError) Unwrap() error { return e.err }

// faultOf classifies err, from the transport or from a dial for a tunnel.
func faultOf(err error) fault {
	var ee *exchangeError
	switch {
	case errors.As(err, &ee):
		return ee.kind
	case IsLocal(err):
		return faultLocal
	case isConnect(err):
		return faultConnect
	case IsTimeout(err):
		return faultTimeout
	}
	return faultBroken
}

// resendable reports whether err is a kept-alive connection lost under a
// request that may go again to the same backend on a new connection:
// nothing of it was sent, or it may be sent twice (replay).
func resendable(err error, replay bool) bool {
	var ee *exchangeError
	return errors.As(err, &ee) && ee.reused && (ee.kind == faultUnsent || ee.kind == faultLost && replay)
}

// another reports whether a request that failed with f on a backend may go
// to another: replay tells that it may be sent twice.
func (f fault) another(replay bool) bool {
	return f == faultConnect || f == faultUnsent || f == faultLost && replay
}

// ClientError is a request that failed for the client's fault: its body was
// malformed or shorter than it said. The client gets 400, and the backend
// is not blamed.
type ClientError struct{ Err error }

func (e *ClientError) Error() string { return "reading the request body: " + e.Err.Error() }
func (e *ClientError) Unwrap() error { return e.Err }

// IsTimeout reports whether err is a deadline that passed.
func IsTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// localErrnos are the errors of this process or system running out of a
// resource (file descriptors, socket buffers, memory): no peer's fault.
var localErrnos = []syscall.Errno{syscall.EMFILE, syscall.ENFILE, syscall.ENOBUFS, syscall.ENOMEM}

// IsLocal reports whether err is one of localErrnos.
func IsLocal(err error) bool {
	var errno syscall.Errno
	return errors.As(err, &errno) && slices.Contains(localErrnos, errno)
}
