package main

import (
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"
)

// osvEntry is a minimal OSV entry of the Go database: id, modified and, per
// affected module, its ranges as events ("i:0", "f:1.2.3").
func osvEntry(id, modified string, affected map[string][][]string) string {
	var b strings.Builder
	b.WriteString(`{"schema_version":"1.3.1","id":"` + id + `","modified":"` + modified + `","affected":[`)
	first := true
	for _, path := range sortedPaths(affected) {
		if !first {
			b.WriteString(",")
		}
		first = false
		b.WriteString(`{"package":{"name":"` + path + `","ecosystem":"Go"},"ranges":[`)
		for i, r := range affected[path] {
			if i > 0 {
				b.WriteString(",")
			}
			b.WriteString(`{"type":"SEMVER","events":[`)
			for j, ev := range r {
				if j > 0 {
					b.WriteString(",")
				}
				kind := map[string]string{"i": "introduced", "f": "fixed"}[ev[:1]]
				b.WriteString(`{"` + kind + `":"` + ev[2:] + `"}`)
			}
			b.WriteString("]}")
		}
		b.WriteString("]}")
	}
	b.WriteString("]}\n")
	return b.String()
}

func sortedPaths(m map[string][][]string) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func TestBuild(t *testing.T) {
	src, out := t.TempDir(), t.TempDir()
	entries := map[string]string{
		// Fixed twice in one range list: the index holds the higher fix.
		"GO-2026-0001": osvEntry("GO-2026-0001", "2026-03-01T10:00:00Z", map[string][][]string{
			"stdlib": {{"i:0", "f:1.25.9"}, {"i:1.26.0-0", "f:1.26.10"}},
		}),
		// Open-ended for one module (no fix yet), fixed for another.
		"GO-2026-0002": osvEntry("GO-2026-0002", "2026-05-02T11:00:00Z", map[string][][]string{
			"example.com/a": {{"i:0", "f:1.2.0"}, {"i:1.3.0"}},
			"example.com/b": {{"i:0", "f:0.9.0+incompatible"}},
		}),
		// A prerelease fix orders before its release.
		"GO-2026-0003": osvEntry("GO-2026-0003", "2026-04-01T00:00:00Z", map[string][][]string{
			"example.com/b": {{"i:0", "f:2.0.0-rc.2"}, {"i:2.0.0", "f:2.0.0-rc.10"}},
		}),
	}
	for id, body := range entries {
		if err := os.WriteFile(filepath.Join(src, id+".json"), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// A database already there is replaced, not added to.
	if err := os.MkdirAll(filepath.Join(out, "ID"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(out, "ID", "GO-2020-9999.json"), []byte("{}"), 0o644); err != nil {
		t.Fatal(err)
	}
	n, err := build(src, out, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	if n != 3 {
		t.Errorf("build wrote %d entries, want 3", n)
	}
	read := func(p string) string {
		t.Helper()
		b, err := os.ReadFile(filepath.Join(out, p))
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	wantModules := `[{"path":"example.com/a","vulns":[{"id":"GO-2026-0002","modified":"2026-05-02T11:00:00Z"}]},` +
		`{"path":"example.com/b","vulns":[{"id":"GO-2026-0002","modified":"2026-05-02T11:00:00Z","fixed":"0.9.0+incompatible"},` +
		`{"id":"GO-2026-0003","modified":"2026-04-01T00:00:00Z","fixed":"2.0.0-rc.10"}]},` +
		`{"path":"stdlib","vulns":[{"id":"GO-2026-0001","modified":"2026-03-01T10:00:00Z","fixed":"1.26.10"}]}]` + "\n"
	if got := read("index/modules.json"); got != wantModules {
		t.Errorf("index/modules.json:\n got %s\nwant %s", got, wantModules)
	}
	if got, want := read("index/db.json"), `{"modified":"2026-05-02T11:00:00Z"}`+"\n"; got != want {
		t.Errorf("index/db.json = %s, want %s", got, want)
	}
	for id, body := range entries {
		if got := read("ID/" + id + ".json"); got != body {
			t.Errorf("ID/%s.json is not the entry as shipped", id)
		}
	}
	if _, err := os.Stat(filepath.Join(out, "ID", "GO-2020-9999.json")); !os.IsNotExist(err) {
		t.Errorf("an entry of the previous database is still there: %v", err)
	}

	// -modified overrides the entries' times (the Go database ships them
	// as zero).
	at := time.Date(2026, 11, 5, 23, 49, 57, 0, time.UTC)
	if _, err := build(src, out, at); err != nil {
		t.Fatal(err)
	}
	if got, want := read("index/db.json"), `{"modified":"2026-11-05T23:49:57Z"}`+"\n"; got != want {
		t.Errorf("index/db.json = %s, want %s", got, want)
	}
}

func TestBuildRefuses(t *testing.T) {
	for name, body := range map[string]string{
		"id not the file name": osvEntry("GO-2026-0009", "2026-01-01T00:00:00Z", map[string][][]string{"m": {{"i:0"}}}),
		"bad version":          osvEntry("GO-2026-0001", "2026-01-01T00:00:00Z", map[string][][]string{"m": {{"i:0", "f:1.2"}}}),
		"no module":            `{"id":"GO-2026-0001","modified":"2026-01-01T00:00:00Z","affected":[]}`,
		"not JSON":             `{"id":`,
	} {
		src := t.TempDir()
		if err := os.WriteFile(filepath.Join(src, "GO-2026-0001.json"), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := build(src, t.TempDir(), time.Time{}); err == nil {
			t.Errorf("%s: built a database", name)
		}
	}
	if _, err := build(t.TempDir(), t.TempDir(), time.Time{}); err == nil {
		t.Error("built a database of no entry")
	}
}

func TestSemverLess(t *testing.T) {
	ordered := []string{"0.0.0-20220101000000-abcdef", "0.0.0", "1.0.0-alpha", "1.0.0-alpha.1", "1.0.0-alpha.beta",
		"1.0.0-beta", "1.0.0-beta.2", "1.0.0-beta.11", "1.0.0-rc.1", "1.0.0", "1.0.1", "1.9.0", "1.10.0+incompatible", "2.0.0"}
	for i := range ordered {
		for j := range ordered {
			if got, want := semverLess(ordered[i], ordered[j]), i < j; got != want {
				t.Errorf("semverLess(%s, %s) = %v, want %v", ordered[i], ordered[j], got, want)
			}
		}
	}
	if _, err := parseSemver("01.2.3"); err == nil {
		t.Error("a leading zero parsed")
	}
}
