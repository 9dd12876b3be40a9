package accesslog

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

func TestTCPLineFormat(t *testing.T) {
	t.Parallel()
	now := time.Date(2012, 11, 3, 14, 5, 6, 789012000, time.Local)
	tests := []struct {
		name, backend, remote string
		d                     time.Duration
		want                  string
	}{
		{"served", "db1", "192.0.2.1:1234", 12345678 * time.Microsecond, `frontend:db 2012/11/03 14:05:06.789012 192.0.2.1:1234 db1 "TCP" 17 4096 12.345s` + "\n"},
		{"no backend", "", "192.0.2.1:1234", 3 * time.Millisecond, `frontend:db 2012/11/03 14:05:06.789012 192.0.2.1:1234 - "TCP" 17 4096 0.003s` + "\n"},
		{"long", "db1", "192.0.2.1:1234", 26*time.Hour + 50*time.Millisecond, `frontend:db 2012/11/03 14:05:06.789012 192.0.2.1:1234 db1 "TCP" 17 4096 93600.050s` + "\n"},
		{"forged", "db\"1", "x\nfrontend:db 2012/11/03 14:05:06.789012 6.6.6.6:1 - \"TCP\" 0 0 0.000s", 0,
			`frontend:db 2012/11/03 14:05:06.789012 x\x0Afrontend:db 2012/11/03 14:05:06.789012 6.6.6.6:1 - \x22TCP\x22 0 0 0.000s db\x221 "TCP" 17 4096 0.000s` + "\n"},
	}
	for _, tc := range tests {
		l := &TCPLine{RemoteAddr: tc.remote, Backend: tc.backend, BytesIn: 17, BytesOut: 4096, Duration: tc.d}
		if got := string(appendTCPLine(nil, "frontend:db ", now, l)); got != tc.want {
			t.Errorf("%s:\n%q, want\n%q", tc.name, got, tc.want)
		}
	}
}

// A tcp line keeps its logger's format: the documented TCP line in the
// hipster and combined formats, a JSON object in the JSON format.
func TestTCPLineInEveryFormat(t *testing.T) {
	t.Parallel()
	for _, format := range []Format{Hipster, Combined, JSON} {
		path := filepath.Join(t.TempDir(), "access.log")
		f, err := Open(path)
		if err != nil {
			t.Fatal(err)
		}
		l := NewLogger("db", f, format)
		l.TCP(&TCPLine{RemoteAddr: "[2001:db8::7]:5555", Backend: "pg1", BytesIn: 3, BytesOut: 5, Duration: 1500 * time.Millisecond, Termination: "done"})
		l.TCP(&TCPLine{RemoteAddr: "192.0.2.1:1", Termination: "no-backend"})
		f.Close()
		data, _ := os.ReadFile(path)
		lines := strings.Split(strings.TrimSuffix(string(data), "\n"), "\n")
		if len(lines) != 2 {
			t.Fatalf("%s: %d lines: %q", formatNames[format], len(lines), data)
		}
		if format != JSON {
			for i, re := range []string{
				`^frontend:db \d{4}/\d\d/\d\d \d\d:\d\d:\d\d\.\d{6} \[2001:db8::7\]:5555 pg1 "TCP" 3 5 1\.500s$`,
				`^frontend:db \S+ \S+ 192\.0\.2\.1:1 - "TCP" 0 0 0\.000s$`,
			} {
				if !regexp.MustCompile(re).MatchString(lines[i]) {
					t.Errorf("%s: line %q, want %s", formatNames[format], lines[i], re)
				}
			}
			continue
		}
		type tcpJSON struct {
			Time        string   `json:"time"`
			Mode        string   `json:"mode"`
			Frontend    string   `json:"frontend"`
			Client      string   `json:"client"`
			Backend     *string  `json:"backend"`
			BytesIn     int64    `json:"bytes_in"`
			BytesOut    int64    `json:"bytes_out"`
			Duration    *float64 `json:"duration"`
			Termination string   `json:"termination"`
		}
		for i, want := range []string{
			`{"mode":"tcp","frontend":"db","client":"2001:db8::7","backend":"pg1","bytes_in":3,"bytes_out":5,"duration":1.5,"termination":"done"}`,
			`{"mode":"tcp","frontend":"db","client":"192.0.2.1","backend":null,"bytes_in":0,"bytes_out":0,"duration":0,"termination":"no-backend"}`,
		} {
			var got tcpJSON
			dec := json.NewDecoder(strings.NewReader(lines[i]))
			dec.DisallowUnknownFields()
			if err := dec.Decode(&got); err != nil {
				t.Errorf("json line %q: %v", lines[i], err)
				continue
			}
			if _, err := time.Parse(time.RFC3339Nano, got.Time); err != nil {
				t.Errorf("json line %q: time: %v", lines[i], err)
			}
			got.Time = ""
			b, _ := json.Marshal(got)
			if s := strings.Replace(string(b), `"time":"",`, "", 1); s != want {
				t.Errorf("json line\n%s, want\n%s", s, want)
			}
		}
	}
}
