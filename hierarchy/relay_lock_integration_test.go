package hierarchy

import (
	"context"
	"testing"
	"time"
)

// TestMigrateRunsBesideARunningRelay holds the advisory lock a running
// relay holds for as long as it runs, and migrates: an upgrade runs migrate
// while the relay is up, so the two must not share a lock.
func TestMigrateRunsBesideARunningRelay(t *testing.T) {
	pool := testDB(t, false)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	conn, err := pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	var got bool
	if err := conn.QueryRow(ctx, "select pg_try_advisory_lock($1)", int64(relayLockKey)).Scan(&got); err != nil || !got {
		t.Fatalf("take the relay's lock: %v %v", got, err)
	}
	defer func() { _, _ = conn.Exec(context.Background(), "select pg_advisory_unlock($1)", int64(relayLockKey)) }()
	mctx, mcancel := context.WithTimeout(ctx, 10*time.Second)
	defer mcancel()
	if err := NewStore(pool).Migrate(mctx); err != nil {
		t.Fatalf("migrate beside a running relay: %v", err)
	}
}
