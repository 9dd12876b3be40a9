package upstream

import (
	"fmt"
	"io"
	"log/slog"
	"sync"
	"testing"

	"github.com/hipsterd/hipsterd/internal/config"
)

func backends(names ...string) map[string]*Backend {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	out := map[string]*Backend{}
	for _, n := range names {
		out[n] = NewBackend(config.Backend{Name: n, Address: n + ":80"}, log)
	}
	return out
}

func TestPoolRotation(t *testing.T) {
	t.Parallel()
	bs := backends("a", "b")
	tests := []struct {
		name  string
		list  []string
		total int
		want  map[string]int
	}{
		{"two", []string{"a", "b"}, 1000, map[string]int{"a": 500, "b": 500}},
		{"listed twice", []string{"a", "a", "b"}, 999, map[string]int{"a": 666, "b": 333}},
		{"one", []string{"b"}, 10, map[string]int{"b": 10}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			list := make([]*Backend, len(tc.list))
			for i, n := range tc.list {
				list[i] = bs[n]
			}
			p := NewPool(list)
			var mu sync.Mutex
			got := map[string]int{}
			var wg sync.WaitGroup
			// Concurrent pickers: strict rotation must hold under contention.
			for w := 0; w < 10; w++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					local := map[string]int{}
					for i := 0; i < tc.total/10; i++ {
						local[p.Next().Name]++
					}
					mu.Lock()
					for k, v := range local {
						got[k] += v
					}
					mu.Unlock()
				}()
			}
			wg.Wait()
			for i := 0; i < tc.total%10; i++ {
				got[p.Next().Name]++
			}
			if fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Errorf("split = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestPoolOrder(t *testing.T) {
	t.Parallel()
	bs := backends("a", "b", "c")
	p := NewPool([]*Backend{bs["a"], bs["b"], bs["c"]})
	var seq string
	for i := 0; i < 7; i++ {
		seq += p.Next().Name
	}
	if seq != "abcabca" {
		t.Errorf("sequence %q, want abcabca", seq)
	}
}

func BenchmarkPoolNext(b *testing.B) {
	names := make([]string, 1000)
	for i := range names {
		names[i] = fmt.Sprintf("b%d", i)
	}
	bs := backends(names...)
	list := make([]*Backend, 0, len(names))
	for _, n := range names {
		list = append(list, bs[n])
	}
	p := NewPool(list)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			p.Next()
		}
	})
}
