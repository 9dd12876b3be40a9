package stats

import (
	"bytes"
	_ "embed"
	"fmt"
	"html/template"
	"net/http"
	"strings"
	"time"

	"github.com/hipsterd/hipsterd/internal/config"
)

//go:embed page.tmpl
var pageSource string

// pageTemplate renders the status page from a Status.
var pageTemplate = template.Must(template.New("page").Funcs(template.FuncMap{
	"duration":     func(s float64) string { return duration(time.Duration(s * float64(time.Second))) },
	"ago":          ago,
	"bytes":        byteSize,
	"ms":           latency,
	"mode":         modeLabel,
	"expiry":       expiry,
	"expiryClass":  expiryClass,
	"reloadFailed": reloadFailed,
	"join":         strings.Join,
	"when":         when,
	"add":          func(a, b uint64) uint64 { return a + b },
	"at":           func(now time.Time, f FrontendStatus) frontendAt { return frontendAt{now, f} },
}).Parse(pageSource))

// frontendAt is a frontend's status with the time of the snapshot, for the
// parts of the page that say how long ago something was.
type frontendAt struct {
	Now time.Time
	FrontendStatus
}

// servePage renders the status page of st.
func servePage(w http.ResponseWriter, st Status) {
	var b bytes.Buffer
	if err := pageTemplate.Execute(&b, st); err != nil {
		http.Error(w, "rendering the status page: "+err.Error(), http.StatusInternalServerError)
		return
	}
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Cache-Control", "no-cache")
	// Everything the page needs is in it; it may fetch from here only.
	h.Set("Content-Security-Policy", "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src 'self'")
	w.Write(b.Bytes())
}

// duration writes d in its two largest units: 3d 4h, 5m 2s.
func duration(d time.Duration) string {
	s := max(0, int64(d/time.Second))
	days, h, m := s/86400, s%86400/3600, s%3600/60
	switch {
	case days > 0:
		return fmt.Sprintf("%dd %dh", days, h)
	case h > 0:
		return fmt.Sprintf("%dh %dm", h, m)
	case m > 0:
		return fmt.Sprintf("%dm %ds", m, s%60)
	}
	return fmt.Sprintf("%ds", s)
}

func ago(t, now time.Time) string { return duration(now.Sub(t)) + " ago" }

// byteSize writes n in binary units, as the page did in the browser.
func byteSize(n uint64) string {
	units := []string{"B", "KiB", "MiB", "GiB", "TiB"}
	v, i := float64(n), 0
	for v >= 1024 && i < len(units)-1 {
		v /= 1024
		i++
	}
	if i == 0 {
		return fmt.Sprintf("%d B", n)
	}
	return fmt.Sprintf("%.1f %s", v, units[i])
}

// latency writes a latency in seconds; "–" when there is none yet.
func latency(s *float64) string {
	switch {
	case s == nil:
		return "–"
	case *s < 1:
		return fmt.Sprintf("%.1f ms", *s*1000)
	}
	return fmt.Sprintf("%.2f s", *s)
}

// modeLabel is what a frontend speaks to its clients: https rather than
// http when it holds a certificate.
func modeLabel(f FrontendStatus) string {
	switch {
	case f.HTTPS && f.Mode == string(config.ModeHTTP):
		return "https"
	case f.HTTPS:
		return f.Mode + "+tls"
	}
	return f.Mode
}

func expiry(notAfter, now time.Time) string {
	date := notAfter.UTC().Format(time.DateOnly)
	if left := notAfter.Sub(now); left > 0 {
		return fmt.Sprintf("expires %s, in %s", date, duration(left))
	}
	return "expired on " + date
}

// expiryClass marks a certificate that expires within the warning that
// -t gives, or has expired.
func expiryClass(notAfter, now time.Time) string {
	switch left := notAfter.Sub(now); {
	case left <= 0:
		return "expired"
	case left < config.CertExpiryWarning:
		return "soon"
	}
	return ""
}

// when writes a time to the minute, in UTC; "–" for none.
func when(t time.Time) string {
	if t.IsZero() {
		return "–"
	}
	return t.UTC().Format("2006-01-02 15:04 UTC")
}

// reloadFailed reports whether the last reload failed after the running
// configuration was applied.
func reloadFailed(st Status) bool {
	return st.LastReloadError != "" && st.LastReloadFailed.After(st.Applied)
}
