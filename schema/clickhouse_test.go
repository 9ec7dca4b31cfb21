package schema

import (
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite the golden files")

// TestClickHouseDDLGolden pins the generated DDL for each engine mode. Review
// a diff here as a schema change: run `go test ./schema -update` to accept it.
func TestClickHouseDDLGolden(t *testing.T) {
	for _, e := range []Engine{EngineReplicated, EngineDedupWindow, EnginePlain} {
		t.Run(e.String(), func(t *testing.T) {
			c := ClickHouse{Measures: append(DefaultMeasures(), Measure{Name: "margin", Kind: KindDecimal, Scale: 2}), Engine: e}
			if err := c.Validate(); err != nil {
				t.Fatal(err)
			}
			var b strings.Builder
			b.WriteString(c.CreateDatabase() + ";\n")
			for _, tb := range c.Tables() {
				b.WriteString(c.Create(tb) + ";\n")
				cols := tb.Columns
				b.WriteString(c.Insert(tb.Name, cols) + ";\n")
			}
			path := filepath.Join("testdata", "ddl-"+e.String()+".sql")
			if *update {
				if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil { //nolint:gosec // golden file
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run with -update to create it)", err)
			}
			if b.String() != string(want) {
				t.Fatalf("DDL differs from %s; run go test ./schema -update and review the diff\n%s", path, b.String())
			}
		})
	}
}
