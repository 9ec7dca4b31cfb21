package e2e

import (
	"context"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestAddMeasureByConfig declares a new measure in canopy.yaml on a database
// migrated with the defaults: `canopy migrate` adds its columns, and events
// carrying it are summed through the hierarchy, with no code change.
func TestAddMeasureByConfig(t *testing.T) {
	e := newEnv(t, 1)
	dir := t.TempDir()
	conf := filepath.Join(dir, "canopy.yaml")
	if err := os.WriteFile(conf, []byte(`measures:
  - {name: amount, type: decimal, scale: 4}
  - {name: quantity, type: int64}
  - {name: margin, type: decimal, scale: 2}
  - {name: seats, type: int64}
`), 0o600); err != nil {
		t.Fatal(err)
	}
	e.vars = append(e.vars, "CANOPY_CONFIG="+conf)
	e.run("migrate")
	e.run("migrate") // idempotent

	ctx := context.Background()
	for table, want := range map[string]string{"events": "Decimal(18, 2)", "rollup_hourly": "Decimal(38, 2)", "rollup_daily": "Decimal(38, 2)"} {
		var typ string
		if err := e.ch.QueryRow(ctx, "SELECT type FROM system.columns WHERE database = ? AND table = ? AND name = 'margin'", e.chDB, table).Scan(&typ); err != nil {
			t.Fatalf("%s.margin: %v", table, err)
		}
		if typ != want {
			t.Errorf("%s.margin is %s, want %s", table, typ, want)
		}
	}

	csv := filepath.Join(dir, "h.csv")
	if err := os.WriteFile(csv, []byte("id,parent_id,status,name\n1,,active,root\n2,1,active,mid\n3,2,active,leaf\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	e.run("hierarchy", "import", csv)
	var keys, values [][]byte
	for i, m := range []string{`"1.25"`, `2.5`, `-0.75`} {
		keys = append(keys, []byte("3"))
		values = append(values, fmt.Appendf(nil, `{"event_id":"m%d","entity_id":%d,"occurred_at":"2026-11-26T10:00:00Z","type":"sale","amount":"1","margin":%s,"seats":%d}`, i, 3-i%2, m, i+1))
	}
	e.produce(keys, values)
	w := e.startWorker(0)
	e.waitAcked(3, 2*time.Minute)
	w.stop(t)

	// Events: m0 and m2 on entity 3, m1 on entity 2. Entity 1 sees all three
	// (depth 2 for m0, m2; depth 1 for m1).
	rows, err := e.ch.Query(ctx, fmt.Sprintf(`SELECT entity_id, depth, toString(sum(margin)), sum(seats)
		FROM %s.rollup_daily GROUP BY entity_id, depth ORDER BY entity_id, depth`, e.chDB))
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	type row struct {
		entity uint64
		depth  uint8
		margin string
		seats  int64
	}
	var got []row
	for rows.Next() {
		var r row
		if err := rows.Scan(&r.entity, &r.depth, &r.margin, &r.seats); err != nil {
			t.Fatal(err)
		}
		// Compare decimals as numbers: releases differ in trailing zeros.
		q, ok := new(big.Rat).SetString(r.margin)
		if !ok {
			t.Fatalf("margin %q is not a number", r.margin)
		}
		r.margin = q.RatString()
		got = append(got, r)
	}
	want := []row{{1, 1, "5/2", 2}, {1, 2, "1/2", 4}, {2, 0, "5/2", 2}, {2, 1, "1/2", 4}, {3, 0, "1/2", 4}}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("rollup_daily by entity and depth = %v, want %v", got, want)
	}
}
