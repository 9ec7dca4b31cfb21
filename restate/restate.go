// Package restate keeps the rollups exact when the hierarchy changes: it
// owns restatement — the restater, which applies each hierarchy change to
// the rollups once committed, and canopy rebuild, which recomputes days of
// rollups from the events — and parking, what the restater does with a
// change it cannot apply. After each change the restater corrects, from
// the data the change affects and nothing else:
//
//   - rollup_daily_current (as-is): a move of X shifts X's own rows — the
//     whole history of its subtree, by bucket, depth and type — from X's old
//     ancestors to its new ones, at depths shifted by their distance to X
//     (asIsDelta);
//   - rollup_hourly and rollup_daily (as-was): events that were attributed
//     before the change was known (a back-dated correction, or events in
//     flight at the moment of a move), and whose attribution it alters, are
//     moved from the chain they were counted under to the right one
//     (reattribute);
//   - the ClickHouse entities table: the changed entity, and its subtree's
//     paths and levels after a move.
//
// A change that cannot be restated is parked (park.go) until canopy
// rebuild recomputes what it left wrong (rebuild.go). docs/hierarchy.md
// explains the fence that makes this exact while batches are in flight;
// the fence is ingest/pgledger's Fence, which the restater raises and
// advances and rebuild pauses. One restater is active at a time (pglock.Lead
// on pglock.Restater); every worker runs one, so a stand-by takes over
// within seconds.
//
// Imports: hierarchy (the history and the entities), ingest's exported API
// only (chains, rollups, the ClickHouse sink), ingest/pgledger (the
// Fence), schema and internal/. It must not import cmd/ or reach into
// ingest's internals, and neither ingest nor hierarchy may import it
// (TestImports).
package restate

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/shopspring/decimal"

	"github.com/canopyhq/canopy/hierarchy"
	"github.com/canopyhq/canopy/ingest"
	"github.com/canopyhq/canopy/ingest/pgledger"
	"github.com/canopyhq/canopy/internal/pglock"
	"github.com/canopyhq/canopy/internal/wait"
	"github.com/canopyhq/canopy/schema"
)

// Tree is what the restater needs of the in-memory hierarchy.
type Tree interface {
	ingest.Resolver
	Subtree(id int64) []int64
	Related(id int64) []int64
	Path(id int64) []int64
}

// Restater applies hierarchy changes to the rollups. Run it with Run; Step
// is one round, for tests and tools.
type Restater struct {
	PG    *pgxpool.Pool
	Store *hierarchy.Store
	CH    driver.Conn
	// Shards are the cluster's shard connections (ingest.ClickHouseSink);
	// nil on one server. Corrections go to their entity's shard.
	Shards  []driver.Conn
	Schema  schema.ClickHouse
	Tree    Tree
	Refresh func(ctx context.Context) (int64, error) // catch the tree up with PostgreSQL
	Policy  ingest.SuspendedPolicy
	Log     *slog.Logger
	Metrics *Metrics // may be nil

	sink       *ingest.ClickHouseSink
	fence      *pgledger.Fence
	progressed bool          // a step succeeded since Run last waited
	gaugedAt   time.Time     // when Metrics.Parked was last set
	seen       int64         // the latest change committed when the last round began
	retryWait  time.Duration // between attempts at an unrestatable change (default 1 s)
}

// Metrics are the restater's Prometheus metrics.
type Metrics struct {
	Pending  prometheus.Gauge
	Restated prometheus.Counter
	Rows     *prometheus.CounterVec
	Duration prometheus.Histogram
	Parked   prometheus.Gauge
}

// NewMetrics registers the restater's metrics.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		Pending: prometheus.NewGauge(prometheus.GaugeOpts{Name: "canopy_restate_pending_changes",
			Help: "Hierarchy changes committed but not yet reflected in the rollups and the entities table."}),
		Restated: prometheus.NewCounter(prometheus.CounterOpts{Name: "canopy_restate_changes_total",
			Help: "Hierarchy changes the restater has applied."}),
		Rows: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "canopy_restate_rows_total",
			Help: "Correction rows written by the restater, by table."}, []string{"table"}),
		Duration: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "canopy_restate_change_seconds",
			Help: "Time to restate one move or correction.", Buckets: prometheus.ExponentialBuckets(0.005, 2, 12)}),
		Parked: prometheus.NewGauge(prometheus.GaugeOpts{Name: "canopy_restate_parked_changes",
			Help: "Hierarchy changes the restater parked (canopy.restate_parked) and no canopy rebuild has resolved yet; see canopy restate status."}),
	}
	reg.MustRegister(m.Pending, m.Restated, m.Rows, m.Duration, m.Parked)
	return m
}

// Run restates changes until ctx ends, whenever this process holds the
// restater's leader lock (pglock.Restater; a stand-by tries to take it
// every leaderRetry). A transient error (PostgreSQL, ClickHouse, a tree
// behind, the lock's connection lost) ends the round: Run waits — about
// 1 s, doubling up to 30 s while rounds keep failing (newPace) — and tries
// again. A change that cannot be restated does not stop it: Step parks it
// (see ErrUnrestatable).
func (r *Restater) Run(ctx context.Context) error {
	pace := newPace()
	failures := 0
	for ctx.Err() == nil {
		err := pglock.Lead(ctx, r.PG, pglock.Restater, leaderRetry, r.lead)
		if ctx.Err() != nil {
			return nil
		}
		if r.progressed {
			r.progressed, failures = false, 0
			pace.Reset()
		}
		failures++
		d := pace.Next()
		r.log().Warn("restater stopped; retrying", "err", err, "waiting_for", waitingFor(err),
			"retry_in", d, "consecutive_failures", failures)
		if !wait.Sleep(ctx, d) {
			return nil
		}
	}
	return nil
}

// leaderRetry is how often a stand-by restater tries to take the lock.
const leaderRetry = 2 * time.Second

// lead restates while this process is the leader (pglock.Lead: ctx ends
// when the lock's connection is lost).
func (r *Restater) lead(ctx context.Context) error {
	r.log().Info("restater active")
	for {
		busy, err := r.Step(ctx)
		if err != nil {
			return err
		}
		if !busy && !r.idle(ctx) {
			return ctx.Err()
		}
	}
}

// An idle restater asks PostgreSQL for new changes every idlePoll. In
// between it looks at the in-memory tree every idleCheck: the worker's
// hierarchy follower applies a change within milliseconds of its commit
// (its PostgreSQL poll within a second when the relay is down), so a round
// starts as soon as the tree is ahead of what the last round saw, without a
// query per look.
const (
	idleCheck = 100 * time.Millisecond
	idlePoll  = time.Second
)

// idle waits until the tree moves past the latest change the last round
// saw, or idlePoll has passed; false when ctx ends.
func (r *Restater) idle(ctx context.Context) bool {
	until := time.Now().Add(idlePoll)
	for time.Now().Before(until) {
		if !wait.Sleep(ctx, idleCheck) {
			return false
		}
		if r.Tree != nil && r.Tree.Version() > r.seen {
			return true
		}
	}
	return true
}

// Step restates the changes committed since the last round (up to a bound)
// and reports whether there were any. A change that fails with
// ErrUnrestatable maxAttempts times, or whose correction would build on a
// parked one (parkedSet.inReach), is parked in canopy.restate_parked and
// the step goes on; restated_through moves past it.
func (r *Restater) Step(ctx context.Context) (bool, error) {
	busy, err := r.step(ctx)
	if err == nil {
		r.progressed = true
	}
	return busy, err
}

func (r *Restater) step(ctx context.Context) (bool, error) {
	if r.sink == nil {
		r.sink = &ingest.ClickHouseSink{Conn: r.CH, Schema: r.Schema, Shards: r.Shards}
	}
	if r.fence == nil {
		r.fence = &pgledger.Fence{Pool: r.PG}
	}
	// The state and the latest change committed, in one round trip: an idle
	// restater asks this every idlePoll.
	st, err := r.fence.State(ctx)
	if err != nil {
		return false, err
	}
	fence, done, latest := st.Fence, st.RestatedThrough, st.Latest
	r.seen = latest
	if r.Metrics != nil {
		r.Metrics.Pending.Set(float64(latest - done))
	}
	r.parkedGauge(ctx, false)
	if latest <= done {
		return false, nil
	}
	target := min(latest, done+50000)
	if v, err := r.Refresh(ctx); err != nil {
		return false, err
	} else if v < target {
		return false, fmt.Errorf("hierarchy at version %d, restating up to %d", v, target)
	}
	if fence < target {
		// Raise waits for the batches recording their intent under the
		// old fence; it raises nothing while canopy rebuild pauses writers.
		raised, err := r.fence.Raise(ctx, target)
		if err != nil {
			return false, err
		}
		if !raised {
			r.log().Debug("restater waiting: canopy rebuild has paused writers")
			return false, nil
		}
	}
	// Once no batch resolved below target is unfinished, the rows and
	// events attributed before the changes up to target are final.
	if err := r.fence.AwaitBatches(ctx, target, r.log()); err != nil {
		return false, err
	}
	changes, err := r.Store.Recorded(ctx, done, target)
	if err != nil {
		return false, err
	}
	parkedSet, err := r.loadParked(ctx, target)
	if err != nil {
		return false, err
	}
	var touched []int64 // entities whose ClickHouse row must be rewritten
	flush := func(upTo int64) error {
		if err := r.writeEntities(ctx, touched, upTo); err != nil {
			return err
		}
		touched = touched[:0]
		return r.fence.Advance(ctx, upTo)
	}
	for _, c := range changes {
		moved, attempts, err := false, 0, error(nil)
		dep := parkedSet.inReach(r.Tree, c)
		switch {
		case parkedSet.has(c.Seq): // parked by a round that failed later
			touched = append(touched, r.Tree.Subtree(c.ID)...)
			continue
		case dep != 0:
			err = fmt.Errorf("%w: depends on parked change %d", ErrDependsOnParked, dep)
		default:
			moved, attempts, err = r.apply(ctx, c)
		}
		if err != nil && classify(err) != classPermanent {
			return false, fmt.Errorf("restate change %d (entity %d): %w", c.Seq, c.ID, err)
		}
		if err != nil {
			if err := r.park(ctx, parkedSet, c, err, dep, attempts); err != nil {
				return false, err
			}
			// The entities table still follows PostgreSQL for the subtree.
			touched = append(touched, r.Tree.Subtree(c.ID)...)
			continue
		}
		if moved {
			touched = append(touched, r.Tree.Subtree(c.ID)...)
		} else {
			touched = append(touched, c.ID)
		}
		if len(touched) >= 100000 {
			if err := flush(c.Seq); err != nil {
				return false, err
			}
		}
		if r.Metrics != nil {
			r.Metrics.Restated.Inc()
		}
	}
	return true, flush(target)
}

// apply restates c, trying a change that fails with ErrUnrestatable up to
// maxAttempts times with the tree refreshed in between (it may have been a
// change behind), and reports the attempts made.
func (r *Restater) apply(ctx context.Context, c hierarchy.Recorded) (moved bool, attempts int, err error) {
	for attempts = 1; ; attempts++ {
		moved, err = r.restateSafe(ctx, c)
		if err == nil || classify(err) != classPermanent || attempts >= maxAttempts {
			return moved, attempts, err
		}
		r.log().Warn("restater: change cannot be restated; trying again after refreshing the hierarchy",
			"seq", c.Seq, "entity", c.ID, "attempt", attempts, "of", maxAttempts, "err", err)
		if !wait.Sleep(ctx, cmp.Or(r.retryWait, time.Second)) {
			return moved, attempts, ctx.Err()
		}
		if _, err := r.Refresh(ctx); err != nil {
			return moved, attempts, err
		}
	}
}

// restateSafe is restate turning a panic into ErrUnrestatable: a change
// whose data trips a bug must not stop every later one.
func (r *Restater) restateSafe(ctx context.Context, c hierarchy.Recorded) (moved bool, err error) {
	defer func() {
		if p := recover(); p != nil {
			moved, err = false, fmt.Errorf("%w: panic: %v", ErrUnrestatable, p)
		}
	}()
	return r.restate(ctx, c)
}

// changePlan is what one change needs restated.
type changePlan struct {
	// before and after are the entity's current chain (with every
	// ancestor, suspended or not) before and after the change.
	before, after []ingest.Ancestor
	// moved: the change alters the entity's links (its parent, or a depth
	// through an unresolved link): its subtree's paths change too.
	moved bool
	// asIs: rollup_daily_current moves — on a move, or with the skip policy
	// when the entity starts or stops receiving its downline.
	asIs bool
	// asWas: events attributed before the change may need re-attribution
	// in the as-was rollups (any change that needs restating at all: a
	// move, a back-dated correction, a status change under skip).
	asWas bool
}

// planChange classifies change c against tree: a creation (the entity had
// no chain before) and a change that alters neither links, nor history,
// nor (under skip) what the entity receives, need nothing.
func planChange(tree ingest.Resolver, c hierarchy.Recorded, policy ingest.SuspendedPolicy) (changePlan, error) {
	var p changePlan
	before, known := ingest.Chain(tree, c.ID, ingest.EndOfTime, c.Seq-1, ingest.SuspendedInclude, nil)
	if !known {
		return p, nil // a creation: nothing was attributed through it yet
	}
	after, ok := ingest.Chain(tree, c.ID, ingest.EndOfTime, c.Seq, ingest.SuspendedInclude, nil)
	if !ok {
		return p, fmt.Errorf("%w: entity %d has no ancestor chain at version %d (longer than %d entities, or a broken link)",
			ErrUnrestatable, c.ID, c.Seq, hierarchy.MaxDepth)
	}
	p.before, p.after = before, after
	p.moved = !ingest.SameLinks(before, after)
	statusChanged := policy == ingest.SuspendedSkip && before[0].Suspended != after[0].Suspended
	p.asIs = p.moved || statusChanged
	p.asWas = p.asIs || c.Supersedes
	return p, nil
}

// restate writes the corrections one change needs and reports whether the
// entity's current parent changed (its subtree's paths did too).
func (r *Restater) restate(ctx context.Context, c hierarchy.Recorded) (bool, error) {
	p, err := planChange(r.Tree, c, r.Policy)
	if err != nil || !p.asWas {
		return p.moved, err
	}
	start := time.Now()
	if p.asIs {
		if err := r.restateAsIs(ctx, c, p.before, p.after); err != nil {
			return p.moved, err
		}
	}
	if err := r.restateAsWas(ctx, c); err != nil {
		return p.moved, err
	}
	if r.Metrics != nil {
		r.Metrics.Duration.Observe(time.Since(start).Seconds())
	}
	r.log().Debug("restated hierarchy change", "seq", c.Seq, "entity", c.ID, "moved", p.moved,
		"back_dated", c.Supersedes, "took", time.Since(start))
	return p.moved, nil
}

func (r *Restater) unit(c hierarchy.Recorded) string {
	return "restate/" + strconv.FormatInt(c.Seq, 10)
}

// restateAsIs moves X's as-is rows (its subtree's whole history) from the
// ancestors X had before the change to those it has after it. With the skip
// policy it also removes X's downline rows when X stops receiving them
// (suspended or closed) and restores them, from its children's rows, when it
// starts again.
func (r *Restater) restateAsIs(ctx context.Context, c hierarchy.Recorded, before, after []ingest.Ancestor) error {
	received := r.Policy != ingest.SuspendedSkip || !before[0].Suspended
	full, err := r.subtreeRows(ctx, c.ID, c.Seq, received, 0)
	if err != nil {
		return err
	}
	out := asIsDelta(full, c.ID, before, after, r.Policy, len(r.Schema.Measures))
	if err := r.sink.WriteRollup(ctx, schema.TableRollupAsIs, out, r.unit(c), 0); err != nil {
		return err
	}
	r.count(schema.TableRollupAsIs, out.Len())
	return nil
}

// asIsDelta is the as-is correction of a change of entity id from chain
// before to chain after (its entity first), given full, id's subtree's
// as-is totals by bucket, depth below id and type (EntityID 0; subtreeRows):
// each row shifted off every old ancestor and onto every new one, and,
// with the skip policy, id's own downline rows (depth > 0) removed when it
// stops receiving them or restored when it starts again. Sorted, zero rows
// dropped.
func asIsDelta(full *ingest.Rollup, id int64, before, after []ingest.Ancestor, policy ingest.SuspendedPolicy, measures int) *ingest.Rollup {
	skip := policy == ingest.SuspendedSkip
	received, receives := !skip || !before[0].Suspended, !skip || !after[0].Suspended
	moved := !ingest.SameLinks(before, after)
	out := ingest.NewRollup(measures)
	for i, k := range full.Keys {
		if k.Depth > 0 && received != receives {
			sign := int64(1)
			if received {
				sign = -1
			}
			out.AddRow(ingest.RollupKey{EntityID: id, Bucket: k.Bucket, Depth: k.Depth, Type: k.Type}, full.Events[i], rowSums(full, i), sign)
		}
		if moved {
			shift(out, k, k.Depth, full.Events[i], rowSums(full, i), before, -1, policy)
			shift(out, k, k.Depth, full.Events[i], rowSums(full, i), after, 1, policy)
		}
	}
	out.Sort()
	out.Compact()
	return out
}

func rowSums(r *ingest.Rollup, i int) []schema.Sum128 {
	out := make([]schema.Sum128, len(r.Sums))
	for m := range r.Sums {
		out[m] = r.Sums[m][i]
	}
	return out
}

// subtreeRows returns the as-is totals of id's subtree attributed before
// change seq, by bucket, depth below id and type (EntityID 0). When id
// receives its downline (complete), they are id's own rows; otherwise (the
// skip policy, id suspended) id holds only its own events and the rest is
// gathered from its children, recursively.
func (r *Restater) subtreeRows(ctx context.Context, id, seq int64, complete bool, level int) (*ingest.Rollup, error) {
	out := ingest.NewRollup(len(r.Schema.Measures))
	if level > hierarchy.MaxDepth {
		return out, nil
	}
	err := r.readAsIs(ctx, id, seq, !complete, func(k ingest.RollupKey, events int64, sums []schema.Sum128) {
		out.AddRow(k, events, sums, 1)
	})
	if err != nil || complete {
		return out, err
	}
	var buf [64]ingest.Ancestor
	for _, child := range r.Tree.Related(id) {
		chain, ok := ingest.Chain(r.Tree, child, ingest.EndOfTime, seq, ingest.SuspendedInclude, buf[:0])
		if !ok || len(chain) < 2 || chain[1].ID != id {
			continue
		}
		rows, err := r.subtreeRows(ctx, child, seq, !chain[0].Suspended, level+1)
		if err != nil {
			return nil, err
		}
		for i, k := range rows.Keys {
			if int(k.Depth)+1 > hierarchy.MaxDepth {
				continue
			}
			k.Depth++
			out.AddRow(k, rows.Events[i], rowSums(rows, i), 1)
		}
	}
	return out, nil
}

// readAsIs calls fn for each of id's rollup_daily_current rows attributed
// before change seq (summed over pending versions), with EntityID 0.
func (r *Restater) readAsIs(ctx context.Context, id, seq int64, ownOnly bool,
	fn func(k ingest.RollupKey, events int64, sums []schema.Sum128)) error {
	ms := r.Schema.Measures
	var q strings.Builder
	q.WriteString("SELECT bucket, depth, type, sum(events)")
	for _, m := range ms {
		fmt.Fprintf(&q, ", sum(%s)", m.Name)
	}
	fmt.Fprintf(&q, " FROM %s.%s WHERE entity_id = %d AND pending_version < %d", r.Schema.Database, schema.TableRollupAsIs, id, seq)
	if ownOnly {
		q.WriteString(" AND depth = 0")
	}
	q.WriteString(" GROUP BY bucket, depth, type ORDER BY bucket, depth, type")
	rows, err := r.CH.Query(ctx, q.String())
	if err != nil {
		return fmt.Errorf("read as-is rows of %d: %w", id, err)
	}
	defer rows.Close()
	var (
		bucket time.Time
		depth  uint8
		typ    string
		events int64
		sums   = make([]schema.Sum128, len(ms))
		dest   = measureDest(ms, &bucket, &depth, &typ, &events)
	)
	for rows.Next() {
		if err := rows.Scan(dest...); err != nil {
			return fmt.Errorf("read as-is rows of %d: %w", id, err)
		}
		if err := collectSums(ms, dest[4:], sums); err != nil {
			return err
		}
		fn(ingest.RollupKey{Bucket: bucket.Unix(), Depth: depth, Type: typ}, events, sums)
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("read as-is rows of %d: %w", id, err)
	}
	return nil
}

// shift adds sign × a row of X (depth d below X) to every ancestor of X in
// chain (depth k above X) at depth d+k.
func shift(out *ingest.Rollup, key ingest.RollupKey, d uint8, events int64, sums []schema.Sum128,
	chain []ingest.Ancestor, sign int64, policy ingest.SuspendedPolicy) {
	for _, a := range chain[1:] {
		if policy == ingest.SuspendedSkip && a.Suspended {
			continue
		}
		depth := int(d) + int(a.Depth)
		if depth > hierarchy.MaxDepth {
			continue // beyond any chain the worker resolves
		}
		key.EntityID, key.Depth = a.ID, uint8(depth) //nolint:gosec // checked above
		out.AddRow(key, events, sums, sign)
	}
}

// restateAsWas re-attributes the events whose as-was chain the change
// alters and that were attributed before it: those of entities that are or
// were below X, from the change's effective time on, resolved with an older
// version.
func (r *Restater) restateAsWas(ctx context.Context, c hierarchy.Recorded) error {
	ms := r.Schema.Measures
	related := r.Tree.Related(c.ID)
	from := r.affectedFrom(c)
	hourly, daily := ingest.NewRollup(len(ms)), ingest.NewRollup(len(ms))
	const chunk = 20000
	var (
		b1, b2 [64]ingest.Ancestor
		ev     ingest.Event
	)
	ev.Measures = make([]int64, len(ms))
	for start := 0; start < len(related); start += chunk {
		ids := related[start:min(start+chunk, len(related))]
		var q strings.Builder
		q.WriteString("SELECT entity_id, occurred_at, type")
		for _, m := range ms {
			q.WriteString(", " + m.Name)
		}
		fmt.Fprintf(&q, " FROM %s.%s WHERE entity_id IN (", r.Schema.Database, schema.TableEvents)
		for i, id := range ids {
			if i > 0 {
				q.WriteByte(',')
			}
			q.WriteString(strconv.FormatInt(id, 10))
		}
		fmt.Fprintf(&q, ") AND hierarchy_version < %d", c.Seq)
		if !from.IsZero() {
			fmt.Fprintf(&q, " AND occurred_at >= toDateTime(%d)", from.Unix())
		}
		rows, err := r.CH.Query(ctx, q.String())
		if err != nil {
			return fmt.Errorf("read events below %d: %w", c.ID, err)
		}
		var (
			entity uint64
			dest   = measureDest(ms, &entity, &ev.OccurredAt, &ev.Type)
		)
		for rows.Next() {
			if err := rows.Scan(dest...); err != nil {
				rows.Close()
				return fmt.Errorf("read events below %d: %w", c.ID, err)
			}
			if err := collectInts(ms, dest[3:], ev.Measures); err != nil {
				rows.Close()
				return err
			}
			ev.EntityID = int64(entity) //nolint:gosec // ids < 2^63
			reattribute(r.Tree, &ev, c.Seq, r.Policy, hourly, daily, &b1, &b2)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return fmt.Errorf("read events below %d: %w", c.ID, err)
		}
	}
	type part struct {
		table string
		r     *ingest.Rollup
	}
	daily.Sort()
	daily.Compact()
	parts := []part{{schema.TableRollupHourly, hourly}, {schema.TableRollupDaily, daily}}
	for _, g := range schema.CoarserGrains(r.Schema.ConfiguredGrains()) {
		parts = append(parts, part{g.Table, ingest.Regrain(daily, g)}) // a union of days
	}
	for _, t := range parts {
		t.r.Sort()
		t.r.Compact()
		if err := r.sink.WriteRollup(ctx, t.table, t.r, r.unit(c), 0); err != nil {
			return err
		}
		r.count(t.table, t.r.Len())
	}
	return nil
}

// reattribute moves ev, attributed before change seq, from the as-was
// chain it had at version seq-1 to the one it has at seq, in the hourly and
// daily rollups, and reports whether it moved (not if the chain is the
// same, or either does not resolve). b1 and b2 are scratch chains.
func reattribute(tree ingest.Resolver, ev *ingest.Event, seq int64, policy ingest.SuspendedPolicy,
	hourly, daily *ingest.Rollup, b1, b2 *[64]ingest.Ancestor) bool {
	was, ok1 := ingest.Chain(tree, ev.EntityID, ev.OccurredAt, seq-1, policy, b1[:0])
	now, ok2 := ingest.Chain(tree, ev.EntityID, ev.OccurredAt, seq, policy, b2[:0])
	if !ok1 || !ok2 || ingest.SameLinks(was, now) {
		return false
	}
	ingest.AddFanout(hourly, daily, ev, was, -1)
	ingest.AddFanout(hourly, daily, ev, now, 1)
	return true
}

// affectedFrom is the earliest event time whose as-was chain the change can
// alter: its effective time, or the zero time (all history) when a
// back-dated change replaced the entity's earliest version, which also
// stands for the time before it.
func (r *Restater) affectedFrom(c hierarchy.Recorded) time.Time {
	if !c.Supersedes || c.ValidFrom.IsZero() {
		return c.ValidFrom
	}
	var b1, b2 [64]ingest.Ancestor
	just := c.ValidFrom.Add(-time.Microsecond)
	was, ok1 := ingest.Chain(r.Tree, c.ID, just, c.Seq-1, ingest.SuspendedInclude, b1[:0])
	now, ok2 := ingest.Chain(r.Tree, c.ID, just, c.Seq, ingest.SuspendedInclude, b2[:0])
	if !ok1 || !ok2 || len(was) != len(now) || was[0].Suspended != now[0].Suspended ||
		(len(was) > 1 && was[1].ID != now[1].ID) {
		return time.Time{}
	}
	return c.ValidFrom
}

// writeEntities rewrites the ClickHouse entities rows of ids (deduplicated)
// from PostgreSQL (name, parent, status) and the tree (path, level).
func (r *Restater) writeEntities(ctx context.Context, ids []int64, version int64) error {
	if len(ids) == 0 {
		return nil
	}
	seen := make(map[int64]bool, len(ids))
	uniq := ids[:0:0]
	for _, id := range ids {
		if !seen[id] {
			seen[id] = true
			uniq = append(uniq, id)
		}
	}
	ents, err := r.Store.EntitiesByID(ctx, uniq)
	if err != nil {
		return err
	}
	rows := make([]ingest.EntityRow, 0, len(ents))
	for _, e := range ents {
		path := r.Tree.Path(e.ID)
		rows = append(rows, ingest.EntityRow{
			ID: e.ID, ParentID: e.ParentID, Name: e.Name, Status: e.Status.String(),
			Level: uint8(max(len(path)-1, 0)), Path: path, //nolint:gosec // depth <= 255
		})
	}
	if err := ingest.WriteEntities(ctx, r.CH, r.Schema, version, rows); err != nil {
		return err
	}
	r.count(schema.TableEntities, len(rows))
	return nil
}

func (r *Restater) count(table string, n int) {
	if r.Metrics != nil {
		r.Metrics.Rows.WithLabelValues(table).Add(float64(n))
	}
}

func (r *Restater) log() *slog.Logger {
	if r.Log != nil {
		return r.Log
	}
	return slog.Default()
}

// measureDest returns scan targets: head, then one per measure.
func measureDest(ms schema.Measures, head ...any) []any {
	dest := head
	for _, m := range ms {
		if m.Kind == schema.KindDecimal {
			dest = append(dest, new(decimal.Decimal))
		} else {
			dest = append(dest, new(int64))
		}
	}
	return dest
}

// collectSums converts scanned sums to units of 10^-scale.
func collectSums(ms schema.Measures, dest []any, out []schema.Sum128) error {
	for i, m := range ms {
		switch v := dest[i].(type) {
		case *decimal.Decimal:
			out[i] = schema.Sum128FromBig(v.Shift(int32(m.Scale)).BigInt()) //nolint:gosec // scale <= 18
		case *int64:
			var s schema.Sum128
			s.Add(*v)
			out[i] = s
		default:
			return fmt.Errorf("measure %s: unexpected scan type %T", m.Name, dest[i])
		}
	}
	return nil
}

// collectInts converts scanned event measures to units of 10^-scale.
func collectInts(ms schema.Measures, dest []any, out []int64) error {
	for i, m := range ms {
		switch v := dest[i].(type) {
		case *decimal.Decimal:
			out[i] = v.Shift(int32(m.Scale)).IntPart() //nolint:gosec // scale <= 18
		case *int64:
			out[i] = *v
		default:
			return fmt.Errorf("measure %s: unexpected scan type %T", m.Name, dest[i])
		}
	}
	return nil
}
