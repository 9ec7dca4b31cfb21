package hierarchy

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"runtime"
	"slices"
	"sync/atomic"
	"testing"
	"time"
)

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

func day(n int) time.Time { return t0.AddDate(0, 0, n) }

// chain renders an ancestor chain as "id:status" links for readable diffs.
func chain(as []Ancestor) []string {
	var out []string
	for i, a := range as {
		if int(a.Depth) != i {
			out = append(out, fmt.Sprintf("bad depth %d at %d", a.Depth, i))
		}
		s := fmt.Sprint(a.ID)
		if a.Status != StatusActive {
			s += ":" + a.Status.String()
		}
		out = append(out, s)
	}
	return out
}

func TestTreeAncestors(t *testing.T) {
	// 1 ─┬─ 2 ── 4
	//    └─ 3
	// day 10: 4 moves under 3; day 20: 4 moves back under 2 and 2 is
	// suspended; then a back-dated change says 4 was under 1 from day 5.
	base := []Change{
		{Seq: 1, ID: 1},
		{Seq: 2, ID: 2, ParentID: 1},
		{Seq: 3, ID: 3, ParentID: 1},
		{Seq: 4, ID: 4, ParentID: 2, ValidFrom: day(0)},
		{Seq: 5, ID: 4, ParentID: 3, ValidFrom: day(10)},
		{Seq: 6, ID: 4, ParentID: 2, ValidFrom: day(20)},
		{Seq: 7, ID: 2, ParentID: 1, Status: StatusSuspended, ValidFrom: day(20)},
	}
	backdated := append(slices.Clone(base), Change{Seq: 8, ID: 4, ParentID: 1, ValidFrom: day(5)})
	cycle := []Change{
		{Seq: 1, ID: 1, ParentID: 2},
		{Seq: 2, ID: 2, ParentID: 1},
		{Seq: 3, ID: 3, ParentID: 1},
	}
	tests := []struct {
		name    string
		changes []Change
		id      int64
		at      time.Time
		want    []string // nil = not ok
	}{
		{name: "before first version uses first", changes: base, id: 4, at: day(-100), want: []string{"4", "2", "1"}},
		{name: "first version", changes: base, id: 4, at: day(3), want: []string{"4", "2", "1"}},
		{name: "exactly at second version", changes: base, id: 4, at: day(10), want: []string{"4", "3", "1"}},
		{name: "between second and third", changes: base, id: 4, at: day(19), want: []string{"4", "3", "1"}},
		{name: "latest with suspended ancestor", changes: base, id: 4, at: day(30), want: []string{"4", "2:suspended", "1"}},
		{name: "ancestor status as-was", changes: base, id: 4, at: day(2), want: []string{"4", "2", "1"}},
		{name: "zero time means always", changes: base, id: 4, at: time.Time{}, want: []string{"4", "2", "1"}},
		{name: "root", changes: base, id: 1, at: day(1), want: []string{"1"}},
		{name: "unknown id", changes: base, id: 99, at: day(1), want: nil},
		{name: "back-dated before it", changes: backdated, id: 4, at: day(4), want: []string{"4", "2", "1"}},
		{name: "back-dated in force", changes: backdated, id: 4, at: day(7), want: []string{"4", "1"}},
		{name: "back-dated supersedes the later move", changes: backdated, id: 4, at: day(12), want: []string{"4", "1"}},
		{name: "back-dated supersedes the latest version", changes: backdated, id: 4, at: day(25), want: []string{"4", "1"}},
		{name: "cycle guard", changes: cycle, id: 3, at: day(1), want: nil},
		{name: "parent without version", changes: []Change{{Seq: 1, ID: 5, ParentID: 6}}, id: 5, at: day(1), want: nil},
		{name: "reserved parent is unknown itself", changes: []Change{{Seq: 1, ID: 5, ParentID: 6}}, id: 6, at: day(1), want: nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tr := NewTree()
			for _, c := range tt.changes {
				if err := tr.Apply(c); err != nil {
					t.Fatal(err)
				}
			}
			prefix := []Ancestor{{ID: -1}}
			got, ok := tr.Ancestors(tt.id, tt.at, prefix)
			if got[0].ID != -1 {
				t.Fatalf("Ancestors overwrote dst's existing elements")
			}
			if tt.want == nil {
				if ok || len(got) != 1 {
					t.Fatalf("Ancestors(%d) = %v, %v; want not ok and dst unchanged", tt.id, chain(got[1:]), ok)
				}
				return
			}
			if !ok || !slices.Equal(chain(got[1:]), tt.want) {
				t.Fatalf("Ancestors(%d, %s) = %v, %v; want %v", tt.id, tt.at.Format(time.DateOnly), chain(got[1:]), ok, tt.want)
			}
		})
	}
}

func TestTreeEqualValidFromLastAppliedWins(t *testing.T) {
	tr := NewTree()
	for _, c := range []Change{
		{Seq: 1, ID: 1}, {Seq: 2, ID: 2}, {Seq: 3, ID: 3},
		{Seq: 4, ID: 9, ParentID: 1, ValidFrom: day(0)},
		{Seq: 5, ID: 9, ParentID: 2, ValidFrom: day(10)},
		{Seq: 6, ID: 9, ParentID: 3, ValidFrom: day(10)}, // same instant, later seq
		{Seq: 7, ID: 9, ParentID: 1, ValidFrom: day(20)},
		{Seq: 8, ID: 9, ParentID: 2, ValidFrom: day(10)}, // back-dated onto the same instant
	} {
		if err := tr.Apply(c); err != nil {
			t.Fatal(err)
		}
	}
	got, _ := tr.Ancestors(9, day(15), nil)
	if want := []string{"9", "2"}; !slices.Equal(chain(got), want) {
		t.Fatalf("Ancestors = %v, want %v", chain(got), want)
	}
}

func TestTreeApply(t *testing.T) {
	tr := NewTree()
	must := func(c Change) {
		t.Helper()
		if err := tr.Apply(c); err != nil {
			t.Fatal(err)
		}
	}
	must(Change{Seq: 10, ID: 1})
	must(Change{Seq: 11, ID: 2, ParentID: 1, ValidFrom: day(1)})
	must(Change{Seq: 12, ID: 3, ParentID: 2, ValidFrom: day(1)})
	if tr.Version() != 12 || tr.Len() != 3 {
		t.Fatalf("Version, Len = %d, %d; want 12, 3", tr.Version(), tr.Len())
	}

	// Re-applying an old change (a replayed feed) is a no-op.
	must(Change{Seq: 11, ID: 2, ParentID: 0, Status: StatusClosed, ValidFrom: day(2)})
	if p, s, ok := tr.Current(2); !ok || p != 1 || s != StatusActive {
		t.Fatalf("after replay Current(2) = %d, %v, %v; want 1, active, true", p, s, ok)
	}
	if tr.Version() != 12 {
		t.Fatalf("replay moved Version to %d", tr.Version())
	}

	must(Change{Seq: 13, ID: 3, ParentID: 1, Status: StatusSuspended, ValidFrom: day(5)})
	if p, s, ok := tr.Current(3); !ok || p != 1 || s != StatusSuspended {
		t.Fatalf("Current(3) = %d, %v, %v; want 1, suspended, true", p, s, ok)
	}
	if _, _, ok := tr.Current(42); ok {
		t.Fatal("Current(42) ok for an unknown id")
	}
	if got := tr.Path(3); !slices.Equal(got, []int64{1, 3}) {
		t.Fatalf("Path(3) = %v, want [1 3]", got)
	}
	if got := tr.Level(3); got != 1 {
		t.Fatalf("Level(3) = %d, want 1", got)
	}
	if got := tr.Level(1); got != 0 {
		t.Fatalf("Level(1) = %d, want 0", got)
	}
	if got, lvl := tr.Path(42), tr.Level(42); got != nil || lvl != -1 {
		t.Fatalf("Path, Level of unknown = %v, %d; want nil, -1", got, lvl)
	}

	bad := []struct {
		name string
		c    Change
		want error
	}{
		{"zero id", Change{Seq: 20, ID: 0}, errBadID},
		{"negative parent", Change{Seq: 20, ID: 5, ParentID: -1}, errBadParent},
		{"own parent", Change{Seq: 20, ID: 5, ParentID: 5}, errBadParent},
		{"bad status", Change{Seq: 20, ID: 5, Status: 7}, ErrBadStatus},
	}
	for _, b := range bad {
		if err := tr.Apply(b.c); !errors.Is(err, b.want) {
			t.Errorf("%s: Apply = %v, want %v", b.name, err, b.want)
		}
	}
	if tr.Version() != 13 {
		t.Fatalf("rejected changes moved Version to %d", tr.Version())
	}
}

func TestTreeManyEntities(t *testing.T) {
	// Enough ids to force several rehashes, including sparse and huge ids.
	tr := NewTree()
	rng := rand.New(rand.NewPCG(1, 2))
	ids := []int64{}
	seq := int64(0)
	for i := 0; i < 50000; i++ {
		id := rng.Int64N(1<<62) + 1
		var parent int64
		if len(ids) > 0 {
			parent = ids[rng.IntN(len(ids))]
		}
		seq++
		if err := tr.Apply(Change{Seq: seq, ID: id, ParentID: parent}); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	for i, id := range ids {
		p, _, ok := tr.Current(id)
		if !ok {
			t.Fatalf("entity %d (#%d) lost", id, i)
		}
		if i == 0 && p != 0 {
			t.Fatalf("first entity has parent %d", p)
		}
	}
}

func TestParseStatus(t *testing.T) {
	for _, s := range []Status{StatusActive, StatusSuspended, StatusClosed} {
		got, err := ParseStatus(s.String())
		if err != nil || got != s {
			t.Errorf("ParseStatus(%q) = %v, %v", s.String(), got, err)
		}
	}
	for _, in := range []string{"", "Active", "deleted"} {
		if _, err := ParseStatus(in); !errors.Is(err, ErrBadStatus) {
			t.Errorf("ParseStatus(%q) err = %v, want ErrBadStatus", in, err)
		}
	}
}

func TestTreeAncestorsNoAlloc(t *testing.T) {
	tr := buildTree(t, 10000, 0.05)
	dst := make([]Ancestor, 0, MaxDepth)
	allocs := testing.AllocsPerRun(100, func() {
		dst, _ = tr.Ancestors(9999, day(3), dst[:0])
	})
	if allocs != 0 {
		t.Fatalf("Ancestors allocated %.1f times per call", allocs)
	}
}

func TestSynthesize(t *testing.T) {
	const n = 20000
	es := Synthesize(n, 7)
	if !slices.Equal(es, Synthesize(n, 7)) {
		t.Fatal("Synthesize is not deterministic")
	}
	roots, suspended, maxDepth, sumChain := 0, 0, 0, 0
	depth := make([]int, n+1)
	for i, e := range es {
		if e.ID != int64(i+1) {
			t.Fatalf("entity %d has id %d", i, e.ID)
		}
		if e.ParentID >= e.ID {
			t.Fatalf("entity %d has parent %d", e.ID, e.ParentID)
		}
		if e.ParentID == 0 {
			roots++
		} else {
			depth[e.ID] = depth[e.ParentID] + 1
		}
		maxDepth = max(maxDepth, depth[e.ID])
		sumChain += depth[e.ID] + 1
		if e.Status == StatusSuspended {
			suspended++
		}
	}
	avg := float64(sumChain) / n
	t.Logf("roots %d, mean chain %.2f, max depth %d, suspended %.1f%%", roots, avg, maxDepth, 100*float64(suspended)/n)
	if roots != synthRoots || avg < 6 || avg > 8 || maxDepth < 12 || maxDepth > 15 || suspended < n/100 || suspended > n/10 {
		t.Fatal("synthetic forest out of shape")
	}
}

// buildTree applies a synthetic forest of n entities, then gives a share of
// them (extra) one or two later versions, like a few months of moves.
func buildTree(tb testing.TB, n int, extra float64) *Tree {
	tb.Helper()
	es := Synthesize(n, 1)
	tr := NewTree()
	applyForest(tb, tr, es, extra)
	return tr
}

func applyForest(tb testing.TB, tr *Tree, es []SynthEntity, extra float64) {
	seq := int64(0)
	for _, e := range es {
		seq++
		if err := tr.Apply(Change{Seq: seq, ID: e.ID, ParentID: e.ParentID, Status: e.Status}); err != nil {
			tb.Fatal(err)
		}
	}
	rng := rand.New(rand.NewPCG(3, 4))
	for i := 0; i < int(float64(len(es))*extra); i++ {
		e := es[rng.IntN(len(es))]
		for v := 1; v <= 1+rng.IntN(2); v++ {
			// Moving to an earlier id's parent keeps parents below ids, so
			// the forest stays acyclic.
			p := es[rng.IntN(int(e.ID))].ParentID
			seq++
			c := Change{Seq: seq, ID: e.ID, ParentID: p, Status: StatusActive, ValidFrom: day(v * 10)}
			if err := tr.Apply(c); err != nil {
				tb.Fatal(err)
			}
		}
	}
}

func BenchmarkTreeAncestors(b *testing.B) {
	tr := buildTree(b, 1_000_000, 0.05)
	benchChains(b, 4096, 5, func(id int64, dst []Ancestor) ([]Ancestor, bool) { return tr.Ancestors(id, day(15), dst) })
}

// BenchmarkTreeAncestorsAsOfCold is the worker's lookup (AncestorsAsOf, as
// of the tree's version) for ids drawn at random from all 1,000,000, so
// that, as in a worker, most links are not in any cache.
func BenchmarkTreeAncestorsAsOfCold(b *testing.B) {
	tr := buildTree(b, 1_000_000, 0.05)
	asOf := tr.Version()
	benchChains(b, 1<<20, 7, func(id int64, dst []Ancestor) ([]Ancestor, bool) { return tr.AncestorsAsOf(id, day(15), asOf, dst) })
}

// BenchmarkTreeAncestorsHeld is the worker's look-up of random ids as
// BenchmarkTreeAncestorsAsOfCold, a chunk of 256 ids per op on every core
// (as the worker's partitions resolve at once), side by side: each id
// through Tree (cold); through Tree after Warm on the chunk (warm); through
// Held after Warm, one read lock for the chunk (held).
func BenchmarkTreeAncestorsHeld(b *testing.B) {
	tr := buildTree(b, 1_000_000, 0.05)
	asOf := tr.Version()
	rng := rand.New(rand.NewPCG(7, 8))
	ids := make([]int64, 1<<20)
	for i := range ids {
		ids[i] = rng.Int64N(1_000_000) + 1
	}
	const chunk = 256
	for _, mode := range []string{"cold", "warm", "held"} {
		b.Run(mode, func(b *testing.B) {
			var next atomic.Int64 // the next chunk, shared by the goroutines
			b.RunParallel(func(pb *testing.PB) {
				dst := make([]Ancestor, 0, MaxDepth)
				for pb.Next() {
					at := int(next.Add(chunk)-chunk) & (len(ids) - 1)
					part := ids[at : at+chunk]
					lookup, release := tr.AncestorsAsOfLatest, func() {}
					if mode != "cold" {
						var h Held
						h, release = tr.Hold()
						h.Warm(part)
						if mode == "warm" {
							release()
							release = func() {}
						} else {
							lookup = h.AncestorsAsOfLatest
						}
					}
					for _, id := range part {
						var ok bool
						if dst, ok, _ = lookup(id, day(15), asOf, dst[:0]); !ok {
							b.Error("unknown id")
						}
					}
					release()
				}
			})
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/chunk, "ns/id")
		})
	}
}

// benchChains times lookup over n (a power of two) ids drawn from
// 1..1,000,000 with seed, round and round.
func benchChains(b *testing.B, n int, seed uint64, lookup func(id int64, dst []Ancestor) ([]Ancestor, bool)) {
	rng := rand.New(rand.NewPCG(seed, seed+1))
	ids := make([]int64, n)
	for i := range ids {
		ids[i] = rng.Int64N(1_000_000) + 1
	}
	dst := make([]Ancestor, 0, MaxDepth)
	links := 0
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		var ok bool
		dst, ok = lookup(ids[i&(n-1)], dst[:0])
		if !ok {
			b.Fatal("unknown id")
		}
		links += len(dst)
	}
	b.ReportMetric(float64(links)/float64(b.N), "links/op")
}

func BenchmarkTreeAncestorsParallel(b *testing.B) {
	const n = 1_000_000
	tr := buildTree(b, n, 0.05)
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		rng := rand.New(rand.NewPCG(rand.Uint64(), 6))
		dst := make([]Ancestor, 0, MaxDepth)
		for pb.Next() {
			dst, _ = tr.Ancestors(rng.Int64N(n)+1, day(15), dst[:0])
		}
	})
}

// BenchmarkTreeMemory reports the live heap a Tree needs per entity, history
// included, at 1,000,000 entities with 5% having two or three versions.
func BenchmarkTreeMemory(b *testing.B) {
	const n = 1_000_000
	es := Synthesize(n, 1)
	for b.Loop() {
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		tr := NewTree()
		applyForest(b, tr, es, 0.05)
		runtime.GC()
		runtime.ReadMemStats(&after)
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/n, "bytes/entity")
		runtime.KeepAlive(tr)
	}
	runtime.KeepAlive(es)
}

func TestTreeSupersededVersionsStayForOlderLookups(t *testing.T) {
	tr := NewTree()
	for _, c := range []Change{
		{Seq: 1, ID: 1},
		{Seq: 2, ID: 2, ParentID: 1},
		{Seq: 3, ID: 3, ParentID: 1},
		{Seq: 4, ID: 4, ParentID: 2, ValidFrom: day(0)},
		{Seq: 5, ID: 4, ParentID: 3, ValidFrom: day(10)},
		{Seq: 6, ID: 4, ParentID: 2, ValidFrom: day(20)},
		{Seq: 7, ID: 4, ParentID: 1, ValidFrom: day(5)},  // supersedes 5 and 6
		{Seq: 8, ID: 4, ParentID: 3, ValidFrom: day(30)}, // a normal move after it
	} {
		if err := tr.Apply(c); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		at   time.Time
		asOf int64
		want []string
	}{
		{day(12), 6, []string{"4", "3", "1"}},
		{day(25), 6, []string{"4", "2", "1"}},
		{day(12), 7, []string{"4", "1"}},
		{day(25), 7, []string{"4", "1"}},
		{day(2), 7, []string{"4", "2", "1"}},
		{day(31), 8, []string{"4", "3", "1"}},
		{day(25), 8, []string{"4", "1"}},
	} {
		got, ok := tr.AncestorsAsOf(4, tc.at, tc.asOf, nil)
		if !ok || !slices.Equal(chain(got), tc.want) {
			t.Errorf("AncestorsAsOf(4, %s, %d) = %v, want %v", tc.at.Format(time.DateOnly), tc.asOf, chain(got), tc.want)
		}
	}
	if p, _, _ := tr.Current(4); p != 3 {
		t.Errorf("current parent of 4 = %d, want 3", p)
	}
}

func TestTreeSubtreeAndRelated(t *testing.T) {
	// 1 ─┬─ 2 ── 4 ── 5
	//    └─ 3
	// then 4 moves under 3.
	tr := NewTree()
	for _, c := range []Change{
		{Seq: 1, ID: 1}, {Seq: 2, ID: 2, ParentID: 1}, {Seq: 3, ID: 3, ParentID: 1},
		{Seq: 4, ID: 4, ParentID: 2}, {Seq: 5, ID: 5, ParentID: 4},
		{Seq: 6, ID: 4, ParentID: 3, ValidFrom: day(10)},
	} {
		if err := tr.Apply(c); err != nil {
			t.Fatal(err)
		}
	}
	sorted := func(ids []int64) []int64 { ids = slices.Clone(ids); slices.Sort(ids); return ids }
	for _, tc := range []struct {
		name string
		got  []int64
		want []int64
	}{
		{"subtree of 2", tr.Subtree(2), []int64{2}},
		{"subtree of 3", tr.Subtree(3), []int64{3, 4, 5}},
		{"subtree of 1", tr.Subtree(1), []int64{1, 2, 3, 4, 5}},
		{"related of 2", tr.Related(2), []int64{2, 4, 5}},
		{"related of 3", tr.Related(3), []int64{3, 4, 5}},
		{"unknown", tr.Subtree(99), nil},
	} {
		if !slices.Equal(sorted(tc.got), tc.want) {
			t.Errorf("%s = %v, want %v", tc.name, tc.got, tc.want)
		}
	}
	if got := tr.Subtree(3); got[0] != 3 {
		t.Errorf("subtree does not start at its root: %v", got)
	}
}

// A chain AncestorsAsOfLatest calls latest is the entity's chain as the
// tree is at asOf: the one AncestorsAsOf gives at a time after every
// ValidFrom, statuses included. Over a random history with moves, status
// changes and back-dated corrections, at every version.
func TestTreeLatestChainIsTheCurrentOne(t *testing.T) {
	const n, changes = 200, 120
	rng := rand.New(rand.NewPCG(11, 12))
	tr := NewTree()
	seq := int64(0)
	for id := int64(1); id <= n; id++ {
		seq++
		p := int64(0)
		if id > 1 && rng.IntN(5) > 0 {
			p = 1 + rng.Int64N(id-1) // parents below ids: acyclic
		}
		if err := tr.Apply(Change{Seq: seq, ID: id, ParentID: p, Status: StatusActive, ValidFrom: day(0)}); err != nil {
			t.Fatal(err)
		}
	}
	statuses := []Status{StatusActive, StatusActive, StatusSuspended}
	for range changes {
		id := 2 + rng.Int64N(n-1)
		seq++
		c := Change{Seq: seq, ID: id, ParentID: 1 + rng.Int64N(id-1), Status: statuses[rng.IntN(len(statuses))],
			ValidFrom: day(rng.IntN(40))} // often before the entity's latest: back-dated
		if err := tr.Apply(c); err != nil {
			t.Fatal(err)
		}
	}
	future := day(100_000)
	var latest, notLatest, differ int
	for asOf := int64(1); asOf <= seq; asOf += 7 {
		for id := int64(1); id <= n; id++ {
			at := day(rng.IntN(45) - 2)
			got, ok, isLatest := tr.AncestorsAsOfLatest(id, at, asOf, nil)
			want, wantOK := tr.AncestorsAsOf(id, at, asOf, nil)
			if ok != wantOK || !slices.Equal(got, want) {
				t.Fatalf("AncestorsAsOfLatest(%d, %s, %d) = %v %v, AncestorsAsOf %v %v", id, at.Format(time.DateOnly), asOf, got, ok, want, wantOK)
			}
			now, nowOK := tr.AncestorsAsOf(id, future, asOf, nil)
			switch {
			case !ok:
			case isLatest:
				latest++
				if !nowOK || !slices.Equal(got, now) {
					t.Fatalf("AncestorsAsOfLatest(%d, %s, %d) = %v, called latest, but as it is: %v", id, at.Format(time.DateOnly), asOf, got, now)
				}
			default:
				notLatest++
				if !slices.Equal(got, now) {
					differ++
				}
			}
		}
	}
	// Both answers occur, and chains that are not the current one do.
	if latest < 100 || notLatest < 100 || differ < 50 {
		t.Fatalf("latest %d, not latest %d (of which differ from the current chain %d): the history is too plain", latest, notLatest, differ)
	}
	t.Logf("latest %d, not latest %d, of which %d differ from the current chain", latest, notLatest, differ)
}

// TestWarmChangesNothing: Warm on an empty tree, on known ids and on ids
// the tree never saw leaves every chain as it was, and Held answers as the
// tree does.
func TestWarmChangesNothing(t *testing.T) {
	h, release := NewTree().Hold()
	h.Warm([]int64{1, -5, 0})
	release()
	tr := buildTree(t, 2_000, 0.05)
	ids := []int64{0, -1, 1, 7, 1_999, 2_000, 2_001, 1 << 40}
	before := make([][]Ancestor, len(ids))
	for i, id := range ids {
		before[i], _ = tr.Ancestors(id, day(15), nil)
	}
	h, release = tr.Hold()
	h.Warm(ids)
	for i, id := range ids {
		if after, _, _ := h.AncestorsAsOfLatest(id, day(15), h.Version(), nil); !slices.Equal(after, before[i]) {
			t.Errorf("id %d: chain %v after Warm, %v before", id, after, before[i])
		}
	}
	v := h.Version()
	release()
	if tr.Version() != v {
		t.Errorf("Held.Version %d, Tree.Version %d", v, tr.Version())
	}
}
