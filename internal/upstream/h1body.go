package upstream

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"
)

// upgraded is the body of a 101 response: the connection, which now
// belongs to whoever tunnels it.
type upgraded struct {
	pc   *h1Conn
	slot *Slot
}

func (u *upgraded) Read([]byte) (int, error) { return 0, io.EOF }
func (u *upgraded) Close() error             { return u.pc.Close() }

// h1Body is a response body; once read to its end, its connection goes back
// to the pool.
// Its state for the body timeout is kept on the connection (h1Conn.body),
// which allocates it once for all its responses.
type h1Body struct {
	io.ReadCloser
	pc   *h1Conn
	stop func() bool
	keep bool        // the response allows reusing the connection
	w    *bodyWriter // nil for a request without a body
	slot *Slot
}

// bodyState is what h1Body needs of the response under way on a
// connection.
type bodyState struct {
	ctx context.Context // the request's
	// left is what the Content-Length says is still to come; -1 when
	// the body has no length.
	left int64
	// deadline is the read deadline the body timeout set last; zero:
	// none.
	deadline time.Time
}

// ErrBodyTimeout is a backend that sent no byte of a response body for its
// body-timeout. The client's response ends cut short; the backend's health
// does not suffer (it answered).
var ErrBodyTimeout = errors.New("no byte of the response body within body-timeout")

func (b *h1Body) Read(p []byte) (int, error) {
	if b.pc == nil {
		return 0, io.EOF
	}
	if b.pc.t.bodyTimeout > 0 && b.unread() {
		b.arm()
	}
	n, err := b.ReadCloser.Read(p)
	if st := &b.pc.body; st.left > 0 {
		st.left -= int64(n)
	}
	if err == io.EOF {
		b.release(true)
	} else if err != nil && IsTimeout(err) && b.pc.body.ctx.Err() == nil {
		err = fmt.Errorf("%w (%v): %w", ErrBodyTimeout, b.pc.t.bodyTimeout, err)
	}
	return n, err
}

// unread reports whether a read of the body may have to wait for the
// backend: what is left of it is not all in the buffer.
func (b *h1Body) unread() bool {
	left := b.pc.body.left
	return left < 0 || int64(b.pc.br.Buffered()) < left
}

// arm gives the backend body-timeout for its next bytes. The deadline
// moves only when it would move by more than an eighth of the timeout,
// which is precision enough and spares a timer update per read of a
// streamed body. Its caller checks that the client did not leave
// meanwhile: that abort's deadline must not be undone.
func (b *h1Body) arm() {
	timeout := b.pc.t.bodyTimeout
	if timeout <= 0 {
		// Called at the head only: the header deadline must not cut
		// the body (a request body's writer cleared it already).
		if b.pc.t.timeout > 0 && b.w == nil {
			b.pc.SetReadDeadline(time.Time{})
		}
		return
	}
	st := &b.pc.body
	if d := time.Now().Add(timeout); d.Sub(st.deadline) > timeout/8 {
		st.deadline = d
		b.pc.SetReadDeadline(d)
		if st.ctx.Err() != nil {
			b.pc.abort()
		}
	}
}

func (b *h1Body) Close() error {
	if b.pc != nil {
		b.release(false)
	}
	return nil
}

// release ends the exchange: the connection is kept when its response was
// read to the end, the request body went out whole, and nothing else came.
func (b *h1Body) release(complete bool) {
	pc := b.pc
	b.pc = nil
	pc.body = bodyState{} // holds the request's context no longer
	b.slot.Release()
	// stop fails when the client went away: the deadline may be set.
	if !b.stop() || !complete || !b.keep {
		pc.Close()
		return
	}
	if b.w != nil {
		// The backend may answer in full before the writer is done with
		// the body it read whole: the writer decides then.
		if taken, sent := b.w.keepAfter(pc); taken || !sent {
			if !taken {
				pc.Close()
			}
			return
		}
	}
	pc.t.keep(pc)
}
