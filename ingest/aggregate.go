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
	index  map[RollupKey]int
	Keys   []RollupKey
	Events []uint64
	// Sums[m][row] is the sum of measure m for row.
	Sums [][]schema.Sum128
}

// NewRollup returns an empty rollup for n measures.
func NewRollup(n int) *Rollup {
	return &Rollup{index: map[RollupKey]int{}, Sums: make([][]schema.Sum128, n)}
}

// Add adds one event's measures to the row of key k.
func (r *Rollup) Add(k RollupKey, measures []int64) {
	row, ok := r.index[k]
	if !ok {
		row = len(r.Keys)
		r.index[k] = row
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

// Sort orders the rows by key. A replayed batch must produce a byte-identical
// block for ClickHouse to recognise it, and map order is random.
func (r *Rollup) Sort() {
	sort.Sort(rollupSorter{r})
}

type rollupSorter struct{ r *Rollup }

func (s rollupSorter) Len() int { return len(s.r.Keys) }
func (s rollupSorter) Less(i, j int) bool {
	a, b := &s.r.Keys[i], &s.r.Keys[j]
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
func (s rollupSorter) Swap(i, j int) {
	r := s.r
	r.Keys[i], r.Keys[j] = r.Keys[j], r.Keys[i]
	r.Events[i], r.Events[j] = r.Events[j], r.Events[i]
	for m := range r.Sums {
		r.Sums[m][i], r.Sums[m][j] = r.Sums[m][j], r.Sums[m][i]
	}
	r.index[r.Keys[i]] = i
	r.index[r.Keys[j]] = j
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
