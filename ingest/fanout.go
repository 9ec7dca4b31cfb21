package ingest

import (
	"cmp"
	"math"
	"math/bits"
	"slices"

	"github.com/canopyhq/canopy/schema"
)

// fanoutBuilder sums a batch's fan-out into a sorted Rollup without a hash
// map: every chain link becomes a small fixed-size entry, the entries are
// sorted once, and each run of equal keys becomes one row. For a batch —
// hundreds of thousands of links, few repeats — that is several times
// cheaper than a map insert per link followed by a sort of the rows.
// The result equals Add for every link followed by Sort.
//
// The sort is a radix sort of the row key packed into a uint64 (see
// keyLayout), which is what a batch's ids, buckets, depths and types fit in;
// a batch whose ranges do not fit falls back to a comparison sort.
type fanoutBuilder struct {
	measures int
	day      bool // daily buckets, else hourly
	links    []fanoutLink
	events   []fanoutEvent
	// values[e*measures+m] is measure m of event e: the sums read them in
	// key order, that is at random, and a dense array keeps that cheap.
	values []int64
	types  map[string]uint16 // name → number in order of first appearance
	names  []string
	// arrays, if set, records the rollup arrays taken from the free lists
	// (see rollupArrays); nil allocates them.
	arrays *rollupArrays

	// Ranges of the links so far: what decides the key layout.
	minEntity, maxEntity int64
	minBucket, maxBucket int64
	maxDepth             uint8
}

// fanoutEvent is the bucket and type number of an event's row keys.
type fanoutEvent struct {
	bucket int64
	typ    uint16
}

// fanoutLink is one chain link of one event: its bucket and type are the
// event's. It is also the radix sort's element: rollupPacked replaces the
// entity in key with the packed row key, in place.
type fanoutLink struct {
	key   uint64 // the entity id, two's complement, until packed
	event int32  // index into events
	depth uint8
}

// getLinks returns an empty slice with room for n links. The link and
// scratch arrays of rollupPacked, two arrays of 16 bytes per link in every
// batch that nothing keeps, come from a free list (freeLinks).
func getLinks(n int) []fanoutLink {
	return freeLinks.get(n)[:0]
}

func putLinks(s []fanoutLink) {
	freeLinks.put(s)
}

func newFanoutBuilder(measures int, day bool, links int) *fanoutBuilder {
	return &fanoutBuilder{measures: measures, day: day, links: getLinks(links), types: map[string]uint16{},
		minEntity: math.MaxInt64, maxEntity: math.MinInt64, minBucket: math.MaxInt64, maxBucket: math.MinInt64}
}

// reserve makes room for the given number of events more.
func (f *fanoutBuilder) reserve(events int) {
	f.events = slices.Grow(f.events, events)
	f.values = slices.Grow(f.values, events*f.measures)
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
	f.events = append(f.events, fanoutEvent{bucket: bucket, typ: t})
	n := len(f.values)
	f.values = append(f.values, make([]int64, f.measures)...)
	copy(f.values[n:], ev.Measures) // a decoded event has them all
	if len(chain) > 0 {
		f.minBucket, f.maxBucket = min(f.minBucket, bucket), max(f.maxBucket, bucket)
	}
	for _, a := range chain {
		f.links = append(f.links, fanoutLink{key: uint64(a.ID), event: i, depth: a.Depth}) //nolint:gosec // two's complement, undone by the key layout
		f.minEntity, f.maxEntity = min(f.minEntity, a.ID), max(f.maxEntity, a.ID)
		f.maxDepth = max(f.maxDepth, a.Depth)
	}
}

// step is the width of a bucket in seconds. Buckets are multiples of it
// (unix - unix%step), negative times included.
func (f *fanoutBuilder) step() uint64 {
	if f.day {
		return secondsPerDay
	}
	return secondsPerHour
}

// keyLayout packs a row key into a uint64 whose unsigned order is the order
// of Rollup.Sort: from the most significant bits, the entity minus the
// batch's smallest, the bucket index from the batch's first bucket, the
// depth and the type's rank by name. Each field takes the bits its range in
// the batch needs, so an empty range takes none.
type keyLayout struct {
	minEntity, minBucket int64
	step                 uint64
	entityShift          uint // bucket, depth and type bits below the entity
	bucketShift          uint
	depthShift           uint // type bits below the depth
	bucketMask           uint64
	depthMask            uint64
	typeMask             uint64
	bits                 int // total: the radix sort's passes
}

// layout returns the packing of this batch's keys, or false when they need
// more than 64 bits.
func (f *fanoutBuilder) layout() (keyLayout, bool) {
	l := keyLayout{minEntity: f.minEntity, minBucket: f.minBucket, step: f.step()}
	if len(f.links) == 0 {
		return l, true
	}
	typeBits := bits.Len(uint(len(f.names) - 1))
	depthBits := bits.Len8(f.maxDepth)
	bucketBits := bits.Len64((uint64(f.maxBucket) - uint64(f.minBucket)) / l.step) //nolint:gosec // modular difference: the range
	entityBits := bits.Len64(uint64(f.maxEntity) - uint64(f.minEntity))            //nolint:gosec // modular difference: the range
	l.bits = typeBits + depthBits + bucketBits + entityBits
	if l.bits > 64 {
		return l, false
	}
	l.depthShift = uint(typeBits)                  //nolint:gosec // <= 16
	l.bucketShift = l.depthShift + uint(depthBits) //nolint:gosec // <= 8
	l.entityShift = l.bucketShift + uint(bucketBits)
	l.typeMask = 1<<typeBits - 1
	l.depthMask = 1<<depthBits - 1
	l.bucketMask = 1<<bucketBits - 1
	return l, true
}

// rollup returns the sorted sums.
func (f *fanoutBuilder) rollup() *Rollup {
	r, _ := f.rollupOrdered(false)
	return r
}

// rollups returns the sorted sums, and for an hourly builder also the
// daily ones summed from them (dailyOf).
func (f *fanoutBuilder) rollups() (hourly, daily *Rollup) {
	hourly, daily, _ = f.rollupsWith(nil)
	return hourly, daily
}

// rollupOrdered returns the sorted sums and, if withOrder, the rank of each
// row's depth and type among the batch's (depth, type) pairs, in the order
// of Rollup.Sort.
func (f *fanoutBuilder) rollupOrdered(withOrder bool) (*Rollup, []uint32) {
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
	names := make([]string, len(f.names))
	for i, n := range f.names {
		names[rank[i]] = n
	}
	if l, ok := f.layout(); ok {
		return f.rollupPacked(l, rank, names, withOrder)
	}
	return f.rollupComparedOrdered(rank, names, withOrder)
}

// rollupPacked sorts the links by packed key.
func (f *fanoutBuilder) rollupPacked(l keyLayout, rank []uint16, names []string, withOrder bool) (*Rollup, []uint32) {
	// The bucket and type part of the key is the event's: pack it once per
	// event.
	evKey := freeUint64s.get(len(f.events)) // every element set below
	defer freeUint64s.put(evKey)
	for i, e := range f.events {
		idx := (uint64(e.bucket) - uint64(l.minBucket)) / l.step //nolint:gosec // modular difference: the offset
		evKey[i] = idx<<l.bucketShift | uint64(rank[e.typ])
	}
	items := f.links
	for i, k := range items {
		items[i].key = (k.key-uint64(l.minEntity))<<l.entityShift | uint64(k.depth)<<l.depthShift | evKey[k.event] //nolint:gosec // modular difference: the offset
	}
	f.links = nil // the entities are gone: rollup must not run twice
	scratch := getLinks(len(items))[:len(items)]
	sorted := radixSort(items, scratch, l.bits)
	defer putLinks(scratch)
	defer putLinks(items)
	items = sorted

	rows := 0
	for i := range items {
		if i == 0 || items[i].key != items[i-1].key {
			rows++
		}
	}
	r := f.arrays.newSortedRollup(f.measures, rows)
	var order []uint32
	if withOrder {
		order = freeOrders.get(rows) // every row's set below
	}
	row := -1
	for i, it := range items {
		if i == 0 || it.key != items[i-1].key {
			row++
			r.Keys[row] = RollupKey{
				EntityID: int64(uint64(l.minEntity) + it.key>>l.entityShift),                       //nolint:gosec // the offset back
				Bucket:   int64(uint64(l.minBucket) + (it.key>>l.bucketShift&l.bucketMask)*l.step), //nolint:gosec // the offset back
				Depth:    uint8(it.key >> l.depthShift & l.depthMask),                              //nolint:gosec // masked to its bits
				Type:     names[it.key&l.typeMask],
			}
			if order != nil {
				order[row] = uint32(it.key & (1<<l.bucketShift - 1)) //nolint:gosec // depth and type rank: < 2^24
			}
		}
		r.Events[row]++
		r.addValues(row, f.values[int(it.event)*f.measures:][:f.measures])
	}
	return r, order
}

// fanoutEntry is one chain link with its full key: the comparison sort's
// element.
type fanoutEntry struct {
	entity int64
	bucket int64
	event  int32 // index into events
	typ    uint16
	depth  uint8
}

// rollupCompared sorts the links with a comparison sort: keys that do not
// pack into 64 bits (ids or times spread over most of their range).
func (f *fanoutBuilder) rollupCompared(rank []uint16, names []string) *Rollup {
	r, _ := f.rollupComparedOrdered(rank, names, false)
	return r
}

// rollupComparedOrdered is rollupCompared, with the rows' order of depth and
// type if withOrder (see rollupOrdered).
func (f *fanoutBuilder) rollupComparedOrdered(rank []uint16, names []string, withOrder bool) (*Rollup, []uint32) {
	entries := make([]fanoutEntry, len(f.links))
	for i, k := range f.links {
		entries[i] = fanoutEntry{entity: int64(k.key), //nolint:gosec // two's complement back
			bucket: f.events[k.event].bucket, event: k.event, typ: rank[f.events[k.event].typ], depth: k.depth}
	}
	putLinks(f.links)
	f.links = nil
	slices.SortFunc(entries, func(a, b fanoutEntry) int {
		if c := compareRow(a.entity, a.bucket, a.depth, b.entity, b.bucket, b.depth); c != 0 {
			return c
		}
		return cmp.Compare(a.typ, b.typ)
	})
	rows := 0
	for i := range entries {
		if i == 0 || !sameKey(entries[i], entries[i-1]) {
			rows++
		}
	}
	r := f.arrays.newSortedRollup(f.measures, rows)
	var order []uint32
	if withOrder {
		order = freeOrders.get(rows) // every row's set below
	}
	row := -1
	for i, e := range entries {
		if i == 0 || !sameKey(e, entries[i-1]) {
			row++
			r.Keys[row] = RollupKey{EntityID: e.entity, Bucket: e.bucket, Depth: e.depth, Type: names[e.typ]}
			if order != nil {
				order[row] = uint32(e.depth)<<16 | uint32(e.typ)
			}
		}
		r.Events[row]++
		r.addValues(row, f.values[int(e.event)*f.measures:][:f.measures])
	}
	return r, order
}

// newSortedRollup returns a rollup of n zero rows, to be filled in order.
func newSortedRollup(measures, n int) *Rollup {
	r := &Rollup{Keys: make([]RollupKey, n), Events: make([]int64, n), Sums: make([][]schema.Sum128, measures)}
	for m := range r.Sums {
		r.Sums[m] = make([]schema.Sum128, n)
	}
	return r
}

func sameKey(a, b fanoutEntry) bool {
	return a.entity == b.entity && a.bucket == b.bucket && a.depth == b.depth && a.typ == b.typ
}

// dailyOf returns the daily rollup of h, a sorted hourly rollup, given
// order, the rank of each of its rows' (depth, type) in the order of
// Rollup.Sort (see rollupOrdered): coarsen with the day as the bucket.
func dailyOf(h *Rollup, order []uint32, arrays *rollupArrays) *Rollup {
	d, _ := coarsen(h, order, dayOf, false, arrays)
	return d
}

// coarsen returns the rollup of a coarser grain summed from f, a sorted
// rollup of a finer one, given order, the rank of each of f's rows' (depth,
// type) in the order of Rollup.Sort (see rollupOrdered), and bucket, the
// coarser grain's bucket of a finer bucket: the rows of Rollup.Add for
// every event and link followed by Sort, as a fanoutBuilder of the coarser
// grain would give, without fanning the batch out a second time. It needs
// every coarser bucket to be a union of consecutive finer ones (an hour
// lies in one day, a day in one ISO week): then among f's rows, sorted by
// entity and bucket, those of one entity and coarser bucket are adjacent,
// and ordering each such run by depth and type (a run is a handful of
// rows, often in order already) puts the rows in the coarser order, where
// equal keys are adjacent and sum to one row. With withOrder it also
// returns the same ranks for the rows it returns, to coarsen them again.
// Its arrays come from arrays (see rollupArrays).
//
// Most runs are a row or a few, but an ancestor high in the tree has a row
// for every finer bucket of the coarser one times every (depth, type) below
// it: hundreds of rows, in finer order, which an insertion sort took
// quadratic time over (half of coarsen's time in a uniform batch's
// profile). A run is sorted as (rank, row) pairs packed in a uint64: ties
// keep the rows' order, as the insertion sort's did, so the sums are added
// in the same order either way.
func coarsen(f *Rollup, order []uint32, bucket func(int64) int64, withOrder bool, arrays *rollupArrays) (*Rollup, []uint32) {
	n := f.Len()
	d := arrays.newSortedRollup(len(f.Sums), n) // at most as many rows; trimmed below
	var outOrder []uint32
	if withOrder {
		outOrder = freeOrders.get(n) // every row's set below
	}
	var run []uint64 // the rows of a run in coarser order: rank<<32 | row
	row := -1
	for start := 0; start < n; {
		first := &f.Keys[start]
		b := bucket(first.Bucket)
		end, ordered := start+1, true
		for ; end < n; end++ {
			k := &f.Keys[end]
			if k.EntityID != first.EntityID || k.Bucket != f.Keys[end-1].Bucket && bucket(k.Bucket) != b {
				break
			}
			ordered = ordered && order[end-1] <= order[end]
		}
		run = run[:0]
		for i := start; i < end; i++ {
			run = append(run, uint64(order[i])<<32|uint64(i)) //nolint:gosec // rows < 2^31
		}
		if !ordered {
			sortRun(run)
		}
		for i, packed := range run {
			p := int(uint32(packed)) //nolint:gosec // the row, packed above
			if i == 0 || run[i-1]>>32 != packed>>32 {
				k := &f.Keys[p]
				row++
				d.Keys[row] = RollupKey{EntityID: k.EntityID, Bucket: b, Depth: k.Depth, Type: k.Type}
				if outOrder != nil {
					outOrder[row] = order[p]
				}
			}
			d.Events[row] += f.Events[p]
			for m := range d.Sums {
				d.Sums[m][row].AddSum(f.Sums[m][p])
			}
		}
		start = end
	}
	rows := row + 1
	d.Keys, d.Events = d.Keys[:rows:rows], d.Events[:rows:rows]
	for m := range d.Sums {
		d.Sums[m] = d.Sums[m][:rows:rows]
	}
	if outOrder != nil {
		outOrder = outOrder[:rows] // its full capacity goes back to freeOrders
	}
	return d, outOrder
}

// sortRun sorts a run of coarsen: an insertion sort while it is short, a
// pdqsort when it is long.
func sortRun(run []uint64) {
	if len(run) > 16 {
		slices.Sort(run)
		return
	}
	for i := 1; i < len(run); i++ {
		for j := i; j > 0 && run[j-1] > run[j]; j-- {
			run[j-1], run[j] = run[j], run[j-1]
		}
	}
}

// rollupsWith returns the sorted hourly sums, the daily ones and one rollup
// per grain of coarser (each a union of days, coarsest last), each summed
// from the one before it (coarsen).
func (f *fanoutBuilder) rollupsWith(coarser []schema.Grain) (hourly, daily *Rollup, more []GrainRollup) {
	r, order := f.rollupOrdered(true)
	if len(coarser) == 0 {
		daily = dailyOf(r, order, f.arrays)
		freeOrders.put(order)
		return r, daily, nil
	}
	finer := order
	daily, order = coarsen(r, finer, dayOf, true, f.arrays)
	freeOrders.put(finer)
	prev := daily
	for i, g := range coarser {
		var c *Rollup
		finer = order
		c, order = coarsen(prev, finer, g.Bucket, i < len(coarser)-1, f.arrays)
		freeOrders.put(finer)
		more = append(more, GrainRollup{Grain: g, Rollup: c})
		prev = c
	}
	return r, daily, more
}

// dayOf is the day bucket of an hour bucket (or of any time): truncated
// as fanout truncates, so the day of an event's hour is the event's day.
func dayOf(unix int64) int64 { return unix - unix%secondsPerDay }
