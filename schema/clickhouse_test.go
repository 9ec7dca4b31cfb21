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

// TestClusterTables checks the tables of a cluster: each sharded table's
// local part replicates within its shard only (the shard macro in its
// path) under a Distributed table of the usual name sharded by entity_id,
// and the other tables replicate across every node (one path, a replica
// per node).
func TestClusterTables(t *testing.T) {
	c := ClickHouse{Database: "db", Measures: DefaultMeasures(), Cluster: "cl"}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	byName := map[string]string{}
	for _, tb := range c.Tables() {
		byName[tb.Name] = tb.Tail
	}
	for _, name := range []string{TableEvents, TableRollupHourly, TableRollupDaily, TableRollupAsIs} {
		local := byName[name+"_local"]
		if !strings.Contains(local, "'/clickhouse/tables/{shard}/db/"+name+"_local', '{replica}'") {
			t.Errorf("%s_local: %s; want a path per shard", name, local)
		}
		if want := "ENGINE = Distributed(cl, db, " + name + "_local, entity_id)"; byName[name] != want {
			t.Errorf("%s: %s; want %s", name, byName[name], want)
		}
	}
	for _, name := range []string{TableEntities, TableEntitiesByParent, TableAcks, TableFailures} {
		if !strings.Contains(byName[name], "'/clickhouse/tables/all/db/"+name+"', '{shard}-{replica}'") {
			t.Errorf("%s: %s; want one path across the cluster", name, byName[name])
		}
		if _, ok := byName[name+"_local"]; ok {
			t.Errorf("%s has a local part; it is whole on every node", name)
		}
	}
	one := ClickHouse{Database: "db", Measures: DefaultMeasures()}
	_ = one.Validate()
	for _, tb := range one.Tables() {
		if strings.HasSuffix(tb.Name, "_local") || strings.Contains(tb.Tail, "Distributed") {
			t.Errorf("one server has %s: %s", tb.Name, tb.Tail)
		}
	}
}
