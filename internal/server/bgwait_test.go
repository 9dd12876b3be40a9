package server

import (
	"math/rand/v2"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/hipsterd/hipsterd/internal/testutil"
)

// The background read's wait (reads.go) hammered with its wakers at random
// moments, many around bgReadWait where they race the timer, on connections
// whose waits share the pool's waiters: every wait ends, no waker blocks,
// and a waiter lent again carries nothing over from its last wait (no wake
// sent twice or left unread, no timer's tick): a wait that nothing calls
// off lasts its whole bgReadWait.
func TestBackgroundReadWaitRaces(t *testing.T) {
	t.Parallel()
	const conns, rounds = 128, 10
	cs := make([]*countedConn, conns)
	for i := range cs {
		_, s := testutil.Pair(t)
		cs[i] = &countedConn{TCPConn: s, fe: new(connLimit), global: new(connLimit)}
	}
	// stuck fails the test if done is not closed in time, with the
	// goroutines' stacks: a lost wake leaves a wait, or a waker, blocked.
	stuck := func(what string, done <-chan struct{}) {
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			buf := make([]byte, 1<<20)
			t.Fatalf("%s did not end:\n%s", what, buf[:runtime.Stack(buf, true)])
		}
	}
	past := time.Unix(1, 0)
	for round := range rounds {
		last := round == rounds-1
		var wg sync.WaitGroup
		early := make(chan string, conns)
		var wakers []chan struct{}
		for _, c := range cs {
			c.bg.Store(bgOn)
			kind := rand.IntN(5)
			// Around the timer's tick mostly, or at once.
			at := bgReadWait - time.Millisecond + rand.N(2*time.Millisecond)
			if rand.IntN(4) == 0 {
				at = rand.N(2 * time.Millisecond)
			}
			waited, woken := make(chan struct{}), make(chan struct{})
			wg.Add(1)
			go func() {
				defer wg.Done()
				start := time.Now()
				c.waitBeforeRead()
				if d := time.Since(start); kind == 0 && !last && d < bgReadWait {
					early <- d.String()
				}
				close(waited)
			}()
			go func() {
				defer close(woken)
				if kind == 0 && !last {
					return // nothing calls this wait off
				}
				time.Sleep(at) // a random moment, not a synchronisation
				var both sync.WaitGroup
				if last {
					// The connection closes as net/http calls the
					// read off.
					both.Go(func() { c.Close() })
				}
				switch kind {
				case 1:
					c.wakeBackgroundRead()
				case 2:
					c.SetReadDeadline(past)
					c.SetReadDeadline(time.Time{})
				default:
					both.Go(func() { c.SetDeadline(past) })
					c.wakeBackgroundRead()
				}
				both.Wait()
			}()
			wakers = append(wakers, woken)
		}
		all := make(chan struct{})
		go func() { wg.Wait(); close(all) }()
		stuck("a background read's wait", all)
		for _, woken := range wakers {
			stuck("a waker", woken)
		}
		close(early)
		for d := range early {
			t.Errorf("round %d: a wait nothing called off ended after %s, before bgReadWait (%s): its waiter carried a wake or a tick over", round, d, bgReadWait)
		}
	}
}
