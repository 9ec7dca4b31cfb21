package restate

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/canopyhq/canopy/hierarchy"
	"github.com/canopyhq/canopy/ingest"
	"github.com/canopyhq/canopy/ingest/pgledger"
	"github.com/canopyhq/canopy/internal/backoff"
)

// Errors of the restater. A change that fails with ErrUnrestatable cannot
// be restated whatever is retried; anything else is transient.
var (
	// ErrUnrestatable: the change itself cannot be restated — its entity
	// has no ancestor chain at the change's version (a chain past
	// hierarchy.MaxDepth, a broken link in legacy data), or restating it
	// panicked. The restater tries it a few times (the tree may have been
	// a refresh behind) and then parks it in canopy.restate_parked.
	ErrUnrestatable = errors.New("restate: change cannot be restated")
	// ErrDependsOnParked: the change's as-is correction would build on rows
	// a parked change left wrong (see inReach); it is parked without being
	// tried.
	ErrDependsOnParked = errors.New("restate: depends on a parked change")
)

// errClass says what the restater does with an error.
type errClass int

const (
	classTransient errClass = iota // retry with capped backoff
	classPermanent                 // park the change after maxAttempts
	classCanceled                  // the restater is stopping
)

func (c errClass) String() string {
	return [...]string{"transient", "permanent", "canceled"}[c]
}

// classify decides whether an error of restating one change is about the
// change (permanent) or about the services (transient). Only what is known
// to be deterministic for the change is permanent: a ClickHouse or
// PostgreSQL error — even a deterministic one such as a missing table —
// would fail every change alike, so parking them all would only defer the
// fault; it is retried and logged instead.
func classify(err error) errClass {
	switch {
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return classCanceled
	case errors.Is(err, ErrUnrestatable), errors.Is(err, ErrDependsOnParked):
		return classPermanent
	default:
		return classTransient
	}
}

// waitingFor names the service a transient error is about, for the log.
func waitingFor(err error) string {
	var (
		pgErr   *pgconn.PgError
		pgConn  *pgconn.ConnectError
		chErr   *clickhouse.Exception
		opError *net.OpError
	)
	switch {
	case errors.As(err, &pgErr), errors.As(err, &pgConn), pgconn.Timeout(err):
		return "postgresql"
	case errors.As(err, &chErr):
		return "clickhouse"
	case errors.As(err, &opError):
		return "network (" + opError.Addr.String() + ")"
	case strings.Contains(err.Error(), "hierarchy at version"):
		return "hierarchy refresh"
	default:
		return "retry"
	}
}

// newPace is the restater's pacing of rounds that keep failing: about
// 1 s, doubling, at most about 30 s (internal/backoff's jitter apart).
func newPace() *backoff.Backoff { return backoff.New(time.Second, 30*time.Second) }

// maxAttempts is how often a change failing with ErrUnrestatable is tried,
// a refresh of the tree apart, before it is parked.
const maxAttempts = 3

// parked is an unresolved row of canopy.restate_parked.
type parked struct {
	seq    int64
	entity int64
	// reach: the entities whose as-is rows the change would have corrected
	// (the entity's strict ancestors before and after it).
	reach []int64
}

// parkedSet is what the restater knows of the unresolved parked changes
// during one step.
type parkedSet struct {
	changes []parked
	tainted map[int64]int64 // entity in a reach -> the parked change's seq
}

func (p *parkedSet) add(c parked) {
	p.changes = append(p.changes, c)
	if p.tainted == nil {
		p.tainted = map[int64]int64{}
	}
	for _, id := range c.reach {
		if _, ok := p.tainted[id]; !ok {
			p.tainted[id] = c.seq
		}
	}
}

func (p *parkedSet) has(seq int64) bool {
	for _, c := range p.changes {
		if c.seq == seq {
			return true
		}
	}
	return false
}

// inReach reports the parked change that change c depends on, 0 if none.
//
// Why this rule. An as-is restatement is a delta: it reads Y's own rows
// (its subtree's history) and moves them from Y's ancestors before the
// change to those after it. A delta that reads correct rows leaves every
// other entity's error as it was, so a parked change's error stays confined
// to the entities it would have corrected — its reach, the entity's strict
// ancestors before and after it. Two kinds of later change would spread or
// hide it, and are parked as well:
//   - Y is in a reach: Y's own rows are wrong (they still hold, or still
//     lack, the parked entity's subtree), and moving them would carry the
//     error to Y's new ancestors;
//   - Y is the parked entity or below it, before or after c: its chains run
//     through the position the parked change gave it, which the rows never
//     took (and which may not even resolve: past MaxDepth such a change
//     would be taken for a creation and silently do nothing).
//
// A dependent's own reach joins the set, so the reach grows with every
// change it absorbs. Everything else applies normally, and the as-is rows
// of every entity outside the union of the reaches are exact.
func (p *parkedSet) inReach(tree Tree, c hierarchy.Recorded) int64 {
	if len(p.changes) == 0 {
		return 0
	}
	if seq, ok := p.tainted[c.ID]; ok {
		return seq
	}
	var b1, b2 [64]ingest.Ancestor
	before, ok1 := ingest.Chain(tree, c.ID, ingest.EndOfTime, c.Seq-1, ingest.SuspendedInclude, b1[:0])
	after, ok2 := ingest.Chain(tree, c.ID, ingest.EndOfTime, c.Seq, ingest.SuspendedInclude, b2[:0])
	for _, pc := range p.changes {
		if pc.seq >= c.Seq {
			continue
		}
		if hasAncestor(before, pc.entity) || hasAncestor(after, pc.entity) {
			return pc.seq
		}
		if (!ok1 || !ok2) && slices.Contains(tree.Related(pc.entity), c.ID) {
			// A chain that does not resolve cannot tell: is or was below.
			return pc.seq
		}
	}
	return 0
}

func hasAncestor(chain []ingest.Ancestor, id int64) bool {
	for _, a := range chain {
		if a.ID == id {
			return true
		}
	}
	return false
}

// reachOf returns the entities whose as-is rows change c would correct:
// c's entity's strict ancestors before the change and after it (those of
// its new parent, when its own chain does not resolve). When the chain
// before does not resolve, it ran through a parked change's entity (set
// says which): that entity and its reach stand for it.
func reachOf(tree Tree, c hierarchy.Recorded, set *parkedSet) []int64 {
	var b [64]ingest.Ancestor
	var out []int64
	if before, ok := ingest.Chain(tree, c.ID, ingest.EndOfTime, c.Seq-1, ingest.SuspendedInclude, b[:0]); ok {
		for _, a := range before[1:] {
			out = append(out, a.ID)
		}
	} else if set != nil {
		for _, pc := range set.changes {
			if pc.entity == c.ID || slices.Contains(tree.Related(pc.entity), c.ID) {
				out = append(out, pc.reach...)
				if pc.entity != c.ID {
					out = append(out, pc.entity)
				}
			}
		}
	}
	if after, ok := ingest.Chain(tree, c.ID, ingest.EndOfTime, c.Seq, ingest.SuspendedInclude, b[:0]); ok {
		for _, a := range after[1:] {
			out = append(out, a.ID)
		}
	} else if c.ParentID != 0 {
		out = append(out, c.ParentID)
		if up, ok := ingest.Chain(tree, c.ParentID, ingest.EndOfTime, c.Seq, ingest.SuspendedInclude, b[:0]); ok {
			for _, a := range up[1:] {
				out = append(out, a.ID)
			}
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// loadParked reads the unresolved parked changes below seq upTo.
func (r *Restater) loadParked(ctx context.Context, upTo int64) (*parkedSet, error) {
	rows, err := r.PG.Query(ctx, `select seq, entity_id, reach from canopy.restate_parked
		where resolved_at is null and seq <= $1 order by seq`, upTo)
	if err != nil {
		return nil, fmt.Errorf("read parked changes: %w", err)
	}
	set := &parkedSet{}
	for rows.Next() {
		var p parked
		if err := rows.Scan(&p.seq, &p.entity, &p.reach); err != nil {
			rows.Close()
			return nil, fmt.Errorf("read parked changes: %w", err)
		}
		set.add(p)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read parked changes: %w", err)
	}
	return set, nil
}

// park records change c as parked with the reason err, and adds it to set.
// Parking twice (a restater that took over) keeps the first record.
func (r *Restater) park(ctx context.Context, set *parkedSet, c hierarchy.Recorded, cause error, dependsOn int64, attempts int) error {
	p := parked{seq: c.Seq, entity: c.ID, reach: reachOf(r.Tree, c, set)}
	var dep *int64
	if dependsOn > 0 {
		dep = &dependsOn
	}
	_, err := r.PG.Exec(ctx, `insert into canopy.restate_parked (seq, entity_id, error, depends_on, reach, attempts)
		values ($1, $2, $3, $4, $5, $6) on conflict (seq) do nothing`,
		c.Seq, c.ID, cause.Error(), dep, p.reach, attempts)
	if err != nil {
		return fmt.Errorf("park change %d: %w", c.Seq, err)
	}
	set.add(p)
	r.log().Error("restater parked a hierarchy change it cannot apply; as-is rollups of its reach stay as they were until canopy rebuild",
		"seq", c.Seq, "entity", c.ID, "err", cause, "depends_on", dependsOn, "attempts", attempts,
		"reach_entities", len(p.reach), "resolve", "canopy restate status; fix the hierarchy if needed, then canopy rebuild")
	r.parkedGauge(ctx, true)
	return nil
}

// parkedGauge sets the parked-changes gauge from the table, at most every
// 5 s unless now.
func (r *Restater) parkedGauge(ctx context.Context, now bool) {
	if r.Metrics == nil || r.Metrics.Parked == nil || (!now && time.Since(r.gaugedAt) < 5*time.Second) {
		return
	}
	r.gaugedAt = time.Now()
	var n int64
	if err := r.PG.QueryRow(ctx, "select count(*) from canopy.restate_parked where resolved_at is null").Scan(&n); err != nil {
		r.log().Debug("count parked changes", "err", err)
		return
	}
	r.Metrics.Parked.Set(float64(n))
}

// Parked is one row of canopy.restate_parked.
type Parked struct {
	Seq       int64
	Entity    int64
	Error     string
	DependsOn int64 // 0: it failed itself
	Reach     int   // entities whose as-is rows it leaves as they were
	Attempts  int
	ParkedAt  time.Time
	Resolved  time.Time // zero while unresolved
}

// Status is the restater's progress and what it parked.
type Status struct {
	RestatedThrough int64
	Latest          int64
	Fence           int64
	PausedUntil     time.Time // zero unless canopy rebuild pauses writers
	Parked          []Parked  // unresolved ones, or all with ReadStatus(…, true)
}

// Pending is how many committed changes the restater has not reached.
func (s Status) Pending() int64 { return max(s.Latest-s.RestatedThrough, 0) }

// ReadStatus reads the restater's progress and its unresolved parked
// changes (all of them with all) from PostgreSQL.
func ReadStatus(ctx context.Context, pg interface {
	QueryRow(context.Context, string, ...any) pgx.Row
	Query(context.Context, string, ...any) (pgx.Rows, error)
}, all bool) (Status, error) {
	var st Status
	fs, err := pgledger.ReadFence(ctx, pg)
	if err != nil {
		return st, fmt.Errorf("%w (run canopy migrate?)", err)
	}
	st.RestatedThrough, st.Fence, st.PausedUntil, st.Latest = fs.RestatedThrough, fs.Fence, fs.PausedUntil, fs.Latest
	rows, err := pg.Query(ctx, `select seq, entity_id, error, coalesce(depends_on, 0), cardinality(reach), attempts,
		parked_at, resolved_at from canopy.restate_parked where $1 or resolved_at is null order by seq`, all)
	if err != nil {
		return st, fmt.Errorf("read parked changes (run canopy migrate?): %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var (
			p        Parked
			resolved *time.Time
		)
		if err := rows.Scan(&p.Seq, &p.Entity, &p.Error, &p.DependsOn, &p.Reach, &p.Attempts, &p.ParkedAt, &resolved); err != nil {
			return st, fmt.Errorf("read parked changes: %w", err)
		}
		if resolved != nil {
			p.Resolved = *resolved
		}
		st.Parked = append(st.Parked, p)
	}
	return st, rows.Err()
}
