package server

import (
	"reflect"
	"strings"
	"testing"

	"github.com/hipsterd/hipsterd/internal/config"
)

// planFrontend is a frontend called name that binds bind.
func planFrontend(t *testing.T, name, bind string) config.Frontend {
	t.Helper()
	addr, err := config.ParseBind(bind)
	if err != nil {
		t.Fatal(err)
	}
	return config.Frontend{Name: name, Bind: bind, Listen: addr}
}

// What a reload does to the listening sockets, planned from the open ones
// and the new frontends alone.
func TestPlanSockets(t *testing.T) {
	t.Parallel()
	fe := func(name, bind string) config.Frontend { return planFrontend(t, name, bind) }
	key := func(bind string) string { return bindKey(fe("x", bind)) }
	sock := func(bind string, moving bool) openSocket {
		return openSocket{addr: fe("x", bind).Listen, moving: moving}
	}
	type want struct {
		serve  []string // "key frontend"
		bind   []string // "key <- overlapped keys"
		revive []string
		retire map[string]bool
	}
	tests := []struct {
		name      string
		open      map[string]openSocket
		frontends []config.Frontend
		want      want
	}{
		{
			"a bind that stays keeps its socket",
			map[string]openSocket{key("127.0.0.1:80"): sock("127.0.0.1:80", false)},
			[]config.Frontend{fe("a", "127.0.0.1:80")},
			want{serve: []string{key("127.0.0.1:80") + " a"}, retire: map[string]bool{}},
		},
		{
			"a new wildcard bind covers the old address, which keeps serving",
			map[string]openSocket{key("127.0.0.1:80"): sock("127.0.0.1:80", false)},
			[]config.Frontend{fe("a", "0.0.0.0:80")},
			want{
				serve:  []string{key("0.0.0.0:80") + " a", key("127.0.0.1:80") + " a"},
				bind:   []string{key("0.0.0.0:80") + " <- " + key("127.0.0.1:80")},
				retire: map[string]bool{},
			},
		},
		{
			"from the wildcard to an address: the old socket moves away",
			map[string]openSocket{key("0.0.0.0:80"): sock("0.0.0.0:80", false)},
			[]config.Frontend{fe("a", "127.0.0.1:80")},
			want{
				serve:  []string{key("127.0.0.1:80") + " a"},
				bind:   []string{key("127.0.0.1:80") + " <- " + key("0.0.0.0:80")},
				retire: map[string]bool{key("0.0.0.0:80"): true},
			},
		},
		{
			"a removed frontend's socket closes; a new port binds alone",
			map[string]openSocket{key("127.0.0.1:81"): sock("127.0.0.1:81", false)},
			[]config.Frontend{fe("a", "127.0.0.1:80")},
			want{
				serve:  []string{key("127.0.0.1:80") + " a"},
				bind:   []string{key("127.0.0.1:80") + " <- "},
				retire: map[string]bool{key("127.0.0.1:81"): false},
			},
		},
		{
			"a socket moving away is taken back, or left to close",
			map[string]openSocket{key("127.0.0.1:80"): sock("127.0.0.1:80", true), key("127.0.0.1:81"): sock("127.0.0.1:81", true)},
			[]config.Frontend{fe("a", "127.0.0.1:80")},
			want{serve: []string{key("127.0.0.1:80") + " a"}, revive: []string{key("127.0.0.1:80")}, retire: map[string]bool{}},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			p := planSockets(tc.open, tc.frontends)
			var got want
			for _, s := range p.serve {
				got.serve = append(got.serve, s.key+" "+s.fc.Name)
			}
			for _, b := range p.bind {
				got.bind = append(got.bind, b.key+" <- "+strings.Join(b.overlap, " "))
			}
			got.revive, got.retire = p.revive, p.retire
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("plan\n got %+v\nwant %+v", got, tc.want)
			}
		})
	}
}
