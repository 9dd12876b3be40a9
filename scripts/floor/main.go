// Command floor is what issue 19 measures hipsterd against: the least a Go
// proxy built on net/http's server and httputil.ReverseProxy can cost. It
// reads the frontends and backends of a hipsterd INI file (bind, https,
// certfile, keyfile, backends; connect) and nothing else: no limits, no
// timeouts, no log, no metrics, no health checks, no connection checks.
//
//	-mode proxy   ReverseProxy with net/http's own Transport, round robin
//	              over the frontend's backends (WebSocket upgrades included)
//	-mode serve   net/http's server answering every request itself: /64k
//	              with 65536 bytes, anything else with 100 (the floor of the
//	              server alone)
//
// HTTPS frontends offer HTTP/2 and HTTP/1.1, as hipsterd's do. bench.sh
// measures it as its extra column, beside hipsterd, from the repository's
// root:
//
//	go build -o /tmp/floor ./scripts/floor
//	EXTRA_PROXY_CMD="/tmp/floor -config {config}" EXTRA_PROXY_NAME=floor \
//	    ../shared/bench/bench.sh --quick --syscalls ./hipsterd
package main

import (
	"bytes"
	"crypto/tls"
	"flag"
	"fmt"
	"log"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"strings"
	"sync/atomic"

	"gopkg.in/ini.v1"
)

type frontend struct {
	bind, certfile, keyfile string
	https                   bool
	backends                []string
}

func main() {
	config := flag.String("config", "", "hipsterd INI file")
	mode := flag.String("mode", "proxy", "proxy or serve")
	flag.Parse()
	fronts, connect, err := load(*config)
	if err != nil {
		log.Fatal(err)
	}
	transport := &http.Transport{MaxIdleConnsPerHost: 256}
	errs := make(chan error)
	for _, fe := range fronts {
		h, err := handler(*mode, fe, connect, transport)
		if err != nil {
			log.Fatal(err)
		}
		srv := &http.Server{Addr: fe.bind, Handler: h}
		go func() {
			if fe.https {
				srv.TLSConfig = &tls.Config{NextProtos: []string{"h2", "http/1.1"}}
				errs <- srv.ListenAndServeTLS(fe.certfile, fe.keyfile)
				return
			}
			errs <- srv.ListenAndServe()
		}()
	}
	fmt.Fprintln(os.Stderr, "floor: serving, mode", *mode)
	log.Fatal(<-errs)
}

// load reads the frontends of the INI file at path, and the address each
// backend connects to.
func load(path string) ([]frontend, map[string]string, error) {
	f, err := ini.Load(path)
	if err != nil {
		return nil, nil, err
	}
	connect := map[string]string{}
	var fronts []frontend
	for _, s := range f.Sections() {
		kind, name, _ := strings.Cut(s.Name(), " ")
		switch kind {
		case "backend":
			connect[name] = s.Key("connect").String()
		case "frontend":
			fronts = append(fronts, frontend{bind: s.Key("bind").String(), https: s.Key("https").MustBool(false),
				certfile: s.Key("certfile").String(), keyfile: s.Key("keyfile").String(),
				backends: strings.Fields(s.Key("backends").String())})
		}
	}
	if len(fronts) == 0 {
		return nil, nil, fmt.Errorf("%s: no frontend", path)
	}
	return fronts, connect, nil
}

func handler(mode string, fe frontend, connect map[string]string, transport http.RoundTripper) (http.Handler, error) {
	switch mode {
	case "serve":
		return http.HandlerFunc(serve), nil
	case "proxy":
		return proxy(fe, connect, transport)
	}
	return nil, fmt.Errorf("unknown mode %q", mode)
}

var (
	// small is bench.sh's /small, which its check before measuring compares.
	small = []byte("hipsterd-bench small response: 100 bytes of static text served by nginx." + strings.Repeat(" ", 27) + "\n")
	large = bytes.Repeat([]byte("x"), 65536)
)

func serve(w http.ResponseWriter, r *http.Request) {
	body := small
	if r.URL.Path == "/64k" {
		body = large
	}
	w.Header().Set("Content-Type", "text/plain")
	w.Write(body)
}

func proxy(fe frontend, connect map[string]string, transport http.RoundTripper) (http.Handler, error) {
	var targets []*url.URL
	for _, b := range fe.backends {
		addr, ok := connect[b]
		if !ok {
			return nil, fmt.Errorf("frontend %s: no backend %q", fe.bind, b)
		}
		targets = append(targets, &url.URL{Scheme: "http", Host: addr})
	}
	var next atomic.Uint64
	return &httputil.ReverseProxy{
		Transport: transport,
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(targets[next.Add(1)%uint64(len(targets))])
			pr.Out.Host = pr.In.Host
			pr.SetXForwarded()
		},
	}, nil
}
