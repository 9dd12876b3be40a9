package server

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"html"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/hipsterd/hipsterd/internal/testcert"
	"github.com/hipsterd/hipsterd/internal/testpeer"
)

// chromiumFlags are those Chromium needs to run headless here, as root and
// without reaching out to the network.
var chromiumFlags = []string{
	"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
	"--disable-background-networking", "--disable-component-update", "--disable-sync",
	"--remote-debugging-port=0",
}

// TestStatusPageInChromium loads the status page in headless Chromium
// (Debian's chromium package), driven through the DevTools protocol: the
// page renders without a console error, and shows a backend going DOWN
// without being reloaded.
func TestStatusPageInChromium(t *testing.T) {
	t.Parallel()
	bin, err := exec.LookPath("chromium")
	if err != nil {
		testpeer.Missing(t, "chromium is not installed (apt-get install chromium): the status page is not tested in a browser")
	}
	var sick atomic.Bool
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if sick.Load() {
			http.Error(w, "not well", http.StatusInternalServerError)
			return
		}
		w.Write([]byte("ok"))
	}))
	t.Cleanup(backend.Close)
	s, addrs := start(t, fmt.Sprintf(`
[global]
stats = 127.0.0.1:0
[frontend web]
bind = 127.0.0.1:0
backends = app other
routes = r
[route r]
path = /r
backends = other
[backend app]
connect = %s
health-check = /health
health-interval = 50ms
health-fall = 2
[backend other]
connect = %s
`, backend.Listener.Addr(), namedBackend(t, "other")))
	get(t, "http://"+addrs["web"]+"/", "")
	get(t, "http://"+addrs["web"]+"/r/x", "")

	b := startChromium(t, bin)
	page := b.newPage(t)
	page.call(t, "Runtime.enable", nil)
	page.call(t, "Log.enable", nil)
	page.call(t, "Page.enable", nil)
	page.call(t, "Page.navigate", map[string]any{"url": "http://" + statsAddr(t, s) + "/"})

	text := func(p *cdpPage, selector string) string {
		var res struct {
			Result struct {
				Value string `json:"value"`
			} `json:"result"`
		}
		p.callInto(t, "Runtime.evaluate", map[string]any{
			"expression":    `(document.querySelector('` + selector + `') || {}).textContent || ""`,
			"returnByValue": true,
		}, &res)
		return res.Result.Value
	}
	const appState = `[data-frontend="web"] tr[data-backend="app"] .state`
	state := func() string { return text(page, appState) }
	poll(t, 30*time.Second, "the page to show app UP", func() bool { return state() == "UP" })
	// The route's row: its name and the one request it took.
	var row struct {
		Result struct {
			Value string `json:"value"`
		} `json:"result"`
	}
	page.callInto(t, "Runtime.evaluate", map[string]any{
		"expression":    `Array.from(document.querySelectorAll('[data-frontend="web"] tr[data-route="r"] td')).slice(0, 2).map(td => td.textContent).join(" ")`,
		"returnByValue": true,
	}, &row)
	if row.Result.Value != "r 1" {
		t.Errorf("the route's row reads %q, want \"r 1\"", row.Result.Value)
	}
	sick.Store(true)
	poll(t, 30*time.Second, "the page to show app DOWN by itself", func() bool { return state() == "DOWN" })
	// The script works out rates between two fetches of the page: requests
	// sent now show as a rate, and in the totals row it refreshed too.
	for range 5 {
		get(t, "http://"+addrs["web"]+"/", "")
	}
	poll(t, 30*time.Second, "a request rate and the new totals", func() bool {
		rate := text(page, `[data-frontend="web"] tr[data-backend="other"] [data-rate]`)
		return rate != "" && rate != "–" && rate != "0.0" && text(page, `[data-frontend="web"] tfoot .state`) == "1/2 UP"
	})

	// With scripts off, as in a text browser, the page is all there.
	bare := b.newPage(t)
	bare.call(t, "Page.enable", nil)
	bare.call(t, "Emulation.setScriptExecutionDisabled", map[string]any{"value": true})
	bare.call(t, "Page.navigate", map[string]any{"url": "http://" + statsAddr(t, s) + "/"})
	poll(t, 30*time.Second, "the page without scripts to show app DOWN", func() bool { return text(bare, appState) == "DOWN" })
	// The icon the page names, and that the browser asks for itself.
	resp, err := http.Get("http://" + statsAddr(t, s) + "/favicon.ico")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Errorf("/favicon.ico: %d", resp.StatusCode)
	}
	for _, e := range b.errors() {
		t.Errorf("browser console: %s", e)
	}
}

// poll calls cond until it holds, for up to d.
func poll(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// browser is a headless Chromium and its DevTools connection.
type browser struct {
	ws     *websocket.Conn
	nextID atomic.Int64

	mu      sync.Mutex
	writeMu sync.Mutex
	pending map[int64]chan cdpMessage
	errs    []string
}

type cdpMessage struct {
	ID        int64                     `json:"id,omitempty"`
	Method    string                    `json:"method,omitempty"`
	Params    json.RawMessage           `json:"params,omitempty"`
	Result    json.RawMessage           `json:"result,omitempty"`
	Error     *struct{ Message string } `json:"error,omitempty"`
	SessionID string                    `json:"sessionId,omitempty"`
}

func startChromium(t *testing.T, bin string) *browser {
	t.Helper()
	dir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, bin, append(chromiumFlags, "--user-data-dir="+dir, "about:blank")...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// Closed through DevTools (below) first, so that its helper processes
	// end with it; killed if it takes too long.
	t.Cleanup(func() {
		exited := make(chan struct{})
		go func() {
			cmd.Wait()
			close(exited)
		}()
		select {
		case <-exited:
		case <-time.After(5 * time.Second):
			cancel()
			<-exited
		}
		cancel()
	})
	// Chromium names its DevTools address on stderr.
	found := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			if _, url, ok := strings.Cut(sc.Text(), "DevTools listening on "); ok {
				found <- strings.TrimSpace(url)
			}
		}
	}()
	var url string
	select {
	case url = <-found:
	case <-time.After(30 * time.Second):
		data, _ := os.ReadFile(filepath.Join(dir, "DevToolsActivePort"))
		t.Fatalf("Chromium did not start its DevTools listener (DevToolsActivePort: %q)", data)
	}
	ws, _, err := websocket.DefaultDialer.Dial(url, nil)
	if err != nil {
		t.Fatal(err)
	}
	b := &browser{ws: ws, pending: map[int64]chan cdpMessage{}}
	t.Cleanup(func() {
		b.writeMu.Lock()
		ws.WriteJSON(map[string]any{"id": b.nextID.Add(1), "method": "Browser.close"})
		b.writeMu.Unlock()
		ws.Close()
	})
	go b.read()
	return b
}

// read dispatches answers to their callers and records console errors.
func (b *browser) read() {
	for {
		var m cdpMessage
		if err := b.ws.ReadJSON(&m); err != nil {
			return
		}
		b.mu.Lock()
		if ch := b.pending[m.ID]; m.ID != 0 && ch != nil {
			delete(b.pending, m.ID)
			ch <- m
		}
		switch m.Method {
		case "Runtime.exceptionThrown":
			b.errs = append(b.errs, "exception: "+string(m.Params))
		case "Runtime.consoleAPICalled":
			var p struct{ Type string }
			json.Unmarshal(m.Params, &p)
			if p.Type == "error" || p.Type == "assert" {
				b.errs = append(b.errs, "console."+p.Type+": "+string(m.Params))
			}
		case "Log.entryAdded":
			var p struct{ Entry struct{ Level string } }
			json.Unmarshal(m.Params, &p)
			if p.Entry.Level == "error" {
				b.errs = append(b.errs, "log: "+string(m.Params))
			}
		}
		b.mu.Unlock()
	}
}

func (b *browser) errors() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]string(nil), b.errs...)
}

// send calls method in session (the browser's own when "") and returns
// its answer.
func (b *browser) send(t *testing.T, session, method string, params any) json.RawMessage {
	t.Helper()
	id := b.nextID.Add(1)
	ch := make(chan cdpMessage, 1)
	b.mu.Lock()
	b.pending[id] = ch
	b.mu.Unlock()
	if params == nil {
		params = map[string]any{}
	}
	msg := map[string]any{"id": id, "method": method, "params": params}
	if session != "" {
		msg["sessionId"] = session
	}
	b.writeMu.Lock()
	err := b.ws.WriteJSON(msg)
	b.writeMu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	select {
	case m := <-ch:
		if m.Error != nil {
			t.Fatalf("%s: %s", method, m.Error.Message)
		}
		return m.Result
	case <-time.After(30 * time.Second):
		t.Fatalf("%s: no answer from Chromium", method)
	}
	return nil
}

// cdpPage is a tab, attached to its own session.
type cdpPage struct {
	b       *browser
	session string
}

func (b *browser) newPage(t *testing.T) *cdpPage {
	t.Helper()
	var target struct{ TargetID string }
	json.Unmarshal(b.send(t, "", "Target.createTarget", map[string]any{"url": "about:blank"}), &target)
	var attached struct{ SessionID string }
	json.Unmarshal(b.send(t, "", "Target.attachToTarget", map[string]any{"targetId": target.TargetID, "flatten": true}), &attached)
	if attached.SessionID == "" {
		t.Fatal("no DevTools session for the new tab")
	}
	return &cdpPage{b: b, session: attached.SessionID}
}

func (p *cdpPage) call(t *testing.T, method string, params any) {
	t.Helper()
	p.b.send(t, p.session, method, params)
}

func (p *cdpPage) callInto(t *testing.T, method string, params, result any) {
	t.Helper()
	if err := json.Unmarshal(p.b.send(t, p.session, method, params), result); err != nil {
		t.Fatal(err)
	}
}

// TestStatusPageWithoutJavaScript reads the status page as curl or a text
// browser gets it: every table, with its numbers and totals, is in the
// first response.
func TestStatusPageWithoutJavaScript(t *testing.T) {
	t.Parallel()
	var sick atomic.Bool
	sick.Store(true)
	flaky := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if sick.Load() {
			http.Error(w, "not well", http.StatusInternalServerError)
			return
		}
		w.Write([]byte("ok"))
	}))
	t.Cleanup(flaky.Close)
	cert, key := testcert.Files(t, t.TempDir(), "status.example")
	s, addrs := start(t, fmt.Sprintf(`
[global]
stats = 127.0.0.1:0
[frontend web]
bind = 127.0.0.1:0
backends = app
hosts = a.example
routes = api
[host a.example]
backends = app flaky
[route api]
path = /api
backends = app
[frontend secure]
bind = 127.0.0.1:0
https = true
certfile = %s
keyfile = %s
backends = app
[frontend db]
bind = 127.0.0.1:0
mode = tcp
backends = app
[backend app]
connect = %s
[backend flaky]
connect = %s
health-check = /health
health-interval = 20ms
health-fall = 1
`, cert, key, namedBackend(t, "app"), flaky.Listener.Addr()))
	for range 3 {
		get(t, "http://"+addrs["web"]+"/", "")
	}
	get(t, "http://"+addrs["web"]+"/api/x", "")
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	resp, err := client.Get("https://" + addrs["secure"] + "/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	client.CloseIdleConnections()

	var page string
	poll(t, 10*time.Second, "flaky to show DOWN and 5 requests counted", func() bool {
		resp, err := http.Get("http://" + statsAddr(t, s) + "/")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		page = string(body)
		return resp.StatusCode == 200 && strings.Contains(page, `data-backend="flaky"><td class="name">flaky</td>`) &&
			cellsOf(t, page, `id="backends-web"`, "flaky")[3] == "DOWN" &&
			cellsOf(t, page, `id="frontends"`, "total")[5] == "5"
	})

	frontends := `id="frontends"`
	for _, want := range []struct {
		row   string
		cells []string // from the first: frontend, mode, bind, connections, conn/s, requests
	}{
		{"web", []string{"web", "http", "127.0.0.1:0", "", "–", "4"}},
		{"secure", []string{"secure", "https", "127.0.0.1:0", "", "–", "1"}},
		{"db", []string{"db", "tcp", "127.0.0.1:0", "", "–", "–"}},
		{"total", []string{"total", "", "", "", "–", "5"}},
	} {
		got := cellsOf(t, page, frontends, want.row)
		for i, c := range want.cells {
			if c != "" && (i >= len(got) || got[i] != c) {
				t.Errorf("frontends table, row %s: cells %q, want %q", want.row, got, want.cells)
				break
			}
		}
	}
	// Each backend once per frontend, with the pools that use it; a
	// totals row, as HAProxy's Backend row.
	web := `id="backends-web"`
	for _, want := range []struct {
		row   string
		cells []string // backend, address, pools, state, last check, changed, weight, requests
	}{
		{"app", []string{"app", "", "backends, host a.example, route api", "UP", "–", "", "1", "4"}},
		{"flaky", []string{"flaky", flaky.Listener.Addr().String(), "host a.example", "DOWN", "", "", "1", "0"}},
		{"total", []string{"total", "", "", "1/2 UP", "", "", "2", "4"}},
	} {
		got := cellsOf(t, page, web, want.row)
		for i, c := range want.cells {
			if c != "" && (i >= len(got) || got[i] != c) {
				t.Errorf("frontend web, row %s: cells %q, want %q", want.row, got, want.cells)
				break
			}
		}
	}
	if n := strings.Count(section(t, page, web), `data-backend="app"`); n != 1 {
		t.Errorf("app has %d rows in frontend web, want 1", n)
	}
	if got := cellsOf(t, page, `id="routes-web"`, "api"); got[1] != "1" {
		t.Errorf("route api: cells %q, want 1 request", got)
	}
	secure := section(t, page, `<section id="frontend-secure"`)
	// testcert's certificates last a day: within -t's warning.
	if !strings.Contains(secure, "https on 127.0.0.1:0") || !regexp.MustCompile(`certificate status.example: <span class="soon">expires \d{4}-\d\d-\d\d, in \d+h`).MatchString(secure) {
		t.Errorf("frontend secure is not marked https with its certificate's expiry:\n%s", secure)
	}
	if strings.Contains(page, "loading") {
		t.Error("the page waits for its script")
	}
}

// section returns the part of page from marker to the end of its table.
func section(t *testing.T, page, marker string) string {
	t.Helper()
	i := strings.Index(page, marker)
	if i < 0 {
		t.Fatalf("no %s in the page:\n%s", marker, page)
	}
	rest := page[i:]
	if j := strings.Index(rest, "</table>"); j >= 0 {
		rest = rest[:j]
	}
	return rest
}

var (
	rowRE  = regexp.MustCompile(`(?s)<tr[^>]*>(.*?)</tr>`)
	cellRE = regexp.MustCompile(`(?s)<t[dh][^>]*>(.*?)</t[dh]>`)
	tagRE  = regexp.MustCompile(`<[^>]*>`)
)

// cellsOf returns the text of the cells of the row whose first cell is
// first, in the table that follows marker; nil when there is none.
func cellsOf(t *testing.T, page, marker, first string) []string {
	t.Helper()
	for _, row := range rowRE.FindAllStringSubmatch(section(t, page, marker), -1) {
		var cells []string
		for _, c := range cellRE.FindAllStringSubmatch(row[1], -1) {
			cells = append(cells, strings.TrimSpace(html.UnescapeString(tagRE.ReplaceAllString(c[1], ""))))
		}
		if len(cells) > 0 && cells[0] == first {
			return cells
		}
	}
	return make([]string, 8)
}
