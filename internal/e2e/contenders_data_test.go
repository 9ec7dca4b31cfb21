package e2e

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/jackc/pgx/v5"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/canopyhq/canopy/hierarchy"
	"github.com/canopyhq/canopy/internal/synth"
)

// benchData is the one seeded data set every contender of
// BenchmarkContenders runs on: the forest of hierarchy.Synthesize(n, 1) —
// the very forest `canopy gen --entities n --seed 1` imports — and the
// events of seed 2 over the 30 whole days before today.
type benchData struct {
	n      int
	parent []int64 // parent[id]; 0 for a root
	depth  []uint8 // depth[id]; 0 for a root
	leaf   []bool  // leaf[id]: no children
	gen    synth.Events
	day0   int64 // days since 1970-01-01 of the first day
	chains int64 // sum over all events of their chain's length
	// partitions of Canopy's events topic (and so of its by-id topic): the
	// report's 4 unless BenchmarkFreshness is told otherwise.
	partitions int32
}

func newBenchData(n, events int) *benchData {
	bd := &benchData{n: n, parent: make([]int64, n+1), depth: make([]uint8, n+1), leaf: make([]bool, n+1), partitions: 4}
	for i := range bd.leaf {
		bd.leaf[i] = true
	}
	// Synthesize gives every parent a smaller id than its children, so one
	// pass in id order sees a parent's depth before its children's.
	for _, e := range hierarchy.Synthesize(n, 1) {
		bd.parent[e.ID] = e.ParentID
		if e.ParentID != 0 {
			bd.depth[e.ID] = bd.depth[e.ParentID] + 1
			bd.leaf[e.ParentID] = false
		}
	}
	start := time.Now().UTC().AddDate(0, 0, -30).Truncate(24 * time.Hour)
	bd.gen = synth.Events{Seed: 2, Count: events, Entities: int64(n), Start: start, Span: 30 * 24 * time.Hour}
	bd.day0 = start.Unix() / 86400
	return bd
}

// chain is an entity and its ancestors, nearest first.
func (bd *benchData) chain(id int64, buf []int64) []int64 {
	buf = buf[:0]
	for ; id != 0; id = bd.parent[id] {
		buf = append(buf, id)
	}
	return buf
}

// workload is the data set with its events spread over entities by d: the
// same hierarchy, count, seed, times, types and amounts; only which entity
// each event belongs to differs.
func (bd *benchData) workload(d synth.Distribution) *benchData {
	w := *bd
	w.gen.Distribution = d
	return &w
}

// skew describes how a workload's events spread over entities.
type skew struct {
	withEvents int     // entities with at least one event of their own
	top1, top  float64 // share of events of the busiest 1% of entities, and of the busiest one
}

func (bd *benchData) skew() skew {
	count := make([]int32, bd.n+1)
	_ = bd.gen.Each(func(_ int, e synth.Event) error { count[e.EntityID]++; return nil })
	count = count[1:]
	slices.SortFunc(count, func(a, b int32) int { return cmp.Compare(b, a) })
	var s skew
	var top int
	for i, c := range count {
		if c > 0 {
			s.withEvents++
		}
		if i < max(1, len(count)/100) {
			top += int(c)
		}
	}
	s.top1 = float64(top) / float64(bd.gen.Count)
	s.top = float64(count[0]) / float64(bd.gen.Count)
	return s
}

// prefix is the data set's first k events.
func (bd *benchData) prefix(k int) synth.Events {
	g := bd.gen
	g.Count = min(k, g.Count)
	return g
}

// tot is what every answer is made of: events, amount in 10^-4 units and
// quantity, for one entity on one day.
type tot struct{ events, amount, quantity int64 }

func (t *tot) add(e synth.Event) {
	t.events++
	t.amount += e.Amount
	t.quantity += e.Quantity
}

// dayKey packs an entity id and a day (days since 1970-01-01).
func dayKey(id, epochDay int64) [2]int64 { return [2]int64{id, epochDay} }

// benchOracle is the plain recursive computation the contenders are held to:
// every event walks its entity's parent pointers and adds itself to each
// entity on the way, per day. own keeps the entity's own events apart.
type benchOracle struct {
	total, own map[[2]int64]tot
	chains     int64
}

func (bd *benchData) oracle(g synth.Events) benchOracle {
	o := benchOracle{total: map[[2]int64]tot{}, own: map[[2]int64]tot{}}
	_ = g.Each(func(_ int, e synth.Event) error {
		d := e.OccurredAt.Unix() / 86400
		t := o.own[dayKey(e.EntityID, d)]
		t.add(e)
		o.own[dayKey(e.EntityID, d)] = t
		for id := e.EntityID; id != 0; id = bd.parent[id] {
			t := o.total[dayKey(id, d)]
			t.add(e)
			o.total[dayKey(id, d)] = t
			o.chains++
		}
		return nil
	})
	return o
}

// verdict is the outcome of comparing a contender's answer with the oracle.
type verdict struct {
	rows, wrong, missing, extra int
	examples                    []string
}

func (v verdict) ok() bool { return v.rows > 0 && v.wrong == 0 && v.missing == 0 && v.extra == 0 }

func (v verdict) String() string {
	if v.ok() {
		return fmt.Sprintf("exact (%d rows)", v.rows)
	}
	return fmt.Sprintf("WRONG: %d of %d rows differ, %d missing, %d extra; e.g. %v", v.wrong, v.rows, v.missing, v.extra, v.examples)
}

// differ compares rows (entity, day) → tot, each key once, with want.
type differ struct {
	want map[[2]int64]tot
	seen int
	v    verdict
}

func (d *differ) row(id, epochDay int64, got tot) {
	d.v.rows++
	w, ok := d.want[dayKey(id, epochDay)]
	switch {
	case !ok:
		d.v.extra++
	case w != got:
		d.v.wrong++
	default:
		d.seen++
		return
	}
	if ok {
		d.seen++
	}
	if len(d.v.examples) < 3 {
		d.v.examples = append(d.v.examples, fmt.Sprintf("entity %d day %s: got %+v want %+v", id,
			time.Unix(epochDay*86400, 0).UTC().Format(time.DateOnly), got, w))
	}
}

func (d *differ) done() verdict {
	d.v.missing = len(d.want) - d.seen
	return d.v
}

// rowScanner is what pgx.Rows and clickhouse-go's rows have in common.
type rowScanner interface {
	Next() bool
	Scan(dest ...any) error
	Err() error
}

// checkRows compares rows (entity, day since 1970-01-01, events,
// amount × 10^4, quantity, all 64-bit integers) with want.
func checkRows(rows rowScanner, want map[[2]int64]tot) (verdict, error) {
	d := differ{want: want}
	for rows.Next() {
		var id, day int64
		var t tot
		if err := rows.Scan(&id, &day, &t.events, &t.amount, &t.quantity); err != nil {
			return verdict{}, err
		}
		d.row(id, day, t)
	}
	return d.done(), rows.Err()
}

// checkCH is checkRows for a ClickHouse query (all columns Int64).
func checkCH(ctx context.Context, ch driver.Conn, sql string, want map[[2]int64]tot) (verdict, error) {
	rows, err := ch.Query(ctx, sql)
	if err != nil {
		return verdict{}, err
	}
	defer func() { _ = rows.Close() }()
	return checkRows(rows, want)
}

// checkPG is checkRows for a PostgreSQL query (all columns bigint).
func checkPG(ctx context.Context, pg *pgx.Conn, sql string, want map[[2]int64]tot) (verdict, error) {
	rows, err := pg.Query(ctx, sql)
	if err != nil {
		return verdict{}, err
	}
	defer rows.Close()
	return checkRows(rows, want)
}

// rollupCheckSQL reads a rollup table of Canopy's shape (entity_id, bucket
// Date, events, amount Decimal, quantity) as the rows checkRows wants.
func rollupCheckSQL(table string) string {
	return `SELECT toInt64(entity_id), toInt64(toUInt32(bucket)), sum(events), toInt64(sum(amount) * 10000), sum(quantity)
		FROM ` + table + ` GROUP BY entity_id, bucket`
}

// produceAll produces every event of g to topic, keyed by entity id, with
// the value render gives, as fast as the client takes them, and waits for
// every ack. sent, when not nil, sees each record once acknowledged.
func produceAll(ctx context.Context, cl *kgo.Client, topic string, g synth.Events, render func(synth.Event) []byte,
	sent func(r *kgo.Record)) error {
	errc := make(chan error, 1)
	err := g.Each(func(_ int, e synth.Event) error {
		rec := &kgo.Record{Topic: topic, Key: strconv.AppendInt(nil, e.EntityID, 10), Value: render(e)}
		cl.Produce(ctx, rec, func(r *kgo.Record, err error) {
			if err != nil {
				select {
				case errc <- err:
				default:
				}
				return
			}
			if sent != nil {
				sent(r)
			}
		})
		select {
		case err := <-errc:
			return err
		default:
			return nil
		}
	})
	if ferr := cl.Flush(ctx); err == nil {
		err = ferr
	}
	select {
	case perr := <-errc:
		err = errors.Join(err, perr)
	default:
	}
	return err
}
