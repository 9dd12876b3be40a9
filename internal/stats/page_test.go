package stats

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

func TestPageHelpers(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC)
	half := 0.0004
	two := 2.5
	for _, tc := range []struct{ got, want string }{
		{duration(3*24*time.Hour + 5*time.Hour + 7*time.Minute), "3d 5h"},
		{duration(90 * time.Second), "1m 30s"},
		{duration(-time.Second), "0s"},
		{byteSize(1023), "1023 B"},
		{byteSize(1536), "1.5 KiB"},
		{latency(nil), "–"},
		{latency(&half), "0.4 ms"},
		{latency(&two), "2.50 s"},
		{modeLabel(FrontendStatus{Mode: "http", HTTPS: true}), "https"},
		{modeLabel(FrontendStatus{Mode: "http"}), "http"},
		{modeLabel(FrontendStatus{Mode: "tcp", HTTPS: true}), "tcp+tls"},
		{expiry(now.Add(40*24*time.Hour), now), "expires 2027-01-12, in 40d 0h"},
		{expiry(now.Add(-time.Hour), now), "expired on 2026-12-03"},
		{expiryClass(now.Add(40*24*time.Hour), now), ""},
		{expiryClass(now.Add(3*24*time.Hour), now), "soon"},
		{expiryClass(now.Add(-time.Hour), now), "expired"},
	} {
		if tc.got != tc.want {
			t.Errorf("got %q, want %q", tc.got, tc.want)
		}
	}
}

// TestPageEscapes renders names and check results as text, never markup.
func TestPageEscapes(t *testing.T) {
	t.Parallel()
	now := time.Now()
	failed := now
	st := Status{
		Now: now, Applied: now.Add(-time.Minute), LastReloadError: `x.ini:3: [frontend <i>] bind: "<script>"`, LastReloadFailed: &failed,
		Frontends: []FrontendStatus{{
			Name: "web", Mode: "http",
			FrontendCounts: FrontendCounts{Responses: Classes{}},
			Backends: []BackendStatus{{Name: "app", State: "DOWN", LastCheck: "GET /health: <b>500</b>", Pools: []string{"backends"},
				BackendCounts: BackendCounts{Responses: Classes{"5xx": 2}}}},
			BackendsTotal: BackendTotal{BackendCounts: BackendCounts{Responses: Classes{}}},
		}},
		FrontendsTotal: FrontendCounts{Responses: Classes{}},
	}
	var b bytes.Buffer
	if err := pageTemplate.Execute(&b, st); err != nil {
		t.Fatal(err)
	}
	page := b.String()
	for _, want := range []string{"GET /health: &lt;b&gt;500&lt;/b&gt;", `id="reloaderr">last reload failed 0s ago: x.ini:3: [frontend &lt;i&gt;] bind: &#34;&lt;script&gt;&#34;`} {
		if !strings.Contains(page, want) {
			t.Errorf("the page lacks %s", want)
		}
	}
	if strings.Contains(page, "<b>500") || strings.Contains(page, "<i>]") {
		t.Error("markup from the data reached the page")
	}
}

// TestFrontendCertificates lists a frontend's certificates from files and
// from the ACME CA, once obtained.
func TestFrontendCertificates(t *testing.T) {
	t.Parallel()
	end := time.Date(2027, 3, 1, 0, 0, 0, 0, time.UTC)
	fl := FrontendLayout{Frontend: newFrontend("tls", "http"), HTTPS: true}
	fs := frontendStatus(fl, Conns{},
		[]Cert{{Frontend: "tls", Name: "file.example", NotAfter: end}, {Frontend: "other", Name: "x", NotAfter: end}},
		[]ManagedCert{
			{Names: []string{"acme.example", "www.acme.example"}, Frontends: []string{"plain", "tls"}, NotAfter: end},
			{Names: []string{"pending.example"}, Frontends: []string{"tls"}},
			{Names: []string{"elsewhere.example"}, Frontends: []string{"other"}, NotAfter: end},
		})
	want := []CertStatus{{Name: "file.example", NotAfter: end}, {Name: "acme.example", NotAfter: end, ACME: true}}
	if len(fs.Certificates) != len(want) || fs.Certificates[0] != want[0] || fs.Certificates[1] != want[1] {
		t.Errorf("certificates %+v, want %+v", fs.Certificates, want)
	}
	if !fs.HTTPS || modeLabel(fs) != "https" {
		t.Errorf("mode %q, https %v", modeLabel(fs), fs.HTTPS)
	}
}
