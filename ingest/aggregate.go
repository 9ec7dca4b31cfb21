package ingest

import (
	"sort"

	"github.com/canopyhq/canopy/schema"
)

// RollupKey identifies one rollup row: the sums of the events of one type in
// one bucket whose entity was Depth levels below EntityID at event time.
type RollupKey struct {
	EntityID int64
	Bucket   int64 // Unix seconds of the bucket start (UTC hour or day)
	Depth    uint8
	Type     string
}

// Rollup accumulates the fan-out of a batch in memory, so that a batch of N
// events writes one row per distinct key instead of N × chain rows. Not safe
// for concurrent use.
type Rollup struct {
	index map[rollupSlot]int
	types map[string]uint16 // type → small id, so map keys hash no strings
	Keys  []RollupKey
	// Events[row] is the number of events of row.
	Events []uint64
	// Sums[m][row] is the sum of measure m for row.
	Sums [][]schema.Sum128
}

// rollupSlot is RollupKey with the type interned: the hot map's key.
type rollupSlot struct {
	entity int64
	bucket int64
	typ    uint16
	depth  uint8
}

// NewRollup returns an empty rollup for n measures.
func NewRollup(n int) *Rollup {
	return &Rollup{index: map[rollupSlot]int{}, types: map[string]uint16{}, Sums: make([][]schema.Sum128, n)}
}

// Add adds one event's measures to the row of key k.
func (r *Rollup) Add(k RollupKey, measures []int64) {
	t, ok := r.types[k.Type]
	if !ok {
		t = uint16(len(r.types)) //nolint:gosec // a batch has far fewer than 65536 types
		r.types[k.Type] = t
	}
	slot := rollupSlot{entity: k.EntityID, bucket: k.Bucket, typ: t, depth: k.Depth}
	row, ok := r.index[slot]
	if !ok {
		row = len(r.Keys)
		r.index[slot] = row
		r.Keys = append(r.Keys, k)
		r.Events = append(r.Events, 0)
		for m := range r.Sums {
			r.Sums[m] = append(r.Sums[m], schema.Sum128{})
		}
	}
	r.Events[row]++
	for m, v := range measures {
		r.Sums[m][row].Add(v)
	}
}

// Len is the number of rows.
func (r *Rollup) Len() int { return len(r.Keys) }

// Sort orders the rows by key and ends accumulation (Add must not be called
// after it). A replayed batch must produce a byte-identical block for
// ClickHouse to recognise it, and map order is random.
func (r *Rollup) Sort() {
	perm := make([]int32, len(r.Keys))
	for i := range perm {
		perm[i] = int32(i) //nolint:gosec // rows < 2^31
	}
	sort.Slice(perm, func(i, j int) bool { return r.Keys[perm[i]].less(&r.Keys[perm[j]]) })
	keys := make([]RollupKey, len(perm))
	events := make([]uint64, len(perm))
	for i, p := range perm {
		keys[i], events[i] = r.Keys[p], r.Events[p]
	}
	r.Keys, r.Events = keys, events
	for m := range r.Sums {
		sums := make([]schema.Sum128, len(perm))
		for i, p := range perm {
			sums[i] = r.Sums[m][p]
		}
		r.Sums[m] = sums
	}
	r.index, r.types = nil, nil
}

func (a *RollupKey) less(b *RollupKey) bool {
	if a.EntityID != b.EntityID {
		return a.EntityID < b.EntityID
	}
	if a.Bucket != b.Bucket {
		return a.Bucket < b.Bucket
	}
	if a.Depth != b.Depth {
		return a.Depth < b.Depth
	}
	return a.Type < b.Type
}

const (
	secondsPerHour = 3600
	secondsPerDay  = 86400
)

// addFanout adds ev to the hourly and daily rollups once per link of chain.
func addFanout(hourly, daily *Rollup, ev *Event, chain []Ancestor) {
	unix := ev.OccurredAt.Unix()
	hour := unix - unix%secondsPerHour
	day := unix - unix%secondsPerDay
	for _, a := range chain {
		hourly.Add(RollupKey{EntityID: a.ID, Bucket: hour, Depth: a.Depth, Type: ev.Type}, ev.Measures)
		daily.Add(RollupKey{EntityID: a.ID, Bucket: day, Depth: a.Depth, Type: ev.Type}, ev.Measures)
	}
}
