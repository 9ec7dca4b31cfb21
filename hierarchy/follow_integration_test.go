package hierarchy

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kgo"
)

// forge produces values straight to the hierarchy topic, as anyone who may
// write it could.
func forge(t *testing.T, cl *kgo.Client, values ...[]byte) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, v := range values {
		if err := cl.ProduceSync(ctx, &kgo.Record{Key: []byte("forged"), Value: v}).FirstErr(); err != nil {
			t.Fatalf("produce forged message: %v", err)
		}
	}
}

// forgedMsg is a message in the relay's format with the given claims.
func forgedMsg(seq, id, parent int64, status string) []byte {
	m := Message{OutboxSeq: seq, HistorySeq: seq, EntityID: id, Op: "update", Status: status,
		RecordedAt: time.Now().UTC().Format(time.RFC3339Nano), Version: 1, Relay: "forger"}
	if parent != 0 {
		m.ParentID = &parent
	}
	b, _ := json.Marshal(m)
	return b
}

// waitVersion waits until the tree has applied PostgreSQL's latest seq.
func waitVersion(t *testing.T, s *Store, tr *Tree, timeout time.Duration) int64 {
	t.Helper()
	latest, err := s.LatestSeq(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(timeout)
	for tr.Version() < latest {
		if time.Now().After(deadline) {
			t.Fatalf("tree at version %d, PostgreSQL at %d after %s", tr.Version(), latest, timeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if v := tr.Version(); v != latest {
		t.Fatalf("tree at version %d, beyond PostgreSQL's %d", v, latest)
	}
	return latest
}

// pgPaths is the independent oracle: every entity's path from its root and
// its status, by a recursive query over canopy.entities.
func pgPaths(t *testing.T, pool *pgxpool.Pool) map[int64]string {
	t.Helper()
	rows, err := pool.Query(context.Background(), `
		with recursive p (id, path) as (
			select id, id::text from canopy.entities where parent_id is null
			union all
			select e.id, p.path || '/' || e.id from canopy.entities e join p on e.parent_id = p.id)
		select p.id, p.path || ' ' || e.status from p join canopy.entities e using (id)`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	out := map[int64]string{}
	for rows.Next() {
		var (
			id   int64
			path string
		)
		if err := rows.Scan(&id, &path); err != nil {
			t.Fatal(err)
		}
		out[id] = path
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// pgChainAt is the as-was oracle: entity id's chain at time at, by a
// recursive query over the live (not superseded) history intervals.
func pgChainAt(t *testing.T, pool *pgxpool.Pool, id int64, at time.Time) string {
	t.Helper()
	var chain string
	err := pool.QueryRow(context.Background(), `
		with recursive v as (
			select id, parent_id, status from canopy.entity_history
			 where superseded_by is null and valid_from <= $2 and (valid_to is null or valid_to > $2)),
		c (id, parent_id, chain, n) as (
			select id, parent_id, id || ':' || status, 1 from v where id = $1
			union all
			select v.id, v.parent_id, c.chain || ' ' || v.id || ':' || v.status, c.n + 1
			  from c join v on v.id = c.parent_id where c.n < 300)
		select chain from c where parent_id is null`, id, at).Scan(&chain)
	if err != nil {
		t.Fatalf("chain of %d at %s: %v", id, at, err)
	}
	return chain
}

func treeChain(tr *Tree, id int64, at time.Time) string {
	chain, ok := tr.Ancestors(id, at, nil)
	if !ok {
		return "unknown"
	}
	parts := make([]string, len(chain))
	for i, a := range chain {
		parts[i] = fmt.Sprintf("%d:%s", a.ID, a.Status)
	}
	return strings.Join(parts, " ")
}

// TestFollowerRejectsForgedMessages writes forged messages straight to the
// hierarchy topic, before and between real changes that go the normal way
// (SQL, outbox, relay): a huge history_seq, a wrong parent under a real
// seq, garbage. The follower's tree, fed by the topic alone, must equal
// PostgreSQL's hierarchy (current paths and as-was chains, by recursive
// queries), and the metric must count exactly the forged messages.
func TestFollowerRejectsForgedMessages(t *testing.T) {
	pool := testDB(t, false)
	brokers, topic, producer := testTopic(t)
	s := NewStore(pool)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))

	// A first hierarchy, two days old: 1 and 2 roots, 3…20 below them.
	created := time.Now().Add(-48 * time.Hour).Truncate(time.Second)
	for id := int64(1); id <= 20; id++ {
		parent := int64(0)
		if id > 2 {
			parent = 1 + id%2
			if id > 8 {
				parent = id - 6
			}
		}
		if err := s.Create(ctx, id, parent, fmt.Sprintf("e%d", id), StatusActive, &created); err != nil {
			t.Fatal(err)
		}
	}
	var seq7 int64 // the history seq that created entity 7 (under 1 + 7%2 = 2)
	if err := pool.QueryRow(ctx, "select seq from canopy.entity_history where id = 7").Scan(&seq7); err != nil {
		t.Fatal(err)
	}

	// Forged before the relay publishes anything: without verification the
	// huge seq would make the tree ignore every real change after it, and
	// the wrong parent would stand in for the real change seq7.
	forge(t, producer,
		forgedMsg(1<<60, 5, 0, "closed"),
		forgedMsg(seq7, 7, 1, "active"),
		[]byte("{not json"),
	)

	relay := &Relay{Pool: pool, Brokers: brokers, Topic: topic, Name: "test", Log: log}
	go func() { _ = relay.Run(ctx) }()

	tr := NewTree()
	rejected := NewRejectedCounter(prometheus.NewRegistry())
	f := &Follower{Brokers: brokers, Topic: topic, Tree: tr, Log: log, History: s, Rejected: rejected}
	done := make(chan error, 1)
	go func() { done <- f.Run(ctx, nil) }()
	waitVersion(t, s, tr, time.Minute)

	// Real changes, with forged messages between them: moves now and
	// back-dated, a suspension, new entities.
	before := time.Now().Add(-time.Hour).Truncate(time.Second)
	if err := s.Move(ctx, 9, 2, &before); err != nil { // 9 and its subtree (15) from under 3 to under 2
		t.Fatal(err)
	}
	latest, err := s.LatestSeq(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// A seq that a rolled-back change used: PostgreSQL never had it.
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var gap int64
	if _, err := tx.Exec(ctx, "insert into canopy.entities (id, parent_id) values (99, 1)"); err != nil {
		t.Fatal(err)
	}
	if err := tx.QueryRow(ctx, "select max(seq) from canopy.entity_history").Scan(&gap); err != nil {
		t.Fatal(err)
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	forge(t, producer,
		forgedMsg(latest, 9, 1, "active"), // a real, recent seq with another parent
		forgedMsg(gap, 99, 1, "active"),   // a seq PostgreSQL never committed
		forgedMsg(1<<61, 9, 1, "active"),  // huge again
	)
	if err := s.SetStatus(ctx, 4, StatusSuspended, nil); err != nil {
		t.Fatal(err)
	}
	if err := s.Move(ctx, 14, 1, nil); err != nil {
		t.Fatal(err)
	}
	if err := s.Create(ctx, 21, 14, "", StatusActive, nil); err != nil {
		t.Fatal(err)
	}
	waitVersion(t, s, tr, time.Minute)

	want := pgPaths(t, pool)
	if len(want) != 21 || tr.Len() != 21 {
		t.Fatalf("PostgreSQL has %d entities, the tree %d; want 21", len(want), tr.Len())
	}
	for id, w := range want {
		_, st, _ := tr.Current(id)
		path := tr.Path(id)
		parts := make([]string, len(path))
		for i, p := range path {
			parts[i] = fmt.Sprint(p)
		}
		if got := strings.Join(parts, "/") + " " + st.String(); got != w {
			t.Errorf("entity %d: tree %q, PostgreSQL %q", id, got, w)
		}
	}
	// As-was, on both sides of the back-dated move.
	for _, at := range []time.Time{before.Add(-time.Minute), before.Add(time.Minute), time.Now()} {
		for _, id := range []int64{7, 9, 15, 21} {
			if id == 21 && at.Before(before.Add(time.Hour)) {
				continue // did not exist then
			}
			if got, w := treeChain(tr, id, at), pgChainAt(t, pool, id, at); got != w {
				t.Errorf("chain of %d at %s: tree %q, PostgreSQL %q", id, at.Format(time.RFC3339), got, w)
			}
		}
	}
	for reason, n := range map[string]int{RejectUnknownSeq: 3, RejectMismatch: 2, RejectMalformed: 1} {
		if got := counterValue(rejected, reason); got != n {
			t.Errorf("canopy_hierarchy_rejected_total{reason=%q} = %d, want %d", reason, got, n)
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("follower: %v", err)
	}
}
