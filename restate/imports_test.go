package restate

import (
	"go/parser"
	"go/token"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// importsOf returns the imports of the non-test Go files in dir.
func importsOf(t *testing.T, dir string) map[string]string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(dir, "*.go"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no Go files in %s: %v", dir, err)
	}
	out := map[string]string{}
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		af, err := parser.ParseFile(token.NewFileSet(), f, nil, parser.ImportsOnly)
		if err != nil {
			t.Fatal(err)
		}
		for _, im := range af.Imports {
			p, _ := strconv.Unquote(im.Path.Value)
			out[p] = filepath.Base(f)
		}
	}
	return out
}

// TestImports holds the package to what its doc says it may import, and
// the packages below it to not importing it.
func TestImports(t *testing.T) {
	const mod = "github.com/canopyhq/canopy/"
	allowed := []string{mod + "hierarchy", mod + "ingest", mod + "ingest/pgledger", mod + "schema", mod + "internal/"}
	for p, file := range importsOf(t, ".") {
		if !strings.HasPrefix(p, mod) {
			continue
		}
		ok := false
		for _, a := range allowed {
			if p == a || (strings.HasSuffix(a, "/") && strings.HasPrefix(p, a)) {
				ok = true
			}
		}
		if !ok {
			t.Errorf("%s imports %s; restate may import only hierarchy, ingest, ingest/pgledger, schema and internal/", file, p)
		}
	}
	for _, dir := range []string{"../ingest", "../ingest/pgledger", "../hierarchy"} {
		for p, file := range importsOf(t, dir) {
			if p == mod+"restate" {
				t.Errorf("%s/%s imports restate, which builds on it", dir, file)
			}
		}
	}
}
