package stats

import (
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// ManagedCert is a certificate hipsterd gets from an ACME CA.
type ManagedCert struct {
	Names     []string `json:"names"`
	Frontends []string `json:"frontends"` // the https frontends serving it
	Issuer    string   `json:"issuer,omitempty"`
	// NotAfter and NextRenewal are zero before the first certificate.
	NotAfter    time.Time `json:"not_after"`
	NextRenewal time.Time `json:"next_renewal"`
	// LastError is the last failure to obtain or renew it, if the last
	// attempt failed.
	LastError   string    `json:"last_error,omitempty"`
	LastErrorAt time.Time `json:"last_error_at"`
}

var (
	descACMEInfo    = desc("hipsterd_acme_certificate_info", "Always 1: a certificate obtained from the ACME CA, its names and issuer.", "name", "names", "issuer")
	descACMEExpiry  = desc("hipsterd_acme_certificate_not_after_timestamp_seconds", "When the ACME certificate expires (absent before it is first obtained).", "name")
	descACMERenewal = desc("hipsterd_acme_certificate_next_renewal_timestamp_seconds", "When the ACME certificate is due for renewal: the time chosen in the CA's ARI window, else at a third of its lifetime left.", "name")
	descACMEFailing = desc("hipsterd_acme_certificate_failing", "1 while the last attempt to obtain or renew the certificate failed (the status page shows the CA's error), else 0.", "name")
	descACMEFailAt  = desc("hipsterd_acme_certificate_last_failure_timestamp_seconds", "When the last attempt to obtain or renew the certificate failed, if the last attempt failed.", "name")
)

// SetManaged sets what lists the ACME certificates; call it before the
// registry is served.
func (r *Registry) SetManaged(f func() []ManagedCert) { r.managedOf = f }

// managed returns the ACME certificates, none when no lister is set.
func (r *Registry) managed() []ManagedCert {
	if r.managedOf == nil {
		return nil
	}
	return r.managedOf()
}

// collectManaged sends the series of the ACME certificates, and their
// hipsterd_certificate_expiry_seconds for each frontend serving them but
// for a name that frontend's own certificate file has (one series each).
func collectManaged(ch chan<- prometheus.Metric, certs []ManagedCert, fromFiles map[[2]string]bool, now time.Time) {
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	for _, c := range certs {
		name := c.Names[0]
		failing := 0.0
		if c.LastError != "" {
			failing = 1
			gauge(descACMEFailAt, seconds(c.LastErrorAt), name)
		}
		gauge(descACMEFailing, failing, name)
		if c.NotAfter.IsZero() {
			continue
		}
		gauge(descACMEInfo, 1, name, strings.Join(c.Names, " "), c.Issuer)
		gauge(descACMEExpiry, seconds(c.NotAfter), name)
		gauge(descACMERenewal, seconds(c.NextRenewal), name)
		for _, fe := range c.Frontends {
			if fromFiles[[2]string{fe, name}] {
				continue
			}
			gauge(descCertExpiry, c.NotAfter.Sub(now).Seconds(), fe, name)
		}
	}
}
