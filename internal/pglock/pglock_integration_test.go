package pglock

import (
	"context"
	"errors"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/canopyhq/canopy/internal/testenv"
)

func testPool(t *testing.T) *pgxpool.Pool {
	t.Helper()
	dsn := testenv.Get(t, "CANOPY_POSTGRES_DSN")
	pool, err := pgxpool.New(context.Background(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return pool
}

// testKey is a key of this test alone ('canopy' || 0xfe.. , outside keys.go's).
func testKey() int64 { return 0x63616e6f7079fe00 | int64(rand.IntN(0xff)) }

// holder returns the backend pid holding session advisory lock key, 0 if none.
func holder(t *testing.T, pool *pgxpool.Pool, key int64) int32 {
	t.Helper()
	var pid int32
	err := pool.QueryRow(context.Background(), `select coalesce(max(pid), 0) from pg_locks
		where locktype = 'advisory' and objsubid = 1 and granted
		  and ((classid::bigint << 32) | objid::bigint) = $1`, key).Scan(&pid)
	if err != nil {
		t.Fatal(err)
	}
	return pid
}

func TestLeadOneAtATimeAndRelease(t *testing.T) {
	pool := testPool(t)
	key := testKey()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	leading := make(chan struct{})
	release := make(chan struct{})
	first := make(chan error, 1)
	go func() {
		first <- Lead(ctx, pool, key, 50*time.Millisecond, func(context.Context) error {
			close(leading)
			<-release
			return errors.New("done leading")
		})
	}()
	<-leading
	if holder(t, pool, key) == 0 {
		t.Fatal("Lead runs f without the lock held")
	}
	if err := TryHold(ctx, pool, key, func(context.Context) error {
		t.Error("TryHold ran f while another session holds the lock")
		return nil
	}); !errors.Is(err, ErrBusy) {
		t.Errorf("TryHold beside a leader = %v, want ErrBusy", err)
	}
	second := make(chan error, 1)
	ran := make(chan struct{})
	go func() {
		second <- Lead(ctx, pool, key, 50*time.Millisecond, func(context.Context) error {
			close(ran)
			return nil
		})
	}()
	select {
	case <-ran:
		t.Fatal("a second leader ran while the first holds the lock")
	case <-time.After(300 * time.Millisecond):
	}
	close(release)
	if err := <-first; err == nil || err.Error() != "done leading" {
		t.Errorf("Lead returned %v, want f's error", err)
	}
	select {
	case <-ran:
	case <-time.After(5 * time.Second):
		t.Fatal("the second leader did not take over after the first returned")
	}
	if err := <-second; err != nil {
		t.Errorf("second Lead = %v", err)
	}
	if pid := holder(t, pool, key); pid != 0 {
		t.Errorf("lock still held by pid %d after both returned", pid)
	}
}

func TestLeadLostConnectionCancelsWork(t *testing.T) {
	pool := testPool(t)
	key := testKey()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	leading := make(chan struct{})
	var cause error
	done := make(chan error, 1)
	go func() {
		done <- Lead(ctx, pool, key, 50*time.Millisecond, func(fctx context.Context) error {
			close(leading)
			<-fctx.Done()
			cause = context.Cause(fctx)
			return fctx.Err()
		})
	}()
	<-leading
	pid := holder(t, pool, key)
	if pid == 0 {
		t.Fatal("no session holds the lock")
	}
	start := time.Now()
	if _, err := pool.Exec(ctx, "select pg_terminate_backend($1)", pid); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if !errors.Is(err, ErrLost) {
			t.Errorf("Lead after its connection was killed = %v, want ErrLost", err)
		}
		if !errors.Is(cause, ErrLost) {
			t.Errorf("f's context ended with cause %v, want ErrLost", cause)
		}
		if took := time.Since(start); took > checkEvery+checkTimeout {
			t.Errorf("f's context cancelled %s after the connection died", took)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("f still running 10 s after the lock's connection was killed")
	}
}

func TestLeadCtxEndsWhileWaiting(t *testing.T) {
	pool := testPool(t)
	key := testKey()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	held := make(chan struct{})
	stop := make(chan struct{})
	go func() {
		_ = Lead(ctx, pool, key, 50*time.Millisecond, func(context.Context) error { close(held); <-stop; return nil })
	}()
	defer close(stop)
	<-held
	wctx, wcancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer wcancel()
	err := Lead(wctx, pool, key, 50*time.Millisecond, func(context.Context) error {
		t.Error("ran without the lock")
		return nil
	})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Lead whose ctx ended while waiting = %v, want DeadlineExceeded", err)
	}
}
