package ingest

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/shopspring/decimal"

	"github.com/canopyhq/canopy/internal/cputime"
	"github.com/canopyhq/canopy/internal/testenv"
	"github.com/canopyhq/canopy/schema"
)

// newSink migrates a throwaway database on the real ClickHouse with the
// measures ms (validated here).
func newSink(t testing.TB, ms schema.Measures) *ClickHouseSink {
	t.Helper()
	dsn := testenv.Get(t, "CANOPY_CLICKHOUSE_DSN")
	opts, err := clickhouse.ParseDSN(dsn)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := clickhouse.Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	s := schema.ClickHouse{Database: fmt.Sprintf("canopy_sink_%d", rand.IntN(1_000_000)), Measures: ms}
	if err := s.Validate(); err != nil {
		t.Fatal(err)
	}
	s = ProbeEngine(ctx, conn, s)
	t.Cleanup(func() {
		_ = conn.Exec(ctx, "DROP DATABASE IF EXISTS "+s.Database)
		_ = conn.Close()
	})
	if err := MigrateClickHouse(ctx, conn, s); err != nil {
		t.Fatal(err)
	}
	return &ClickHouseSink{Conn: conn, Schema: s}
}

// threeMeasures is a decimal measure of scale 4, an int64 and a decimal of
// scale 9.
func threeMeasures() schema.Measures {
	return schema.Measures{
		{Name: "amount", Kind: schema.KindDecimal, Scale: 4},
		{Name: "quantity", Kind: schema.KindInt64},
		{Name: "fee", Kind: schema.KindDecimal, Scale: 9},
	}
}

// decimalEqual reports whether ClickHouse's rendering of a decimal (with or
// without trailing zeros, as releases differ) is units at scale.
func decimalEqual(text string, units schema.Sum128, scale int) bool {
	d, err := decimal.NewFromString(text)
	return err == nil && d.Equal(decimal.NewFromBigInt(units.Big(), -int32(scale))) //nolint:gosec // scale <= 9
}

// sinkBatch is events whose decimal measures reach ±schema.MaxUnits, on
// few entities, so that the rollup sums pass int64 both ways.
func sinkBatch() *Batch {
	rng := rand.New(rand.NewPCG(21, 22))
	at := time.Date(2026, 11, 30, 10, 0, 0, 0, time.UTC)
	b := &Batch{Intent: Intent{Source: Source{Topic: "sink-test", Partition: 3, First: 100, Last: 219},
		HierarchyVersion: 1, CreatedAt: at}}
	edge := []int64{schema.MaxUnits, -schema.MaxUnits, 0, 1, -1, 12_345, -99_999_999}
	for i := range 100 {
		amount, fee := edge[i%len(edge)], edge[(i/3)%len(edge)]
		if i >= 60 {
			amount, fee = rng.Int64N(2*schema.MaxUnits+1)-schema.MaxUnits, rng.Int64N(2e12)-1e12
		}
		b.Events = append(b.Events, Accepted{Offset: int64(100 + i), Event: Event{
			ID: fmt.Sprintf("ev-%d", i), EntityID: 1 + int64(i%4), OccurredAt: at.Add(time.Duration(i%3) * time.Hour),
			Type: []string{"sale", "refund"}[i%2], Measures: []int64{amount, int64(i), fee},
		}})
	}
	// Ten maximal amounts on one key and ten minimal ones on another.
	for i := range 20 {
		sign := int64(1 - 2*(i%2))
		b.Events = append(b.Events, Accepted{Offset: int64(200 + i), Event: Event{
			ID: fmt.Sprintf("big-%d", i), EntityID: 9 + int64(i%2), OccurredAt: at, Type: "sale",
			Measures: []int64{sign * schema.MaxUnits, 1, sign * schema.MaxUnits},
		}})
	}
	hourly, daily := newFanoutBuilder(3, false, 0), newFanoutBuilder(3, true, 0)
	for i := range b.Events {
		ev := &b.Events[i].Event
		chain := []Ancestor{{ID: ev.EntityID}, {ID: 1000, Depth: 1}}
		hourly.add(ev, chain)
		daily.add(ev, chain)
	}
	b.Hourly, b.Daily = hourly.rollup(), daily.rollup()
	b.AsIs = b.Daily
	b.Counts = Counts{Records: 120, Accepted: 120}
	return b
}

// The sink's decimals reach ClickHouse as the exact values: events at
// Decimal(18, s), rollup sums past int64 at Decimal(38, s), whatever the
// path the driver's column takes.
func TestClickHouseSinkWritesExactDecimals(t *testing.T) {
	s := newSink(t, threeMeasures())
	ctx := context.Background()
	b := sinkBatch()
	var big bool
	for _, sum := range b.Hourly.Sums[0] {
		_, fits := sum.Int64()
		big = big || !fits
	}
	if !big {
		t.Fatal("no hourly sum passes int64: the batch tests too little")
	}
	if err := s.Write(ctx, b); err != nil {
		t.Fatal(err)
	}

	rows, err := s.Conn.Query(ctx, fmt.Sprintf(
		"SELECT event_id, toString(amount), quantity, toString(fee) FROM %s.%s ORDER BY src_offset", s.Schema.Database, schema.TableEvents))
	if err != nil {
		t.Fatal(err)
	}
	i := 0
	for ; rows.Next(); i++ {
		var id, amount, fee string
		var quantity int64
		if err := rows.Scan(&id, &amount, &quantity, &fee); err != nil {
			t.Fatal(err)
		}
		e := b.Events[i]
		var wa, wf schema.Sum128
		wa.Add(e.Measures[0])
		wf.Add(e.Measures[2])
		if id != e.ID || !decimalEqual(amount, wa, 4) || quantity != e.Measures[1] || !decimalEqual(fee, wf, 9) {
			t.Errorf("event %d = %s %s %d %s, want %s %d %d %d", i, id, amount, quantity, fee, e.ID, e.Measures[0], e.Measures[1], e.Measures[2])
		}
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	rows.Close()
	if i != len(b.Events) {
		t.Fatalf("%d events, want %d", i, len(b.Events))
	}
	for _, c := range []struct {
		table string
		r     *Rollup
	}{{schema.TableRollupHourly, b.Hourly}, {schema.TableRollupDaily, b.Daily}, {schema.TableRollupAsIs, b.AsIs}} {
		checkRollup(t, s.Conn, s.Schema.Database+"."+c.table, c.r, "")
	}
}

// checkRollup compares a rollup table, or a staging copy whose amount is
// amountType, with r.
func checkRollup(t *testing.T, conn driver.Conn, table string, r *Rollup, amountType string) {
	t.Helper()
	ctx := context.Background()
	rows, err := conn.Query(ctx, fmt.Sprintf("SELECT entity_id, toString(bucket), depth, type, events, toString(amount), quantity, toString(fee), toTypeName(amount)"+
		" FROM %s ORDER BY entity_id, bucket, depth, type", table))
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	i := 0
	for ; rows.Next(); i++ {
		var (
			entity           uint64
			depth            uint8
			typ, am, fee, tn string
			bucket           string
			events           int64
			q                int64
		)
		if err := rows.Scan(&entity, &bucket, &depth, &typ, &events, &am, &q, &fee, &tn); err != nil {
			t.Fatal(err)
		}
		if i >= r.Len() {
			continue
		}
		k := r.Keys[i]
		at := time.Unix(k.Bucket, 0).UTC()
		if int64(entity) != k.EntityID || (bucket != at.Format(time.DateTime) && bucket != at.Format(time.DateOnly)) || depth != k.Depth || typ != k.Type || events != r.Events[i] || //nolint:gosec // small
			!decimalEqual(am, r.Sums[0][i], 4) || q != int64(r.Sums[1][i].Lo) || !decimalEqual(fee, r.Sums[2][i], 9) { //nolint:gosec // wraps as ClickHouse does
			t.Errorf("%s row %d = %d %s %d %s %d %s %d %s, want %+v %d %s %d %s", table, i, entity, bucket, depth, typ, events, am, q, fee,
				k, r.Events[i], r.Sums[0][i].Big(), r.Sums[1][i].Lo, r.Sums[2][i].Big())
		}
		if amountType != "" && tn != amountType {
			t.Errorf("%s: amount is %s, want %s", table, tn, amountType)
		}
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if i != r.Len() {
		t.Fatalf("%s: %d rows, want %d", table, i, r.Len())
	}
}

// A copy of a rollup table whose decimal column has another precision or
// scale still gets the exact values, or an error when they do not fit.
func TestClickHouseSinkDecimalColumnTypes(t *testing.T) {
	s := newSink(t, threeMeasures())
	ctx := context.Background()
	small := func(amount int64) *Rollup {
		f := newFanoutBuilder(3, false, 0)
		at := time.Date(2026, 11, 30, 10, 0, 0, 0, time.UTC)
		for i, a := range []int64{amount, -amount, amount / 3, 1, -1, 0} {
			ev := &Event{Type: "sale", OccurredAt: at, Measures: []int64{a, 7, -a}}
			f.add(ev, []Ancestor{{ID: int64(1 + i)}})
		}
		return f.rollup()
	}
	for _, c := range []struct {
		name, amountType string
		r                *Rollup
		wantErr          bool
	}{
		{"Decimal(38, 4)", "Decimal(38, 4)", sinkBatch().Hourly, false},
		{"other scale", "Decimal(38, 6)", small(schema.MaxUnits / 1000), false},
		{"Decimal(18, 4)", "Decimal(18, 4)", small(schema.MaxUnits), false},
		{"Decimal(9, 4)", "Decimal(9, 4)", small(999_999_999), false},
		{"Decimal(9, 4) overflow", "Decimal(9, 4)", small(1 << 31), true},
		{"Decimal(18, 4) overflow", "Decimal(18, 4)", sinkBatch().Hourly, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			cols, _ := s.Schema.RollupTableColumns(schema.TableRollupHourly)
			defs := make([]string, len(cols))
			for i, col := range cols {
				if col.Name == "amount" {
					col.Type = c.amountType
				}
				defs[i] = col.Name + " " + col.Type
			}
			stage := fmt.Sprintf("stage_%d", rand.IntN(1_000_000))
			if err := s.Conn.Exec(ctx, fmt.Sprintf("CREATE TABLE %s.%s (%s) ENGINE = Memory", s.Schema.Database, stage, strings.Join(defs, ", "))); err != nil {
				t.Fatal(err)
			}
			err := s.WriteRollupTo(ctx, schema.TableRollupHourly, stage, c.r, "unit", 0)
			if c.wantErr {
				if err == nil {
					t.Fatal("no error for values past the column's range")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			checkRollup(t, s.Conn, s.Schema.Database+"."+stage, c.r, c.amountType)
		})
	}
}

// BenchmarkClickHouseSinkWrite writes a batch of 50,000 events over
// 1,000,000 entities, chains of 7, to the real ClickHouse. ns/op includes
// the server's time; cpu-ns/op is this process's CPU, the sink's (GC
// included).
func BenchmarkClickHouseSinkWrite(b *testing.B) {
	s := newSink(b, schema.DefaultMeasures())
	ctx := context.Background()
	evs, chains := randomBatch(rand.New(rand.NewPCG(3, 4)), 50_000, []string{"sale", "refund", "subscription"})
	batch := &Batch{Intent: Intent{Source: Source{Topic: "bench", Partition: 0}, HierarchyVersion: 1, CreatedAt: time.Now().UTC()}}
	hourly, daily := newFanoutBuilder(2, false, 7*len(evs)), newFanoutBuilder(2, true, 7*len(evs))
	for i := range evs {
		evs[i].ID = fmt.Sprintf("ev-%d", i)
		batch.Events = append(batch.Events, Accepted{Event: evs[i], Offset: int64(i)})
		hourly.add(&evs[i], chains[i])
		daily.add(&evs[i], chains[i])
	}
	batch.Hourly, batch.Daily = hourly.rollup(), daily.rollup()
	batch.AsIs = batch.Daily
	b.ReportAllocs()
	start := cputime.Self()
	defer func() { b.ReportMetric(float64((cputime.Self()-start).Nanoseconds())/float64(b.N), "cpu-ns/op") }()
	for b.Loop() {
		batch.Intent.First += int64(len(evs))
		batch.Intent.Last = batch.Intent.First + int64(len(evs)) - 1
		if err := s.Write(ctx, batch); err != nil {
			b.Fatal(err)
		}
	}
}

// TestClickHouseSinkWritesRollupsOfAReplayWhoseEventsLanded writes a batch
// as an old replay does once ClickHouse holds every events row of it
// (Batch.without left no events) but none of its rollups: the rollups and
// the acknowledgement are written all the same. The sink once wrote the
// rollups only along with events, and such a replay was acknowledged with
// its rollups lost.
func TestClickHouseSinkWritesRollupsOfAReplayWhoseEventsLanded(t *testing.T) {
	s := newSink(t, threeMeasures())
	ctx := context.Background()
	full := sinkBatch()
	months := map[int]bool{}
	for _, e := range full.Events {
		months[yyyymm(e.OccurredAt)] = true
	}
	b := full.without(Landed{Months: []map[string]map[int]bool{{schema.TableEvents: months}}})
	if len(b.Events) != 0 || b.Hourly.Len() == 0 {
		t.Fatalf("the replay's batch has %d events and %d hourly rows; want none and some", len(b.Events), b.Hourly.Len())
	}
	if err := s.Write(ctx, b); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		table string
		r     *Rollup
	}{{schema.TableRollupHourly, full.Hourly}, {schema.TableRollupDaily, full.Daily}, {schema.TableRollupAsIs, full.AsIs}} {
		checkRollup(t, s.Conn, s.Schema.Database+"."+c.table, c.r, "")
	}
	var acks uint64
	if err := s.Conn.QueryRow(ctx, fmt.Sprintf("SELECT count() FROM %s.%s", s.Schema.Database, schema.TableAcks)).Scan(&acks); err != nil || acks != 1 {
		t.Fatalf("acks: %d, %v; want 1", acks, err)
	}
	// A batch of no events at all (every record a duplicate) writes its
	// acknowledgement alone.
	none := &Batch{Intent: full.Intent, Counts: Counts{Records: 3, Duplicates: 3}}
	none.Intent.First, none.Intent.Last = 300, 302
	if err := s.Write(ctx, none); err != nil {
		t.Fatalf("a batch without events or rollups: %v", err)
	}
}

// Acks keep the topic's id, so a topic deleted and created again (its name
// and its offsets from 0 reused) does not take the old topic's
// acknowledgements for its own, and reconcile finds its gaps. Rows written
// before the column existed (an empty topic_id) count for every incarnation, as
// all rows did. canopy migrate adds the column to a table made without it.
func TestAcksTellTopicIncarnationsApart(t *testing.T) {
	conn := newSink(t, schema.DefaultMeasures()).Conn
	ctx := context.Background()
	s := schema.ClickHouse{Database: fmt.Sprintf("canopy_acks_%d", rand.IntN(1_000_000)), Measures: schema.DefaultMeasures()}
	if err := s.Validate(); err != nil {
		t.Fatal(err)
	}
	s = ProbeEngine(ctx, conn, s)
	t.Cleanup(func() { _ = conn.Exec(ctx, "DROP DATABASE IF EXISTS "+s.Database) })
	if err := conn.Exec(ctx, s.CreateDatabase()); err != nil {
		t.Fatal(err)
	}
	// ingest_acks as it was before topic_id, with one row.
	var acks schema.Table
	for _, tb := range s.Tables() {
		if tb.Name == schema.TableAcks {
			acks = tb
		}
	}
	cols := acks.Columns[:len(acks.Columns)-1]
	if last := acks.Columns[len(acks.Columns)-1]; last.Name != "topic_id" {
		t.Fatalf("the last ack column is %s, want topic_id", last.Name)
	}
	acks.Columns = cols
	if err := conn.Exec(ctx, s.Create(acks)); err != nil {
		t.Fatal(err)
	}
	legacy, err := conn.PrepareBatch(ctx, s.Insert(schema.TableAcks, cols))
	if err != nil {
		t.Fatal(err)
	}
	if err := legacy.Append("t", int32(0), int64(0), int64(99), uint32(100), uint32(100), uint32(0), uint32(0), uint32(0),
		int64(1), time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)); err != nil {
		t.Fatal(err)
	}
	if err := legacy.Send(); err != nil {
		t.Fatal(err)
	}
	sink := &ClickHouseSink{Conn: conn, Schema: s}
	// A release that writes the column, before canopy migrate added it.
	early := &Batch{Intent: Intent{Source: Source{Topic: "t", TopicID: "x", First: 500, Last: 599}, CreatedAt: time.Now().UTC()}}
	if err := sink.insertAck(ctx, early); err == nil || !strings.Contains(err.Error(), "run canopy migrate") {
		t.Errorf("ack into the table without topic_id: %v, want an error saying to run canopy migrate", err)
	}
	if err := MigrateClickHouse(ctx, conn, s); err != nil {
		t.Fatal(err)
	}
	for _, src := range []Source{
		{Topic: "t", TopicID: "old-id", First: 100, Last: 199},
		{Topic: "t", TopicID: "new-id", First: 200, Last: 299},
	} {
		b := &Batch{Intent: Intent{Source: src, HierarchyVersion: 1, CreatedAt: time.Now().UTC()}, Counts: Counts{Records: 100, Accepted: 100}}
		if err := sink.insertAck(ctx, b); err != nil {
			t.Fatal(err)
		}
	}
	for log, want := range map[string]string{
		"old-id": "[{0 0 99} {0 100 199}]",
		"new-id": "[{0 0 99} {0 200 299}]",
		"":       "[{0 0 99}]", // a broker without topic ids
	} {
		got, err := sink.AckedPage(ctx, "t", log, 0, 0, -1, 1000, 100)
		if err != nil {
			t.Fatal(err)
		}
		if fmt.Sprint(got) != want {
			t.Errorf("acked ranges of incarnation %q: %v, want %s", log, got, want)
		}
	}
}
