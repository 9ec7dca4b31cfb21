package idstate

import (
	"encoding/binary"
	"fmt"
	"slices"
	"time"

	"github.com/cockroachdb/pebble/v2"
)

// Entry is one record of a by-id partition.
type Entry struct {
	// ID is the event id, MinIDLen to MaxIDLen bytes, kept whole.
	ID []byte
	// Offset is the record's offset in the by-id partition.
	Offset int64
	// Time is the record's timestamp (the broker's LogAppendTime, so
	// non-decreasing within a partition), at millisecond precision.
	Time time.Time
	// RetryOf is -1, or the by-id offset of the occurrence this record is a
	// retried or replayed copy of (or, for a release, that it releases).
	RetryOf int64
	// Release marks a release marker: the owner at RetryOf was
	// dead-lettered, so the id is free again for records after this one.
	Release bool
}

// Claim decides, for entries of partition p in increasing offset order,
// which own their id (see the package doc for the rule), records the new
// owners and advances p's through mark to the last offset (never
// backwards), in one unsynced batch. Entries at or below Through(p) are
// decided by the same rule and recorded only if absent, so a replay gets
// the answers it got the first time. On error nothing is written.
func (s *Store) Claim(p int32, entries []Entry) (owned []bool, err error) {
	if err := s.validate(p, entries); err != nil {
		return nil, err
	}
	if len(entries) == 0 {
		return nil, nil
	}
	pt, err := s.begin(p, true)
	if err != nil {
		return nil, err
	}
	defer s.end(pt)
	sc := s.scratch.Get().(*scratch)
	defer s.scratch.Put(sc)
	sc.reset()

	// Every Pebble read happens first, in key order; the decisions then
	// see Pebble through those results and this call's own writes through
	// the overlay.
	if err := s.fetch(p, pt, sc, entries); err != nil {
		return nil, fmt.Errorf("idstate: claim partition %d offsets %d-%d: %w", p, entries[0].Offset, entries[len(entries)-1].Offset, err)
	}
	owned = make([]bool, len(entries))
	for i := range entries {
		if owned[i], err = s.decide(sc, entries, i); err != nil {
			return nil, fmt.Errorf("idstate: claim partition %d offset %d: %w", p, entries[i].Offset, err)
		}
	}
	b := s.db.NewBatch()
	defer b.Close()
	if err := s.write(p, sc, b, entries); err != nil {
		return nil, fmt.Errorf("idstate: claim partition %d: %w", p, err)
	}
	last := entries[len(entries)-1].Offset
	thru := pt.thru
	if !pt.hasThru || last > thru {
		thru = last
		if err := b.Set(thruKey(p), binary.AppendUvarint(nil, uint64(thru)), nil); err != nil {
			return nil, fmt.Errorf("idstate: claim partition %d: %w", p, err)
		}
	}
	segs := mergeCounts(pt.segs, sc.added)
	for _, a := range sc.added {
		i, _ := slices.BinarySearchFunc(segs, a.seg, cmpSeg)
		if err := b.Set(countKey(p, a.seg), appendSegInfo(nil, segs[i]), nil); err != nil {
			return nil, fmt.Errorf("idstate: claim partition %d: %w", p, err)
		}
	}
	if err := b.Commit(pebble.NoSync); err != nil {
		return nil, fmt.Errorf("idstate: claim partition %d offsets %d-%d: %w", p, entries[0].Offset, last, err)
	}
	pt.thru, pt.hasThru, pt.segs = thru, true, segs
	return owned, nil
}

// segsOf returns the segment of time t (unix ms) and the first segment
// that can hold an occurrence deciding a record at t.
func (s *Store) segsOf(t int64) (own, lo uint32) {
	own = uint32(t / s.seg)
	if t > s.horizon {
		lo = uint32((t - s.horizon) / s.seg)
	}
	return own, lo
}

// validate checks entries before anything is read or written.
func (s *Store) validate(p int32, entries []Entry) error {
	prev := int64(-1)
	for i := range entries {
		e := &entries[i]
		var why string
		switch ms := e.Time.UnixMilli(); {
		case len(e.ID) < MinIDLen || len(e.ID) > MaxIDLen:
			why = fmt.Sprintf("id of %d bytes, want %d to %d", len(e.ID), MinIDLen, MaxIDLen)
		case e.Offset < 0 || e.Offset <= prev:
			why = fmt.Sprintf("offset after %d: offsets must increase", prev)
		case e.RetryOf < -1, e.Release && e.RetryOf < 0:
			why = fmt.Sprintf("RetryOf %d", e.RetryOf)
		case ms < 0 || ms/s.seg > 1<<32-1:
			why = fmt.Sprintf("time %v out of range", e.Time)
		}
		if why != "" {
			return fmt.Errorf("%w: partition %d offset %d: %s", ErrInvalidEntry, p, e.Offset, why)
		}
		prev = e.Offset
	}
	return nil
}

// decide decides entries[i] from its fetched lookups and the overlay and,
// when it is a new owner, records it in the overlay.
func (s *Store) decide(sc *scratch, entries []Entry, i int) (bool, error) {
	e := &entries[i]
	t := e.Time.UnixMilli()
	own, lo := s.segsOf(t)
	d := decision{e: e, min: t - s.horizon}
	var cur []byte // value of e's key in segment own
	from := sc.first[i]
	lks := sc.lks[from:sc.first[i+1]]
	ownLk := int32(-1)
	for k, l := range lks {
		var v []byte
		if l.val.n >= 0 {
			v = sc.vals[l.val.off : l.val.off+l.val.n]
		}
		if w, ok := sc.overlaid(from + int32(k)); ok { // the Pebble value and more
			v = w
		}
		if l.seg == own {
			cur, ownLk = v, from+int32(k)
		}
		if err := s.fold(&d, v, l.seg); err != nil {
			return false, err
		}
	}
	// Segments this call wrote that were not read from Pebble for e.
	for _, a := range sc.added {
		if a.seg < lo || (a.minOff > e.Offset && a.seg != own) || fetched(lks, a.seg) {
			continue
		}
		v, ok := sc.written(entries, a.seg, e.ID)
		if !ok {
			continue
		}
		if err := s.fold(&d, v, a.seg); err != nil {
			return false, err
		}
	}
	owner := d.found && !d.tomb // the latest qualifying occurrence owns the id
	switch {
	case d.self:
		return true, nil
	case e.Release && (!owner || e.RetryOf != d.latest):
		return false, nil // releases nothing: not the current owner
	case !e.Release && owner && (e.RetryOf < 0 || e.RetryOf != d.latest):
		return false, nil
	}
	// A new owner, or the retry of the latest owner, which takes its place:
	// a second copy of the same retry then finds itself behind it; or the
	// release of the latest owner, after which the id is free.
	lks[ownLk-from].rec = true // every entry has a lookup of its own segment
	return true, s.record(sc, e, t, own, ownLk, cur)
}

// decision accumulates what the lookups of one entry found.
type decision struct {
	e      *Entry
	min    int64 // earliest time (unix ms) of a qualifying occurrence
	self   bool  // the state records e itself
	found  bool  // a qualifying earlier occurrence exists
	latest int64 // the offset of the latest qualifying occurrence, if found
	tomb   bool  // that occurrence is a release
}

// fold applies the rule to every occurrence of value v of segment seg.
func (s *Store) fold(d *decision, v []byte, seg uint32) error {
	start := int64(seg) * s.seg
	for len(v) > 0 {
		o, rest, ok := nextOcc(v, start)
		if !ok {
			return errBadValue
		}
		v = rest
		switch {
		case o.off == d.e.Offset:
			d.self = true
		case o.off < d.e.Offset && o.ms >= d.min:
			if !d.found || o.off > d.latest {
				d.latest, d.tomb = o.off, o.tomb
			}
			d.found = true
		}
	}
	return nil
}

// record adds e (at time t, segment own, lookup lk) to its id key, whose
// current value is cur, keeping occurrences in offset order.
func (s *Store) record(sc *scratch, e *Entry, t int64, own uint32, lk int32, cur []byte) error {
	start := int64(own) * s.seg
	n := occ{off: e.Offset, ms: t, tomb: e.Release}
	off := len(sc.arena)
	if len(cur) == 0 {
		sc.arena = appendOcc(sc.arena, n, start)
	} else {
		sc.occs = sc.occs[:0]
		for v := cur; len(v) > 0; {
			o, rest, ok := nextOcc(v, start)
			if !ok {
				return errBadValue
			}
			sc.occs = append(sc.occs, o)
			v = rest
		}
		i, _ := slices.BinarySearchFunc(sc.occs, n.off, func(o occ, off int64) int { return cmpInt(o.off, off) })
		sc.occs = slices.Insert(sc.occs, i, n)
		for _, o := range sc.occs {
			sc.arena = appendOcc(sc.arena, o, start)
		}
	}
	sc.overlay[sc.lks[lk].grp] = span{off: int32(off), n: int32(len(sc.arena) - off)}
	if i, ok := slices.BinarySearchFunc(sc.added, own, cmpSeg); ok {
		sc.added[i].n++
		sc.added[i].minOff = min(sc.added[i].minOff, e.Offset)
	} else {
		sc.added = slices.Insert(sc.added, i, segInfo{seg: own, n: 1, minOff: e.Offset})
	}
	return nil
}

func cmpSeg(c segInfo, seg uint32) int { return cmpInt(c.seg, seg) }

func cmpInt[T int64 | uint32](a, b T) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// mergeCounts returns a new slice: segs with added counted in.
func mergeCounts(segs, added []segInfo) []segInfo {
	if len(added) == 0 {
		return segs
	}
	out := make([]segInfo, 0, len(segs)+len(added))
	i, j := 0, 0
	for i < len(segs) || j < len(added) {
		switch {
		case j == len(added) || (i < len(segs) && segs[i].seg < added[j].seg):
			out = append(out, segs[i])
			i++
		case i == len(segs) || added[j].seg < segs[i].seg:
			out = append(out, added[j])
			j++
		default:
			out = append(out, segInfo{seg: segs[i].seg, n: segs[i].n + added[j].n, minOff: min(segs[i].minOff, added[j].minOff)})
			i++
			j++
		}
	}
	return out
}
