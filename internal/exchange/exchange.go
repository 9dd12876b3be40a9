// Package exchange records what happened to one request on its way through
// hipsterd, for the access log and the metrics: which backend answered, after
// how many retries, and when its response header came.
//
// The frontend's outermost handler puts an Info in the request's context;
// the backend pool fills it in. The request's goroutine is the only writer,
// and readers look after the handler has returned (or, for a tunnel, after
// it has closed).
package exchange

import (
	"context"
	"time"
)

// Info is what one request met on the backend side.
type Info struct {
	// Backend is the name of the backend that answered, or of the last one
	// tried; "" when no backend was involved.
	Backend string
	// Retries counts the tries after the first: on another backend, or
	// the same request resent on a new connection.
	Retries int
	// Header is the time from the first try to the backend's response
	// header; 0 when none came.
	Header time.Duration
	// Series counts the request in the metrics of its frontend and
	// Backend; the pool sets it with Backend, nil without metrics.
	Series Series
	// Route is the name of the frontend's route that took the request;
	// "" when none did. RouteSeries counts it in the route's metrics, nil
	// without metrics.
	Route       string
	RouteSeries Series
}

// Series is where the requests of one frontend to one backend are counted
// (package stats provides it). Each pool resolves its backends' series
// once, when the configuration is built, so that counting a request looks
// nothing up.
type Series interface {
	// Done counts a request answered with code, which took total, and
	// header until the backend's response header (0 when none came).
	Done(code int, total, header time.Duration)
}

type key struct{}

// NewContext returns ctx carrying info.
func NewContext(ctx context.Context, info *Info) context.Context {
	return context.WithValue(ctx, key{}, info)
}

// FromContext returns the Info in ctx, or nil.
func FromContext(ctx context.Context) *Info {
	info, _ := ctx.Value(key{}).(*Info)
	return info
}
