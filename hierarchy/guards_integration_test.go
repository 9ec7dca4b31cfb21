package hierarchy

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Issue 14: PostgreSQL accepted ancestor chains of up to 100,000 entities
// while the worker's Tree stops at MaxDepth = 255, so events of deeper
// entities were dead-lettered as unknown and a restatement of such a move
// failed forever. These tests pin the limit at exactly 255 entities (the
// entity included) for inserts, moves of subtrees, back-dated changes and
// the bulk import, and the other guards of schema/postgres/0107_guards.sql.

// pgChain inserts entities first … first+n-1, each under the one before, the
// first under parent (0 = a root), in one statement at effective time at.
func pgChain(t *testing.T, s *Store, first, n, parent int64, at *time.Time) {
	t.Helper()
	err := s.change(context.Background(), at, func(tx pgx.Tx) (pgconn.CommandTag, error) {
		return tx.Exec(context.Background(), `insert into canopy.entities (id, parent_id)
			select g, case when g = $1 then $3 else g - 1 end
			  from generate_series($1::bigint, $1::bigint + $2 - 1) g order by g`, first, n, nullID(parent))
	})
	if err != nil {
		t.Fatalf("chain %d…%d under %d: %v", first, first+n-1, parent, err)
	}
}

func wantTooDeep(t *testing.T, err error, what string) {
	t.Helper()
	if !errors.Is(err, ErrTooDeep) {
		t.Fatalf("%s: %v, want ErrTooDeep", what, err)
	}
	if !strings.Contains(err.Error(), "limit of 255") {
		t.Fatalf("%s: message %q does not name the limit", what, err)
	}
}

func TestDepthLimitInsert(t *testing.T) {
	pool := testDB(t, false)
	ctx := context.Background()
	s := NewStore(pool)
	pgChain(t, s, 1, 255, 0, nil) // 1 (root) … 255: a chain of exactly 255
	before := snapshot(t, pool)
	err := s.Create(ctx, 256, 255, "", StatusActive, nil)
	wantTooDeep(t, err, "insert at depth 256")
	if !strings.Contains(err.Error(), "256") || !strings.Contains(err.Error(), "entity 256") {
		t.Fatalf("message %q does not name the entity and the length", err)
	}
	if snapshot(t, pool) != before {
		t.Fatal("refused insert wrote")
	}
	if err := s.Create(ctx, 256, 254, "", StatusActive, nil); err != nil {
		t.Fatalf("a second entity at depth 255: %v", err)
	}
	tr, err := s.Load(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []int64{255, 256} {
		if anc, ok := tr.Ancestors(id, time.Now(), nil); !ok || len(anc) != MaxDepth {
			t.Fatalf("Tree: chain of %d ok=%v len=%d, want %d", id, ok, len(anc), MaxDepth)
		}
	}
}

func TestDepthLimitMoveSubtree(t *testing.T) {
	pool := testDB(t, false)
	ctx := context.Background()
	s := NewStore(pool)
	pgChain(t, s, 1, 252, 0, nil)  // 1 … 252
	pgChain(t, s, 1000, 6, 0, nil) // 1000 … 1005: a subtree of height 6
	pgChain(t, s, 2000, 4, 0, nil) // 2000 … 2003: height 4
	before := snapshot(t, pool)
	wantTooDeep(t, s.Move(ctx, 1000, 250, nil), "moving a subtree of height 6 under depth 250")
	// The subtree's root fits (253) but its deepest member does not (256).
	wantTooDeep(t, s.Move(ctx, 2000, 252, nil), "moving a subtree of height 4 under depth 252")
	// The same through plain SQL, the way applications change the hierarchy.
	if _, err := pool.Exec(ctx, "update canopy.entities set parent_id = 252 where id = 1001"); err == nil ||
		!strings.Contains(err.Error(), "limit of 255") {
		t.Fatalf("plain SQL move past the limit: %v", err)
	}
	if snapshot(t, pool) != before {
		t.Fatal("refused move wrote")
	}
	if err := s.Move(ctx, 1000, 249, nil); err != nil {
		t.Fatalf("moving the subtree to exactly 255: %v", err)
	}
	if err := s.Move(ctx, 2000, 251, nil); err != nil {
		t.Fatalf("moving the other subtree to exactly 255: %v", err)
	}
	// A cycle is still a cycle, not a depth error.
	if err := s.Move(ctx, 1, 1005, nil); !errors.Is(err, ErrCycle) {
		t.Fatalf("1 under its descendant 1005: %v, want ErrCycle", err)
	}
	tr, err := s.Load(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []int64{1005, 2003} {
		if anc, ok := tr.Ancestors(id, time.Now(), nil); !ok || len(anc) != MaxDepth {
			t.Fatalf("Tree: chain of %d ok=%v len=%d, want %d", id, ok, len(anc), MaxDepth)
		}
	}
	if n := count(t, pool, `with recursive c(id, n) as (select id, 1 from canopy.entities where parent_id is null
		union all select e.id, c.n + 1 from c join canopy.entities e on e.parent_id = c.id) select max(n) from c`); n != MaxDepth {
		t.Fatalf("deepest chain %d, want %d", n, MaxDepth)
	}
	// A subtree moved higher up always fits.
	if err := s.Move(ctx, 1003, 0, nil); err != nil {
		t.Fatalf("moving part of the deep subtree up: %v", err)
	}
}

func TestDepthLimitHistory(t *testing.T) {
	pool := testDB(t, false)
	ctx := context.Background()
	s := NewStore(pool)
	day := func(d int) *time.Time { v := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC).AddDate(0, 0, d); return &v }
	pgChain(t, s, 1, 254, 0, day(0))
	pgChain(t, s, 500, 1, 0, day(0))
	pgChain(t, s, 700, 1, 0, day(0))
	if err := s.Move(ctx, 500, 254, day(10)); err != nil { // 500 at depth 255 from the 10th
		t.Fatal(err)
	}
	if err := s.Move(ctx, 500, 0, day(20)); err != nil { // a root again from the 20th
		t.Fatal(err)
	}
	before := snapshot(t, pool)
	// Back-dated into the time 500 was at depth 255.
	wantTooDeep(t, s.Move(ctx, 700, 500, day(15)), "700 under 500 from the 15th")
	// An insert's first version stands for all time before it, so a child
	// of 500 would also have been at depth 256 on the 15th.
	wantTooDeep(t, s.Create(ctx, 501, 500, "", StatusActive, day(30)), "501 under 500")
	if snapshot(t, pool) != before {
		t.Fatal("refused change wrote")
	}
	if err := s.Move(ctx, 700, 500, day(25)); err != nil {
		t.Fatalf("700 under 500 from the 25th: %v", err)
	}
	tr, err := s.Load(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range []int{5, 15, 22, 30} {
		if _, ok := tr.Ancestors(700, *day(d), nil); !ok {
			t.Errorf("chain of 700 on day %d is broken", d)
		}
	}
}

func TestNameLengthLimit(t *testing.T) {
	pool := testDB(t, false)
	ctx := context.Background()
	s := NewStore(pool)
	ok := strings.Repeat("é", MaxNameLength) // characters, not bytes
	if err := s.Create(ctx, 1, 0, ok, StatusActive, nil); err != nil {
		t.Fatalf("name of %d characters: %v", MaxNameLength, err)
	}
	before := snapshot(t, pool)
	err := s.Create(ctx, 2, 0, ok+"x", StatusActive, nil)
	if !errors.Is(err, ErrNameTooLong) || !strings.Contains(err.Error(), "256") {
		t.Fatalf("name of 257 characters: %v, want ErrNameTooLong naming 256", err)
	}
	if _, err := pool.Exec(ctx, "update canopy.entities set name = name || 'x' where id = 1"); err == nil {
		t.Fatal("plain SQL rename to 257 characters accepted")
	}
	if snapshot(t, pool) != before {
		t.Fatal("refused change wrote")
	}

	// An existing database holding longer names still migrates: the
	// constraint is NOT VALID.
	if _, err := pool.Exec(ctx, `alter table canopy.entities drop constraint entities_name_length;
		update canopy.entities set name = repeat('x', 1000) where id = 1;
		delete from canopy.schema_migrations where version = 107`); err != nil {
		t.Fatal(err)
	}
	if err := s.Migrate(ctx); err != nil {
		t.Fatalf("migrate over a 1000-character name: %v", err)
	}
	if err := s.Migrate(ctx); err != nil {
		t.Fatalf("second migrate: %v", err)
	}
	if err := s.Create(ctx, 3, 0, ok+"x", StatusActive, nil); !errors.Is(err, ErrNameTooLong) {
		t.Fatalf("after re-migrating: %v, want ErrNameTooLong", err)
	}
}

func TestImportGuards(t *testing.T) {
	pool := testDB(t, false)
	ctx := context.Background()
	file := func(n int, name string) string {
		var b strings.Builder
		for i := 1; i <= n; i++ {
			p := ""
			if i > 1 {
				p = itoa(int64(i - 1))
			}
			fmt.Fprintf(&b, "%d,%s,active,%s\n", i, p, name)
		}
		return b.String()
	}
	for _, chunk := range []int{0, 100} {
		before := snapshot(t, pool)
		_, err := Import(ctx, pool, strings.NewReader(file(256, "")), ImportOptions{ChunkSize: chunk})
		if !errors.Is(err, ErrInvalidImport) || !strings.Contains(err.Error(), "longer than 255") ||
			!strings.Contains(err.Error(), "line 256: id 256") {
			t.Fatalf("chunk %d: chain of 256: %v", chunk, err)
		}
		_, err = Import(ctx, pool, strings.NewReader(file(2, strings.Repeat("n", 257))), ImportOptions{ChunkSize: chunk})
		if !errors.Is(err, ErrInvalidImport) || !strings.Contains(err.Error(), "name longer than 256") {
			t.Fatalf("chunk %d: name of 257: %v", chunk, err)
		}
		if snapshot(t, pool) != before {
			t.Fatalf("chunk %d: refused import wrote", chunk)
		}
	}
	if _, err := Import(ctx, pool, strings.NewReader(file(255, strings.Repeat("n", 256))), ImportOptions{}); err != nil {
		t.Fatalf("chain of 255: %v", err)
	}
	// Entities outside the file count: moving 1 under a new chain of one
	// makes 255 (already in the table) 256 deep.
	_, err := Import(ctx, pool, strings.NewReader("9000,,active,\n1,9000,active,\n"), ImportOptions{})
	if !errors.Is(err, ErrInvalidImport) || !strings.Contains(err.Error(), "id 255 (not in the file)") {
		t.Fatalf("import lengthening chains outside the file: %v", err)
	}
}

func TestOutboxPurge(t *testing.T) {
	pool := testDB(t, false)
	ctx := context.Background()
	s := NewStore(pool)
	for id := int64(1); id <= 10; id++ {
		if err := s.Create(ctx, id, 0, "", StatusActive, nil); err != nil {
			t.Fatal(err)
		}
	}
	// Rows 1…8 are old, 9…10 recent; the topic holds 1…6.
	if _, err := pool.Exec(ctx, `update canopy.outbox set recorded_at = now() - interval '8 days'
		where seq in (select seq from canopy.outbox order by seq limit 8)`); err != nil {
		t.Fatal(err)
	}
	var first int64
	if err := pool.QueryRow(ctx, "select min(seq) from canopy.outbox").Scan(&first); err != nil {
		t.Fatal(err)
	}
	relayed := first + 5
	n, err := purgeOutbox(ctx, pool, relayed, time.Now().Add(-DefaultOutboxRetention), 4)
	if err != nil {
		t.Fatal(err)
	}
	if n != 6 {
		t.Fatalf("purged %d rows, want 6", n)
	}
	if got := count(t, pool, "select count(*) from canopy.outbox where seq <= $1", relayed); got != 0 {
		t.Fatalf("%d relayed old rows left", got)
	}
	if got := count(t, pool, "select count(*) from canopy.outbox"); got != 4 {
		t.Fatalf("%d rows left, want 4 (2 old unrelayed, 2 recent)", got)
	}
	// Recent rows stay even when relayed; history is untouched.
	if n, err := PurgeOutbox(ctx, pool, first+100, time.Now().Add(-DefaultOutboxRetention)); err != nil || n != 2 {
		t.Fatalf("second purge: %d, %v; want the 2 old rows now relayed", n, err)
	}
	if got := count(t, pool, "select count(*) from canopy.outbox"); got != 2 {
		t.Fatalf("%d rows left, want the 2 recent ones", got)
	}
	if got := count(t, pool, "select count(*) from canopy.entity_history"); got != 10 {
		t.Fatalf("history has %d rows, want 10", got)
	}
}

func TestChunkedImport(t *testing.T) {
	ctx := context.Background()
	// 30,000 rows: a forest of 10 roots, each entity under an earlier one,
	// ids shuffled so file order is not parent order; then a second file
	// that moves, renames and closes some of them.
	const n = 30_000
	perm := make([]int64, n+1)
	for i := range perm {
		perm[i] = int64(i)
	}
	for i := n; i > 1; i-- { // deterministic shuffle
		j := 1 + (i*7919+13)%(i-1)
		perm[i], perm[j] = perm[j], perm[i]
	}
	mk := func(gen int) string {
		var b strings.Builder
		b.WriteString("id,parent_id,status,name\n")
		for i := n; i >= 1; i-- {
			p := ""
			if i > 10 {
				parent := (i - 1) / 3
				if gen == 1 && i%97 == 0 {
					parent = (i - 1) / 7
				}
				if parent < 1 {
					parent = 1
				}
				p = itoa(perm[parent])
			}
			st := "active"
			if gen == 1 && i%1000 == 0 {
				st = "suspended"
			}
			fmt.Fprintf(&b, "%d,%s,%s,name %d.%d\n", perm[i], p, st, i, gen*(i%5))
		}
		return b.String()
	}
	single, chunked := testDB(t, false), testDB(t, false)
	for gen := 0; gen < 2; gen++ {
		f := mk(gen)
		st1, err := Import(ctx, single, strings.NewReader(f), ImportOptions{})
		if err != nil {
			t.Fatalf("gen %d single: %v", gen, err)
		}
		chunks := 0
		st2, err := Import(ctx, chunked, strings.NewReader(f), ImportOptions{
			ChunkSize: 7000,
			Progress: func(phase string, rows int64) {
				if phase == "apply" {
					chunks++
				}
			},
		})
		if err != nil {
			t.Fatalf("gen %d chunked: %v", gen, err)
		}
		if chunks != 5 {
			t.Fatalf("gen %d: %d chunks, want 5", gen, chunks)
		}
		if st1.Inserted != st2.Inserted || st1.Updated != st2.Updated || st1.Unchanged != st2.Unchanged {
			t.Fatalf("gen %d: stats single %+v, chunked %+v", gen, st1, st2)
		}
		// valid_from of changed rows is each transaction's now(): compare
		// everything else.
		norm := func(pool interface {
			QueryRow(context.Context, string, ...any) pgx.Row
		}) string {
			var s string
			if err := pool.QueryRow(ctx, `select
				(select md5(string_agg(format('%s/%s/%s/%s', id, parent_id, status, name), ',' order by id)) from canopy.entities)
				|| '|' || (select md5(string_agg(format('%s/%s/%s/%s', id, parent_id, status, valid_from = '-infinity'), ',' order by id))
				             from canopy.entity_history where valid_to is null)
				|| '|' || (select count(*) from canopy.entity_history)
				|| '|' || (select count(*) from canopy.outbox)
				|| '|' || (select count(*) from canopy.outbox o join canopy.entity_history h on h.seq = o.history_seq
				            where h.valid_to is null)`).Scan(&s); err != nil {
				t.Fatal(err)
			}
			return s
		}
		if a, b := norm(single), norm(chunked); a != b {
			t.Fatalf("gen %d: single import gives %s, chunked %s", gen, a, b)
		}
		t.Logf("gen %d: %+v in %d chunks", gen, st2, chunks)
	}
	// Every chain is whole in the worker's Tree.
	tr, err := NewStore(chunked).Load(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for i := int64(1); i <= n; i += 101 {
		if _, ok := tr.Ancestors(perm[i], time.Now(), nil); !ok {
			t.Fatalf("chain of %d broken", perm[i])
		}
	}
	// Parents come before children in the outbox, which the relay publishes
	// in seq order.
	if got := count(t, chunked, `select count(*) from canopy.outbox c
		join canopy.outbox p on p.entity_id = c.parent_id and p.op = 'insert'
		where c.op = 'insert' and p.txid <> c.txid and p.seq > c.seq`); got != 0 {
		t.Fatalf("%d inserts are committed before their parent's", got)
	}
}

// TestChunkedImportLetsOthersWrite: between chunks, another session changes
// an entity without waiting for the import to end (before issue 14 it
// waited for the whole import, which holds the hierarchy lock).
func TestChunkedImportLetsOthersWrite(t *testing.T) {
	pool := testDB(t, false)
	ctx := context.Background()
	s := NewStore(pool)
	if err := s.Create(ctx, 1_000_000, 0, "outside", StatusActive, nil); err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for i := 1; i <= 30_000; i++ {
		p := ""
		if i > 1 {
			p = itoa(int64(i / 2))
		}
		fmt.Fprintf(&b, "%d,%s,,\n", i, p)
	}
	writes := 0
	_, err := Import(ctx, pool, strings.NewReader(b.String()), ImportOptions{
		ChunkSize: 10_000,
		Progress: func(phase string, rows int64) {
			if phase != "apply" || rows >= 30_000 {
				return
			}
			wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			// An entity the import wrote in an earlier chunk, and one it
			// does not touch.
			if err := s.SetStatus(wctx, 1, StatusSuspended, nil); err != nil {
				t.Errorf("after %d rows: suspend 1 during the import: %v", rows, err)
			}
			if err := s.Move(wctx, 1_000_000, 1, nil); err != nil {
				t.Errorf("after %d rows: move during the import: %v", rows, err)
			}
			if err := s.Move(wctx, 1_000_000, 0, nil); err != nil {
				t.Errorf("after %d rows: move during the import: %v", rows, err)
			}
			writes++
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	if writes != 2 {
		t.Fatalf("wrote between %d chunk pairs, want 2", writes)
	}
	if got := count(t, pool, "select count(*) from canopy.entities"); got != 30_001 {
		t.Fatalf("%d entities, want 30001", got)
	}
	// The concurrent suspend stays: the file's row for 1 was applied before.
	if got := count(t, pool, "select count(*) from canopy.entities where id = 1 and status = 'suspended'"); got != 1 {
		t.Fatal("concurrent change lost")
	}
}
