package pgledger

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/canopyhq/canopy/internal/pglock"
	"github.com/canopyhq/canopy/internal/wait"
)

// Fence owns the protocol that orders hierarchy restatement and canopy
// rebuild against the batches in flight (docs/hierarchy.md, "The race with
// batches in flight"; docs/exactly-once.md, "Rebuild"). Its state is the
// one row of canopy.restate_state:
//
//   - fence: no batch resolved with a hierarchy version below it records
//     an intent (Raise); its worker catches up and resolves again;
//   - restated_through: the restater's progress (Advance); a batch
//     resolved with a newer version tags its as-is rows pending;
//   - paused_until: canopy rebuild's pause on new batches (Pause).
//
// A batch reads the state in Ledger.Begin, in the transaction that records
// its intent, under the fence lock (pglock.Fence) taken shared; Raise and
// Pause take it exclusively, so every batch that read the old state has
// recorded its intent when they return, and AwaitBatches and AwaitQuiet
// see it. Only this file names the lock and writes the state.
type Fence struct {
	Pool *pgxpool.Pool
}

// FenceState is canopy.restate_state, with the latest hierarchy change.
type FenceState struct {
	Fence           int64
	RestatedThrough int64
	PausedUntil     time.Time // zero unless a pause is in force
	// Latest is the seq of the latest hierarchy change committed
	// (canopy.entity_history), read in the same round trip.
	Latest int64
}

// Querier is what ReadFence needs: a pool, a connection or a transaction.
type Querier interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// ReadFence reads the fence's state and the latest hierarchy change in one
// round trip.
func ReadFence(ctx context.Context, q Querier) (FenceState, error) {
	var (
		st     FenceState
		paused *time.Time
	)
	err := q.QueryRow(ctx, `select fence, restated_through, paused_until,
		(select coalesce(max(seq), 0) from canopy.entity_history) from canopy.restate_state`).
		Scan(&st.Fence, &st.RestatedThrough, &paused, &st.Latest)
	if err != nil {
		return st, fmt.Errorf("read restate state: %w", err)
	}
	if paused != nil && paused.After(time.Now()) {
		st.PausedUntil = *paused
	}
	return st, nil
}

// State reads the fence's state (ReadFence).
func (f *Fence) State(ctx context.Context) (FenceState, error) { return ReadFence(ctx, f.Pool) }

// queueCheck queues, on a batch's pipeline in Ledger.Begin, the shared
// fence lock as a statement of its own: a statement's snapshot is taken
// when it starts, so one that waited for the lock inside would read the
// state as it was before Raise or Pause moved it. The statements queued
// after it read the state with fenceStateSQL.
func queueCheck(b *pgx.Batch) {
	b.Queue(`select pg_advisory_xact_lock_shared($1)`, pglock.Fence)
}

// fenceStateSQL is the batch's view of the state, a CTE of Begin's intent
// insert: the intent is recorded only if the batch's version is not below
// fence and no pause is in force; its as-is tag is 0 if the version is
// restated already.
const fenceStateSQL = `select fence, restated_through, coalesce(paused_until > now(), false) as paused from canopy.restate_state`

// exclusive runs fn in a transaction holding the fence lock exclusively:
// it waits for every batch reading the state under the old one.
func (f *Fence) exclusive(ctx context.Context, fn func(tx pgx.Tx) error) error {
	return pgx.BeginFunc(ctx, f.Pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "select pg_advisory_xact_lock($1)", pglock.Fence); err != nil {
			return fmt.Errorf("fence lock: %w", err)
		}
		return fn(tx)
	})
}

// Raise makes every new batch resolve with version >= v. It raises
// nothing, and reports false, while a pause is in force: canopy rebuild
// waits for the restater to reach the fence, which must stand still.
func (f *Fence) Raise(ctx context.Context, v int64) (bool, error) {
	raised := false
	err := f.exclusive(ctx, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `update canopy.restate_state set fence = greatest(fence, $1), updated_at = now()
			where paused_until is null or paused_until <= now()`, v)
		raised = tag.RowsAffected() == 1
		return err
	})
	if err != nil {
		return false, fmt.Errorf("raise the restate fence to %d: %w", v, err)
	}
	return raised, nil
}

// unfinishedBatch is a batch whose intent is not done.
type unfinishedBatch struct {
	Topic            string
	Partition        int32
	First            int64
	HierarchyVersion int64
}

// unfinished returns an unfinished batch resolved with a version below v,
// if any.
func (f *Fence) unfinished(ctx context.Context, v int64) (unfinishedBatch, bool, error) {
	var u unfinishedBatch
	err := f.Pool.QueryRow(ctx, `select src_topic, src_partition, first_offset, hierarchy_version
		from canopy.ingest_intents where done_at is null and hierarchy_version < $1 limit 1`, v).
		Scan(&u.Topic, &u.Partition, &u.First, &u.HierarchyVersion)
	if errors.Is(err, pgx.ErrNoRows) {
		return u, false, nil
	}
	if err != nil {
		return u, false, fmt.Errorf("look for unfinished batches: %w", err)
	}
	return u, true, nil
}

// awaitPoll is how often AwaitBatches looks; awaitWarn how often it logs
// the batch it waits for.
const (
	awaitPoll = 50 * time.Millisecond
	awaitWarn = 30 * time.Second
)

// AwaitBatches waits until every batch resolved with a version below v has
// written everything and is done: from then on, after Raise(v), the rows
// and events attributed before the changes up to v are final. It logs the
// batch it waits for every 30 s.
func (f *Fence) AwaitBatches(ctx context.Context, v int64, log *slog.Logger) error {
	start := time.Now()
	warned := start
	for {
		u, found, err := f.unfinished(ctx, v)
		if err != nil || !found {
			return err
		}
		if time.Since(warned) > awaitWarn {
			warned = time.Now()
			log.Warn("waiting for an unfinished batch resolved before the hierarchy change",
				"topic", u.Topic, "partition", u.Partition, "first_offset", u.First, "batch_version", u.HierarchyVersion,
				"change", v, "waited", time.Since(start).Round(time.Second))
		}
		if !wait.Sleep(ctx, awaitPoll) {
			return ctx.Err()
		}
	}
}

// Advance records that every change up to v is restated.
func (f *Fence) Advance(ctx context.Context, v int64) error {
	_, err := f.Pool.Exec(ctx, `update canopy.restate_state
		set restated_through = greatest(restated_through, $1), updated_at = now()`, v)
	if err != nil {
		return fmt.Errorf("record restate progress: %w", err)
	}
	return nil
}

// A pause lasts PauseFor unless renewed; Pause renews it every pauseRenew,
// and Held is false once it was not renewed for pauseSafe, so a caller
// that checks Held before each step that needs it cannot run that step
// with the pause lapsed.
const (
	PauseFor   = 30 * time.Second
	pauseRenew = 3 * time.Second
	pauseSafe  = 15 * time.Second
)

// Paused is a pause on new batches in force; Lift ends it.
type Paused struct {
	pool    *pgxpool.Pool
	log     *slog.Logger
	mu      sync.Mutex
	renewed time.Time
	stop    context.CancelFunc
	done    chan struct{}
}

// Pause stops new batches from beginning (Ledger.Begin returns
// ingest.ErrPaused; the worker waits and retries) and the fence from
// moving, and keeps renewing the pause until Lift; a pause whose holder
// died lapses within PauseFor. Batches already begun go on: AwaitQuiet
// waits for them.
func (f *Fence) Pause(ctx context.Context, log *slog.Logger) (*Paused, error) {
	err := f.exclusive(ctx, func(tx pgx.Tx) error {
		_, err := tx.Exec(ctx, "update canopy.restate_state set paused_until = now() + make_interval(secs => $1)", PauseFor.Seconds())
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("pause writers: %w", err)
	}
	rctx, stop := context.WithCancel(context.Background())
	p := &Paused{pool: f.Pool, log: log, renewed: time.Now(), stop: stop, done: make(chan struct{})}
	go func() {
		defer close(p.done)
		for wait.Sleep(rctx, pauseRenew) {
			at := time.Now()
			_, err := p.pool.Exec(rctx, "update canopy.restate_state set paused_until = now() + make_interval(secs => $1)", PauseFor.Seconds())
			if err != nil {
				p.log.Warn("renewing the pause on writers failed", "err", err)
				continue
			}
			p.mu.Lock()
			p.renewed = at
			p.mu.Unlock()
		}
	}()
	return p, nil
}

// Held reports whether the pause was renewed recently enough to be sure
// it is still in force for a while.
func (p *Paused) Held() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return time.Since(p.renewed) < pauseSafe
}

// Lift ends the pause (if that fails, it lapses by itself).
func (p *Paused) Lift() {
	p.stop()
	<-p.done
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := p.pool.Exec(ctx, "update canopy.restate_state set paused_until = null"); err != nil {
		p.log.Warn("lifting the pause on writers failed; it lapses by itself", "err", err, "within", PauseFor)
	}
}

// AwaitQuiet waits, at most limit, until no batch is unfinished and the
// restater has restated everything up to the fence, and returns how far
// that is. Under a pause that is a state nothing moves from.
func (f *Fence) AwaitQuiet(ctx context.Context, limit time.Duration) (int64, error) {
	start := time.Now()
	for {
		var (
			fence, done int64
			open        string
		)
		// One statement, one snapshot: the state and any unfinished batch.
		err := f.Pool.QueryRow(ctx, `select fence, restated_through, coalesce((
			select src_topic || ' partition ' || src_partition || ' offsets ' || first_offset || '…' || last_offset
			  from canopy.ingest_intents where done_at is null limit 1), '')
			from canopy.restate_state`).Scan(&fence, &done, &open)
		if err != nil {
			return 0, fmt.Errorf("read restate state: %w", err)
		}
		if open == "" && done >= fence {
			return done, nil
		}
		if time.Since(start) > limit {
			if open != "" {
				return 0, fmt.Errorf("batch %s is unfinished after %s; finish it first (run the backfill or canopy reconcile that began it again, or start a worker)", open, limit)
			}
			return 0, fmt.Errorf("the restater is still applying changes up to %d (done %d) after %s", fence, done, limit)
		}
		if !wait.Sleep(ctx, 100*time.Millisecond) {
			return 0, ctx.Err()
		}
	}
}
