package imports

import (
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

const module = "github.com/canopyhq/canopy/"

// allowed lists, for each package directory, the Canopy packages its
// non-test files may import; "internal/" allows any internal package
// except internal/e2e. A package missing here fails the test: a new
// package states its place.
var allowed = map[string][]string{
	"schema":               {},
	"internal/wait":        {},
	"internal/synth":       {},
	"internal/benchreport": {},
	"internal/cputime":     {},
	"internal/testenv":     {},
	"internal/recreated":   {},
	"internal/imports":     {},
	"internal/e2e":         {},
	"ingest/idstate":       {},
	"internal/backoff":     {"internal/wait"},
	"internal/pglock":      {"internal/wait"},
	"dashboards":           {"schema"},
	"hierarchy":            {"schema", "internal/"},
	"ingest":               {"schema", "ingest/idstate", "internal/"},
	"ingest/pgledger":      {"ingest", "internal/"},
	"ingest/pgsource":      {"ingest"},
	"restate":              {"hierarchy", "ingest", "ingest/pgledger", "schema", "internal/"},
	"scripts/vulndb":       {},
	"cmd/canopy":           {"*"},
}

func TestImportRules(t *testing.T) {
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	err = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if name := d.Name(); path != root && (strings.HasPrefix(name, ".") || name == "testdata") {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		rel, _ := filepath.Rel(root, filepath.Dir(path))
		rel = filepath.ToSlash(rel)
		rules, ok := allowed[rel]
		if !ok {
			t.Errorf("%s: package %s has no import rule in internal/imports", path, rel)
			return nil
		}
		seen[rel] = true
		f, err := parser.ParseFile(token.NewFileSet(), path, nil, parser.ImportsOnly)
		if err != nil {
			return err
		}
		for _, imp := range f.Imports {
			p := strings.Trim(imp.Path.Value, `"`)
			if !strings.HasPrefix(p, module) {
				continue
			}
			if dep := strings.TrimPrefix(p, module); !permitted(rules, dep) {
				t.Errorf("%s imports %s; %s may import only %v", filepath.Join(rel, filepath.Base(path)), dep, rel, rules)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for dir := range allowed {
		if _, err := os.Stat(filepath.Join(root, dir)); err != nil {
			t.Errorf("rule for %s, which does not exist: %v", dir, err)
		}
	}
	if len(seen) < 10 {
		t.Fatalf("read only %d packages; is the walk at the repository root?", len(seen))
	}
}

func permitted(rules []string, dep string) bool {
	if slices.Contains(rules, "*") || slices.Contains(rules, dep) {
		return true
	}
	return slices.Contains(rules, "internal/") && strings.HasPrefix(dep, "internal/") && dep != "internal/e2e"
}

// TestRulesCatch checks the checker on an import a rule forbids.
func TestRulesCatch(t *testing.T) {
	if permitted(allowed["ingest"], "hierarchy") || permitted(allowed["hierarchy"], "ingest") ||
		permitted(allowed["schema"], "internal/wait") || permitted(allowed["ingest"], "internal/e2e") {
		t.Fatal("a forbidden import passes")
	}
	if !permitted(allowed["restate"], "ingest/pgledger") || !permitted(allowed["hierarchy"], "internal/pglock") {
		t.Fatal("an allowed import fails")
	}
}
