package main

import (
	"testing"
	"time"

	"github.com/canopyhq/canopy/hierarchy"
	"github.com/canopyhq/canopy/ingest"
)

// TestResolverLookupsAllocateNothing: a chain look-up runs once per event,
// so the worker's resolvers must answer it into the caller's slice without
// a heap allocation of their own (a chain buffer moved to the heap cost 512
// bytes an event). The chains are checked against the tree's own.
func TestResolverLookupsAllocateNothing(t *testing.T) {
	tr := hierarchy.NewTree()
	from := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	// A line 1 ← 2 ← … ← 40: entity 40's chain is longer than the stack
	// buffer, which must then grow without changing the answer.
	for id := int64(1); id <= 40; id++ {
		if err := tr.Apply(hierarchy.Change{Seq: id, ID: id, ParentID: id - 1, Status: hierarchy.StatusActive, ValidFrom: from}); err != nil {
			t.Fatal(err)
		}
	}
	at := from.Add(time.Hour)
	r := &treeResolver{t: tr}
	held, release := r.Warm([]int64{5, 40})
	defer release()
	for _, c := range []struct {
		name string
		res  ingest.Resolver
	}{{"tree", r}, {"held", held}} {
		for _, id := range []int64{5, 40} {
			want, ok := tr.Ancestors(id, at, nil)
			if !ok {
				t.Fatalf("tree has no chain for %d", id)
			}
			dst := make([]ingest.Ancestor, 0, hierarchy.MaxDepth)
			var got []ingest.Ancestor
			allocs := testing.AllocsPerRun(100, func() {
				got, ok = c.res.Ancestors(id, at, tr.Version(), dst[:0])
			})
			if !ok || len(got) != len(want) {
				t.Fatalf("%s: chain of %d: %v, %v; want %d links", c.name, id, got, ok, len(want))
			}
			for i, a := range want {
				if got[i] != (ingest.Ancestor{ID: a.ID, Depth: a.Depth, Suspended: a.Status != hierarchy.StatusActive}) {
					t.Fatalf("%s: chain of %d, link %d: %+v, want %+v", c.name, id, i, got[i], a)
				}
			}
			// Past the stack buffer the tree's append grows a slice of its
			// own: only chains that fit it are held to zero.
			if id <= chainBuf && allocs != 0 {
				t.Errorf("%s: look-up of %d allocated %.1f times", c.name, id, allocs)
			}
		}
	}
}
