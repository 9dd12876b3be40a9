package urlpath

import "testing"

func TestNormalize(t *testing.T) {
	t.Parallel()
	tests := []struct{ in, want string }{
		{"/", "/"},
		{"/api/x", "/api/x"},
		{"/api/../admin/x", "/admin/x"},
		{"/%61dmin/x", "/admin/x"},
		{"/api/%2e%2e/admin", "/admin"},
		{"/api/%2E%2E/admin", "/admin"},
		{"/a/./b/", "/a/b/"},
		{"/a/.", "/a/"},
		{"/a/b/..", "/a/"},
		{"/a/..", "/"},
		{"/a%2fb", "/a%2Fb"},
		{"/a%2F..%2Fb", "/a%2F..%2Fb"}, // an encoded / does not make a segment
		{"/%7euser", "/~user"},
		{"/a/..b/.c", "/a/..b/.c"},
		{"//a", "/a"},
		{"/a//b///", "/a/b/"},
		{"/api/..//admin", "/admin"},
		{"/a//../b", "/b"},
		{"/a%2F%2Fb", "/a%2F%2Fb"},
		{"/a%20b", "/a%20b"},
	}
	for _, tt := range tests {
		got, err := Normalize(tt.in)
		if err != nil || got != tt.want {
			t.Errorf("Normalize(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
		}
	}
	for _, bad := range []string{"", "api", "*", "/..", "/a/../..", "/%2e%2e/x", "/%zz", "/%4", "/a%"} {
		if got, err := Normalize(bad); err == nil {
			t.Errorf("Normalize(%q) = %q, want an error", bad, got)
		}
	}
}

func TestNormalizeNormalDoesNotAllocate(t *testing.T) {
	if n := testing.AllocsPerRun(100, func() { Normalize("/api/v1/users/42") }); n != 0 {
		t.Errorf("%v allocations for a normal path", n)
	}
}

func TestMatch(t *testing.T) {
	t.Parallel()
	tests := []struct {
		p, prefix, rest string
		ok              bool
	}{
		{"/api", "/api", "/", true},
		{"/api/", "/api", "/", true},
		{"/api/v1/x", "/api", "/v1/x", true},
		{"/apix", "/api", "", false},
		{"/static/x", "/static/", "/x", true},
		{"/static/", "/static/", "/", true},
		{"/static", "/static/", "", false},
		{"/anything", "/", "/anything", true},
		{"/", "/", "/", true},
	}
	for _, tt := range tests {
		rest, ok := Match(tt.p, tt.prefix)
		if rest != tt.rest || ok != tt.ok {
			t.Errorf("Match(%q, %q) = %q, %v; want %q, %v", tt.p, tt.prefix, rest, ok, tt.rest, tt.ok)
		}
	}
}
