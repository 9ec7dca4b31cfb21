package ingest

import (
	"cmp"
	"slices"

	"github.com/canopyhq/canopy/schema"
)

// fanoutBuilder sums a batch's fan-out into a sorted Rollup without a hash
// map: every chain link becomes a small fixed-size entry, the entries are
// sorted once, and each run of equal keys becomes one row. For a batch —
// hundreds of thousands of links, few repeats — that is several times
// cheaper than a map insert per link followed by a sort of the rows.
// The result equals Add for every link followed by Sort.
type fanoutBuilder struct {
	measures int
	day      bool // daily buckets, else hourly
	entries  []fanoutEntry
	events   []*Event
	types    map[string]uint16
	names    []string
}

// fanoutEntry is one chain link of one event.
type fanoutEntry struct {
	entity int64
	bucket int64
	event  int32 // index into events
	typ    uint16
	depth  uint8
}

func newFanoutBuilder(measures int, day bool, links int) *fanoutBuilder {
	return &fanoutBuilder{measures: measures, day: day, entries: make([]fanoutEntry, 0, links), types: map[string]uint16{}}
}

// add adds ev once per link of chain.
func (f *fanoutBuilder) add(ev *Event, chain []Ancestor) {
	t, ok := f.types[ev.Type]
	if !ok {
		t = uint16(len(f.names)) //nolint:gosec // a batch has far fewer than 65536 types
		f.types[ev.Type] = t
		f.names = append(f.names, ev.Type)
	}
	unix := ev.OccurredAt.Unix()
	bucket := unix - unix%secondsPerHour
	if f.day {
		bucket = unix - unix%secondsPerDay
	}
	i := int32(len(f.events)) //nolint:gosec // a batch has < 2^31 events
	f.events = append(f.events, ev)
	for _, a := range chain {
		f.entries = append(f.entries, fanoutEntry{entity: a.ID, bucket: bucket, event: i, typ: t, depth: a.Depth})
	}
}

// rollup returns the sorted sums.
func (f *fanoutBuilder) rollup() *Rollup {
	// Types sort by name: renumber them by rank.
	rank := make([]uint16, len(f.names))
	order := make([]int, len(f.names))
	for i := range order {
		order[i] = i
	}
	slices.SortFunc(order, func(a, b int) int { return cmp.Compare(f.names[a], f.names[b]) })
	for r, i := range order {
		rank[i] = uint16(r) //nolint:gosec // < 65536 types
	}
	for i := range f.entries {
		f.entries[i].typ = rank[f.entries[i].typ]
	}
	names := make([]string, len(f.names))
	for i, n := range f.names {
		names[rank[i]] = n
	}
	slices.SortFunc(f.entries, func(a, b fanoutEntry) int {
		if c := compareRow(a.entity, a.bucket, a.depth, b.entity, b.bucket, b.depth); c != 0 {
			return c
		}
		return cmp.Compare(a.typ, b.typ)
	})
	r := &Rollup{Keys: make([]RollupKey, 0, len(f.entries)), Events: make([]int64, 0, len(f.entries)),
		Sums: make([][]schema.Sum128, f.measures)}
	for m := range r.Sums {
		r.Sums[m] = make([]schema.Sum128, 0, len(f.entries))
	}
	for i := 0; i < len(f.entries); {
		e := f.entries[i]
		r.Keys = append(r.Keys, RollupKey{EntityID: e.entity, Bucket: e.bucket, Depth: e.depth, Type: names[e.typ]})
		n := int64(0)
		for m := range r.Sums {
			r.Sums[m] = append(r.Sums[m], schema.Sum128{})
		}
		row := len(r.Keys) - 1
		for ; i < len(f.entries) && sameKey(f.entries[i], e); i++ {
			n++
			for m, v := range f.events[f.entries[i].event].Measures {
				r.Sums[m][row].Add(v)
			}
		}
		r.Events = append(r.Events, n)
	}
	return r
}

func sameKey(a, b fanoutEntry) bool {
	return a.entity == b.entity && a.bucket == b.bucket && a.depth == b.depth && a.typ == b.typ
}
