package e2e

import (
	"context"
	"fmt"
	"math/rand/v2"
	"runtime"
	"runtime/debug"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/canopyhq/canopy/internal/synth"
)

// runPGPerEvent runs the seed system's design in e's PostgreSQL database:
// one transaction per event that upserts a summary row (entity, day, type)
// for the event's entity and every ancestor, ordered by id so concurrent
// transactions never deadlock, on `conns` connections for `budget`. It is
// given its best case: events come from memory, not Kafka, and each chain
// from an in-memory copy of the hierarchy. Events are handed out in order
// and every one handed out is finished, so the events done are exactly a
// prefix of the data set, which is what its summary is checked against.
func (bd *benchData) runPGPerEvent(b *testing.B, e *env, conns int, budget time.Duration) ingestResult {
	ctx := context.Background()
	if _, err := e.pg.Exec(ctx, `drop table if exists bench_summary;
		create table bench_summary (entity_id bigint, day date, type text,
			events bigint not null, amount numeric(38, 4) not null, quantity bigint not null,
			primary key (entity_id, day, type))`); err != nil {
		b.Fatal(err)
	}
	const upsert = `insert into bench_summary as s (entity_id, day, type, events, amount, quantity)
		select unnest($1::bigint[]), $2::date, $3, 1, $4::numeric, $5
		on conflict (entity_id, day, type) do update set events = s.events + 1,
			amount = s.amount + excluded.amount, quantity = s.quantity + excluded.quantity`
	events := make(chan synth.Event, 256)
	stop := make(chan struct{})
	var handed int
	go func() {
		defer close(events)
		_ = bd.gen.Each(func(i int, ev synth.Event) error {
			select {
			case events <- ev:
				handed = i + 1
				return nil
			case <-stop:
				return context.Canceled
			}
		})
	}()
	clients := make([]*pgx.Conn, conns)
	for i := range clients {
		c, err := pgx.Connect(ctx, e.pgDSN)
		if err != nil {
			b.Fatal(err)
		}
		defer func() { _ = c.Close(ctx) }()
		clients[i] = c
	}
	cpu := startCPU()
	start := time.Now()
	time.AfterFunc(budget, func() { close(stop) })
	var wg sync.WaitGroup
	errs := make(chan error, conns)
	for _, c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var chain []int64
			for ev := range events {
				chain = bd.chain(ev.EntityID, chain)
				slices.Sort(chain)
				if _, err := c.Exec(ctx, upsert, chain, ev.OccurredAt.UTC().Format(time.DateOnly), ev.Type,
					formatUnits4(ev.Amount), ev.Quantity); err != nil {
					errs <- err
					for range events { //nolint:revive // drain so the feeder ends
					}
					return
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	used := cpu.stop()
	close(errs)
	if err := <-errs; err != nil {
		b.Fatalf("per-event upsert: %v", err)
	}
	want := bd.oracle(bd.prefix(handed)).total
	v, err := checkPG(ctx, e.pg, `select entity_id, (day - date '1970-01-01')::bigint, sum(events)::bigint,
		(sum(amount) * 10000)::bigint, sum(quantity)::bigint from bench_summary group by entity_id, day`, want)
	if err != nil {
		b.Fatal(err)
	}
	var rows int64
	for _, t := range want {
		rows += t.events
	}
	return ingestResult{
		name:   fmt.Sprintf("PostgreSQL per-event upserts, %d connection%s", conns, map[bool]string{true: "s"}[conns > 1]),
		events: handed, elapsed: elapsed, cpu: used, verdict: v, rowsPerEvent: float64(rows) / float64(handed),
		how: fmt.Sprintf("one transaction per event upserting (entity, day, type) for the chain; as many of the data set's events, "+
			"from the first, as a %s budget allows (the *events* column); driver = the client", budget),
	}
}

// depthClass is a set of entities the read path is timed on.
type depthClass struct {
	name, short string // short labels the chart
	ids         []int64
}

// readClasses picks `per` entities for each class: the largest downlines
// at depth 1 (the roots' children), 3 and 5 — the worst case for a query
// that walks the downline, and the entities a dashboard is opened on most —
// then leaves and entities of any depth, drawn at random.
func (bd *benchData) readClasses(per int) []depthClass {
	rng := rand.New(rand.NewPCG(5, 5))
	size := bd.subtreeSizes()
	largest := func(depth uint8) []int64 {
		var ids []int64
		for id := 1; id <= bd.n; id++ {
			if bd.depth[id] == depth {
				ids = append(ids, int64(id))
			}
		}
		slices.SortStableFunc(ids, func(a, b int64) int { return size[b] - size[a] })
		return ids[:min(per, len(ids))]
	}
	random := func(in func(id int) bool) []int64 {
		var ids []int64
		for id := 1; id <= bd.n; id++ {
			if in(id) {
				ids = append(ids, int64(id))
			}
		}
		rng.Shuffle(len(ids), func(i, j int) { ids[i], ids[j] = ids[j], ids[i] })
		return ids[:min(per, len(ids))]
	}
	return []depthClass{
		{"depth 1 (roots' children), largest downlines", "depth 1, largest", largest(1)},
		{"depth 3, largest downlines", "depth 3, largest", largest(3)},
		{"depth 5, largest downlines", "depth 5, largest", largest(5)},
		{"leaves, at random", "leaves", random(func(id int) bool { return bd.leaf[id] && bd.depth[id] > 0 })},
		{"any depth, at random", "any depth", random(func(int) bool { return true })},
	}
}

// readResult is the read-path comparison of one depth class.
type readResult struct {
	class, short     string
	entities         int
	meanDownline     float64 // entities in the subtree, the entity included
	canopy, cte      []float64
	canopyOK, cteOK  int // answers equal to the oracle
	canopyErr, cteEr string
}

// loadRawEvents copies the data set's events into PostgreSQL for the
// recursive CTE, with the index such a system would have: by entity and
// time, covering the measures, vacuumed so index-only scans work.
func (bd *benchData) loadRawEvents(b *testing.B, e *env) {
	ctx := context.Background()
	if _, err := e.pg.Exec(ctx, `create table bench_events (entity_id bigint not null, occurred_at timestamptz not null,
		type text not null, amount numeric(38, 4) not null, quantity bigint not null)`); err != nil {
		b.Fatal(err)
	}
	rows := make([][]any, 0, bd.gen.Count)
	_ = bd.gen.Each(func(_ int, ev synth.Event) error {
		rows = append(rows, []any{ev.EntityID, ev.OccurredAt, ev.Type, formatUnits4(ev.Amount), ev.Quantity})
		return nil
	})
	if _, err := e.pg.CopyFrom(ctx, pgx.Identifier{"bench_events"},
		[]string{"entity_id", "occurred_at", "type", "amount", "quantity"}, pgx.CopyFromRows(rows)); err != nil {
		b.Fatal(err)
	}
	for _, sql := range []string{
		"create index on bench_events (entity_id, occurred_at) include (amount, quantity)",
		"vacuum analyze bench_events",
		"analyze canopy.entities",
	} {
		if _, err := e.pg.Exec(ctx, sql); err != nil {
			b.Fatalf("%s: %v", sql, err)
		}
	}
}

// overviewCanopy is the Entity-overview answer on Canopy's rollups: per day
// of the window, the entity's own events and its downline's (itself
// included) events, amount × 10^4 and quantity; the totals are their sums.
// A point read wants one thread and the uncompressed-block cache: without
// them 18.16 takes 4-6 ms instead of 2.5-3 ms (p50) on a 30M-row table.
const overviewCanopy = `SELECT toInt64(toUInt32(bucket)) AS day, sumIf(events, depth = 0), sum(events),
	toInt64(sum(amount) * 10000), sum(quantity)
	FROM %s.rollup_daily WHERE entity_id = %d AND bucket >= toDate('%s') AND bucket <= toDate('%s')
	GROUP BY bucket ORDER BY bucket
	SETTINGS max_threads = 1, use_uncompressed_cache = 1`

// overviewCTE is the same answer computed on request in PostgreSQL.
const overviewCTE = `with recursive down(id) as (
		select $1::bigint
		union all
		select c.id from canopy.entities c join down on c.parent_id = down.id)
	select ((ev.occurred_at at time zone 'UTC')::date - date '1970-01-01')::bigint as day,
		count(*) filter (where ev.entity_id = $1), count(*), (sum(ev.amount) * 10000)::bigint, sum(ev.quantity)::bigint
	from down join bench_events ev on ev.entity_id = down.id
	where ev.occurred_at >= $2 and ev.occurred_at < $3
	group by 1 order by 1`

// overviewRow is one day of an overview answer.
type overviewRow struct {
	day, own int64
	t        tot
}

// runReads times both overview queries on every entity of each class,
// alternating them, and checks every answer with the oracle.
func (bd *benchData) runReads(b *testing.B, e *env, o benchOracle, classes []depthClass) []readResult {
	ctx := context.Background()
	from := time.Unix(bd.day0*86400, 0).UTC()
	to := from.AddDate(0, 0, 31)
	size := bd.subtreeSizes()
	canopyQuery := func(id int64) ([]overviewRow, error) {
		rows, err := e.ch.Query(ctx, fmt.Sprintf(overviewCanopy, e.chDB, id, from.Format(time.DateOnly), to.Format(time.DateOnly)))
		if err != nil {
			return nil, err
		}
		defer func() { _ = rows.Close() }()
		return scanOverview(rows)
	}
	cteQuery := func(id int64) ([]overviewRow, error) {
		rows, err := e.pg.Query(ctx, overviewCTE, id, from, to)
		if err != nil {
			return nil, err
		}
		defer rows.Close()
		return scanOverview(rows)
	}
	want := func(id int64) []overviewRow {
		var out []overviewRow
		for d := bd.day0; d <= bd.day0+31; d++ {
			if t, ok := o.total[dayKey(id, d)]; ok {
				out = append(out, overviewRow{day: d, own: o.own[dayKey(id, d)].events, t: t})
			}
		}
		return out
	}
	// The oracle keeps gigabytes live in this process: a collection during
	// the timings would stall the client, not the systems measured.
	runtime.GC()
	defer debug.SetGCPercent(debug.SetGCPercent(-1))
	// Warm both: the first queries pay for connections and cold caches.
	for _, c := range classes {
		for _, id := range c.ids[:min(5, len(c.ids))] {
			_, _ = canopyQuery(id)
			_, _ = cteQuery(id)
		}
	}
	var out []readResult
	for _, c := range classes {
		r := readResult{class: c.name, short: c.short, entities: len(c.ids)}
		for _, id := range c.ids {
			r.meanDownline += float64(size[id]) / float64(len(c.ids))
			w := want(id)
			t0 := time.Now()
			got, err := canopyQuery(id)
			r.canopy = append(r.canopy, ms(time.Since(t0)))
			if err == nil && slices.Equal(got, w) {
				r.canopyOK++
			} else if r.canopyErr == "" {
				r.canopyErr = fmt.Sprintf("entity %d: %v got %v want %v", id, err, got, w)
			}
			t0 = time.Now()
			got, err = cteQuery(id)
			r.cte = append(r.cte, ms(time.Since(t0)))
			if err == nil && slices.Equal(got, w) {
				r.cteOK++
			} else if r.cteEr == "" {
				r.cteEr = fmt.Sprintf("entity %d: %v got %v want %v", id, err, got, w)
			}
		}
		b.Logf("read path, %s: %d entities, mean downline %.0f", c.name, r.entities, r.meanDownline)
		out = append(out, r)
	}
	return out
}

// scanOverview reads an overview answer from either database's rows.
func scanOverview(rows rowScanner) ([]overviewRow, error) {
	var out []overviewRow
	for rows.Next() {
		var r overviewRow
		if err := rows.Scan(&r.day, &r.own, &r.t.events, &r.t.amount, &r.t.quantity); err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, rows.Err()
}

// subtreeSizes counts each entity's subtree, itself included.
func (bd *benchData) subtreeSizes() []int {
	size := make([]int, bd.n+1)
	for id := bd.n; id >= 1; id-- { // children before parents
		size[id]++
		if p := bd.parent[id]; p != 0 {
			size[p] += size[id]
		}
	}
	return size
}
