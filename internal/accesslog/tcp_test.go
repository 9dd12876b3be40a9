package accesslog

import (
	"testing"
	"time"
)

func TestTCPLineFormat(t *testing.T) {
	t.Parallel()
	now := time.Date(2012, 11, 3, 14, 5, 6, 789012000, time.Local)
	tests := []struct {
		name, backend string
		d             time.Duration
		want          string
	}{
		{"served", "db1", 12345678 * time.Microsecond, `frontend:db 2012/11/03 14:05:06.789012 192.0.2.1:1234 db1 "TCP" 17 4096 12.345s` + "\n"},
		{"no backend", "", 3 * time.Millisecond, `frontend:db 2012/11/03 14:05:06.789012 192.0.2.1:1234 - "TCP" 17 4096 0.003s` + "\n"},
		{"long", "db1", 26*time.Hour + 50*time.Millisecond, `frontend:db 2012/11/03 14:05:06.789012 192.0.2.1:1234 db1 "TCP" 17 4096 93600.050s` + "\n"},
	}
	for _, tc := range tests {
		if got := string(appendTCPLine(nil, "frontend:db ", now, "192.0.2.1:1234", tc.backend, 17, 4096, tc.d)); got != tc.want {
			t.Errorf("%s:\n%q, want\n%q", tc.name, got, tc.want)
		}
	}
}
