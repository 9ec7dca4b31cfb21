package restate

import (
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/canopyhq/canopy/hierarchy"
	"github.com/canopyhq/canopy/ingest"
	"github.com/canopyhq/canopy/schema"
)

// Unit tests of the restater's and rebuild's pure parts: classifying a
// change, the as-is delta of a move, re-attributing an event as-was, and
// rebuild's attribution, each on a small tree against rows computed by
// hand.

var (
	nov1  = time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	nov5  = time.Date(2026, 11, 5, 0, 0, 0, 0, time.UTC)
	nov10 = time.Date(2026, 11, 10, 0, 0, 0, 0, time.UTC)
)

// smallTree is 1 ─ 2 ─ 4 ─ 5, 1 ─ 3 (seqs 1…5, valid always).
type smallTree struct {
	t   *testing.T
	tr  testTree
	seq int64
}

func newSmallTree(t *testing.T) *smallTree {
	s := &smallTree{t: t, tr: testTree{hierarchy.NewTree()}}
	for _, e := range [][2]int64{{1, 0}, {2, 1}, {3, 1}, {4, 2}, {5, 4}} {
		s.apply(e[0], e[1], hierarchy.StatusActive, time.Time{}, false)
	}
	return s
}

// apply records the next change and returns it as the restater reads it.
func (s *smallTree) apply(id, parent int64, st hierarchy.Status, from time.Time, supersedes bool) hierarchy.Recorded {
	s.t.Helper()
	s.seq++
	c := hierarchy.Change{Seq: s.seq, ID: id, ParentID: parent, Status: st, ValidFrom: from}
	if err := s.tr.t.Apply(c); err != nil {
		s.t.Fatal(err)
	}
	return hierarchy.Recorded{Change: c, Supersedes: supersedes}
}

// links renders a chain as id@depth, with a * for a suspended link.
func links(chain []ingest.Ancestor) string {
	out := ""
	for _, a := range chain {
		out += fmt.Sprintf(" %d@%d", a.ID, a.Depth)
		if a.Suspended {
			out += "*"
		}
	}
	return out
}

func TestPlanChange(t *testing.T) {
	s := newSmallTree(t)
	type want struct {
		moved, asIs, asWas bool
		before, after      string
	}
	check := func(name string, c hierarchy.Recorded, policy ingest.SuspendedPolicy, w want) {
		t.Helper()
		p, err := planChange(s.tr, c, policy)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		got := want{p.moved, p.asIs, p.asWas, links(p.before), links(p.after)}
		if got != w {
			t.Errorf("%s: plan %+v, want %+v", name, got, w)
		}
	}
	// A move of 4 from 2 to 3: both rollups, its subtree's paths.
	check("move", s.apply(4, 3, hierarchy.StatusActive, nov1, false), ingest.SuspendedInclude,
		want{true, true, true, " 4@0 2@1 1@2", " 4@0 3@1 1@2"})
	// A creation: nothing was attributed through 9 yet.
	check("creation", s.apply(9, 3, hierarchy.StatusActive, nov1, false), ingest.SuspendedInclude, want{})
	// Same parent, same status (a rename): nothing.
	check("rename", s.apply(9, 3, hierarchy.StatusActive, nov5, false), ingest.SuspendedInclude,
		want{before: " 9@0 3@1 1@2", after: " 9@0 3@1 1@2"})
	// 3 suspended: nothing under include; under skip 3 stops receiving its
	// downline (as-is) and events attributed through it move (as-was).
	suspend := s.apply(3, 1, hierarchy.StatusSuspended, nov5, false)
	check("suspend, include", suspend, ingest.SuspendedInclude, want{before: " 3@0 1@1", after: " 3@0* 1@1"})
	check("suspend, skip", suspend, ingest.SuspendedSkip, want{false, true, true, " 3@0 1@1", " 3@0* 1@1"})
	// 5 moved under 2 from Nov 10, then that corrected back-dated to Nov 5
	// under the same parent: its current chain stands, only as-was moves.
	check("later move", s.apply(5, 2, hierarchy.StatusActive, nov10, false), ingest.SuspendedInclude,
		want{true, true, true, " 5@0 4@1 3@2* 1@3", " 5@0 2@1 1@2"})
	check("back-dated correction", s.apply(5, 2, hierarchy.StatusActive, nov5, true), ingest.SuspendedInclude,
		want{false, false, true, " 5@0 2@1 1@2", " 5@0 2@1 1@2"})

	// A move past MaxDepth cannot be restated.
	tree, bad := reachFixture(t)
	if _, err := planChange(tree, bad, ingest.SuspendedInclude); !errors.Is(err, ErrUnrestatable) {
		t.Errorf("planChange(move past MaxDepth) = %v, want ErrUnrestatable", err)
	}
}

// row is a rollup row with one measure, for comparing.
type row struct {
	entity, bucket int64
	depth          uint8
	typ            string
	events, sum    int64
}

func rowsOf(t *testing.T, r *ingest.Rollup) []row {
	t.Helper()
	out := make([]row, 0, r.Len())
	for i, k := range r.Keys {
		v, ok := r.Sums[0][i].Int64()
		if !ok {
			t.Fatalf("sum of row %d overflows int64", i)
		}
		out = append(out, row{k.EntityID, k.Bucket, k.Depth, k.Type, r.Events[i], v})
	}
	return out
}

func sums(v int64) []schema.Sum128 {
	var s schema.Sum128
	s.Add(v)
	return []schema.Sum128{s}
}

func chain(ids ...int64) []ingest.Ancestor {
	out := make([]ingest.Ancestor, len(ids))
	for i, id := range ids {
		out[i] = ingest.Ancestor{ID: id, Depth: uint8(i)} //nolint:gosec // short
	}
	return out
}

func TestAsIsDelta(t *testing.T) {
	b := nov1.Unix()
	// 4's subtree as-is: its own sales (2 events, 10) and 5's under it
	// (1 event, 5, depth 1).
	full := ingest.NewRollup(1)
	full.AddRow(ingest.RollupKey{Bucket: b, Depth: 0, Type: "sale"}, 2, sums(10), 1)
	full.AddRow(ingest.RollupKey{Bucket: b, Depth: 1, Type: "sale"}, 1, sums(5), 1)

	for _, tc := range []struct {
		name          string
		before, after []ingest.Ancestor
		policy        ingest.SuspendedPolicy
		want          []row
	}{{
		// 4 moves from 2 to 3: off 2 at depths +1, onto 3 at +1; 1 is 4's
		// grandparent on both sides, so its rows cancel.
		name: "move", before: chain(4, 2, 1), after: chain(4, 3, 1),
		want: []row{{2, b, 1, "sale", -2, -10}, {2, b, 2, "sale", -1, -5}, {3, b, 1, "sale", 2, 10}, {3, b, 2, "sale", 1, 5}},
	}, {
		// 4 moves from under 2 (depth 1) to directly under the root 1:
		// 1 gets the rows one depth shallower.
		name: "move up", before: chain(4, 2, 1), after: chain(4, 1),
		want: []row{{1, b, 1, "sale", 2, 10}, {1, b, 2, "sale", 1, 5}, {1, b, 2, "sale", -2, -10}, {1, b, 3, "sale", -1, -5},
			{2, b, 1, "sale", -2, -10}, {2, b, 2, "sale", -1, -5}},
	}, {
		// Under skip a suspended new parent receives nothing.
		name: "move under a suspended parent, skip", before: chain(4, 2, 1),
		after:  []ingest.Ancestor{{ID: 4}, {ID: 3, Depth: 1, Suspended: true}, {ID: 1, Depth: 2}},
		policy: ingest.SuspendedSkip,
		want:   []row{{2, b, 1, "sale", -2, -10}, {2, b, 2, "sale", -1, -5}},
	}, {
		// Under include it does.
		name: "move under a suspended parent, include", before: chain(4, 2, 1),
		after: []ingest.Ancestor{{ID: 4}, {ID: 3, Depth: 1, Suspended: true}, {ID: 1, Depth: 2}},
		want:  []row{{2, b, 1, "sale", -2, -10}, {2, b, 2, "sale", -1, -5}, {3, b, 1, "sale", 2, 10}, {3, b, 2, "sale", 1, 5}},
	}, {
		// Under skip, 4 suspended in place: its downline rows go, its own
		// stay; no ancestor changes.
		name: "suspend, skip", before: chain(4, 2, 1),
		after:  []ingest.Ancestor{{ID: 4, Suspended: true}, {ID: 2, Depth: 1}, {ID: 1, Depth: 2}},
		policy: ingest.SuspendedSkip,
		want:   []row{{4, b, 1, "sale", -1, -5}},
	}, {
		// And resumed: they come back (full is then its own rows plus its
		// children's, subtreeRows).
		name: "resume, skip", before: []ingest.Ancestor{{ID: 4, Suspended: true}, {ID: 2, Depth: 1}, {ID: 1, Depth: 2}},
		after: chain(4, 2, 1), policy: ingest.SuspendedSkip,
		want: []row{{4, b, 1, "sale", 1, 5}},
	}, {
		name: "same links", before: chain(4, 2, 1), after: chain(4, 2, 1),
		want: []row{},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			got := rowsOf(t, asIsDelta(full, 4, tc.before, tc.after, tc.policy, 1))
			want := tc.want
			// The move-up case lists 1's rows by hand; merge same keys.
			want = mergeRows(want)
			if !slices.Equal(got, want) {
				t.Errorf("delta\n got %v\nwant %v", got, want)
			}
		})
	}
}

// mergeRows sums rows of the same key and drops zero rows, in key order
// (entity, bucket, depth, type), as Sort and Compact leave a rollup.
func mergeRows(rows []row) []row {
	var out []row
	for _, r := range rows {
		i := slices.IndexFunc(out, func(o row) bool {
			return o.entity == r.entity && o.bucket == r.bucket && o.depth == r.depth && o.typ == r.typ
		})
		if i < 0 {
			out = append(out, r)
			continue
		}
		out[i].events += r.events
		out[i].sum += r.sum
	}
	out = slices.DeleteFunc(out, func(r row) bool { return r.events == 0 && r.sum == 0 })
	slices.SortFunc(out, func(a, b row) int {
		switch {
		case a.entity != b.entity:
			return int(a.entity - b.entity)
		case a.bucket != b.bucket:
			return int(a.bucket - b.bucket)
		case a.depth != b.depth:
			return int(a.depth) - int(b.depth)
		}
		return 0
	})
	return append([]row{}, out...)
}

func TestShiftBeyondMaxDepth(t *testing.T) {
	out := ingest.NewRollup(1)
	deep := []ingest.Ancestor{{ID: 7}, {ID: 8, Depth: 1}, {ID: 9, Depth: hierarchy.MaxDepth}}
	shift(out, ingest.RollupKey{Bucket: 60, Type: "x"}, 1, 3, sums(4), deep, 1, ingest.SuspendedInclude)
	out.Sort()
	if got, want := rowsOf(t, out), []row{{8, 60, 2, "x", 3, 4}}; !slices.Equal(got, want) {
		t.Errorf("shift onto a chain reaching MaxDepth = %v, want %v (9 would be at depth %d)", got, want, hierarchy.MaxDepth+1)
	}
}

// event returns an event of entity id at at with one measure v.
func event(id int64, at time.Time, v int64) *ingest.Event {
	return &ingest.Event{EntityID: id, OccurredAt: at, Type: "sale", Measures: []int64{v}}
}

func TestReattribute(t *testing.T) {
	s := newSmallTree(t)
	// 5 moves from 4 to 2, effective Nov 10.
	c := s.apply(5, 2, hierarchy.StatusActive, nov10, false)
	var b1, b2 [64]ingest.Ancestor
	hourly, daily := ingest.NewRollup(1), ingest.NewRollup(1)

	// Before Nov 10 its chain is the same at both versions: nothing moves.
	if reattribute(s.tr, event(5, nov10.Add(-time.Hour), 7), c.Seq, ingest.SuspendedInclude, hourly, daily, &b1, &b2) {
		t.Error("an event before the move's effective time was re-attributed")
	}
	// After it: off 5 ─ 4 ─ 2 ─ 1, onto 5 ─ 2 ─ 1.
	at := nov10.Add(90 * time.Minute)
	if !reattribute(s.tr, event(5, at, 7), c.Seq, ingest.SuspendedInclude, hourly, daily, &b1, &b2) {
		t.Fatal("an event after the move was not re-attributed")
	}
	hour, day := nov10.Add(time.Hour).Unix(), nov10.Unix()
	for _, tc := range []struct {
		name   string
		r      *ingest.Rollup
		bucket int64
	}{{"hourly", hourly, hour}, {"daily", daily, day}} {
		tc.r.Sort()
		tc.r.Compact()
		want := []row{
			{1, tc.bucket, 2, "sale", 1, 7}, {1, tc.bucket, 3, "sale", -1, -7},
			{2, tc.bucket, 1, "sale", 1, 7}, {2, tc.bucket, 2, "sale", -1, -7},
			{4, tc.bucket, 1, "sale", -1, -7},
		}
		if got := rowsOf(t, tc.r); !slices.Equal(got, want) {
			t.Errorf("%s\n got %v\nwant %v", tc.name, got, want)
		}
	}
	// An entity the move does not touch.
	if reattribute(s.tr, event(3, at, 7), c.Seq, ingest.SuspendedInclude, hourly, daily, &b1, &b2) {
		t.Error("an event of 3 was re-attributed by a move of 5")
	}
}

func TestAttribute(t *testing.T) {
	s := newSmallTree(t)
	before := s.seq
	move := s.apply(5, 2, hierarchy.StatusActive, nov10, false).Seq // 5 from under 4 to under 2, from Nov 10
	var b1, b2 [64]ingest.Ancestor
	for _, tc := range []struct {
		name         string
		at           time.Time
		hv, version  int64
		asWas, asIsD []int64 // entities at depths 0, 1, …
	}{
		// Restated through the move: as-was by the event's time, as-is now.
		{"before the move's time", nov10.Add(-time.Hour), before, move, []int64{5, 4, 2, 1}, []int64{5, 2, 1}},
		{"after it", nov10.Add(time.Hour), before, move, []int64{5, 2, 1}, []int64{5, 2, 1}},
		// The restater not there yet, the batch resolved after the move:
		// as-was as the batch resolved it, as-is where the restater will
		// move it from.
		{"batch ahead of the restater", nov10.Add(time.Hour), move, before, []int64{5, 2, 1}, []int64{5, 4, 2, 1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hourly, daily, asIs := ingest.NewRollup(1), ingest.NewRollup(1), ingest.NewRollup(1)
			if !attribute(s.tr, event(5, tc.at, 3), tc.hv, tc.version, ingest.SuspendedInclude, hourly, daily, asIs, &b1, &b2) {
				t.Fatal("not attributed")
			}
			unix := tc.at.Unix()
			for _, r := range []struct {
				name   string
				r      *ingest.Rollup
				bucket int64
				ids    []int64
			}{{"hourly", hourly, unix - unix%3600, tc.asWas}, {"daily", daily, unix - unix%86400, tc.asWas}, {"as-is", asIs, unix - unix%86400, tc.asIsD}} {
				r.r.Sort()
				var want []row
				for d, id := range r.ids {
					want = append(want, row{id, r.bucket, uint8(d), "sale", 1, 3}) //nolint:gosec // short
				}
				if got := rowsOf(t, r.r); !slices.Equal(got, mergeRows(want)) {
					t.Errorf("%s\n got %v\nwant %v", r.name, got, mergeRows(want))
				}
			}
		})
	}
	// An entity the hierarchy does not know.
	if attribute(s.tr, event(77, nov10, 1), move, move, ingest.SuspendedInclude, ingest.NewRollup(1), ingest.NewRollup(1), ingest.NewRollup(1), &b1, &b2) {
		t.Error("an event of an unknown entity was attributed")
	}
}

func TestAffectedFrom(t *testing.T) {
	s := newSmallTree(t)
	r := &Restater{Tree: s.tr}
	// A change effective now (not back-dated): from its time.
	move := s.apply(5, 2, hierarchy.StatusActive, nov10, false)
	if got := r.affectedFrom(move); !got.Equal(nov10) {
		t.Errorf("affectedFrom(move from Nov 10) = %s, want Nov 10", got)
	}
	// Back-dated to Nov 5, same parent just before as after the earlier
	// versions (5 was under 4 before Nov 5 at both versions): from Nov 5.
	corr := s.apply(5, 2, hierarchy.StatusActive, nov5, true)
	if got := r.affectedFrom(corr); !got.Equal(nov5) {
		t.Errorf("affectedFrom(correction to Nov 5) = %s, want Nov 5", got)
	}
	// 6 created under 2 from Nov 10, then corrected to under 3 from Nov 5:
	// its one version stood for all time before, so all history changes.
	s.apply(6, 2, hierarchy.StatusActive, nov10, false)
	first := s.apply(6, 3, hierarchy.StatusActive, nov5, true)
	if got := r.affectedFrom(first); !got.IsZero() {
		t.Errorf("affectedFrom(correction replacing the earliest version) = %s, want all history", got)
	}
	// A back-dated change valid always: all history.
	always := s.apply(4, 3, hierarchy.StatusActive, time.Time{}, true)
	if got := r.affectedFrom(always); !got.IsZero() {
		t.Errorf("affectedFrom(always) = %s, want all history", got)
	}
}
