//go:build linux

package tunnel

import (
	"errors"
	"io"
	"net"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// A tunnel between two TCP connections waits in a reactor: an epoll set of
// its own, which Go's poller watches as one file. An idle tunnel therefore
// holds no goroutine and no buffer, only its sockets and a few hundred bytes
// of state. When a side has bytes queued, the reactor's goroutine reads them
// into a pooled buffer and writes them on; a burst that does not fit one
// such read and one non-blocking write (bulk data, a slow reader) goes to a
// worker goroutine, which splices the rest, waiting for the writer in Go's
// poller, and returns the side to the reactor once nothing is queued.
//
// The sockets leave Go's poller: each is a duplicate descriptor in an
// os.File that Go does not poll (its net.TCPConn is closed), read and
// written without waiting. A descriptor in Go's poller costs 512 bytes
// outside the heap (its padded pollDesc) besides the net.TCPConn's own, as
// much as the rest of an idle tunnel; the os.File still guards it against
// a close during a read or write, as the net.TCPConn did.
//
// Sockets are watched edge-triggered, as Go's own poller does: a read that
// returns less than the buffer emptied the socket, and new bytes bring a new
// event (once the stream's end was seen, reads go on until one returns
// nothing). A side being copied is busy; an event for a busy side is noted, and
// whoever copies it reads once more before it rests.

// burstSize is the buffer a burst is read into. A burst that fills it is
// bulk data, and the rest of what is queued is spliced.
const burstSize = 16 << 10

var burstPool = sync.Pool{New: func() any { b := make([]byte, burstSize); return &b }}

// A side's states.
const (
	idle  int32 = iota // waiting for an event
	busy               // being copied, by the reactor or a worker
	again              // busy, and an event came meanwhile
)

// side is one direction of a tunnel: bytes from src to dst, the other
// side's src. It is small, as an idle tunnel keeps two: what follows from
// its direction (its count, how the tunnel ends when src or dst breaks)
// is worked out.
type side struct {
	t     *tunnel
	src   *os.File // its socket, out of Go's poller
	srcRC syscall.RawConn
	state atomic.Int32
	hup   atomic.Bool // src's stream ended or failed behind its bytes
	key   uint64      // the side's slot in its reactor; guarded by reactor.mu
	// wait is dst in Go's poller while a worker waits for it to take
	// bytes (writeWaiting), else nil; closing it ends the wait.
	wait atomic.Pointer[os.File]
}

// sides are a tunnel's two directions in their reactor.
type sides struct {
	re     *reactor
	ab, ba side // from a to b, from b to a
}

// watched is a tunnel on a reactor, with its sides: one allocation.
type watched struct {
	tunnel
	sides
}

// unwatch takes the tunnel's sockets out of the reactor.
func (ss *sides) unwatch() {
	ss.re.remove(&ss.ab)
	ss.re.remove(&ss.ba)
}

// close closes the sockets, and ends a worker's wait on them.
func (ss *sides) close() {
	for _, s := range []*side{&ss.ab, &ss.ba} {
		s.src.Close()
		s.endWait()
	}
}

// reset makes the sockets' close a reset (SO_LINGER 0).
func (ss *sides) reset() {
	for _, s := range []*side{&ss.ab, &ss.ba} {
		s.srcRC.Control(func(fd uintptr) {
			unix.SetsockoptLinger(int(fd), unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0})
		})
	}
}

// fromB reports whether s is the direction from b to a.
func (s *side) fromB() bool { return s == &s.t.sides.ba }

// other is the side that writes to s's src.
func (s *side) other() *side {
	if s.fromB() {
		return &s.t.sides.ab
	}
	return &s.t.sides.ba
}

func (s *side) dstRC() syscall.RawConn { return s.other().srcRC }

// count is the bytes written to dst.
func (s *side) count() *atomic.Int64 {
	if s.fromB() {
		return &s.t.toA
	}
	return &s.t.toB
}

// srcFailed is how the tunnel ends when src breaks; dstFailed, when dst
// does.
func (s *side) srcFailed() End {
	if s.fromB() {
		return FailedB
	}
	return FailedA
}

func (s *side) dstFailed() End {
	if s.fromB() {
		return FailedA
	}
	return FailedB
}

type reactor struct {
	epfd int
	rc   syscall.RawConn // epfd, as Go's poller sees it
	rio  *rawIO          // for the copies on the reactor's goroutine

	mu    sync.Mutex
	slots []*side
	gens  []uint32 // per slot, bumped when it is freed: stale events miss
	free  []uint32
}

var (
	startOnce   sync.Once
	reactors    []*reactor
	nextReactor atomic.Uint32
)

// startReactors starts one reactor per P. Without any, tunnels run on
// goroutines.
func startReactors() {
	for range runtime.GOMAXPROCS(0) {
		re, err := newReactor()
		if err != nil {
			return
		}
		reactors = append(reactors, re)
		go re.loop()
	}
}

func newReactor() (*reactor, error) {
	fd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, err
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, err
	}
	f := os.NewFile(uintptr(fd), "tunnel-epoll")
	// Only a file in Go's poller takes a deadline: this one must be.
	if err := f.SetReadDeadline(time.Time{}); err != nil {
		f.Close()
		return nil, err
	}
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, err
	}
	return &reactor{epfd: fd, rc: rc, rio: newRawIO()}, nil
}

// loop waits for events and copies. Go's poller reports the epoll set
// edge-triggered: each batch of new events makes the set readable once.
// Within one RawConn.Read call the edges that come while a batch is
// copied are kept, so the set is read again only when it was full or a new
// edge came.
func (re *reactor) loop() {
	events := make([]unix.EpollEvent, 128)
	re.rc.Read(func(fd uintptr) bool {
		for {
			n, err := epollWaitNow(fd, events)
			if err == unix.EINTR {
				continue
			}
			for _, ev := range events[:max(n, 0)] {
				if s := re.lookup(uint64(uint32(ev.Fd)) | uint64(uint32(ev.Pad))<<32); s != nil {
					s.wake(re.rio, ev.Events)
				}
			}
			if n < len(events) {
				return false
			}
		}
	})
}

func (re *reactor) lookup(key uint64) *side {
	idx, gen := uint32(key), uint32(key>>32)
	re.mu.Lock()
	defer re.mu.Unlock()
	if int(idx) < len(re.slots) && re.gens[idx] == gen {
		return re.slots[idx]
	}
	return nil
}

// add starts watching s's source; its queued bytes, if any, bring the
// first event.
func (re *reactor) add(s *side) error {
	re.mu.Lock()
	var idx uint32
	if n := len(re.free); n > 0 {
		idx = re.free[n-1]
		re.free = re.free[:n-1]
	} else {
		idx = uint32(len(re.slots))
		re.slots = append(re.slots, nil)
		re.gens = append(re.gens, 0)
	}
	re.slots[idx] = s
	s.key = uint64(re.gens[idx])<<32 | uint64(idx)
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLET, Fd: int32(idx), Pad: int32(re.gens[idx])}
	re.mu.Unlock()
	var err error
	if cerr := s.srcRC.Control(func(fd uintptr) {
		err = unix.EpollCtl(re.epfd, unix.EPOLL_CTL_ADD, int(fd), &ev)
	}); cerr != nil {
		err = cerr
	}
	if err != nil {
		re.remove(s)
	}
	return err
}

// remove stops watching s. Events already queued for it find its slot
// freed, or taken by another side under a new generation, and are dropped.
func (re *reactor) remove(s *side) {
	s.srcRC.Control(func(fd uintptr) {
		unix.EpollCtl(re.epfd, unix.EPOLL_CTL_DEL, int(fd), nil)
	})
	re.mu.Lock()
	defer re.mu.Unlock()
	if idx := uint32(s.key); int(idx) < len(re.slots) && re.slots[idx] == s {
		re.slots[idx] = nil
		re.gens[idx]++
		re.free = append(re.free, idx)
	}
}

// watch returns a tunnel on a reactor for a and b if both are TCP, and
// what registers it; nil, nil when the tunnel must run on goroutines. The
// tunnel's sockets leave Go's poller: a and b stay only for their Close,
// and only if they are wrappers (which may give back a slot as they close).
func watch(a, b net.Conn) (*tunnel, func()) {
	ta, ok1 := tcpConn(a)
	tb, ok2 := tcpConn(b)
	if !ok1 || !ok2 {
		return nil, nil
	}
	startOnce.Do(startReactors)
	if len(reactors) == 0 {
		return nil, nil
	}
	re := reactors[int(nextReactor.Add(1))%len(reactors)]
	fa, err := detachable(ta)
	if err != nil {
		return nil, nil
	}
	fb, err := detachable(tb)
	if err != nil {
		fa.Close()
		return nil, nil
	}
	ra, err1 := fa.SyscallConn()
	rb, err2 := fb.SyscallConn()
	if err1 != nil || err2 != nil {
		fa.Close()
		fb.Close()
		return nil, nil
	}
	// The duplicates hold the sockets now.
	ta.Close()
	tb.Close()
	w := &watched{}
	t := &w.tunnel
	t.sides = &w.sides
	t.a, t.b = wrapper(a), wrapper(b)
	w.re = re
	w.ab = side{t: t, src: fa, srcRC: ra}
	w.ba = side{t: t, src: fb, srcRC: rb}
	return t, func() {
		if re.add(&w.ab) != nil || re.add(&w.ba) != nil {
			t.close(Closed) // the kernel refused a watch (out of memory)
		}
	}
}

// detachable returns a duplicate of c's socket in an os.File that Go does
// not poll, read and written only through its RawConn.
func detachable(c *net.TCPConn) (*os.File, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return nil, err
	}
	fd := -1
	if cerr := rc.Control(func(s uintptr) {
		fd, err = unix.FcntlInt(s, unix.F_DUPFD_CLOEXEC, 0)
	}); cerr != nil {
		return nil, cerr
	}
	if err != nil {
		return nil, err
	}
	// NewFile puts a descriptor in non-blocking mode in Go's poller: it
	// must see this one blocking; it is made non-blocking again below, as
	// the reactor's raw reads and writes and splice(2) need.
	if err := unix.SetNonblock(fd, false); err != nil {
		unix.Close(fd)
		return nil, err
	}
	f := os.NewFile(uintptr(fd), "tunnel")
	if err := unix.SetNonblock(fd, true); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// wrapper is c if closing it does more than close its socket (it gives
// back a slot of a connection limit), else nil: a bare *net.TCPConn whose
// socket a tunnel took need not be kept.
func wrapper(c net.Conn) net.Conn {
	if _, bare := c.(*net.TCPConn); bare {
		return nil
	}
	return c
}

// tcpConn returns c's TCP connection: c itself, or the connection a wrapper
// offers with TCP() when reading and writing the socket directly is the
// same as using the wrapper (one counted against max-connections, one whose
// PROXY header is read). The tunnel still closes c.
func tcpConn(c net.Conn) (*net.TCPConn, bool) {
	switch c := c.(type) {
	case *net.TCPConn:
		return c, true
	case interface{ TCP() *net.TCPConn }:
		tc := c.TCP()
		return tc, tc != nil
	}
	return nil, false
}

// wake is the reactor's answer to an event for s.
func (s *side) wake(rio *rawIO, events uint32) {
	if events&(unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
		// The end of the stream brings no event of its own once it is
		// queued: from now on, read until a read says so.
		s.hup.Store(true)
	}
	for {
		switch s.state.Load() {
		case idle:
			if s.state.CompareAndSwap(idle, busy) {
				s.copyInline(rio)
				return
			}
		case busy:
			if s.state.CompareAndSwap(busy, again) {
				return
			}
		default:
			return
		}
	}
}

// rest returns a busy side to waiting for events; false when an event came
// while it was busy, and it must read again.
func (s *side) rest() bool {
	if s.state.CompareAndSwap(busy, idle) {
		return true
	}
	s.state.Store(busy)
	return false
}

// copyInline copies what src has queued on the reactor's goroutine, as long
// as each burst takes one read and one write that does not block.
func (s *side) copyInline(rio *rawIO) {
	for {
		bp := burstPool.Get().(*[]byte)
		n, err := s.read(rio, *bp)
		if n <= 0 {
			burstPool.Put(bp)
			if s.ended(err) || s.rest() {
				return
			}
			continue
		}
		w, err := s.writeNow(rio, (*bp)[:n])
		s.count().Add(int64(w))
		if err != nil && err != unix.EAGAIN {
			burstPool.Put(bp)
			s.t.abort(s.dstFailed())
			return
		}
		if w < n || n == burstSize {
			go s.work(bp, w, n)
			return
		}
		burstPool.Put(bp)
		// A short read emptied the socket, unless the end is queued too.
		if !s.hup.Load() && s.rest() {
			return
		}
	}
}

// work is a worker goroutine: it writes the rest of a burst, waiting as
// needed, and copies on until src has nothing queued. Bulk data (a burst
// that filled its buffer) goes through a pipe with splice(2), with no copy
// through user space.
func (s *side) work(bp *[]byte, off, n int) {
	rio := newRawIO()
	var p pipe
	defer p.close()
	defer s.endWait()
	for {
		var err error
		if off < n {
			err = s.writeAll(rio, (*bp)[off:n])
		}
		burstPool.Put(bp)
		if err != nil {
			s.fail(err, s.dstFailed())
			return
		}
		// Without a pipe to spare (at the descriptor limit), bulk data is
		// copied through the buffer, as Go's own splice falls back.
		if n == burstSize && p.make() == nil {
			if failed, err := s.spliceQueued(&p); err != nil {
				s.fail(err, failed)
				return
			}
		}
		for {
			bp = burstPool.Get().(*[]byte)
			n, err = s.read(rio, *bp)
			if n > 0 {
				break
			}
			burstPool.Put(bp)
			if s.ended(err) || s.rest() {
				return
			}
		}
		off = 0
	}
}

// writeAll writes p to dst, waiting for it to take them.
func (s *side) writeAll(rio *rawIO, p []byte) error {
	last := time.Now()
	for len(p) > 0 {
		w, err := s.writeNow(rio, p)
		if err == unix.EAGAIN {
			w, err = s.writeWaiting(last, func(fd uintptr) (int, error) {
				return rawSyscall(unix.SYS_SENDTO, fd, p, unix.MSG_DONTWAIT|unix.MSG_NOSIGNAL)
			})
		}
		if w > 0 {
			s.count().Add(int64(w))
			p = p[w:]
			last = time.Now()
			continue
		}
		if err == nil {
			err = io.ErrShortWrite
		}
		return err
	}
	return nil
}

// writeWaiting tries op, a write to dst that does not wait, until dst takes
// bytes or op fails otherwise than for want of room, waiting for room in
// Go's poller, which holds no thread: dst joins it, as a duplicate
// descriptor, for the worker's lifetime, and op writes to that one. A peer
// that took nothing since last for the tunnel's timeout ends the tunnel
// (os.ErrDeadlineExceeded); the tunnel's close ends the wait. Without a
// descriptor to spare, it waits in pollWrite.
func (s *side) writeWaiting(last time.Time, op func(fd uintptr) (int, error)) (int, error) {
	w := s.wait.Load()
	if w == nil {
		var fd int
		var err error
		if cerr := s.dstRC().Control(func(d uintptr) { fd, err = unix.FcntlInt(d, unix.F_DUPFD_CLOEXEC, 0) }); cerr != nil {
			return 0, cerr
		}
		if err != nil {
			return s.pollWrite(last, op)
		}
		w = os.NewFile(uintptr(fd), "tunnel-wait") // non-blocking: polled
		s.wait.Store(w)
		if s.t.why.Load() != 0 {
			// Closed meanwhile, maybe before w was there to be closed.
			return 0, os.ErrClosed
		}
	}
	if s.t.timeout > 0 {
		w.SetWriteDeadline(last.Add(s.t.timeout))
	}
	rc, err := w.SyscallConn()
	if err != nil {
		return 0, err
	}
	// The write is tried within the wait, after the poller's readiness
	// was reset, so that no room that came meanwhile goes unnoticed.
	var n int
	var opErr error
	if err := rc.Write(func(fd uintptr) bool {
		n, opErr = op(fd)
		n = max(n, 0)
		return opErr != unix.EAGAIN
	}); err != nil {
		return 0, err
	}
	return n, opErr
}

// pollWrite is writeWaiting without a descriptor to spare (at the
// process's limit): it waits in poll(2), holding a thread, pollSlice at a
// time, so that the tunnel's close is seen.
func (s *side) pollWrite(last time.Time, op func(fd uintptr) (int, error)) (int, error) {
	for {
		if s.t.why.Load() != 0 {
			return 0, os.ErrClosed
		}
		if s.t.timeout > 0 && time.Since(last) >= s.t.timeout {
			return 0, os.ErrDeadlineExceeded
		}
		var n int
		var err error
		if cerr := s.dstRC().Control(func(fd uintptr) {
			if n, err = op(fd); err == unix.EAGAIN {
				unix.Poll([]unix.PollFd{{Fd: int32(fd), Events: unix.POLLOUT}}, pollSlice)
			}
		}); cerr != nil {
			return 0, cerr
		}
		if err != unix.EAGAIN {
			return max(n, 0), err
		}
	}
}

// pollSlice is how long, in milliseconds, pollWrite waits at a time.
const pollSlice = 100

// endWait takes dst out of Go's poller again.
func (s *side) endWait() {
	if w := s.wait.Swap(nil); w != nil {
		w.Close()
	}
}

// pipe is a worker's pipe for splice(2), made at its first bulk burst; n
// bytes are in it.
type pipe struct {
	r, w, n int
	made    bool
}

// pipeSize is the capacity asked of a pipe: what one splice moves at most.
const pipeSize = 1 << 20

func (p *pipe) make() error {
	if p.made {
		return nil
	}
	var fds [2]int
	if err := unix.Pipe2(fds[:], unix.O_CLOEXEC|unix.O_NONBLOCK); err != nil {
		return err
	}
	p.r, p.w, p.made = fds[0], fds[1], true
	unix.FcntlInt(uintptr(p.w), unix.F_SETPIPE_SZ, pipeSize) // else the default 64 KiB
	return nil
}

func (p *pipe) close() {
	if p.made {
		unix.Close(p.r)
		unix.Close(p.w)
	}
}

// spliceQueued moves what src has queued to dst through p, waiting for dst
// as writeAll does. It returns with src empty, or at its end, which the
// read that follows tells; on failure, with how the tunnel ends.
func (s *side) spliceQueued(p *pipe) (End, error) {
	last := time.Now()
	for {
		var n int
		var err error
		if cerr := s.srcRC.Control(func(fd uintptr) { n, err = splice(int(fd), p.w, pipeSize) }); cerr != nil {
			return s.srcFailed(), cerr
		}
		if n == 0 && (err == nil || err == unix.EAGAIN) {
			return 0, nil
		}
		if err != nil {
			return s.srcFailed(), err
		}
		p.n += n
		for p.n > 0 {
			var m int
			if cerr := s.dstRC().Control(func(fd uintptr) { m, err = splice(p.r, int(fd), p.n) }); cerr != nil {
				return s.dstFailed(), cerr
			}
			if err == unix.EAGAIN {
				m, err = s.writeWaiting(last, func(fd uintptr) (int, error) { return splice(p.r, int(fd), p.n) })
			}
			if m > 0 {
				p.n -= m
				s.count().Add(int64(m))
				last = time.Now()
				continue
			}
			if err == nil {
				err = io.ErrShortWrite
			}
			return s.dstFailed(), err
		}
	}
}

// splice moves up to n bytes from the descriptor in to out, without
// waiting.
func splice(in, out, n int) (int, error) {
	for {
		m, err := unix.Splice(in, nil, out, nil, n, unix.SPLICE_F_NONBLOCK|unix.SPLICE_F_MOVE)
		if err != unix.EINTR {
			return max(int(m), 0), err
		}
	}
}

// fail ends the tunnel after a worker's copy failed with err: a write that
// made no progress for the timeout, a tunnel closed meanwhile, or a side
// that broke.
func (s *side) fail(err error, failed End) {
	switch {
	case errors.Is(err, os.ErrDeadlineExceeded):
		s.t.close(Timeout)
	case s.t.why.Load() != 0:
		s.t.close(Closed) // closed meanwhile: whoever closed it said why
	default:
		s.t.abort(failed)
	}
}

// ended handles a read that returned no bytes: nothing queued (false), the
// end of the stream, or a failure.
func (s *side) ended(err error) bool {
	switch {
	case err == unix.EAGAIN:
		return false
	case err != nil:
		s.t.abort(s.srcFailed())
	case s.closeWrite() != nil:
		s.t.abort(s.dstFailed())
	default:
		// Stays busy: no more bytes will come from src.
		s.t.endedOne()
	}
	return true
}

// closeWrite shuts down dst's sending side, passing the end of src's
// stream on.
func (s *side) closeWrite() error {
	var err error
	if cerr := s.dstRC().Control(func(fd uintptr) { err = unix.Shutdown(int(fd), unix.SHUT_WR) }); cerr != nil {
		return cerr
	}
	return err
}

// read reads what src has queued into p, without waiting.
func (s *side) read(rio *rawIO, p []byte) (int, error) {
	rio.p = p
	err := s.srcRC.Read(rio.read)
	rio.p = nil // the buffer goes back to its pool
	if err != nil {
		return 0, err
	}
	return max(rio.n, 0), rio.err
}

// writeNow writes what dst takes now of p.
func (s *side) writeNow(rio *rawIO, p []byte) (int, error) {
	rio.p = p
	err := s.dstRC().Write(rio.write)
	rio.p = nil
	if err != nil {
		return 0, err
	}
	return max(rio.n, 0), rio.err
}

// rawIO is a raw read and write, made once for the goroutine that uses it:
// a closure passed to RawConn.Read for each burst would be allocated each
// time.
type rawIO struct {
	p           []byte
	n           int
	err         error
	read, write func(fd uintptr) bool
}

func newRawIO() *rawIO {
	r := &rawIO{}
	r.read = func(fd uintptr) bool {
		r.n, r.err = rawSyscall(unix.SYS_RECVFROM, fd, r.p, unix.MSG_DONTWAIT)
		return true
	}
	r.write = func(fd uintptr) bool {
		r.n, r.err = rawSyscall(unix.SYS_SENDTO, fd, r.p, unix.MSG_DONTWAIT|unix.MSG_NOSIGNAL)
		return true
	}
	return r
}

// epollWaitNow collects the events of an epoll set without waiting, with a
// raw system call as rawSyscall explains.
func epollWaitNow(epfd uintptr, events []unix.EpollEvent) (int, error) {
	n, _, errno := unix.RawSyscall6(unix.SYS_EPOLL_PWAIT, epfd, uintptr(unsafe.Pointer(&events[0])), uintptr(len(events)), 0, 0, 0)
	if errno != 0 {
		return -1, errno
	}
	return int(n), nil
}

// rawSyscall receives or sends p on a socket, without waiting, with a raw
// system call, which the Go scheduler does not see. A write wakes the peer, which
// often runs on this CPU before the write returns; a system call that long
// looks blocked to the scheduler's monitor, which then wakes up every 20 µs
// to take the P away, costing a context switch each time (8 % of the CPU of
// a busy tunnel). The socket never blocks, so the P is not held for long.
func rawSyscall(trap, fd uintptr, p []byte, flags int) (int, error) {
	var ptr unsafe.Pointer
	if len(p) > 0 {
		ptr = unsafe.Pointer(&p[0])
	}
	for {
		n, _, errno := unix.RawSyscall6(trap, fd, uintptr(ptr), uintptr(len(p)), uintptr(flags), 0, 0)
		switch errno {
		case 0:
			return int(n), nil
		case unix.EINTR:
			continue
		default:
			return -1, errno
		}
	}
}
