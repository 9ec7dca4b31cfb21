// Command vulndb writes an offline Go vulnerability database that
// govulncheck reads with -db file://DIR, from the OSV entries that the
// golang.org/x/vulndb module ships in data/osv. CI has no route to
// vuln.go.dev, but the Go module proxy serves that module.
//
// The layout is the database API of https://go.dev/security/vuln/database
// as files:
//
//	index/db.json       {"modified": <the database's last change>}
//	index/modules.json  [{"path": <module>, "vulns": [{"id", "modified", "fixed"}]}], by path and id
//	ID/<id>.json        each OSV entry, as shipped
//
// "fixed" in the module index is the highest version that fixes the entry
// for that module, or absent when some range of it has no fix: govulncheck
// reads the entry in full only for a module version below it.
//
// Usage (scripts/test runs it):
//
//	go run ./scripts/vulndb -osv $(go env GOMODCACHE)/golang.org/x/vulndb@VERSION/data/osv -modified 2026-11-05T23:49:57Z -out DIR
package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"
)

func main() {
	osvDir := flag.String("osv", "", "directory of OSV entries (golang.org/x/vulndb's data/osv)")
	out := flag.String("out", "", "directory to write the database to (made, or emptied of a previous database)")
	modified := flag.String("modified", "", "RFC 3339 time of the database (default: the newest entry's modified)")
	flag.Parse()
	if *osvDir == "" || *out == "" || flag.NArg() != 0 {
		flag.Usage()
		os.Exit(2)
	}
	var at time.Time
	if *modified != "" {
		t, err := time.Parse(time.RFC3339, *modified)
		if err != nil {
			fmt.Fprintln(os.Stderr, "vulndb: -modified:", err)
			os.Exit(2)
		}
		at = t
	}
	n, err := build(*osvDir, *out, at)
	if err != nil {
		fmt.Fprintln(os.Stderr, "vulndb:", err)
		os.Exit(1)
	}
	fmt.Fprintf(os.Stderr, "vulndb: %d entries written to %s\n", n, *out)
}

// entry is what the index needs of an OSV entry.
type entry struct {
	ID       string    `json:"id"`
	Modified time.Time `json:"modified"`
	Affected []struct {
		Package struct {
			Name      string `json:"name"`
			Ecosystem string `json:"ecosystem"`
		} `json:"package"`
		Ranges []struct {
			Type   string `json:"type"`
			Events []struct {
				Introduced string `json:"introduced,omitempty"`
				Fixed      string `json:"fixed,omitempty"`
			} `json:"events"`
		} `json:"ranges"`
	} `json:"affected"`
}

type moduleVuln struct {
	ID       string    `json:"id"`
	Modified time.Time `json:"modified"`
	Fixed    string    `json:"fixed,omitempty"`
}

type module struct {
	Path  string       `json:"path"`
	Vulns []moduleVuln `json:"vulns"`
}

var validID = regexp.MustCompile(`^GO-[0-9]{4}-[0-9]{4,}$`)

// build writes the database of the entries in osvDir to out and returns how
// many entries it holds. A zero modified means the newest entry's time.
func build(osvDir, out string, modified time.Time) (int, error) {
	files, err := filepath.Glob(filepath.Join(osvDir, "*.json"))
	if err != nil {
		return 0, err
	}
	if len(files) == 0 {
		return 0, fmt.Errorf("no OSV entry in %s", osvDir)
	}
	for _, d := range []string{"index", "ID"} {
		if err := os.RemoveAll(filepath.Join(out, d)); err != nil {
			return 0, err
		}
		if err := os.MkdirAll(filepath.Join(out, d), 0o755); err != nil {
			return 0, err
		}
	}
	modules := map[string]*module{}
	newest := time.Time{}
	for _, f := range files {
		raw, err := os.ReadFile(f)
		if err != nil {
			return 0, err
		}
		var e entry
		if err := json.Unmarshal(raw, &e); err != nil {
			return 0, fmt.Errorf("%s: %w", f, err)
		}
		if !validID.MatchString(e.ID) || e.ID+".json" != filepath.Base(f) {
			return 0, fmt.Errorf("%s: id %q does not name the file", f, e.ID)
		}
		if len(e.Affected) == 0 {
			return 0, fmt.Errorf("%s: affects no module", f)
		}
		if e.Modified.After(newest) {
			newest = e.Modified
		}
		// Per module: the highest fix, or none when a range stays open.
		fixed := map[string]string{}
		open := map[string]bool{}
		for _, a := range e.Affected {
			path := a.Package.Name
			if a.Package.Ecosystem != "Go" || path == "" {
				return 0, fmt.Errorf("%s: package %q of ecosystem %q", f, path, a.Package.Ecosystem)
			}
			if _, seen := fixed[path]; !seen {
				fixed[path] = ""
			}
			if len(a.Ranges) == 0 {
				open[path] = true // every version is affected
			}
			for _, r := range a.Ranges {
				if r.Type != "SEMVER" {
					return 0, fmt.Errorf("%s: range type %q", f, r.Type)
				}
				last := ""
				for _, ev := range r.Events {
					switch {
					case ev.Introduced != "":
						last = "introduced"
					case ev.Fixed != "":
						last = "fixed"
						if _, err := parseSemver(ev.Fixed); err != nil {
							return 0, fmt.Errorf("%s: %w", f, err)
						}
						if fixed[path] == "" || semverLess(fixed[path], ev.Fixed) {
							fixed[path] = ev.Fixed
						}
					}
				}
				if last != "fixed" {
					open[path] = true
				}
			}
		}
		for path, fix := range fixed {
			if open[path] {
				fix = ""
			}
			m := modules[path]
			if m == nil {
				m = &module{Path: path}
				modules[path] = m
			}
			m.Vulns = append(m.Vulns, moduleVuln{ID: e.ID, Modified: e.Modified, Fixed: fix})
		}
		if err := os.WriteFile(filepath.Join(out, "ID", e.ID+".json"), raw, 0o644); err != nil {
			return 0, err
		}
	}
	index := make([]*module, 0, len(modules))
	for _, m := range modules {
		sort.Slice(m.Vulns, func(i, j int) bool { return m.Vulns[i].ID < m.Vulns[j].ID })
		index = append(index, m)
	}
	sort.Slice(index, func(i, j int) bool { return index[i].Path < index[j].Path })
	if modified.IsZero() {
		modified = newest
	}
	if err := writeJSON(filepath.Join(out, "index", "modules.json"), index); err != nil {
		return 0, err
	}
	if err := writeJSON(filepath.Join(out, "index", "db.json"), map[string]time.Time{"modified": modified.UTC()}); err != nil {
		return 0, err
	}
	return len(files), nil
}

func writeJSON(path string, v any) error {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return err
	}
	return os.WriteFile(path, b.Bytes(), 0o644)
}

// semver is a version as OSV ranges of the Go database write it: SemVer
// 2.0.0 without the leading v.
type semver struct {
	nums [3]uint64
	pre  []string // prerelease identifiers; none for a release
}

func parseSemver(v string) (semver, error) {
	var s semver
	core := v
	if i := strings.IndexByte(core, '+'); i >= 0 {
		core = core[:i] // build metadata (+incompatible) does not order
	}
	if i := strings.IndexByte(core, '-'); i >= 0 {
		s.pre = strings.Split(core[i+1:], ".")
		core = core[:i]
	}
	parts := strings.Split(core, ".")
	if len(parts) != 3 {
		return s, fmt.Errorf("version %q is not major.minor.patch", v)
	}
	for i, p := range parts {
		n, err := strconv.ParseUint(p, 10, 64)
		if err != nil || (len(p) > 1 && p[0] == '0') {
			return s, fmt.Errorf("version %q: %w", v, errors.Join(errors.New("bad number "+strconv.Quote(p)), err))
		}
		s.nums[i] = n
	}
	return s, nil
}

// semverLess orders a before b by SemVer precedence; a version that does
// not parse orders first.
func semverLess(a, b string) bool {
	x, errA := parseSemver(a)
	y, errB := parseSemver(b)
	if errA != nil || errB != nil {
		return errA != nil && errB == nil
	}
	for i := range x.nums {
		if x.nums[i] != y.nums[i] {
			return x.nums[i] < y.nums[i]
		}
	}
	switch {
	case len(x.pre) == 0 || len(y.pre) == 0:
		return len(x.pre) > 0 && len(y.pre) == 0 // a prerelease precedes its release
	}
	for i := 0; i < len(x.pre) && i < len(y.pre); i++ {
		p, q := x.pre[i], y.pre[i]
		if p == q {
			continue
		}
		pn, errP := strconv.ParseUint(p, 10, 64)
		qn, errQ := strconv.ParseUint(q, 10, 64)
		switch {
		case errP == nil && errQ == nil:
			return pn < qn
		case errP == nil:
			return true // numeric identifiers precede alphanumeric ones
		case errQ == nil:
			return false
		default:
			return p < q
		}
	}
	return len(x.pre) < len(y.pre)
}
