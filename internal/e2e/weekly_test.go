package e2e

import (
	"context"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/canopyhq/canopy/dashboards"
	"github.com/canopyhq/canopy/internal/synth"
	"github.com/canopyhq/canopy/schema"
)

// TestLivingHierarchyWeeklyGrain is the living-hierarchy scenario with
// rollup.grains = [hourly, daily, weekly] set in canopy.yaml and applied by
// canopy migrate, nothing else: rollup_weekly must equal the as-was oracle
// with ISO-week buckets, the as-is weeks (rollup_daily_current summed by
// toMonday, the documented query; weekly has no as-is table of its own)
// the as-is oracle, and the other tables their oracles as in the default
// configuration. The events span 2026-10-27 … 11-04: two ISO weeks, the
// first straddling a month end (its rows lie in October's partition).
func TestLivingHierarchyWeeklyGrain(t *testing.T) {
	runLivingGrains(t, 2000, 20000, 100, false, true)
}

// addWeeklyGrain points canopy at a canopy.yaml that adds the weekly grain
// and runs canopy migrate again, as an operator would.
func (e *env) addWeeklyGrain() {
	e.t.Helper()
	file := filepath.Join(e.t.TempDir(), "canopy.yaml")
	if err := os.WriteFile(file, []byte("rollup:\n  grains: [hourly, daily, weekly]\n"), 0o600); err != nil {
		e.t.Fatal(err)
	}
	e.vars = append(e.vars, "CANOPY_CONFIG="+file)
	e.run("migrate")
}

// isoWeekStart is the oracle's weekly bucket: the Unix time of the Monday
// 00:00 UTC that begins t's ISO week, found by stepping back a day at a
// time while time.ISOWeek stays the same.
func isoWeekStart(t time.Time) int64 {
	t = t.UTC()
	y, w := t.ISOWeek()
	d := time.Date(t.Year(), t.Month(), t.Day(), 0, 0, 0, 0, time.UTC)
	for {
		p := d.AddDate(0, 0, -1)
		if py, pw := p.ISOWeek(); py != y || pw != w {
			return d.Unix()
		}
		d = p
	}
}

// attributeWeekly is the recursive oracle with weekly buckets: each event
// once per ancestor of its chain in h at its time (as-was) or now (as-is),
// skipping suspended ancestors as attribute does under skip.
func attributeWeekly(h history, events map[string]synth.Event, asIs, skip bool) map[rollupKey]sums {
	out := map[rollupKey]sums{}
	far := time.Date(9999, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, e := range events {
		at := e.OccurredAt
		if asIs {
			at = far
		}
		week := isoWeekStart(e.OccurredAt)
		for depth, anc := range h.chain(e.EntityID, at) {
			if v, _ := h.at(anc, at); skip && depth > 0 && v.status != "active" {
				continue
			}
			k := rollupKey{anc, week, depth, e.Type}
			s := out[k]
			if s.amount == nil {
				s.amount = new(big.Int)
			}
			s.events++
			s.amount.Add(s.amount, big.NewInt(e.Amount))
			s.quantity += e.Quantity
			out[k] = s
		}
	}
	return out
}

// compareWeekly compares rollup_weekly and the as-is weeks to the oracle.
func (e *env) compareWeekly(h history, events map[string]synth.Event, skip bool) {
	e.t.Helper()
	compareRollups(e.t, "rollup_weekly", attributeWeekly(h, events, false, skip),
		e.readRollup("rollup_weekly", "toUInt32(toUInt32(bucket) * 86400)"))
	asIs := attributeWeekly(h, events, true, skip)
	compareRollups(e.t, "rollup_daily_current by toMonday", asIs, e.readAsIsWeeks())
	e.compareWeeklySeries(attributeWeekly(h, events, false, skip), "rollup_daily")
	e.compareWeeklySeries(asIs, "rollup_daily_current")
}

// compareWeeklySeries runs the overview's time series (dashboards and
// canopy show) with the weekly grain chosen, for the entity with the most
// downline events, in view, and compares its points to the oracle's weeks.
func (e *env) compareWeeklySeries(want map[rollupKey]sums, view string) {
	e.t.Helper()
	downline := map[int64]int64{}
	for k, s := range want {
		if k.depth > 0 {
			downline[k.entity] += s.events
		}
	}
	var entity int64
	for id, n := range downline {
		if n > downline[entity] || n == downline[entity] && id < entity {
			entity = id
		}
	}
	type point struct{ own, down int64 }
	exp := map[int64]point{}
	for k, s := range want {
		if k.entity == entity {
			p := exp[k.bucket]
			if k.depth == 0 {
				p.own += s.quantity
			} else {
				p.down += s.quantity
			}
			exp[k.bucket] = p
		}
	}
	q := dashboards.OverviewSQL{Database: e.chDB, Measures: schema.DefaultMeasures(), EntityID: fmt.Sprint(entity),
		View: "'" + view + "'", DateFilter: "1", TimeFilter: "1", Hourly: "0", Weekly: "1"}
	rows, err := e.ch.Query(context.Background(), q.Series("quantity"))
	if err != nil {
		e.t.Fatalf("weekly series: %v", err)
	}
	defer rows.Close()
	got := map[int64]point{}
	for rows.Next() {
		var (
			at        time.Time
			own, down int64
		)
		if err := rows.Scan(&at, &own, &down); err != nil {
			e.t.Fatalf("scan weekly series: %v", err)
		}
		got[at.Unix()] = point{own, down}
	}
	if err := rows.Err(); err != nil {
		e.t.Fatal(err)
	}
	if len(got) != len(exp) {
		e.t.Errorf("weekly series of %d in %s: %d points, want %d (%v, want %v)", entity, view, len(got), len(exp), got, exp)
	}
	for w, p := range exp {
		if got[w] != p {
			e.t.Errorf("weekly series of %d in %s, week %s: %+v, want %+v", entity, view, time.Unix(w, 0).UTC().Format(time.DateOnly), got[w], p)
		}
	}
}

// readAsIsWeeks reads rollup_daily_current summed by ISO week.
func (e *env) readAsIsWeeks() map[rollupKey]sums {
	e.t.Helper()
	rows, err := e.ch.Query(context.Background(), fmt.Sprintf(`
		SELECT entity_id, toUInt32(toUInt32(toMonday(bucket)) * 86400) AS week, depth, type,
			sum(events), toString(sum(amount)), sum(quantity)
		FROM %s.rollup_daily_current GROUP BY entity_id, week, depth, type`, e.chDB))
	if err != nil {
		e.t.Fatalf("read as-is weeks: %v", err)
	}
	defer rows.Close()
	out := map[rollupKey]sums{}
	for rows.Next() {
		var (
			entity      uint64
			events      int64
			week        uint32
			depth       uint8
			typ, amount string
			quantity    int64
		)
		if err := rows.Scan(&entity, &week, &depth, &typ, &events, &amount, &quantity); err != nil {
			e.t.Fatalf("scan as-is weeks: %v", err)
		}
		out[rollupKey{int64(entity), int64(week), int(depth), typ}] = sums{events, parseUnits(e.t, amount), quantity}
	}
	if err := rows.Err(); err != nil {
		e.t.Fatal(err)
	}
	return out
}

// TestRebuildWeeklyGrain: with the weekly grain configured, canopy rebuild
// of 2026-10-30 … 11-01 recomputes the ISO week holding them (Monday
// 10-26, whose last day lies in November but whose rows lie in October's
// partition) from the rebuilt daily rows: damage inside that week goes,
// damage in another week stays, and the rest equals the oracle, while
// batches keep arriving.
func TestRebuildWeeklyGrain(t *testing.T) {
	seed := seedFromEnv(t)
	t.Logf("seed %d (set CANOPY_TEST_SEED to replay)", seed)
	e := newEnv(t, 2)
	e.addWeeklyGrain()
	sc := e.setUp(seed, 1000, 12000)
	e.startWorker(1)
	keys, values := sc.records()
	cut := len(values) * 3 / 4
	e.produce(keys[:cut], values[:cut])
	e.waitAcked(uint64(cut), 3*time.Minute)
	e.waitRestated(time.Minute)

	ctx := context.Background()
	inWeek := time.Date(2026, 10, 26, 0, 0, 0, 0, time.UTC)   // rebuilt
	otherWeek := time.Date(2026, 11, 2, 0, 0, 0, 0, time.UTC) // kept as it is
	for _, d := range []struct {
		week   time.Time
		typ    string
		events int64
	}{{inWeek, "damage", 7}, {inWeek, "sale", -3}, {otherWeek, "damage", 5}} {
		q := fmt.Sprintf(`INSERT INTO %s.rollup_weekly (entity_id, bucket, depth, type, events, amount, quantity, ingest_unit)
			SELECT toUInt64(1), toDate('%s'), toUInt8(0), '%s', toInt64(%d), toDecimal64(%d, 4), toInt64(%d), 'damage/%s'`,
			e.chDB, d.week.Format(time.DateOnly), d.typ, d.events, d.events, d.events, d.typ)
		if err := e.ch.Exec(ctx, q); err != nil {
			t.Fatalf("damage: %v", err)
		}
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		e.produce(keys[cut:], values[cut:])
	}()
	out := e.run("rebuild", "--from", "2026-10-30", "--to", "2026-11-01")
	t.Log(strings.TrimSpace(out))
	if !strings.Contains(out, "rollup_weekly ") {
		t.Fatalf("rebuild output names no rollup_weekly rows: %s", out)
	}
	<-done
	e.waitAcked(uint64(len(values)), 3*time.Minute)
	e.waitRestated(time.Minute)

	o := buildOracle(sc.history, sc.events)
	want := attributeWeekly(sc.history, o.events, false, false)
	k := rollupKey{entity: 1, bucket: otherWeek.Unix(), depth: 0, typ: "damage"}
	want[k] = sums{events: 5, amount: big.NewInt(5 * 10000), quantity: 5}
	compareRollups(t, "rollup_weekly", want, e.readRollup("rollup_weekly", "toUInt32(toUInt32(bucket) * 86400)"))
	hourly, daily := attribute(sc.history, o.events, false, false)
	compareRollups(t, "rollup_hourly", hourly, e.readRollup("rollup_hourly", "toUInt32(bucket)"))
	compareRollups(t, "rollup_daily", daily, e.readRollup("rollup_daily", "toUInt32(toUInt32(bucket) * 86400)"))
}
