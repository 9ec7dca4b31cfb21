package ingest

import (
	"sync"
	"sync/atomic"
	"unsafe"

	"github.com/canopyhq/canopy/schema"
)

// freeList keeps the arrays of finished batches for the next batch. Unlike
// a sync.Pool it survives garbage collections (a batch of 100,000 events
// collects several times, and a sync.Pool is empty after two), so a worker
// that keeps up allocates its large per-batch arrays once rather than
// once a batch. It holds at most maxBytes of arrays, dropping the smallest
// first. Safe for concurrent use.
type freeList[T any] struct {
	mu       sync.Mutex
	free     [][]T // each of length 0
	bytes    int   // the capacity of free, in bytes
	maxBytes int
}

// maxFreeBytes bounds each free list: about the arrays of two batches of
// 100,000 events at a million entities (the hourly and daily rollup rows
// of one are about 18 MB of keys).
const maxFreeBytes = 64 << 20

func sizeOf[T any]() int {
	var v T
	return int(unsafe.Sizeof(v))
}

// get returns a slice of length n whose contents are undefined: the
// smallest free array that fits, or a new one (nil for 0).
func (l *freeList[T]) get(n int) []T {
	if n == 0 {
		return nil
	}
	l.mu.Lock()
	best := -1
	for i, s := range l.free {
		if cap(s) >= n && (best < 0 || cap(s) < cap(l.free[best])) {
			best = i
		}
	}
	if best >= 0 {
		s := l.free[best]
		last := len(l.free) - 1
		l.free[best], l.free[last] = l.free[last], nil
		l.free = l.free[:last]
		l.bytes -= cap(s) * sizeOf[T]()
		l.mu.Unlock()
		return s[:n]
	}
	l.mu.Unlock()
	return make([]T, n)
}

// put gives s back; nothing may read or write it afterwards.
func (l *freeList[T]) put(s []T) {
	size := cap(s) * sizeOf[T]()
	if size == 0 || size > l.maxBytes {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.free = append(l.free, s[:0])
	l.bytes += size
	for l.bytes > l.maxBytes {
		small := 0
		for i := range l.free {
			if cap(l.free[i]) < cap(l.free[small]) {
				small = i
			}
		}
		l.bytes -= cap(l.free[small]) * sizeOf[T]()
		last := len(l.free) - 1
		l.free[small], l.free[last] = l.free[last], nil
		l.free = l.free[:last]
	}
}

// The free lists of the arrays of a batch's sorted rollups and of its
// fan-out links.
var (
	freeKeys   = freeList[RollupKey]{maxBytes: maxFreeBytes}
	freeEvents = freeList[int64]{maxBytes: maxFreeBytes}
	freeSums   = freeList[schema.Sum128]{maxBytes: maxFreeBytes}
	freeLinks  = freeList[fanoutLink]{maxBytes: maxFreeBytes}
	// The scratch arrays of a fan-out's sums: the ranks of the rows'
	// depths and types (rollupOrdered, coarsen) and the events' packed
	// keys (rollupPacked).
	freeOrders  = freeList[uint32]{maxBytes: maxFreeBytes}
	freeUint64s = freeList[uint64]{maxBytes: maxFreeBytes}
	// A batch's decoded records and their chains (records).
	freeDecoded   = freeList[decoded]{maxBytes: maxFreeBytes}
	freeAncestors = freeList[Ancestor]{maxBytes: maxFreeBytes}
	// A batch's accepted events (Batch.Events).
	freeAccepted = freeList[Accepted]{maxBytes: maxFreeBytes}
)

// rollupArrays records the arrays a batch's sorted rollups and its
// accepted events took from the free lists, so that release can give them
// back once nothing reads the batch. A nil *rollupArrays takes nothing:
// its arrays are plain allocations that the garbage collector frees.
type rollupArrays struct {
	keys     [][]RollupKey
	events   [][]int64 // the rollups' Events, and the events' Measures (records.measures)
	sums     [][]schema.Sum128
	accepted []Accepted
	// acceptedN bounds what the batch wrote of accepted: release clears
	// that much, not the whole capacity. The free list hands out the
	// smallest array that fits, which after a catch-up of large batches is
	// often far larger than a small batch: clearing it all cost a small
	// batch megabytes of memclr.
	acceptedN int
}

// acceptedEvents returns an empty Batch.Events with room for n events.
func (a *rollupArrays) acceptedEvents(n int) []Accepted {
	if a == nil {
		return make([]Accepted, 0, n)
	}
	// Zero: a new array is, and release clears what a batch wrote.
	a.accepted, a.acceptedN = freeAccepted.get(n)[:0], n
	return a.accepted
}

// newSortedRollup returns a rollup of n rows for measures measures, to be
// filled in order: Events and Sums zero, Keys to be set before any row is
// read (newSortedRollup's callers set the key of every row they keep).
func (a *rollupArrays) newSortedRollup(measures, n int) *Rollup {
	if a == nil {
		return newSortedRollup(measures, n)
	}
	r := &Rollup{Keys: freeKeys.get(n), Events: freeEvents.get(n), Sums: make([][]schema.Sum128, measures)}
	clear(r.Events)
	sums := freeSums.get(measures * n)
	clear(sums)
	for m := range r.Sums {
		r.Sums[m] = sums[m*n : (m+1)*n : (m+1)*n]
	}
	a.keys, a.events, a.sums = append(a.keys, r.Keys), append(a.events, r.Events), append(a.sums, sums)
	return r
}

// release gives back every array of a's rollups. Nothing may read those
// rollups afterwards: the next batch overwrites them.
func (a *rollupArrays) release() {
	if a == nil {
		return
	}
	if poisonReleased.Load() {
		a.poison()
	}
	for _, s := range a.keys {
		freeKeys.put(s)
	}
	for _, s := range a.events {
		freeEvents.put(s)
	}
	for _, s := range a.sums {
		freeSums.put(s)
	}
	clear(a.accepted[:a.acceptedN]) // the batch's strings
	freeAccepted.put(a.accepted)
	*a = rollupArrays{}
}

// poisonReleased, set by tests, makes release overwrite the arrays it
// gives back with rows no batch has, so that a rollup read after its
// release shows in the rows written rather than only when another batch
// happens to reuse its arrays in time.
var poisonReleased atomic.Bool

func (a *rollupArrays) poison() {
	for _, s := range a.keys {
		fill(s[:cap(s)], RollupKey{EntityID: -1, Bucket: -1, Depth: 255, Type: "released"})
	}
	for _, s := range a.events {
		fill(s[:cap(s)], -1<<40)
	}
	for _, s := range a.sums {
		fill(s[:cap(s)], schema.Sum128{Hi: -1 << 40})
	}
	// Only what the batch could write: release clears that much, and the
	// rows beyond it must stay zero for the next batch.
	fill(a.accepted[:a.acceptedN], Accepted{Event: Event{ID: "released", EntityID: -1}, Offset: -1})
}

func fill[T any](s []T, v T) {
	for i := range s {
		s[i] = v
	}
}

// batchCopier is a Sink whose Write and Landed keep nothing of the batch
// they are given once they return: they copy what they need (the
// ClickHouseSink copies every row into the driver's columns, which encode
// and send the block before Send returns). After a batch written through
// such a sink, the Processor gives its rollups' arrays back for the next
// batch; through any other Sink it leaves them to the garbage collector.
type batchCopier interface {
	copiesBatch()
}

// copiesBatch marks ClickHouseSink as a batchCopier. Whoever changes
// ClickHouseSink.Write, Landed or the columns they fill so that one of
// them keeps a reference to a Batch's rollups (a Keys, Events or Sums
// slice) after returning must remove this method.
func (*ClickHouseSink) copiesBatch() {}

// recyclesRollups reports whether the arrays of the rollups of a batch
// written through s may be reused once Write returns.
func recyclesRollups(s Sink) bool {
	_, ok := s.(batchCopier)
	return ok
}
