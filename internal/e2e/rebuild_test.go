package e2e

import (
	"context"
	"fmt"
	"math/big"
	"strings"
	"testing"
	"time"
)

// TestRebuildMatchesOracleAndKeepsOtherDays damages the three rollup tables
// inside and outside a range of days that spans two monthly partitions,
// then rebuilds the range while a worker keeps ingesting the rest of the
// events: inside the range the tables must equal the oracle again, outside
// it they must hold exactly what they held (the damage included), and the
// events that arrived during the rebuild must count once.
func TestRebuildMatchesOracleAndKeepsOtherDays(t *testing.T) {
	seed := seedFromEnv(t)
	t.Logf("seed %d (set CANOPY_TEST_SEED to replay)", seed)
	e := newEnv(t, 2)
	sc := e.setUp(seed, 2000, 40000)
	e.startWorker(1)
	keys, values := sc.records()
	cut := len(values) * 3 / 4
	e.produce(keys[:cut], values[:cut])
	e.waitAcked(uint64(cut), 3*time.Minute)
	e.waitRestated(time.Minute)

	e.wantExit(2, "--to", "rebuild", "--from", "2026-11-02", "--to", "2026-11-01")
	e.wantExit(2, "--from", "rebuild", "--from", "yesterday", "--to", "2026-11-01")

	// Damage: a bogus type inside and outside the range, and a real row
	// (entity 1's own sales, which the generator always has) knocked down
	// inside it, in every table.
	ctx := context.Background()
	type damage struct {
		at      time.Time
		typ     string
		events  int64
		inRange bool
	}
	damages := []damage{
		{time.Date(2026, 10, 28, 5, 0, 0, 0, time.UTC), "damage", 7, false},
		{time.Date(2026, 11, 3, 5, 0, 0, 0, time.UTC), "damage", 7, false},
		{time.Date(2026, 10, 30, 5, 0, 0, 0, time.UTC), "damage", 7, true},
		{time.Date(2026, 11, 1, 23, 0, 0, 0, time.UTC), "sale", -3, true},
	}
	tables := []struct{ name, bucket, read, extra, extraVal string }{
		{"rollup_hourly", "toDateTime(%d)", "toUInt32(bucket)", "", ""},
		{"rollup_daily", "toDate(toDateTime(%d))", "toUInt32(toUInt32(bucket) * 86400)", "", ""},
		{"rollup_daily_current", "toDate(toDateTime(%d))", "toUInt32(toUInt32(bucket) * 86400)", ", pending_version", ", toUInt64(0)"},
	}
	for _, tb := range tables {
		for _, d := range damages {
			q := fmt.Sprintf(`INSERT INTO %s.%s (entity_id, bucket, depth, type, events, amount, quantity%s, ingest_unit)
				SELECT toUInt64(1), %s, toUInt8(0), '%s', toInt64(%d), toDecimal64(%d, 4), toInt64(%d)%s, 'damage/%d'`,
				e.chDB, tb.name, tb.extra, fmt.Sprintf(tb.bucket, d.at.Unix()), d.typ, d.events, d.events, d.events, tb.extraVal, d.at.Unix())
			if err := e.ch.Exec(ctx, q); err != nil {
				t.Fatalf("damage %s: %v", tb.name, err)
			}
		}
	}

	done := make(chan struct{})
	go func() {
		defer close(done)
		e.produce(keys[cut:], values[cut:])
	}()
	out := e.run("rebuild", "--from", "2026-10-30", "--to", "2026-11-01")
	t.Log(strings.TrimSpace(out))
	if !strings.Contains(out, "partitions 202610 202611 swapped") {
		t.Fatalf("rebuild output: %s", out)
	}
	<-done
	e.waitAcked(uint64(len(values)), 3*time.Minute)
	e.waitRestated(time.Minute)

	o := buildOracle(sc.history, sc.events)
	hourly, daily := attribute(sc.history, o.events, false, false)
	_, current := attribute(sc.history, o.events, true, false)
	for i, want := range []map[rollupKey]sums{hourly, daily, current} {
		tb := tables[i]
		for _, d := range damages {
			if d.inRange {
				continue
			}
			b := d.at.Unix()
			if i > 0 {
				b -= b % 86400
			} else {
				b -= b % 3600
			}
			k := rollupKey{entity: 1, bucket: b, depth: 0, typ: d.typ}
			w := want[k]
			if w.amount == nil {
				w.amount = new(big.Int)
			}
			w.events += d.events
			w.amount = new(big.Int).Add(w.amount, big.NewInt(d.events*10000))
			w.quantity += d.events
			want[k] = w
		}
		compareRollups(t, tb.name, want, e.readRollup(tb.name, tb.read))
	}
	e.compareEvents(o.events)
}
