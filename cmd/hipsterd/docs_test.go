package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/hipsterd/hipsterd"
	"github.com/hipsterd/hipsterd/internal/config"
)

// manKeys returns the keys hipsterd.ini(5) documents, by section type: the
// names after Ic on the .It lines under each ".Ss [TYPE" heading.
func manKeys(t *testing.T) map[string][]string {
	t.Helper()
	data, err := os.ReadFile("../../docs/hipsterd.ini.5")
	if err != nil {
		t.Fatal(err)
	}
	keys := map[string][]string{}
	typ := ""
	for line := range strings.SplitSeq(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, ".Ss ["); ok {
			typ, _, _ = strings.Cut(strings.TrimRight(rest, `]\&`), " ")
			keys[typ] = nil
			continue
		}
		if strings.HasPrefix(line, ".Sh ") {
			typ = ""
		}
		rest, ok := strings.CutPrefix(line, ".It Ic ")
		if !ok || typ == "" {
			continue
		}
		// ".It Ic a , b No = Ar value": the names end at the first other macro.
		for _, f := range strings.Fields(rest) {
			if f == "," {
				continue
			}
			if f == "No" || f == "Cm" || f == "Ar" {
				break
			}
			keys[typ] = append(keys[typ], strings.TrimSuffix(f, ","))
		}
	}
	return keys
}

// TestManPageKnowsEveryKey fails when a key the loader accepts is missing
// from hipsterd.ini(5), or the page documents one the loader does not know.
func TestManPageKnowsEveryKey(t *testing.T) {
	t.Parallel()
	documented := manKeys(t)
	known := config.KnownKeys()
	for typ, names := range known {
		doc, ok := documented[typ]
		if !ok {
			t.Errorf("hipsterd.ini.5 has no section \".Ss [%s\"", typ)
			continue
		}
		for _, name := range names {
			if !slices.Contains(doc, name) {
				t.Errorf("hipsterd.ini.5: [%s] %s is not documented (add an \".It Ic %s\" under \".Ss [%s\")", typ, name, name, typ)
			}
		}
	}
	for typ, names := range documented {
		for _, name := range names {
			if !slices.Contains(known[typ], name) {
				t.Errorf("hipsterd.ini.5 documents [%s] %s, which the config loader does not accept", typ, name)
			}
		}
	}
}

// TestManPagesLint runs mandoc's linter on the man pages: any warning or
// error fails (style remarks, such as references to pages not installed
// here, do not).
func TestManPagesLint(t *testing.T) {
	t.Parallel()
	mandoc, err := exec.LookPath("mandoc")
	if err != nil {
		t.Fatal("mandoc is not installed (apt-get install mandoc; .ci/run installs it): the man pages cannot be checked")
	}
	for _, page := range []string{"hipsterd.8", "hipsterd.ini.5"} {
		out, err := exec.Command(mandoc, "-Tlint", "-W", "warning", filepath.Join("../../docs", page)).CombinedOutput()
		if err != nil || len(out) > 0 {
			t.Errorf("mandoc -Tlint -W warning %s: %v\n%s", page, err, out)
		}
	}
}

// TestDocLinks checks that every relative link in README.md and docs/*.md
// names a file that exists, and an anchor of it that exists, and that the
// README stays a front page.
func TestDocLinks(t *testing.T) {
	t.Parallel()
	files, err := filepath.Glob("../../docs/*.md")
	if err != nil {
		t.Fatal(err)
	}
	files = append(files, "../../README.md")
	link := regexp.MustCompile(`\]\(([^)\s]+)\)`)
	for _, file := range files {
		data, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range link.FindAllStringSubmatch(string(data), -1) {
			target := m[1]
			if strings.Contains(target, "://") {
				continue
			}
			path, anchor, _ := strings.Cut(target, "#")
			dest := file
			if path != "" {
				dest = filepath.Join(filepath.Dir(file), path)
			}
			destData, err := os.ReadFile(dest)
			if err != nil {
				t.Errorf("%s: link %s: %v", file, target, err)
				continue
			}
			if anchor != "" && !slices.Contains(anchors(string(destData)), anchor) {
				t.Errorf("%s: link %s: %s has no heading for #%s", file, target, dest, anchor)
			}
		}
	}
	readme, _ := os.ReadFile("../../README.md")
	if n := strings.Count(string(readme), "\n"); n > 400 {
		t.Errorf("README.md has %d lines: the front page should stay under 400, with the reference in docs/", n)
	}
}

// anchors returns the GitHub anchors of a Markdown file's headings.
func anchors(md string) []string {
	var list []string
	code := false
	for line := range strings.SplitSeq(md, "\n") {
		if strings.HasPrefix(line, "```") {
			code = !code
		}
		if code || !strings.HasPrefix(line, "#") {
			continue
		}
		title := strings.ToLower(strings.TrimSpace(strings.TrimLeft(line, "#")))
		var b strings.Builder
		for _, r := range title {
			switch {
			case r == ' ':
				b.WriteRune('-')
			case r == '-' || r == '_' || r >= 'a' && r <= 'z' || r >= '0' && r <= '9':
				b.WriteRune(r)
			}
		}
		list = append(list, b.String())
	}
	return list
}

// TestChangelogNamesTheRelease fails when VERSION names a release that
// CHANGELOG.md has no section for, or is not X.Y.Z.
func TestChangelogNamesTheRelease(t *testing.T) {
	t.Parallel()
	if !regexp.MustCompile(`^[0-9]+\.[0-9]+\.[0-9]+$`).MatchString(hipsterd.Version) {
		t.Errorf("VERSION holds %q, not X.Y.Z", hipsterd.Version)
	}
	changelog, err := os.ReadFile("../../CHANGELOG.md")
	if err != nil {
		t.Fatal(err)
	}
	heading := regexp.MustCompile(`(?m)^## \[` + regexp.QuoteMeta(hipsterd.Version) + `\] - [0-9]{4}-[0-9]{2}-[0-9]{2}$`)
	if !heading.Match(changelog) {
		t.Errorf("CHANGELOG.md has no \"## [%s] - YYYY-MM-DD\" section for the version in VERSION", hipsterd.Version)
	}
	if !strings.Contains(string(changelog), "## [Unreleased]") {
		t.Error("CHANGELOG.md has no [Unreleased] section")
	}
}
