package e2e

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/canopyhq/canopy/internal/synth"
)

// TestRestaterParksUnrestatableChange is issue 14's "a stuck change has an
// end state". Before, a hierarchy change the restater could not restate (an
// entity moved under a chain longer than hierarchy.MaxDepth, which legacy
// data or a bug can still hold although PostgreSQL now refuses it) was
// retried every 2 s forever: rollup_daily_current and entities stopped for
// everyone and canopy rebuild could not run.
//
// Here the depth guard is disabled inside the test's own database to move
// entity 4 (with child 8) under the end of a 255-entity chain. The change
// must be parked (a row in canopy.restate_parked, the gauge, canopy restate
// status), a later move inside its reach (8) parked as depending on it,
// later moves elsewhere applied so that the as-is oracle holds for every
// entity outside the reach, and after 4 is moved back and canopy rebuild
// runs, both parked rows are resolved and every rollup equals the oracle.
func TestRestaterParksUnrestatableChange(t *testing.T) {
	e := newEnv(t, 2)
	metricsAddr := freeAddr(t)
	e.vars = append(e.vars, "CANOPY_HTTP_ADDR="+metricsAddr)
	ctx := context.Background()
	h := history{}
	exec := func(sql string, args ...any) {
		t.Helper()
		if _, err := e.pg.Exec(ctx, sql, args...); err != nil {
			t.Fatalf("%s %v: %v", sql, args, err)
		}
	}
	create := func(id, parent int64) {
		var p any
		if parent != 0 {
			p = parent
		}
		exec("insert into canopy.entities (id, parent_id, name) values ($1, $2, $3)", id, p, fmt.Sprintf("e%d", id))
		h[id] = []version{{parent: parent, status: "active"}}
	}
	move := func(id, parent int64) int64 {
		t.Helper()
		exec("update canopy.entities set parent_id = $1 where id = $2", parent, id)
		h[id] = append(h[id], version{from: time.Now().UTC(), parent: parent, status: "active"})
		var seq int64
		if err := e.pg.QueryRow(ctx, "select max(seq) from canopy.entity_history where id = $1", id).Scan(&seq); err != nil {
			t.Fatal(err)
		}
		return seq
	}
	// 1 ─ 2 ─ 4 ─ 8, 2 ─ 5, 1 ─ 3 ─ {6, 7}; 10 ─ 11 ─ 12; and the chain
	// 1000 ─ … ─ 1254 of 255 entities, the longest PostgreSQL accepts.
	for _, c := range [][2]int64{{1, 0}, {2, 1}, {3, 1}, {4, 2}, {5, 2}, {6, 3}, {7, 3}, {8, 4}, {10, 0}, {11, 10}, {12, 11}, {1000, 0}} {
		create(c[0], c[1])
	}
	for id := int64(1001); id <= 1254; id++ {
		create(id, id-1)
	}
	if _, err := e.pg.Exec(ctx, "update canopy.entities set parent_id = 1254 where id = 5"); err == nil ||
		!strings.Contains(err.Error(), "entities_max_depth") && !strings.Contains(err.Error(), "limit of 255") {
		t.Fatalf("moving 5 under a chain of 255 entities: err = %v, want the depth guard's refusal", err)
	}

	rng := rand.New(rand.NewPCG(uint64(seedFromEnv(t)), 14))
	ids := []int64{1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 1000, 1100, 1254}
	end := time.Now().UTC().Add(-24 * time.Hour).Truncate(time.Second)
	start := end.Add(-72 * time.Hour)
	events := map[string]synth.Event{}
	var keys, values [][]byte
	for i := 0; i < 3000; i++ {
		ev := synth.Event{
			ID: fmt.Sprintf("rp-%d", i), EntityID: ids[rng.IntN(len(ids))],
			OccurredAt: start.Add(time.Duration(rng.Int64N(int64(end.Sub(start))))).Truncate(time.Second),
			Type:       []string{"sale", "refund"}[rng.IntN(2)],
			Amount:     rng.Int64N(2_000_000) - 200_000, Quantity: rng.Int64N(5),
		}
		events[ev.ID] = ev
		keys = append(keys, []byte(strconv.FormatInt(ev.EntityID, 10)))
		values = append(values, ev.JSON())
	}
	w := e.startWorker(1)
	e.produce(keys, values)
	e.waitAcked(uint64(len(values)), 3*time.Minute)
	e.waitRestated(time.Minute)

	// The change that cannot be restated: 4's chain becomes 256 long.
	exec("alter table canopy.entities disable trigger entities_guard_depth_update")
	bad := move(4, 1254)
	exec("alter table canopy.entities enable trigger entities_guard_depth_update")
	// Later: 8 is below the parked entity (depends on it); 7 and 12 are
	// outside its reach and must apply.
	dep := move(8, 5)
	move(7, 11)
	move(12, 6)
	e.waitRestated(2 * time.Minute)

	parked := e.parkedRows()
	if len(parked) != 2 || parked[bad].entity != 4 || parked[bad].dependsOn != 0 ||
		!strings.Contains(parked[bad].err, "no ancestor chain") || parked[dep].dependsOn != bad {
		t.Fatalf("restate_parked = %+v, want change %d (entity 4, no ancestor chain) and %d depending on it", parked, bad, dep)
	}
	out := e.run("restate", "status")
	for _, want := range []string{"pending 0", "parked 2", fmt.Sprintf("\n%d ", bad), "no ancestor chain", "run canopy rebuild to resolve"} {
		if !strings.Contains(out, want) {
			t.Errorf("canopy restate status lacks %q:\n%s", want, out)
		}
	}
	e.waitGauge(metricsAddr, "canopy_restate_parked_changes", 2)

	// The reach, worked out here: 4's ancestors before (2, 1) and after (the
	// deep chain) the parked move, and for 8's parked move its ancestors
	// before (4 and the deep chain) and after (5, 2, 1).
	reach := map[int64]bool{1: true, 2: true, 4: true, 5: true}
	for id := int64(1000); id <= 1254; id++ {
		reach[id] = true
	}
	_, current := attribute(h, events, true, false)
	got := e.readRollup("rollup_daily_current", "toUInt32(toUInt32(bucket) * 86400)")
	outside := func(m map[rollupKey]sums) map[rollupKey]sums {
		out := map[rollupKey]sums{}
		for k, v := range m {
			if !reach[k.entity] {
				out[k] = v
			}
		}
		return out
	}
	compareRollups(t, "rollup_daily_current outside the parked changes' reach", outside(current), outside(got))

	// Resolve: move 4 back under a short chain (parked too: it is in the
	// reach), then rebuild every day with events.
	back := move(4, 3)
	e.waitRestated(2 * time.Minute)
	if p := e.parkedRows(); p[back].dependsOn == 0 {
		t.Errorf("moving 4 back: parked %+v, want it parked depending on %d or %d", p[back], bad, dep)
	}
	out = e.run("rebuild", "--from", start.Format(time.DateOnly), "--to", end.Format(time.DateOnly))
	if !strings.Contains(out, "resolved 3 parked hierarchy changes") {
		t.Errorf("canopy rebuild output lacks the resolution:\n%s", out)
	}
	for seq, p := range e.parkedRows() {
		if !p.resolved {
			t.Errorf("parked change %d is not resolved after canopy rebuild", seq)
		}
	}
	if out := e.run("restate", "status"); !strings.Contains(out, "parked 0") {
		t.Errorf("canopy restate status after rebuild:\n%s", out)
	}
	e.waitGauge(metricsAddr, "canopy_restate_parked_changes", 0)
	w.stop(t)

	hourly, daily := attribute(h, events, false, false)
	_, current = attribute(h, events, true, false)
	compareRollups(t, "rollup_hourly", hourly, e.readRollup("rollup_hourly", "toUInt32(bucket)"))
	compareRollups(t, "rollup_daily", daily, e.readRollup("rollup_daily", "toUInt32(toUInt32(bucket) * 86400)"))
	compareRollups(t, "rollup_daily_current", current, e.readRollup("rollup_daily_current", "toUInt32(toUInt32(bucket) * 86400)"))
}

type parkedRow struct {
	entity, dependsOn int64
	err               string
	resolved          bool
}

// parkedRows reads canopy.restate_parked by seq.
func (e *env) parkedRows() map[int64]parkedRow {
	e.t.Helper()
	rows, err := e.pg.Query(context.Background(), `select seq, entity_id, coalesce(depends_on, 0), error,
		resolved_at is not null from canopy.restate_parked`)
	if err != nil {
		e.t.Fatal(err)
	}
	defer rows.Close()
	out := map[int64]parkedRow{}
	for rows.Next() {
		var (
			seq int64
			p   parkedRow
		)
		if err := rows.Scan(&seq, &p.entity, &p.dependsOn, &p.err, &p.resolved); err != nil {
			e.t.Fatal(err)
		}
		out[seq] = p
	}
	if err := rows.Err(); err != nil {
		e.t.Fatal(err)
	}
	return out
}

// waitGauge waits until the worker at addr reports metric = want.
func (e *env) waitGauge(addr, metric string, want float64) {
	e.t.Helper()
	var got float64
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(500 * time.Millisecond) {
		m, err := scrapeErr(addr)
		if err == nil {
			if got = m[metric]; got == want {
				return
			}
		}
	}
	e.t.Errorf("%s = %v after 30s, want %v", metric, got, want)
}
