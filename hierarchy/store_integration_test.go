package hierarchy

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/canopyhq/canopy/internal/testenv"
	"github.com/canopyhq/canopy/schema"
)

// testDB creates a throwaway database on the CANOPY_POSTGRES_DSN server,
// migrated unless raw, and drops it when the test ends. The canopy schema
// name is fixed, so isolation needs a database per test. Without the
// server the test skips, except under CI=true, where it fails.
func testDB(t testing.TB, raw bool) *pgxpool.Pool {
	t.Helper()
	dsn := testenv.Get(t, "CANOPY_POSTGRES_DSN")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	admin, err := pgx.Connect(ctx, dsn)
	if err != nil {
		testenv.Unavailable(t, "postgres at CANOPY_POSTGRES_DSN: %v", err)
	}
	defer admin.Close(ctx)
	var b [6]byte
	rand.Read(b[:])
	name := "canopy_test_" + hex.EncodeToString(b[:])
	if _, err := admin.Exec(ctx, "create database "+name); err != nil {
		t.Fatalf("create test database: %v", err)
	}
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		t.Fatal(err)
	}
	cfg.ConnConfig.Database = name
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		pool.Close()
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		conn, err := pgx.Connect(ctx, dsn)
		if err != nil {
			t.Errorf("drop test database %s: %v", name, err)
			return
		}
		defer conn.Close(ctx)
		if _, err := conn.Exec(ctx, "drop database if exists "+name+" with (force)"); err != nil {
			t.Errorf("drop test database %s: %v", name, err)
		}
	})
	if !raw {
		if err := NewStore(pool).Migrate(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	return pool
}

func count(t testing.TB, pool *pgxpool.Pool, sql string, args ...any) int64 {
	t.Helper()
	var n int64
	if err := pool.QueryRow(context.Background(), sql, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return n
}

// snapshot fingerprints everything a refused change must leave alone.
func snapshot(t testing.TB, pool *pgxpool.Pool) string {
	t.Helper()
	var s string
	err := pool.QueryRow(context.Background(), `select
		(select coalesce(string_agg(format('%s/%s/%s/%s', id, parent_id, status, name), ',' order by id), '') from canopy.entities)
		|| '|' || (select count(*) from canopy.entity_history)
		|| '|' || (select count(*) from canopy.entity_history where valid_to is null)
		|| '|' || (select count(*) from canopy.outbox)`).Scan(&s)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestMigrateIdempotentAndConcurrent(t *testing.T) {
	pool := testDB(t, true)
	ctx := context.Background()
	s := NewStore(pool)
	var wg sync.WaitGroup
	errs := make([]error, 3)
	for i := range errs {
		wg.Add(1)
		go func() { defer wg.Done(); errs[i] = s.Migrate(ctx) }()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatalf("concurrent Migrate: %v", err)
		}
	}
	if err := s.Migrate(ctx); err != nil {
		t.Fatalf("second Migrate: %v", err)
	}
	if got, want := count(t, pool, "select count(*) from canopy.schema_migrations"), int64(len(schema.PostgresMigrations())); got != want {
		t.Fatalf("schema_migrations has %d rows, want %d", got, want)
	}
}

func TestImportAndLoad(t *testing.T) {
	pool := testDB(t, false)
	ctx := context.Background()
	const n = 20000
	es := Synthesize(n, 42)
	var buf bytes.Buffer
	if err := WriteCSV(&buf, es); err != nil {
		t.Fatal(err)
	}
	file := buf.Bytes()
	stats, err := Import(ctx, pool, bytes.NewReader(file), ImportOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if stats.Rows != n || stats.Inserted != n {
		t.Fatalf("stats = %+v, want %d rows inserted", stats, n)
	}
	if got := count(t, pool, "select count(*) from canopy.entity_history where valid_from = '-infinity' and valid_to is null"); got != n {
		t.Fatalf("%d open '-infinity' history rows, want %d", got, n)
	}
	if got := count(t, pool, "select count(*) from canopy.outbox where op = 'insert'"); got != n {
		t.Fatalf("%d outbox rows, want %d", got, n)
	}

	s := NewStore(pool)
	tr, err := s.Load(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if tr.Len() != n {
		t.Fatalf("loaded %d entities, want %d", tr.Len(), n)
	}
	for _, e := range es {
		p, st, ok := tr.Current(e.ID)
		if !ok || p != e.ParentID || st != e.Status {
			t.Fatalf("entity %d loaded as %d, %v, %v; want %d, %v", e.ID, p, st, ok, e.ParentID, e.Status)
		}
	}
	if _, ok := tr.Ancestors(n, time.Now(), nil); !ok {
		t.Fatal("no ancestor chain for the last entity")
	}
	rows := 0
	if err := s.EntityRows(ctx, func(r EntityRow) error {
		e := es[r.ID-1]
		if r.ParentID != e.ParentID || r.Name != e.Name || r.Status != e.Status || r.UpdatedAt.IsZero() {
			t.Fatalf("EntityRows gave %+v for %+v", r, e)
		}
		rows++
		return nil
	}); err != nil || rows != n {
		t.Fatalf("EntityRows = %d rows, %v", rows, err)
	}

	// Re-importing the same file writes nothing.
	before := snapshot(t, pool)
	stats, err = Import(ctx, pool, bytes.NewReader(file), ImportOptions{})
	if err != nil || stats.Unchanged != n {
		t.Fatalf("re-import = %+v, %v; want all unchanged", stats, err)
	}
	if after := snapshot(t, pool); after != before {
		t.Fatal("re-import changed the database")
	}

	// A second file moves one entity and suspends another: their history
	// rows are closed at the same instant the new ones open.
	moved, suspended := es[n-1], es[n-2]
	patch := "id,parent_id,status,name\n" +
		itoa(moved.ID) + ",1,active," + moved.Name + "\n" +
		itoa(suspended.ID) + "," + itoa(suspended.ParentID) + ",suspended," + suspended.Name + "\n"
	stats, err = Import(ctx, pool, strings.NewReader(patch), ImportOptions{})
	if err != nil || stats.Updated != 2 {
		t.Fatalf("patch import = %+v, %v; want 2 updated", stats, err)
	}
	if got := count(t, pool, `select count(*) from canopy.entity_history o join canopy.entity_history c
		on c.id = o.id and c.valid_from = o.valid_to and c.valid_to is null
		where o.id = any($1)`, []int64{moved.ID, suspended.ID}); got != 2 {
		t.Fatalf("%d closed-and-reopened history pairs, want 2", got)
	}
	changes, err := s.ChangesSince(ctx, tr.Version(), 100)
	if err != nil || len(changes) != 2 {
		t.Fatalf("ChangesSince = %d changes, %v; want 2", len(changes), err)
	}
	for _, c := range changes {
		if err := tr.Apply(c); err != nil {
			t.Fatal(err)
		}
	}
	if p, _, _ := tr.Current(moved.ID); p != 1 {
		t.Fatalf("moved entity's parent = %d, want 1", p)
	}
}

func itoa(v int64) string { return strconv.FormatInt(v, 10) }

// smallForest creates 1 ─┬─ 2 ── 4
//
//	└─ 3 (closed)
func smallForest(t *testing.T, s *Store) {
	t.Helper()
	ctx := context.Background()
	for _, e := range []SynthEntity{{1, 0, StatusActive, "root"}, {2, 1, StatusActive, "a"}, {3, 1, StatusClosed, "gone"}, {4, 2, StatusActive, ""}} {
		if err := s.Create(ctx, e.ID, e.ParentID, e.Name, e.Status, nil); err != nil {
			t.Fatal(err)
		}
	}
}

func TestMoveAndStatusRecordHistory(t *testing.T) {
	pool := testDB(t, false)
	ctx := context.Background()
	s := NewStore(pool)
	smallForest(t, s)
	tr, err := s.Load(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Move(ctx, 4, 1, nil); err != nil {
		t.Fatal(err)
	}
	if err := s.SetStatus(ctx, 2, StatusSuspended, nil); err != nil {
		t.Fatal(err)
	}
	if err := s.Move(ctx, 4, 1, nil); err != nil { // already there: records nothing
		t.Fatal(err)
	}
	if got := count(t, pool, "select count(*) from canopy.entity_history where id = 4"); got != 2 {
		t.Fatalf("entity 4 has %d history rows, want 2", got)
	}
	if got := count(t, pool, `select count(*) from canopy.entity_history
		where id = 4 and valid_to is not null and parent_id = 2`); got != 1 {
		t.Fatal("entity 4's old version was not closed")
	}
	if got := count(t, pool, "select count(*) from canopy.outbox where op = 'update'"); got != 2 {
		t.Fatalf("%d update outbox rows, want 2", got)
	}
	changes, err := s.ChangesSince(ctx, tr.Version(), 10)
	if err != nil || len(changes) != 2 {
		t.Fatalf("ChangesSince = %v, %v; want 2 changes", changes, err)
	}
	for _, c := range changes {
		tr.Apply(c)
	}
	if p, _, _ := tr.Current(4); p != 1 {
		t.Fatalf("tree has 4 under %d, want 1", p)
	}
	if _, st, _ := tr.Current(2); st != StatusSuspended {
		t.Fatalf("tree has 2 %v, want suspended", st)
	}
	// As-was: just before the move, 4 was still under 2.
	got, _ := tr.Ancestors(4, changes[0].ValidFrom.Add(-time.Microsecond), nil)
	if len(got) != 3 || got[1].ID != 2 {
		t.Fatalf("as-was chain before the move = %v", got)
	}
	if err := s.Move(ctx, 4, 0, nil); err != nil {
		t.Fatalf("move to root: %v", err)
	}
	if got := count(t, pool, "select count(*) from canopy.entities where id = 4 and parent_id is null"); got != 1 {
		t.Fatal("entity 4 is not a root")
	}
}

func TestRefusedChangesChangeNothing(t *testing.T) {
	pool := testDB(t, false)
	ctx := context.Background()
	s := NewStore(pool)
	smallForest(t, s)
	tests := []struct {
		name   string
		change func() error
		want   error
	}{
		{"cycle", func() error { return s.Move(ctx, 1, 4, nil) }, ErrCycle},
		{"direct cycle", func() error { return s.Move(ctx, 2, 4, nil) }, ErrCycle},
		{"self", func() error { return s.Move(ctx, 2, 2, nil) }, ErrCycle},
		{"missing parent", func() error { return s.Move(ctx, 4, 99, nil) }, ErrUnknownParent},
		{"closed parent", func() error { return s.Move(ctx, 4, 3, nil) }, ErrClosedParent},
		{"create under closed", func() error { return s.Create(ctx, 5, 3, "x", StatusActive, nil) }, ErrClosedParent},
		{"create under missing", func() error { return s.Create(ctx, 5, 98, "x", StatusActive, nil) }, ErrUnknownParent},
		{"create duplicate", func() error { return s.Create(ctx, 2, 1, "x", StatusActive, nil) }, ErrExists},
		{"move unknown", func() error { return s.Move(ctx, 77, 1, nil) }, ErrNotFound},
		{"status unknown", func() error { return s.SetStatus(ctx, 77, StatusClosed, nil) }, ErrNotFound},
		{"delete", func() error {
			_, err := pool.Exec(ctx, "delete from canopy.entities where id = 4")
			return classify(err)
		}, ErrDeleteRefused},
		{"truncate", func() error {
			_, err := pool.Exec(ctx, "truncate canopy.entities cascade")
			return classify(err)
		}, ErrDeleteRefused},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := snapshot(t, pool)
			err := tt.change()
			if !errors.Is(err, tt.want) {
				t.Fatalf("err = %v, want %v", err, tt.want)
			}
			t.Logf("%v", err)
			if after := snapshot(t, pool); after != before {
				t.Fatalf("refused change wrote:\n before %s\n after  %s", before, after)
			}
		})
	}
}

func TestConcurrentMovesCannotCycle(t *testing.T) {
	pool := testDB(t, false)
	ctx := context.Background()
	s := NewStore(pool)
	for round := int64(0); round < 20; round++ {
		a, b := 10+2*round, 11+2*round
		if err := s.Create(ctx, a, 0, "", StatusActive, nil); err != nil {
			t.Fatal(err)
		}
		if err := s.Create(ctx, b, 0, "", StatusActive, nil); err != nil {
			t.Fatal(err)
		}
		// Plain SQL, not Store.Move, so the triggers' own lock is what
		// serializes the two.
		var wg sync.WaitGroup
		errs := make([]error, 2)
		for i, mv := range [][2]int64{{a, b}, {b, a}} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, err := pool.Exec(ctx, "update canopy.entities set parent_id = $2 where id = $1", mv[0], mv[1])
				errs[i] = classify(err)
			}()
		}
		wg.Wait()
		ok := 0
		for _, err := range errs {
			switch {
			case err == nil:
				ok++
			case !errors.Is(err, ErrCycle):
				t.Fatalf("round %d: %v", round, err)
			}
		}
		if ok != 1 {
			t.Fatalf("round %d: %d of two opposite moves succeeded (%v), want exactly 1", round, ok, errs)
		}
	}
}

func TestEffectiveAt(t *testing.T) {
	pool := testDB(t, false)
	ctx := context.Background()
	s := NewStore(pool)
	d0 := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
	d10, d5 := d0.AddDate(0, 0, 10), d0.AddDate(0, 0, 5)
	for _, id := range []int64{1, 2} {
		if err := s.Create(ctx, id, 0, "", StatusActive, &d0); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Create(ctx, 3, 1, "", StatusActive, &d0); err != nil {
		t.Fatal(err)
	}
	if err := s.Move(ctx, 3, 2, &d10); err != nil {
		t.Fatal(err)
	}
	if got := count(t, pool, `select count(*) from canopy.entity_history
		where id = 3 and ((parent_id = 1 and valid_from = $1 and valid_to = $2)
		               or (parent_id = 2 and valid_from = $2 and valid_to is null))`, d0, d10); got != 2 {
		t.Fatalf("history of 3 does not run d0 → d10 → now (%d matching rows)", got)
	}
	if got := count(t, pool, "select count(*) from canopy.outbox where entity_id = 3 and effective_at = $1", d10); got != 1 {
		t.Fatal("outbox row lacks the effective time")
	}
	tr, err := s.Load(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if as, _ := tr.Ancestors(3, d5, nil); len(as) != 2 || as[1].ID != 1 {
		t.Fatalf("as-was at d5 = %v, want under 1", as)
	}
	// Back-dated: from d5 on, 3 was really under 1. The d10 version is
	// superseded; the d0 version is cut at d5.
	if err := s.Move(ctx, 3, 1, &d5); err != nil {
		t.Fatalf("back-dated move: %v", err)
	}
	if got := count(t, pool, `select count(*) from canopy.entity_history
		where id = 3 and ((parent_id = 1 and valid_from = $1 and valid_to = $2 and superseded_by is null)
		               or (parent_id = 2 and valid_from = $3 and valid_to = $3 and superseded_by is not null)
		               or (parent_id = 1 and valid_from = $2 and valid_to is null))`, d0, d5, d10); got != 3 {
		t.Fatalf("history of 3 after the back-dated move: %d matching rows, want 3", got)
	}
	tr2, err := s.Load(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		at   time.Time
		want int64
	}{{d0, 1}, {d5, 1}, {d10.Add(time.Hour), 1}} {
		if as, _ := tr2.Ancestors(3, tc.at, nil); len(as) != 2 || as[1].ID != tc.want {
			t.Fatalf("after correction, as-was at %v = %v, want under %d", tc.at, as, tc.want)
		}
	}
	// The tree loaded before the correction still answers the old history
	// for its version (a replayed batch resolves as it did).
	if as, _ := tr2.AncestorsAsOf(3, d10.Add(time.Hour), tr.Version(), nil); len(as) != 2 || as[1].ID != 2 {
		t.Fatalf("as of the old version, 3 at d10 = %v, want under 2", as)
	}

	before := snapshot(t, pool)
	future := time.Now().Add(time.Hour)
	if err := s.Move(ctx, 3, 2, &future); !errors.Is(err, ErrFutureChange) {
		t.Fatalf("move in the future: %v, want ErrFutureChange", err)
	}
	if snapshot(t, pool) != before {
		t.Fatal("refused future move wrote")
	}
}

func TestImportRejectsBadFiles(t *testing.T) {
	pool := testDB(t, false)
	ctx := context.Background()
	s := NewStore(pool)
	smallForest(t, s) // 1 ─┬─ 2 ── 4, 1 ── 3 (closed)
	tests := []struct {
		name, file, want string
	}{
		{"duplicate id", "10,1\n11,1\n10,2\n", "duplicate id: line 1: id 10"},
		{"unknown parent", "10,1\n11,99\n", "unknown parent: line 2: id 11 parent 99"},
		{"cycle in file", "10,11\n11,12\n12,10\n13,1\n", "cycle: line 1: id 10 parent 11; line 2: id 11 parent 12; line 3: id 12 parent 10"},
		{"cycle with table", "1,4\n", "cycle: line 1: id 1 parent 4"},
		{"bad status", "id,parent_id,status\n10,1,gone\n", "line 2: entity 10"},
		{"bad id", "10,1\nx,1\n", `line 2: id "x"`},
		{"own parent", "10,10\n", "own parent"},
		{"under closed", "10,3\n", "closed parent: line 1: id 10 parent 3"},
		{"unknown column", "id,boss\n10,1\n", `unknown column "boss"`},
		{"too many fields", "10,1,active,x,y\n", "at most 4"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := snapshot(t, pool)
			_, err := Import(ctx, pool, strings.NewReader(tt.file), ImportOptions{})
			if !errors.Is(err, ErrInvalidImport) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want ErrInvalidImport containing %q", err, tt.want)
			}
			if snapshot(t, pool) != before {
				t.Fatal("rejected import wrote")
			}
		})
	}

	// A snapshot may re-state a closed entity with members, and reorder
	// columns by header.
	stats, err := Import(ctx, pool, strings.NewReader("name,id,parent_id,status\nteam,20,,closed\nmember,21,20,\n"), ImportOptions{})
	if err != nil || stats.Inserted != 2 {
		t.Fatalf("import = %+v, %v", stats, err)
	}
	if got := count(t, pool, "select count(*) from canopy.entities where id = 21 and parent_id = 20 and status = 'active' and name = 'member'"); got != 1 {
		t.Fatal("header-ordered import misread columns")
	}
	// DryRun validates and writes nothing.
	before := snapshot(t, pool)
	stats, err = Import(ctx, pool, strings.NewReader("30,1\n"), ImportOptions{DryRun: true})
	if err != nil || stats.Inserted != 1 || snapshot(t, pool) != before {
		t.Fatalf("dry run = %+v, %v, or it wrote", stats, err)
	}
}

// BenchmarkImport imports a synthetic forest of 1,000,000 entities into an
// empty database, then the same file again (nothing changes):
//
//	go test -run '^$' -bench Import -benchtime 1x ./hierarchy/
func BenchmarkImport(b *testing.B) {
	pool := testDB(b, false)
	ctx := context.Background()
	const n = 1_000_000
	var buf bytes.Buffer
	if err := WriteCSV(&buf, Synthesize(n, 1)); err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		last := time.Now()
		phases := ImportOptions{Progress: func(phase string, rows int64) {
			if phase != "read" {
				b.Logf("%-8s at %7d rows, previous phase %v", phase, rows, time.Since(last).Round(time.Millisecond))
				last = time.Now()
			}
		}}
		stats, err := Import(ctx, pool, bytes.NewReader(buf.Bytes()), phases)
		if err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(stats.Elapsed.Seconds(), "s/import")
		again, err := Import(ctx, pool, bytes.NewReader(buf.Bytes()), ImportOptions{})
		if err != nil || again.Unchanged != n {
			b.Fatal(again, err)
		}
		b.ReportMetric(again.Elapsed.Seconds(), "s/reimport")
		start := time.Now()
		tr, err := NewStore(pool).Load(ctx)
		if err != nil || tr.Len() != n {
			b.Fatal(err)
		}
		b.ReportMetric(time.Since(start).Seconds(), "s/load")
	}
}

// A move effective in the past must not close a cycle at any moment of the
// history, even when the current hierarchy has none.
func TestHistoryCycleRefused(t *testing.T) {
	pool := testDB(t, false)
	ctx := context.Background()
	s := NewStore(pool)
	day := func(d int) *time.Time { v := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC).AddDate(0, 0, d); return &v }
	for _, id := range []int64{1, 2} {
		if err := s.Create(ctx, id, 0, "", StatusActive, day(0)); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Create(ctx, 3, 1, "", StatusActive, day(0)); err != nil {
		t.Fatal(err)
	}
	if err := s.Move(ctx, 2, 3, day(10)); err != nil { // 2 under 3 from the 10th
		t.Fatal(err)
	}
	if err := s.Move(ctx, 2, 0, day(20)); err != nil { // a root again from the 20th
		t.Fatal(err)
	}
	before := snapshot(t, pool)
	if err := s.Move(ctx, 3, 2, day(15)); !errors.Is(err, ErrCycle) {
		t.Fatalf("3 under 2 from the 15th (2 was under 3 until the 20th): %v, want ErrCycle", err)
	}
	if snapshot(t, pool) != before {
		t.Fatal("refused move wrote")
	}
	if err := s.Move(ctx, 3, 2, day(25)); err != nil {
		t.Fatalf("3 under 2 from the 25th: %v", err)
	}
	tr, err := s.Load(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range []int{0, 12, 22, 30} {
		if _, ok := tr.Ancestors(3, *day(d), nil); !ok {
			t.Errorf("chain of 3 on day %d is broken", d)
		}
	}
}
