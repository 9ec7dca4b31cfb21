package pgledger

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/url"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/canopyhq/canopy/hierarchy"
	"github.com/canopyhq/canopy/ingest"
	"github.com/canopyhq/canopy/internal/testenv"
)

// newLedger migrates a throwaway database on the real PostgreSQL.
func newLedger(t *testing.T) *Ledger {
	t.Helper()
	dsn := testenv.Get(t, "CANOPY_POSTGRES_DSN")
	ctx := context.Background()
	admin, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	name := fmt.Sprintf("canopy_ledger_%d", rand.IntN(1_000_000))
	if _, err := admin.Exec(ctx, "create database "+name); err != nil {
		t.Fatal(err)
	}
	u, _ := url.Parse(dsn)
	u.Path = "/" + name
	pool, err := pgxpool.New(ctx, u.String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		pool.Close()
		_, _ = admin.Exec(ctx, "drop database if exists "+name+" with (force)")
		_ = admin.Close(ctx)
	})
	if err := hierarchy.NewStore(pool).Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	return &Ledger{Pool: pool}
}

// newLeasedLedger is newLedger with partition 0 of a topic leased.
func newLeasedLedger(t *testing.T) (*Ledger, ingest.Source, int64) {
	t.Helper()
	l := newLedger(t)
	src := ingest.Source{Topic: "events", TopicID: "id-1", Partition: 0}
	epoch, err := l.Acquire(context.Background(), src, "a")
	if err != nil {
		t.Fatal(err)
	}
	return l, src, epoch
}

func TestLedgerContract(t *testing.T) {
	l := newLedger(t)
	ctx := context.Background()
	src := ingest.Source{Topic: "events", TopicID: "id-1", Partition: 3}
	at := time.Date(2026, 11, 26, 10, 0, 0, 0, time.UTC)
	created := time.Date(2026, 11, 27, 1, 2, 3, 0, time.UTC)

	old, err := l.Acquire(ctx, src, "a")
	if err != nil {
		t.Fatal(err)
	}
	cur, _ := l.Acquire(ctx, src, "b")
	if old != 1 || cur != 2 {
		t.Fatalf("epochs %d, %d; want 1, 2", old, cur)
	}
	first := ingest.Intent{Source: ingest.Source{Topic: src.Topic, TopicID: src.TopicID, Partition: 3, First: 0, Last: 1}, HierarchyVersion: 7, CreatedAt: created}
	claims := []ingest.Claim{{EventID: "a", OccurredAt: at, Offset: 0}, {EventID: "b", OccurredAt: at, Offset: 1}}

	// A fenced owner records nothing.
	if _, _, err := l.Begin(ctx, old, first, claims); !errors.Is(err, ingest.ErrFenced) {
		t.Fatalf("Begin with a stale epoch = %v, want ErrFenced", err)
	}
	if _, found, _ := l.Intent(ctx, ingest.Source{Topic: src.Topic, TopicID: src.TopicID, Partition: 3, First: 0}); found {
		t.Fatal("a fenced Begin recorded an intent")
	}

	in, owned, err := l.Begin(ctx, cur, first, claims)
	if err != nil || in.Replay || owned.Len() != 2 || !owned.Has(0) || !owned.Has(1) {
		t.Fatalf("first Begin = %+v, %v, %v", in, owned, err)
	}

	// A replay returns the recorded intent and claims nothing new.
	retry := first
	retry.Last, retry.HierarchyVersion, retry.CreatedAt = 5, 9, created.Add(time.Hour)
	in, owned, err = l.Begin(ctx, cur, retry, append(claims, ingest.Claim{EventID: "z", OccurredAt: at, Offset: 2}))
	if err != nil || !in.Replay || in.Last != 1 || in.HierarchyVersion != 7 || !in.CreatedAt.Equal(created) || owned.Len() != 2 {
		t.Fatalf("replayed Begin = %+v, %v, %v", in, owned, err)
	}

	// A later batch repeating "a" does not own it.
	second := ingest.Intent{Source: ingest.Source{Topic: src.Topic, TopicID: src.TopicID, Partition: 3, First: 2, Last: 3}, HierarchyVersion: 7, CreatedAt: created}
	_, owned, err = l.Begin(ctx, cur, second, []ingest.Claim{{EventID: "a", OccurredAt: at, Offset: 2}, {EventID: "c", OccurredAt: at, Offset: 3}})
	if err != nil || owned.Len() != 1 || !owned.Has(3) {
		t.Fatalf("second batch owns %v (%v), want only offset 3", owned, err)
	}

	// Intent finds a batch by any offset inside it, and sees Done.
	got, found, err := l.Intent(ctx, ingest.Source{Topic: src.Topic, TopicID: src.TopicID, Partition: 3, First: 3})
	if err != nil || !found || got.First != 2 || got.Done {
		t.Fatalf("Intent(3) = %+v, %v, %v", got, found, err)
	}
	if err := l.Done(ctx, second.Source); err != nil {
		t.Fatal(err)
	}
	if got, _, _ = l.Intent(ctx, ingest.Source{Topic: src.Topic, TopicID: src.TopicID, Partition: 3, First: 2}); !got.Done {
		t.Fatal("Done not recorded")
	}

	// The same range read again after its intent was purged is a new batch
	// that owns nothing: its events were counted by the first.
	if _, err := l.Pool.Exec(ctx, "delete from canopy.ingest_intents where first_offset = 2"); err != nil {
		t.Fatal(err)
	}
	reread := second
	reread.CreatedAt = created.Add(48 * time.Hour) // intents are purged a day after Done
	reread.Fingerprint = "format=1 test"
	again, owned, err := l.Begin(ctx, cur, reread, []ingest.Claim{{EventID: "a", OccurredAt: at, Offset: 2}, {EventID: "c", OccurredAt: at, Offset: 3}})
	if err != nil || again.Replay || owned.Len() != 0 {
		t.Fatalf("batch over a purged intent's range = %+v, owns %v (%v), want a new batch owning nothing", again, owned, err)
	}
	// Its first write fails; the replay owns nothing either: the claims in
	// its range are the purged batch's, which counted them.
	replayed, owned, err := l.Begin(ctx, cur, reread, []ingest.Claim{{EventID: "a", OccurredAt: at, Offset: 2}, {EventID: "c", OccurredAt: at, Offset: 3}})
	if err != nil || !replayed.Replay || owned.Len() != 0 || replayed.Fingerprint != reread.Fingerprint {
		t.Fatalf("replay over a purged intent's range = %+v, owns %v (%v), want a replay owning nothing", replayed, owned, err)
	}
	if got, _, _ := l.Intent(ctx, reread.Source); got.Fingerprint != reread.Fingerprint {
		t.Fatalf("Intent fingerprint %q, want %q", got.Fingerprint, reread.Fingerprint)
	}

	// The same topic name with another id is another log.
	other := ingest.Source{Topic: "events", TopicID: "id-2", Partition: 3}
	if e, _ := l.Acquire(ctx, other, "c"); e != 1 {
		t.Fatalf("lease of a recreated topic starts at %d, want 1", e)
	}
	if _, found, _ := l.Intent(ctx, ingest.Source{Topic: "events", TopicID: "id-2", Partition: 3, First: 0}); found {
		t.Fatal("a recreated topic inherited the old topic's intents")
	}

	// Purge keeps claims younger than the horizon by either clock.
	if n, err := l.Purge(ctx, time.Hour, time.Hour); err != nil || n != 0 {
		t.Fatalf("purge of fresh claims removed %d (%v)", n, err)
	}
	if _, err := l.Pool.Exec(ctx, "update canopy.event_claims set claimed_at = now() - interval '2 hours'"); err != nil {
		t.Fatal(err)
	}
	if n, err := l.Purge(ctx, time.Hour, time.Hour); err != nil || n != 3 {
		t.Fatalf("purge removed %d claims (%v), want 3", n, err)
	}
}

// StateSize reports the claims held, as PostgreSQL's statistics count them,
// and the disk they take.
func TestStateSize(t *testing.T) {
	l, src, epoch := newLeasedLedger(t)
	ctx := context.Background()
	_, empty, err := l.StateSize(ctx)
	if err != nil {
		t.Fatal(err)
	}
	claims := make([]ingest.Claim, 1000)
	for i := range claims {
		claims[i] = ingest.Claim{EventID: fmt.Sprintf("ev-%d", i), OccurredAt: time.Now(), Offset: int64(i)}
	}
	in := ingest.Intent{Source: ingest.Source{Topic: src.Topic, TopicID: src.TopicID, First: 0, Last: 999}, CreatedAt: time.Now().UTC().Truncate(time.Second)}
	if _, _, err := l.Begin(ctx, epoch, in, claims); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Pool.Exec(ctx, "analyze canopy.event_claims"); err != nil {
		t.Fatal(err)
	}
	ids, bytes, err := l.StateSize(ctx)
	if err != nil || ids != 1000 || bytes <= empty {
		t.Fatalf("StateSize = %d ids, %d bytes (%v); want 1000 ids and more than the empty table's %d bytes", ids, bytes, err, empty)
	}
}

// A batch begun before migration 0104 (its claims name no batch, its intent
// has no fingerprint) replays owning the claims it made, and only those.
func TestReplayOfBatchBegunBeforeUpgrade(t *testing.T) {
	l, src, epoch := newLeasedLedger(t)
	ctx := context.Background()
	at := time.Date(2026, 11, 26, 10, 0, 0, 0, time.UTC)
	claims := []ingest.Claim{{EventID: "a", OccurredAt: at, Offset: 10}, {EventID: "b", OccurredAt: at, Offset: 11}}
	in := ingest.Intent{Source: ingest.Source{Topic: src.Topic, TopicID: src.TopicID, First: 10, Last: 11}, CreatedAt: time.Now().UTC().Truncate(time.Second)}
	if _, _, err := l.Begin(ctx, epoch, in, claims); err != nil {
		t.Fatal(err)
	}
	// As the older code left them; and a claim of "a" two days old, from a
	// purged batch over the same offsets, which must not be taken.
	if _, err := l.Pool.Exec(ctx, `update canopy.event_claims set batch_created_at = null`); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Pool.Exec(ctx, `update canopy.event_claims set claimed_at = now() - interval '2 days' where event_id = 'a'`); err != nil {
		t.Fatal(err)
	}
	got, owned, err := l.Begin(ctx, epoch, in, claims)
	if err != nil || !got.Replay || got.Fingerprint != "" || owned.Len() != 1 || !owned.Has(11) {
		t.Fatalf("replay of a pre-upgrade batch = %+v, owns %v (%v); want a replay owning offset 11 only", got, owned, err)
	}
}

// TestBeginWithoutClaims drives the claim-less Begin of partitioned
// deduplication (one pipelined round trip) through each of its outcomes,
// checking what PostgreSQL holds after each.
func TestBeginWithoutClaims(t *testing.T) {
	l := newLedger(t)
	ctx := context.Background()
	src := ingest.Source{Topic: "events.byid", TopicID: "id-2", Partition: 1}
	created := time.Date(2026, 11, 27, 1, 2, 3, 0, time.UTC)
	old, _ := l.Acquire(ctx, src, "a")
	cur, err := l.Acquire(ctx, src, "b")
	if err != nil {
		t.Fatal(err)
	}
	batch := func(first, last, version int64) ingest.Intent {
		return ingest.Intent{Source: ingest.Source{Topic: src.Topic, TopicID: src.TopicID, Partition: src.Partition, First: first, Last: last},
			HierarchyVersion: version, CreatedAt: created, Fingerprint: "f1"}
	}
	intents := func() int {
		var n int
		if err := l.Pool.QueryRow(ctx, "select count(*) from canopy.ingest_intents").Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	setState := func(sql string) {
		if _, err := l.Pool.Exec(ctx, sql); err != nil {
			t.Fatal(err)
		}
	}

	// A stale epoch, and a partition never leased, are fenced off.
	if _, _, err := l.Begin(ctx, old, batch(0, 9, 5), nil); !errors.Is(err, ingest.ErrFenced) {
		t.Fatalf("Begin with a stale epoch = %v, want ErrFenced", err)
	}
	other := batch(0, 9, 5)
	other.Partition = 2
	if _, _, err := l.Begin(ctx, cur, other, nil); !errors.Is(err, ingest.ErrFenced) {
		t.Fatalf("Begin on an unleased partition = %v, want ErrFenced", err)
	}
	if n := intents(); n != 0 {
		t.Fatalf("fenced Begins recorded %d intents", n)
	}

	// A new batch is recorded as given; restated through 3, its version 5
	// is pending.
	setState("update canopy.restate_state set fence = 2, restated_through = 3")
	in, owned, err := l.Begin(ctx, cur, batch(0, 9, 5), nil)
	if err != nil || in.Replay || in.Done || in.Last != 9 || in.HierarchyVersion != 5 || in.PendingVersion != 5 || owned.Len() != 0 {
		t.Fatalf("new Begin = %+v, %v, %v", in, owned, err)
	}
	var (
		epoch, tag int64
		fp         string
	)
	if err := l.Pool.QueryRow(ctx, `select epoch, asis_tag, fingerprint from canopy.ingest_intents
		where src_topic = 'events.byid@id-2' and src_partition = 1 and first_offset = 0`).Scan(&epoch, &tag, &fp); err != nil {
		t.Fatal(err)
	}
	if epoch != cur || tag != 5 || fp != "f1" {
		t.Fatalf("recorded intent: epoch %d, asis_tag %d, fingerprint %q; want %d, 5, f1", epoch, tag, fp, cur)
	}

	// A version the restater has restated is not pending.
	in, _, err = l.Begin(ctx, cur, batch(10, 19, 3), nil)
	if err != nil || in.Replay || in.PendingVersion != 0 {
		t.Fatalf("Begin at a restated version = %+v, %v", in, err)
	}

	// A second Begin at the same first offset replays the recorded intent.
	retry := batch(0, 30, 8)
	retry.CreatedAt, retry.Fingerprint = created.Add(time.Hour), "f2"
	in, _, err = l.Begin(ctx, cur, retry, nil)
	if err != nil || !in.Replay || in.Done || in.Last != 9 || in.HierarchyVersion != 5 || in.PendingVersion != 5 ||
		!in.CreatedAt.Equal(created) || in.Fingerprint != "f1" {
		t.Fatalf("replayed Begin = %+v, %v", in, err)
	}
	if err := l.Done(ctx, in.Source); err != nil {
		t.Fatal(err)
	}
	if in, _, err = l.Begin(ctx, cur, retry, nil); err != nil || !in.Replay || !in.Done {
		t.Fatalf("Begin of a done batch = %+v, %v", in, err)
	}

	// Below the fence a new batch is refused; a recorded one still replays.
	setState("update canopy.restate_state set fence = 7")
	if _, _, err := l.Begin(ctx, cur, batch(20, 29, 6), nil); !errors.Is(err, ingest.ErrHierarchyBehind) {
		t.Fatalf("Begin below the fence = %v, want ErrHierarchyBehind", err)
	}
	if in, _, err = l.Begin(ctx, cur, batch(10, 19, 6), nil); err != nil || !in.Replay || in.HierarchyVersion != 3 {
		t.Fatalf("replay below the fence = %+v, %v", in, err)
	}

	// While canopy rebuild pauses writers, a new batch waits.
	setState("update canopy.restate_state set paused_until = now() + interval '1 minute'")
	if _, _, err := l.Begin(ctx, cur, batch(20, 29, 7), nil); !errors.Is(err, ingest.ErrPaused) {
		t.Fatalf("Begin while paused = %v, want ErrPaused", err)
	}
	setState("update canopy.restate_state set paused_until = null")
	if n := intents(); n != 2 {
		t.Fatalf("%d intents recorded, want 2", n)
	}

	// Epoch 0 (canopy reconcile) checks no lease.
	if in, _, err = l.Begin(ctx, 0, other, nil); !errors.Is(err, ingest.ErrHierarchyBehind) {
		t.Fatalf("reconcile Begin below the fence = %+v, %v", in, err)
	}
	other.HierarchyVersion = 7
	if in, _, err = l.Begin(ctx, 0, other, nil); err != nil || in.Replay {
		t.Fatalf("reconcile Begin = %+v, %v", in, err)
	}
	if n := intents(); n != 3 {
		t.Fatalf("%d intents recorded, want 3", n)
	}
}
