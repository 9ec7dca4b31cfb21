// Package pglock is Canopy's one way to hold a PostgreSQL session advisory
// lock while some work runs: the leader election of the hierarchy relay and
// of the restater (Lead), and the one-at-a-time guard of canopy rebuild
// (TryHold). keys.go lists every advisory lock key of the project.
//
// The lock is taken on a connection of its own, taken out of the pool for
// the purpose and used for nothing else while the work runs. PostgreSQL
// drops a session's locks with the session, so a lost connection is lost
// leadership: the connection is checked every second, and when a check
// fails the work's context is cancelled (cause ErrLost) at once. The lock
// is released when the work returns.
//
// It owns no retry pacing of the work itself (the caller's, with
// internal/backoff) and must not import any Canopy package.
package pglock

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/canopyhq/canopy/internal/wait"
)

var (
	// ErrBusy: another session holds the lock (TryHold).
	ErrBusy = errors.New("pglock: the lock is held by another session")
	// ErrLost: the lock's connection failed while the work ran, so the
	// lock may be someone else's now. It is the cause of the work's
	// cancelled context, and what Lead and TryHold return then.
	ErrLost = errors.New("pglock: lost the lock's connection")
)

// checkEvery is how often the lock's connection is checked while the work
// runs; checkTimeout bounds one check.
var (
	checkEvery   = time.Second
	checkTimeout = 5 * time.Second
)

// Lead runs f while this process holds the session advisory lock key.
// Until it gets the lock it tries again every retry; while ctx has not
// ended, it waits. f's context is cancelled when ctx ends or the lock's
// connection is lost; the lock is released when f returns. Lead returns
// f's error, an error wrapping ErrLost if the lock was lost, or ctx's error
// if ctx ended before the lock was taken.
func Lead(ctx context.Context, pool *pgxpool.Pool, key int64, retry time.Duration, f func(ctx context.Context) error) error {
	return hold(ctx, pool, key, max(retry, time.Millisecond), f)
}

// TryHold runs f while holding the session advisory lock key, like Lead,
// but tries to take it once: ErrBusy if another session holds it.
func TryHold(ctx context.Context, pool *pgxpool.Pool, key int64, f func(ctx context.Context) error) error {
	return hold(ctx, pool, key, 0, f)
}

func hold(ctx context.Context, pool *pgxpool.Pool, key int64, retry time.Duration, f func(ctx context.Context) error) error {
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return fmt.Errorf("advisory lock %#x: %w", key, err)
	}
	defer conn.Release()
	for {
		var got bool
		if err := conn.QueryRow(ctx, "select pg_try_advisory_lock($1)", key).Scan(&got); err != nil {
			return fmt.Errorf("advisory lock %#x: %w", key, err)
		}
		if got {
			break
		}
		if retry == 0 {
			return ErrBusy
		}
		if !wait.Sleep(ctx, retry) {
			return ctx.Err()
		}
	}

	// From here the connection is the watcher's alone until it stops.
	fctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	stop := make(chan struct{})
	watched := make(chan error, 1)
	go func() {
		t := time.NewTicker(checkEvery)
		defer t.Stop()
		for {
			select {
			case <-stop:
				watched <- nil
				return
			case <-fctx.Done():
				watched <- nil
				return
			case <-t.C:
			}
			cctx, ccancel := context.WithTimeout(context.WithoutCancel(fctx), checkTimeout)
			err := conn.Ping(cctx)
			ccancel()
			if err != nil {
				lost := fmt.Errorf("%w (advisory lock %#x): %w", ErrLost, key, err)
				cancel(lost)
				watched <- lost
				return
			}
		}
	}()
	err = f(fctx)
	close(stop)
	lost := <-watched
	// Release on the same session, on a context of its own: ctx may have
	// ended. A session that may still hold the lock (a failed check or
	// unlock) is closed rather than returned to the pool, which drops the
	// lock with it.
	uctx, ucancel := context.WithTimeout(context.WithoutCancel(ctx), checkTimeout)
	defer ucancel()
	if lost == nil {
		if _, uerr := conn.Exec(uctx, "select pg_advisory_unlock($1)", key); uerr != nil {
			_ = conn.Conn().Close(uctx)
		}
		return err
	}
	_ = conn.Conn().Close(uctx)
	if err != nil && !errors.Is(err, context.Canceled) {
		return errors.Join(lost, err)
	}
	return lost
}
