package restate

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/canopyhq/canopy/hierarchy"
	"github.com/canopyhq/canopy/ingest"
	"github.com/canopyhq/canopy/ingest/pgledger"
	"github.com/canopyhq/canopy/internal/pglock"
	"github.com/canopyhq/canopy/schema"
)

// Rebuild recomputes the rollup tables for a range of days from the
// events in ClickHouse (hourly, daily and as-is; a grain coarser than daily
// from the rebuilt daily rows, for each of its buckets that holds a day of
// the range) and swaps each affected monthly partition in whole
// (ALTER TABLE … REPLACE PARTITION … FROM a staging table), so a reader sees
// a partition before or after, never half-built. Rows of the partition
// outside the range are carried over as they are.
//
// It runs with workers running: it pauses new batches (they wait and
// retry), waits for the batches already begun and for the restater to
// finish its current change, computes and swaps, and lifts the pause. Each
// event is attributed as the live path would attribute it at that point:
// as-was with the hierarchy as of the later of the restater's progress and
// the event's own batch version, as-is through the current hierarchy as of
// the restater's progress (rows the restater will move on from there).
type Rebuild struct {
	PG *pgxpool.Pool
	CH driver.Conn
	// Shards are the cluster's shard connections (ingest.ClickHouseSink);
	// nil on one server. On a cluster each shard's local tables are staged
	// and swapped on that shard (its first live replica; the swap
	// replicates to the others), with the shard's part of the rows.
	Shards   []driver.Conn
	Schema   schema.ClickHouse
	Resolver ingest.Resolver
	Refresh  func(ctx context.Context) (int64, error) // catch Resolver up with PostgreSQL
	Policy   ingest.SuspendedPolicy
	Log      *slog.Logger
	// Wait bounds the wait for batches already begun (default 2m); a batch
	// left unfinished by a killed backfill or reconcile must be finished by
	// running it again first.
	Wait time.Duration
}

// RebuildStats says what a rebuild did.
type RebuildStats struct {
	Events     int64
	Rows       map[string]int64 // recomputed rows written per table
	Partitions []string         // months swapped
	Version    int64            // hierarchy version the range was attributed with
	// Resolved is how many parked hierarchy changes (canopy.restate_parked)
	// the rebuild resolved; ParkedLeft how many it left unresolved because
	// the range did not cover every day with events (EventsFrom … EventsTo).
	Resolved, ParkedLeft int64
	EventsFrom, EventsTo time.Time
}

// rebuildTables are the tables a rebuild swaps, in that order.
var rebuildTables = []string{schema.TableRollupHourly, schema.TableRollupDaily, schema.TableRollupAsIs}

// tables are the tables a rebuild checks: rebuildTables, then each
// configured grain coarser than daily.
func (rb *Rebuild) tables() []string {
	ts := append([]string(nil), rebuildTables...)
	for _, g := range schema.CoarserGrains(rb.Schema.ConfiguredGrains()) {
		ts = append(ts, g.Table)
	}
	return ts
}

// nodes are the connections a rebuild stages and swaps through: each
// shard's on a cluster, else the one server's.
func (rb *Rebuild) nodes() []driver.Conn {
	if len(rb.Shards) > 0 {
		return rb.Shards
	}
	return []driver.Conn{rb.CH}
}

// exec runs q, naming the table, on every node.
func (rb *Rebuild) exec(ctx context.Context, q string) error {
	for i, conn := range rb.nodes() {
		if err := conn.Exec(ctx, q); err != nil {
			if len(rb.Shards) > 0 {
				return fmt.Errorf("shard %d: %w", i+1, err)
			}
			return err
		}
	}
	return nil
}

// dropStaging drops t's staging table on every node, whatever ctx.
func (rb *Rebuild) dropStaging(t string) {
	for _, conn := range rb.nodes() {
		_ = conn.Exec(context.Background(), "DROP TABLE IF EXISTS "+rb.Schema.Database+"."+staging(t))
	}
}

// Run rebuilds the days from, …, to (UTC dates, both included).
func (rb *Rebuild) Run(ctx context.Context, from, to time.Time) (RebuildStats, error) {
	st := RebuildStats{Rows: map[string]int64{}}
	from, to = day(from), day(to).AddDate(0, 0, 1)
	if !from.Before(to) {
		return st, fmt.Errorf("rebuild: --from %s is after --to %s", from.Format(time.DateOnly), to.AddDate(0, 0, -1).Format(time.DateOnly))
	}
	sortingKeys := map[string]string{}
	for _, t := range rb.tables() {
		sk, err := rb.checkTable(ctx, t)
		if err != nil {
			return st, err
		}
		sortingKeys[t] = sk
	}
	// One canopy rebuild at a time (pglock.Rebuild): ctx ends if the
	// lock's connection is lost, before a second one could swap too.
	err := pglock.TryHold(ctx, rb.PG, pglock.Rebuild, func(ctx context.Context) error {
		return rb.run(ctx, from, to, sortingKeys, &st)
	})
	if errors.Is(err, pglock.ErrBusy) {
		return st, errors.New("rebuild: another canopy rebuild is running")
	}
	return st, err
}

// run rebuilds [from, to) holding the rebuild lock.
func (rb *Rebuild) run(ctx context.Context, from, to time.Time, sortingKeys map[string]string, st *RebuildStats) error {
	fence := &pgledger.Fence{Pool: rb.PG}
	pause, err := fence.Pause(ctx, rb.log())
	if err != nil {
		return fmt.Errorf("rebuild: %w", err)
	}
	defer pause.Lift()
	limit := rb.Wait
	if limit <= 0 {
		limit = 2 * time.Minute
	}
	// Under the pause no batch begins and the fence stands still: wait for
	// the batches begun and the restater's current changes.
	if st.Version, err = fence.AwaitQuiet(ctx, limit); err != nil {
		return fmt.Errorf("rebuild: %w", err)
	}
	if v, err := rb.Refresh(ctx); err != nil {
		return err
	} else if v < st.Version {
		return fmt.Errorf("rebuild: hierarchy at version %d, restated through %d", v, st.Version)
	}
	rb.log().Info("rebuild: writers paused", "hierarchy_version", st.Version)
	for m := monthOf(from); m.Before(to); m = m.AddDate(0, 1, 0) {
		lo, hi := maxTime(from, m), minTime(to, m.AddDate(0, 1, 0))
		if err := rb.month(ctx, pause, sortingKeys, m, lo, hi, st); err != nil {
			return fmt.Errorf("rebuild %s: %w", m.Format("2006-01"), err)
		}
		st.Partitions = append(st.Partitions, m.Format("200601"))
	}
	for _, g := range schema.CoarserGrains(rb.Schema.ConfiguredGrains()) {
		if err := rb.coarser(ctx, pause, sortingKeys[g.Table], g, from, to, st); err != nil {
			return fmt.Errorf("rebuild %s: %w", g.Table, err)
		}
	}
	if err := rb.resolveParked(ctx, from, to, st); err != nil {
		return fmt.Errorf("rebuild done, but resolving parked hierarchy changes failed (run it again): %w", err)
	}
	return nil
}

// resolveParked marks resolved the parked hierarchy changes up to the
// version the rebuild attributed with, if the rebuilt days [from, to) hold
// every event: only then are all rows a parked change left wrong
// recomputed. Writers are still paused, so no event lands meanwhile.
func (rb *Rebuild) resolveParked(ctx context.Context, from, to time.Time, st *RebuildStats) error {
	var n int64
	err := rb.PG.QueryRow(ctx, `select count(*) from canopy.restate_parked
		where resolved_at is null and seq <= $1`, st.Version).Scan(&n)
	if err != nil || n == 0 {
		return err
	}
	var count uint64
	err = rb.CH.QueryRow(ctx, fmt.Sprintf("SELECT count(), min(occurred_at), max(occurred_at) FROM %s.%s",
		rb.Schema.Database, schema.TableEvents)).Scan(&count, &st.EventsFrom, &st.EventsTo)
	if err != nil {
		return fmt.Errorf("read the span of events: %w", err)
	}
	if count > 0 && (st.EventsFrom.Before(from) || !st.EventsTo.Before(to)) {
		st.ParkedLeft = n
		rb.log().Warn("rebuild: parked hierarchy changes stay unresolved: the rebuilt days do not cover every event",
			"parked", n, "events_from", st.EventsFrom.UTC().Format(time.DateOnly), "events_to", st.EventsTo.UTC().Format(time.DateOnly))
		return nil
	}
	tag, err := rb.PG.Exec(ctx, `update canopy.restate_parked set resolved_at = now()
		where resolved_at is null and seq <= $1`, st.Version)
	if err != nil {
		return err
	}
	st.Resolved = tag.RowsAffected()
	rb.log().Info("rebuild: parked hierarchy changes resolved", "changes", st.Resolved, "hierarchy_version", st.Version)
	return nil
}

// checkTable makes sure t is partitioned by month of bucket, as the swap
// assumes, and returns its sorting key, which its staging table copies.
func (rb *Rebuild) checkTable(ctx context.Context, t string) (string, error) {
	var pk, sk string
	t = rb.Schema.Local(t)
	err := rb.nodes()[0].QueryRow(ctx, "SELECT partition_key, sorting_key FROM system.tables WHERE database = ? AND name = ?",
		rb.Schema.Database, t).Scan(&pk, &sk)
	if err != nil {
		return "", fmt.Errorf("rebuild: table %s.%s: %w (run canopy migrate)", rb.Schema.Database, t, err)
	}
	if strings.ReplaceAll(pk, " ", "") != "toYYYYMM(bucket)" {
		return "", fmt.Errorf("rebuild: table %s.%s is partitioned by %q, not toYYYYMM(bucket)", rb.Schema.Database, t, pk)
	}
	return sk, nil
}

// month recomputes [lo, hi) of month m into staging tables and swaps them in.
func (rb *Rebuild) month(ctx context.Context, p *pgledger.Paused, sortingKeys map[string]string, m, lo, hi time.Time, st *RebuildStats) error {
	part := m.Format("200601")
	defer func() {
		for _, t := range rebuildTables {
			rb.dropStaging(t)
		}
	}()
	for _, t := range rebuildTables {
		if err := rb.stage(ctx, t, sortingKeys[t], part, lo, hi); err != nil {
			return err
		}
	}
	n, err := rb.compute(ctx, lo, hi, st)
	if err != nil {
		return err
	}
	st.Events += n
	if !p.Held() {
		return errors.New("the pause on writers could not be renewed; nothing swapped")
	}
	for _, t := range rebuildTables {
		q := fmt.Sprintf("ALTER TABLE %[1]s.%[2]s REPLACE PARTITION %[3]s FROM %[1]s.%[4]s", rb.Schema.Database, rb.Schema.Local(t), part, staging(t))
		if err := rb.exec(ctx, q); err != nil {
			return fmt.Errorf("swap %s: %w", t, err)
		}
	}
	rb.log().Info("rebuild: partition swapped", "month", m.Format("2006-01"), "from", lo.Format(time.DateOnly),
		"to", hi.AddDate(0, 0, -1).Format(time.DateOnly), "events", n)
	return nil
}

// coarser rebuilds g's buckets (weeks) that hold a day of [from, to) from
// rollup_daily, rebuilt by then: an as-was row of a grain coarser than a day
// is the sum of its days' rows, as the batch path and the restater write
// it. Writers are still paused, so neither table changes meanwhile. Each
// monthly partition of g's table (by the month of the bucket's start) is
// swapped in whole, as the other tables' are.
func (rb *Rebuild) coarser(ctx context.Context, p *pgledger.Paused, sk string, g schema.Grain, from, to time.Time, st *RebuildStats) error {
	lo := time.Unix(g.Bucket(from.Unix()), 0).UTC()
	end := time.Unix(g.Bucket(to.Add(-time.Second).Unix()), 0).UTC().AddDate(0, 0, 1) // after the last bucket's start
	db := rb.Schema.Database
	cols, _ := rb.Schema.RollupTableColumns(g.Table)
	defer rb.dropStaging(g.Table)
	for m := monthOf(lo); m.Before(end); m = m.AddDate(0, 1, 0) {
		mlo, mhi := maxTime(lo, m), minTime(end, m.AddDate(0, 1, 0))
		part := m.Format("200601")
		if err := rb.stage(ctx, g.Table, sk, part, mlo, mhi); err != nil {
			return err
		}
		var sel strings.Builder
		fmt.Fprintf(&sel, "SELECT entity_id, %s(bucket) AS b, depth, type, sum(events)", g.Of)
		for _, ms := range rb.Schema.Measures {
			fmt.Fprintf(&sel, ", sum(%s)", ms.Name)
		}
		fmt.Fprintf(&sel, ", '' FROM %s.%s WHERE bucket >= %s AND b >= %s AND b < %s GROUP BY entity_id, b, depth, type",
			db, rb.Schema.Local(schema.TableRollupDaily), bound(schema.TableRollupDaily, mlo), bound(schema.TableRollupDaily, mlo), bound(schema.TableRollupDaily, mhi))
		// Each node sums its own daily rows: on a cluster a shard holds
		// its entities' rows of every grain.
		q := fmt.Sprintf("INSERT INTO %s.%s (%s) %s", db, staging(g.Table), schema.ColumnList(cols), sel.String())
		if err := rb.exec(ctx, q); err != nil {
			return fmt.Errorf("sum %s from %s: %w", g.Table, schema.TableRollupDaily, err)
		}
		for _, conn := range rb.nodes() {
			var n uint64
			if err := conn.QueryRow(ctx, fmt.Sprintf("SELECT count() FROM %s.%s WHERE bucket >= %s AND bucket < %s",
				db, staging(g.Table), bound(g.Table, mlo), bound(g.Table, mhi))).Scan(&n); err != nil {
				return err
			}
			st.Rows[g.Table] += int64(n) //nolint:gosec // a count of rows
		}
		if !p.Held() {
			return errors.New("the pause on writers could not be renewed; nothing swapped")
		}
		q = fmt.Sprintf("ALTER TABLE %[1]s.%[2]s REPLACE PARTITION %[3]s FROM %[1]s.%[4]s", db, rb.Schema.Local(g.Table), part, staging(g.Table))
		if err := rb.exec(ctx, q); err != nil {
			return fmt.Errorf("swap %s: %w", g.Table, err)
		}
		rb.log().Info("rebuild: partition swapped", "table", g.Table, "month", m.Format("2006-01"))
	}
	return nil
}

// staging names t's staging table (in the same database).
func staging(t string) string { return t + "_rebuild" }

// stage creates t's staging table for partition part, sorted by sk, holding
// t's rows of the partition outside [lo, hi).
func (rb *Rebuild) stage(ctx context.Context, t, sk, part string, lo, hi time.Time) error {
	name := rb.Schema.Database + "." + staging(t)
	if err := rb.exec(ctx, "DROP TABLE IF EXISTS "+name); err != nil {
		return err
	}
	local := rb.Schema.Local(t) // on a cluster each node stages its shard's rows
	create := fmt.Sprintf("CREATE TABLE %s AS %s.%s ENGINE = SummingMergeTree PARTITION BY toYYYYMM(bucket) ORDER BY (%s)",
		name, rb.Schema.Database, local, sk)
	if err := rb.exec(ctx, create); err != nil {
		return fmt.Errorf("create %s: %w", name, err)
	}
	cols, _ := rb.Schema.RollupTableColumns(t)
	list := schema.ColumnList(cols)
	keep := fmt.Sprintf("INSERT INTO %s (%s) SELECT %s FROM %s.%s WHERE toYYYYMM(bucket) = %s AND (bucket < %s OR bucket >= %s)",
		name, list, list, rb.Schema.Database, local, part, bound(t, lo), bound(t, hi))
	if err := rb.exec(ctx, keep); err != nil {
		return fmt.Errorf("carry over %s rows outside the range: %w", t, err)
	}
	return nil
}

func bound(table string, t time.Time) string {
	if table == schema.TableRollupHourly {
		return fmt.Sprintf("toDateTime(%d)", t.Unix())
	}
	return fmt.Sprintf("toDate('%s')", t.Format(time.DateOnly))
}

// compute reads the events of [lo, hi) in time order and writes their
// rollups into the staging tables, one day at a time.
func (rb *Rebuild) compute(ctx context.Context, lo, hi time.Time, st *RebuildStats) (int64, error) {
	ms := rb.Schema.Measures
	sink := &ingest.ClickHouseSink{Conn: rb.CH, Schema: rb.Schema, Shards: rb.Shards}
	unit := "rebuild/" + lo.Format(time.DateOnly) + "/" + hi.Format(time.DateOnly)
	var hourly, daily, asIs *ingest.Rollup
	reset := func() {
		hourly, daily, asIs = ingest.NewRollup(len(ms)), ingest.NewRollup(len(ms)), ingest.NewRollup(len(ms))
	}
	reset()
	flush := func() error {
		for _, t := range []struct {
			table string
			r     *ingest.Rollup
		}{{schema.TableRollupHourly, hourly}, {schema.TableRollupDaily, daily}, {schema.TableRollupAsIs, asIs}} {
			t.r.Sort()
			t.r.Compact()
			if err := sink.WriteRollupTo(ctx, t.table, staging(t.table), t.r, unit, 0); err != nil {
				return err
			}
			st.Rows[t.table] += int64(t.r.Len())
		}
		reset()
		return nil
	}
	var q strings.Builder
	q.WriteString("SELECT entity_id, occurred_at, type, hierarchy_version")
	for _, m := range ms {
		q.WriteString(", " + m.Name)
	}
	fmt.Fprintf(&q, " FROM %s.%s WHERE occurred_at >= toDateTime(%d) AND occurred_at < toDateTime(%d) ORDER BY occurred_at",
		rb.Schema.Database, schema.TableEvents, lo.Unix(), hi.Unix())
	rows, err := rb.CH.Query(ctx, q.String())
	if err != nil {
		return 0, fmt.Errorf("read events: %w", err)
	}
	defer func() { _ = rows.Close() }()
	var (
		entity uint64
		hv     int64
		ev     ingest.Event
		n      int64
		cur    time.Time // the day being aggregated
		b1, b2 [64]ingest.Ancestor
		last   = time.Now()
	)
	ev.Measures = make([]int64, len(ms))
	dest := measureDest(ms, &entity, &ev.OccurredAt, &ev.Type, &hv)
	asOf := rb.Resolver.Version()
	for rows.Next() {
		if err := rows.Scan(dest...); err != nil {
			return n, fmt.Errorf("read events: %w", err)
		}
		if err := collectInts(ms, dest[4:], ev.Measures); err != nil {
			return n, err
		}
		if d := day(ev.OccurredAt); !d.Equal(cur) {
			if err := flush(); err != nil {
				return n, err
			}
			cur = d
			if time.Since(last) > 5*time.Second {
				last = time.Now()
				rb.log().Info("rebuild: computing", "day", d.Format(time.DateOnly), "events", n)
			}
		}
		ev.EntityID = int64(entity) //nolint:gosec // ids < 2^63
		if !attribute(rb.Resolver, &ev, hv, st.Version, rb.Policy, hourly, daily, asIs, &b1, &b2) {
			return n, fmt.Errorf("event of entity %d at %s: entity not in the hierarchy (version %d), or its ancestor chain is longer than %d entities: move it (or an ancestor) under a shorter chain first",
				ev.EntityID, ev.OccurredAt, asOf, hierarchy.MaxDepth)
		}
		n++
	}
	if err := rows.Err(); err != nil {
		return n, fmt.Errorf("read events: %w", err)
	}
	return n, flush()
}

// attribute adds ev, stored by a batch resolved with version hv, to the
// rollups as the live path attributes it once the restater has restated
// through version: as-was (hourly, daily) with the chain at the event's
// time as of the later of the two versions, as-is with the current chain
// as of version. False if either chain does not resolve. b1 and b2 are
// scratch chains.
func attribute(tree ingest.Resolver, ev *ingest.Event, hv, version int64, policy ingest.SuspendedPolicy,
	hourly, daily, asIs *ingest.Rollup, b1, b2 *[64]ingest.Ancestor) bool {
	was, ok1 := ingest.Chain(tree, ev.EntityID, ev.OccurredAt, max(version, hv), policy, b1[:0])
	now, ok2 := ingest.Chain(tree, ev.EntityID, ingest.EndOfTime, version, policy, b2[:0])
	if !ok1 || !ok2 {
		return false
	}
	ingest.AddFanout(hourly, daily, ev, was, 1)
	ingest.AddFanout(nil, asIs, ev, now, 1)
	return true
}

func (rb *Rebuild) log() *slog.Logger {
	if rb.Log != nil {
		return rb.Log
	}
	return slog.Default()
}

func day(t time.Time) time.Time {
	t = t.UTC()
	return time.Date(t.Year(), t.Month(), t.Day(), 0, 0, 0, 0, time.UTC)
}

func monthOf(t time.Time) time.Time { return time.Date(t.Year(), t.Month(), 1, 0, 0, 0, 0, time.UTC) }

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}
