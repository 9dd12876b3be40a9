package router

import (
	"io"
	"log/slog"
	"testing"

	"github.com/hipsterd/hipsterd/internal/config"
	"github.com/hipsterd/hipsterd/internal/upstream"
)

func pool(name string) *upstream.Pool {
	b := upstream.NewBackend(config.Backend{Name: name, Address: name + ":80"}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	return upstream.NewPool([]*upstream.Backend{b}, config.RoundRobin, false, slog.New(slog.NewTextHandler(io.Discard, nil)))
}

func TestRoute(t *testing.T) {
	t.Parallel()
	exact, bare, v6, wild, fallback := pool("exact"), pool("bare"), pool("v6"), pool("wild"), pool("fallback")
	rt := New(map[string]*upstream.Pool{
		"localhost:9000":  exact,
		"example.com":     bare,
		"[::1]":           v6,
		"*.apps.test":     wild,
		"www.example.com": bare,
	}, fallback)
	tests := []struct {
		host string
		want *upstream.Pool
	}{
		{"localhost:9000", exact},
		{"LocalHost:9000", exact},
		{"localhost", fallback},
		{"localhost:9001", fallback},
		{"example.com", bare},
		{"EXAMPLE.com:8080", bare},
		{"[::1]:9000", v6},
		{"other.org", fallback},
		{"a.apps.test", wild},
		{"B.apps.test:8080", wild},
		{"a.b.apps.test", fallback},
		{"apps.test", fallback},
		{"", fallback},
	}
	for _, tc := range tests {
		if got := rt.Route(tc.host); got != tc.want {
			t.Errorf("Route(%q) = %p, want %p", tc.host, got, tc.want)
		}
	}
	if got := New(map[string]*upstream.Pool{"a": bare}, nil).Route("b"); got != nil {
		t.Errorf("no match and no fallback: got %p, want nil", got)
	}
	if got := New(nil, fallback).Route("a"); got != fallback {
		t.Errorf("no hosts: got %p, want fallback", got)
	}
}

func BenchmarkRoute(b *testing.B) {
	rt := New(map[string]*upstream.Pool{"example.com": pool("a"), "www.example.com": pool("b")}, pool("c"))
	b.ReportAllocs()
	for b.Loop() {
		rt.Route("www.example.com")
		rt.Route("Example.com:80")
		rt.Route("unknown.example.org:9000")
	}
}
