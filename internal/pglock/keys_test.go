package pglock

import (
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"
)

// keysOf parses keys.go and returns every constant it declares with its
// value, so that a key added there is checked without being listed again.
func keysOf(t *testing.T) map[string]int64 {
	t.Helper()
	f, err := parser.ParseFile(token.NewFileSet(), "keys.go", nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	keys := map[string]int64{}
	for _, d := range f.Decls {
		g, ok := d.(*ast.GenDecl)
		if !ok || g.Tok != token.CONST {
			continue
		}
		for _, s := range g.Specs {
			vs := s.(*ast.ValueSpec)
			for i, name := range vs.Names {
				lit, ok := vs.Values[i].(*ast.BasicLit)
				if !ok {
					t.Fatalf("key %s is not a literal", name.Name)
				}
				v, err := strconv.ParseInt(lit.Value, 0, 64)
				if err != nil {
					t.Fatalf("key %s: %v", name.Name, err)
				}
				keys[name.Name] = v
			}
		}
	}
	return keys
}

func TestKeysDistinct(t *testing.T) {
	keys := keysOf(t)
	// The constants as compiled, against the parse: the test reads the file
	// it checks.
	for name, want := range map[string]int64{"HierarchyWrite": HierarchyWrite, "Migrate": Migrate, "Fence": Fence,
		"Restater": Restater, "Rebuild": Rebuild, "Relay": Relay} {
		if keys[name] != want {
			t.Errorf("parsed %s = %#x, compiled %#x", name, keys[name], want)
		}
	}
	if len(keys) < 6 {
		t.Fatalf("parsed %d keys from keys.go, want at least 6", len(keys))
	}
	seen := map[int64]string{}
	for name, v := range keys {
		if other, ok := seen[v]; ok {
			t.Errorf("%s and %s share advisory lock key %#x", name, other, v)
		}
		seen[v] = name
	}
}

// TestSQLNamesOnlyKnownKeys: the PostgreSQL migrations take or name keys
// by their decimal value; each must be one of keys.go's.
func TestSQLNamesOnlyKnownKeys(t *testing.T) {
	known := map[int64]bool{}
	for _, v := range keysOf(t) {
		known[v] = true
	}
	files, err := filepath.Glob("../../schema/postgres/*.sql")
	if err != nil || len(files) == 0 {
		t.Fatalf("no migrations found: %v", err)
	}
	// Canopy's keys all start with 'canopy' (0x63616e6f7079…), which in
	// decimal is 71611263074032xxxxx.
	re := regexp.MustCompile(`\b71611263074032\d{5}\b`)
	found := 0
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range re.FindAll(b, -1) {
			v, err := strconv.ParseInt(string(m), 10, 64)
			if err != nil {
				t.Fatalf("%s: %s: %v", f, m, err)
			}
			found++
			if !known[v] {
				t.Errorf("%s names advisory lock key %d (%#x), which keys.go does not list", filepath.Base(f), v, v)
			}
		}
	}
	if found < 2 {
		t.Errorf("found %d keys in the migrations, want at least 0001_hierarchy.sql's and 0101_restate.sql's", found)
	}
}
