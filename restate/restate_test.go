package restate

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/canopyhq/canopy/hierarchy"
	"github.com/canopyhq/canopy/ingest"
	"github.com/canopyhq/canopy/internal/backoff"
)

// Issue 14: a change the restater could not restate (an entity moved under
// a chain longer than hierarchy.MaxDepth) was retried every 2 s forever, and
// as-is rollups and the entities table stopped for everyone. Now such a
// change is classified permanent and parked after maxAttempts, and so is
// every later change whose correction would build on it.

func TestClassify(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  error
		want errClass
	}{
		{"no chain", fmt.Errorf("restate change 7: %w: entity 4 has no ancestor chain", ErrUnrestatable), classPermanent},
		{"depends on parked", fmt.Errorf("%w: depends on parked change 3", ErrDependsOnParked), classPermanent},
		{"canceled", fmt.Errorf("read: %w", context.Canceled), classCanceled},
		{"deadline", context.DeadlineExceeded, classCanceled},
		{"postgres server", &pgconn.PgError{Code: "57P01", Message: "terminating connection"}, classTransient},
		{"postgres deterministic", &pgconn.PgError{Code: "42P01", Message: "relation does not exist"}, classTransient},
		{"clickhouse server", fmt.Errorf("write: %w", &clickhouse.Exception{Code: 252, Message: "too many parts"}), classTransient},
		{"network", &net.OpError{Op: "dial", Net: "tcp", Err: errors.New("connection refused")}, classTransient},
		{"eof", io.ErrUnexpectedEOF, classTransient},
		{"tree behind", errors.New("hierarchy at version 5, restating up to 9"), classTransient},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := classify(tc.err); got != tc.want {
				t.Errorf("classify(%v) = %s, want %s", tc.err, got, tc.want)
			}
		})
	}
}

func TestWaitingFor(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want string
	}{
		{&pgconn.PgError{Code: "57P01"}, "postgresql"},
		{fmt.Errorf("x: %w", &clickhouse.Exception{Code: 241}), "clickhouse"},
		{errors.New("hierarchy at version 5, restating up to 9"), "hierarchy refresh"},
		{errors.New("something"), "retry"},
	} {
		if got := waitingFor(tc.err); got != tc.want {
			t.Errorf("waitingFor(%v) = %q, want %q", tc.err, got, tc.want)
		}
	}
}

// TestBackoff: rounds that keep failing are paced 1 s, doubling, at most
// 30 s — each within internal/backoff's jitter (±backoff.Jitter).
func TestBackoff(t *testing.T) {
	within := func(got, w time.Duration) bool {
		return got >= time.Duration(float64(w)*(1-backoff.Jitter)) && got <= time.Duration(float64(w)*(1+backoff.Jitter))
	}
	want := []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second, 16 * time.Second, 30 * time.Second, 30 * time.Second}
	pace := newPace()
	for i, w := range want {
		if got := pace.Next(); !within(got, w) {
			t.Errorf("wait %d = %s, want %s ± %.0f%%", i+1, got, w, 100*backoff.Jitter)
		}
	}
	for range 1000 {
		pace.Next()
	}
	if got := pace.Next(); !within(got, 30*time.Second) {
		t.Errorf("wait 1008 = %s, want the cap", got)
	}
	pace.Reset()
	if got := pace.Next(); !within(got, time.Second) {
		t.Errorf("wait after Reset = %s, want 1 s again", got)
	}
}

// testTree adapts hierarchy.Tree to Tree, as the worker's resolver does.
type testTree struct{ t *hierarchy.Tree }

func (r testTree) Ancestors(id int64, at time.Time, asOf int64, dst []ingest.Ancestor) ([]ingest.Ancestor, bool) {
	chain, ok := r.t.AncestorsAsOf(id, at, asOf, nil)
	if !ok {
		return dst, false
	}
	for _, a := range chain {
		dst = append(dst, ingest.Ancestor{ID: a.ID, Depth: a.Depth, Suspended: a.Status != hierarchy.StatusActive})
	}
	return dst, true
}
func (r testTree) Version() int64           { return r.t.Version() }
func (r testTree) Subtree(id int64) []int64 { return r.t.Subtree(id) }
func (r testTree) Related(id int64) []int64 { return r.t.Related(id) }
func (r testTree) Path(id int64) []int64    { return r.t.Path(id) }

// reachFixture builds 1 ─ 2 ─ 4 ─ 8, 1 ─ 3 ─ {6, 7}, 2 ─ 5, 10 ─ 11 ─ 12
// and a chain 1000 ─ 1001 ─ … ─ 1254 of MaxDepth entities, then moves 4
// under 1254 (seq 1000): 4's chain becomes 256 long and cannot resolve.
func reachFixture(t *testing.T) (testTree, hierarchy.Recorded) {
	t.Helper()
	tr := hierarchy.NewTree()
	seq := int64(0)
	apply := func(id, parent int64) hierarchy.Recorded {
		seq++
		c := hierarchy.Change{Seq: seq, ID: id, ParentID: parent, Status: hierarchy.StatusActive}
		if err := tr.Apply(c); err != nil {
			t.Fatal(err)
		}
		return hierarchy.Recorded{Change: c}
	}
	for _, e := range [][2]int64{{1, 0}, {2, 1}, {3, 1}, {4, 2}, {5, 2}, {6, 3}, {7, 3}, {8, 4}, {10, 0}, {11, 10}, {12, 11}} {
		apply(e[0], e[1])
	}
	apply(1000, 0)
	for id := int64(1001); id < 1000+hierarchy.MaxDepth; id++ {
		apply(id, id-1)
	}
	seq = 999
	bad := apply(4, 1000+hierarchy.MaxDepth-1)
	return testTree{tr}, bad
}

func TestReachOfTooDeepMove(t *testing.T) {
	tree, bad := reachFixture(t)
	var b [64]ingest.Ancestor
	if _, ok := ingest.Chain(tree, 4, ingest.EndOfTime, bad.Seq, ingest.SuspendedInclude, b[:0]); ok {
		t.Fatal("the fixture's bad move resolves; it should be past MaxDepth")
	}
	reach := reachOf(tree, bad, nil)
	want := []int64{1, 2}
	for id := int64(1000); id < 1000+hierarchy.MaxDepth; id++ {
		want = append(want, id)
	}
	if !slices.Equal(reach, want) {
		t.Errorf("reach = %v…(%d), want 1, 2 and the whole deep chain (%d)", reach[:min(5, len(reach))], len(reach), len(want))
	}
}

func TestInReach(t *testing.T) {
	tree, bad := reachFixture(t)
	set := &parkedSet{}
	set.add(parked{seq: bad.Seq, entity: bad.ID, reach: reachOf(tree, bad, nil)})
	next := bad.Seq
	move := func(id, parent int64) hierarchy.Recorded {
		next++
		c := hierarchy.Change{Seq: next, ID: id, ParentID: parent, Status: hierarchy.StatusActive}
		if err := tree.t.Apply(c); err != nil {
			t.Fatal(err)
		}
		return hierarchy.Recorded{Change: c}
	}
	for _, tc := range []struct {
		name       string
		id, parent int64
		dependent  bool
	}{
		{"outside: a leaf elsewhere", 12, 6, false},
		{"outside: under an ancestor of the parked entity", 7, 11, false},
		{"outside: a sibling's subtree", 5, 3, false},
		{"old ancestor of the parked entity", 2, 10, true},
		{"in the deep chain", 1200, 11, true},
		{"below the parked entity", 8, 5, true},
		{"the parked entity itself", 4, 3, true},
		{"creation elsewhere", 20, 10, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := move(tc.id, tc.parent)
			dep := set.inReach(tree, c)
			if (dep != 0) != tc.dependent {
				t.Fatalf("inReach(move %d under %d) = %d, want dependent %v", tc.id, tc.parent, dep, tc.dependent)
			}
			if dep != 0 {
				set.add(parked{seq: c.Seq, entity: c.ID, reach: reachOf(tree, c, set)})
			}
		})
	}
	// Dependents' reaches join: 10 and 11 received 2 and 1200's subtrees,
	// which the rows never had.
	// 4 held 8's rows, which 8's parked move leaves there: 4 joins too.
	for _, id := range []int64{10, 11, 4} {
		if _, ok := set.tainted[id]; !ok {
			t.Errorf("%d is not in the reach after dependents were parked", id)
		}
	}
	if _, ok := set.tainted[6]; ok {
		t.Error("6 is in the reach, though only a leaf outside it moved under it")
	}
}
