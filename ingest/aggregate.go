package ingest

import (
	"cmp"
	"slices"
	"strings"

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
	// Events[row] is the number of events of row (negative in a correction).
	Events []int64
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
	row := r.row(k)
	r.Events[row]++
	r.addValues(row, measures)
}

// addValues adds one event's measures to the sums of row.
func (r *Rollup) addValues(row int, measures []int64) {
	for m, v := range measures {
		r.Sums[m][row].Add(v)
	}
}

// Sub subtracts one event's measures from the row of key k.
func (r *Rollup) Sub(k RollupKey, measures []int64) {
	row := r.row(k)
	r.Events[row]--
	for m, v := range measures {
		var x schema.Sum128
		x.Add(v)
		r.Sums[m][row].AddSum(x.Neg())
	}
}

// AddRow adds sign × (events, sums) to the row of key k: restatements move
// whole rows.
func (r *Rollup) AddRow(k RollupKey, events int64, sums []schema.Sum128, sign int64) {
	row := r.row(k)
	r.Events[row] += sign * events
	for m, v := range sums {
		if sign < 0 {
			v = v.Neg()
		}
		r.Sums[m][row].AddSum(v)
	}
}

func (r *Rollup) row(k RollupKey) int {
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
	return row
}

// Compact drops the rows whose count and sums are all zero (a correction
// that moved something out and back in).
func (r *Rollup) Compact() {
	keep := 0
	for i := range r.Keys {
		zero := r.Events[i] == 0
		for m := range r.Sums {
			zero = zero && r.Sums[m][i].IsZero()
		}
		if zero {
			continue
		}
		r.Keys[keep], r.Events[keep] = r.Keys[i], r.Events[i]
		for m := range r.Sums {
			r.Sums[m][keep] = r.Sums[m][i]
		}
		keep++
	}
	r.Keys, r.Events = r.Keys[:keep], r.Events[:keep]
	for m := range r.Sums {
		r.Sums[m] = r.Sums[m][:keep]
	}
	r.index = nil
}

// Len is the number of rows.
func (r *Rollup) Len() int {
	if r == nil {
		return 0 // a batch without events has no rollups
	}
	return len(r.Keys)
}

// Sort orders the rows by key and ends accumulation (Add must not be called
// after it). A replayed batch must produce a byte-identical block for
// ClickHouse to recognise it, and map order is random.
func (r *Rollup) Sort() {
	perm := make([]int32, len(r.Keys))
	for i := range perm {
		perm[i] = int32(i) //nolint:gosec // rows < 2^31
	}
	slices.SortFunc(perm, func(i, j int32) int { return r.Keys[i].compare(&r.Keys[j]) })
	keys := make([]RollupKey, len(perm))
	events := make([]int64, len(perm))
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

// compare orders keys by entity, bucket, depth, then type.
func (a *RollupKey) compare(b *RollupKey) int {
	if c := compareRow(a.EntityID, a.Bucket, a.Depth, b.EntityID, b.Bucket, b.Depth); c != 0 {
		return c
	}
	return strings.Compare(a.Type, b.Type)
}

// compareRow orders rollup rows by entity, bucket and depth: the sorting key
// of the rollup tables before the type, which callers compare their way.
func compareRow(entityA, bucketA int64, depthA uint8, entityB, bucketB int64, depthB uint8) int {
	if c := cmp.Compare(entityA, entityB); c != 0 {
		return c
	}
	if c := cmp.Compare(bucketA, bucketB); c != 0 {
		return c
	}
	return cmp.Compare(depthA, depthB)
}

const (
	secondsPerHour = 3600
	secondsPerDay  = 86400
)

// addDaily adds (sign 1) or subtracts (sign -1) ev to the daily rollup once
// per link of chain.
func addDaily(daily *Rollup, ev *Event, chain []Ancestor, sign int) {
	fanout(nil, daily, ev, chain, sign < 0)
}

// AddFanout adds (sign 1) or subtracts (sign -1) ev to the hourly and daily
// rollups once per link of chain: what a restatement moves.
func AddFanout(hourly, daily *Rollup, ev *Event, chain []Ancestor, sign int) {
	fanout(hourly, daily, ev, chain, sign < 0)
}

// fanout adds or subtracts ev once per link of chain in each non-nil rollup.
func fanout(hourly, daily *Rollup, ev *Event, chain []Ancestor, sub bool) {
	unix := ev.OccurredAt.Unix()
	hour := unix - unix%secondsPerHour
	day := unix - unix%secondsPerDay
	for _, a := range chain {
		for _, t := range [2]struct {
			r      *Rollup
			bucket int64
		}{{hourly, hour}, {daily, day}} {
			if t.r == nil {
				continue
			}
			k := RollupKey{EntityID: a.ID, Bucket: t.bucket, Depth: a.Depth, Type: ev.Type}
			if sub {
				t.r.Sub(k, ev.Measures)
			} else {
				t.r.Add(k, ev.Measures)
			}
		}
	}
}

// Regrain returns r, a rollup of any finer grain, summed into g's buckets:
// sorted, without zero rows. For a batch, fanoutBuilder sums coarser
// grains faster (coarsen); this is for the restater and rebuild, which
// build their rollups by Add.
func Regrain(r *Rollup, g schema.Grain) *Rollup {
	out := NewRollup(len(r.Sums))
	sums := make([]schema.Sum128, len(r.Sums))
	for i, k := range r.Keys {
		for m := range sums {
			sums[m] = r.Sums[m][i]
		}
		k.Bucket = g.Bucket(k.Bucket)
		out.AddRow(k, r.Events[i], sums, 1)
	}
	out.Sort()
	out.Compact()
	return out
}

// Merge returns the sorted sum of sorted rollups, without zero rows.
func Merge(rs ...*Rollup) *Rollup {
	out := NewRollup(len(rs[0].Sums))
	sums := make([]schema.Sum128, len(rs[0].Sums))
	for _, r := range rs {
		for i, k := range r.Keys {
			for m := range sums {
				sums[m] = r.Sums[m][i]
			}
			out.AddRow(k, r.Events[i], sums, 1)
		}
	}
	out.Sort()
	out.Compact()
	return out
}
