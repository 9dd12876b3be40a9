package stats

import (
	"strings"

	"github.com/hipsterd/hipsterd/internal/config"
)

// CertsOf returns the certificates that cfg's frontends serve, for their
// expiry: each frontend's own and those of the [host] sections it lists,
// as read with cfg. A name served twice by a frontend shows the
// certificate that expires first.
func CertsOf(cfg *config.Config) []Cert {
	var out []Cert
	for _, fc := range cfg.Frontends {
		if !fc.HTTPS {
			continue
		}
		files := [][2]string{{fc.CertFile, fc.KeyFile}}
		seen := map[*config.Host]bool{}
		for _, name := range fc.Hosts {
			if hc := cfg.HostFor(name); hc != nil && hc.CertFile != "" && !seen[hc] {
				seen[hc] = true
				files = append(files, [2]string{hc.CertFile, hc.KeyFile})
			}
		}
		index := map[string]int{}
		for _, f := range files {
			cert, err := cfg.KeyPair(f[0], f[1])
			if err != nil || cert.Leaf == nil {
				continue
			}
			c := Cert{Frontend: fc.Name, Name: certName(cert.Leaf.DNSNames, cert.Leaf.Subject.CommonName), NotAfter: cert.Leaf.NotAfter}
			if i, ok := index[c.Name]; ok {
				if c.NotAfter.Before(out[i].NotAfter) {
					out[i] = c
				}
				continue
			}
			index[c.Name] = len(out)
			out = append(out, c)
		}
	}
	return out
}

// certName names a certificate in the metrics: its first DNS name, else
// its subject's common name.
func certName(dnsNames []string, commonName string) string {
	if len(dnsNames) > 0 {
		return dnsNames[0]
	}
	return strings.TrimSpace(commonName)
}
