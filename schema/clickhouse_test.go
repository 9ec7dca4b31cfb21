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

func TestCheckIdentifier(t *testing.T) {
	for _, tc := range []struct {
		value string
		ok    bool
	}{
		{"canopy", true}, {"canopy_reader", true}, {"_x9", true}, {strings.Repeat("a", 64), true},
		{"", false}, {"9db", false}, {"a-b", false}, {"a.b", false}, {"system.users", false},
		{"r; DROP USER default", false}, {"r IDENTIFIED BY 'x'", false}, {"`r`", false}, {"r'", false},
		{"é", false}, {strings.Repeat("a", 65), false},
	} {
		err := CheckIdentifier("clickhouse.reader_user", tc.value)
		if (err == nil) != tc.ok {
			t.Errorf("%q: %v, want ok=%v", tc.value, err, tc.ok)
		}
		if err != nil && !strings.Contains(err.Error(), "clickhouse.reader_user") {
			t.Errorf("%q: %v does not name the setting", tc.value, err)
		}
	}
}
