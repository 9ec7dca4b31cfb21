package idstate

import (
	"bytes"
	"cmp"
	"encoding/binary"
	"slices"
	"sort"

	"github.com/cockroachdb/pebble/v2"
)

// scratch is the per-call working memory of Claim, pooled so that a batch
// allocates next to nothing.
type scratch struct {
	// lks are the Pebble reads of every entry, entry i's being
	// lks[first[i]:first[i+1]]; vals holds the values found.
	lks   []lookup
	first []int32
	ord   []seek
	vals  []byte
	// overlay holds, per key group (see lookup.grp), the key's value as
	// written in this call (n < 0: not written), so later entries see it
	// before the batch is committed; arena holds the values.
	overlay []span
	arena   []byte
	added   []segInfo // occurrences added per segment in this call
	key     []byte
	occs    []occ
}

// span locates a value in scratch.vals or scratch.arena; n < 0 is absent.
type span struct{ off, n int32 }

// lookup is one read of an entry's id key in one segment. The entry's own
// segment always has one, even when Pebble has nothing there to read, so
// that the writes can be made in key order too.
type lookup struct {
	seg    uint32
	val    span
	grp    int32 // the first lookup, in key order, of the same key: lookups of one key share its overlay slot
	noRead bool  // own segment absent from Pebble
	rec    bool  // the entry was recorded under this key
}

// seek orders lookups by key: seg, then the id, whose first 8 bytes
// (zero-padded, big-endian) settle most comparisons.
type seek struct {
	seg   uint32
	hi    uint64
	lk    int32
	entry int32
}

func (sc *scratch) reset() {
	sc.lks, sc.first, sc.ord, sc.vals = sc.lks[:0], sc.first[:0], sc.ord[:0], sc.vals[:0]
	sc.arena, sc.added, sc.occs, sc.overlay = sc.arena[:0], sc.added[:0], sc.occs[:0], sc.overlay[:0]
}

// cmpKey orders lookup a against the key (seg, id, whose idHi is hi).
func cmpKey(entries []Entry, a seek, seg uint32, hi uint64, id []byte) int {
	if c := cmp.Compare(a.seg, seg); c != 0 {
		return c
	}
	if c := cmp.Compare(a.hi, hi); c != 0 {
		return c
	}
	return bytes.Compare(entries[a.entry].ID, id)
}

// written returns the value this call wrote under id's key in segment seg,
// if it wrote one. The key need not be among the entry's own lookups: it is
// found among every lookup of the call, in key order.
func (sc *scratch) written(entries []Entry, seg uint32, id []byte) ([]byte, bool) {
	hi := idHi(id)
	i, found := slices.BinarySearchFunc(sc.ord, id, func(o seek, id []byte) int { return cmpKey(entries, o, seg, hi, id) })
	if !found {
		return nil, false
	}
	return sc.overlaid(sc.ord[i].lk)
}

// overlaid returns the value this call wrote under the key of lookup lk.
func (sc *scratch) overlaid(lk int32) ([]byte, bool) {
	sp := sc.overlay[sc.lks[lk].grp]
	if sp.n < 0 {
		return nil, false
	}
	return sc.arena[sp.off : sp.off+sp.n], true
}

// fetched reports whether lks read segment seg.
func fetched(lks []lookup, seg uint32) bool {
	for _, l := range lks {
		if l.seg == seg {
			return true
		}
	}
	return false
}

// fetch reads from Pebble, for every entry, its id key in each committed
// segment that can decide it: from the horizon's start on, skipping
// segments whose offsets all come after the entry, except its own
// segment, whose value a new owner extends.
//
// The reads go through one iterator in key order rather than DB.Get: Get
// never consults the bloom filters of L6, where most ids live, so every
// miss would read a data block, while SeekPrefixGE with UseL6Filters does
// (the default Split makes the whole key the prefix), and seeks in
// increasing order reuse the open tables and blocks.
func (s *Store) fetch(p int32, pt *part, sc *scratch, entries []Entry) error {
	for i := range entries {
		e := &entries[i]
		sc.first = append(sc.first, int32(len(sc.lks)))
		own, lo := s.segsOf(e.Time.UnixMilli())
		hi := idHi(e.ID)
		j := sort.Search(len(pt.segs), func(j int) bool { return pt.segs[j].seg >= lo })
		hasOwn := false
		for _, c := range pt.segs[j:] {
			if c.minOff > e.Offset && c.seg != own {
				continue
			}
			hasOwn = hasOwn || c.seg == own
			sc.ord = append(sc.ord, seek{seg: c.seg, hi: hi, lk: int32(len(sc.lks)), entry: int32(i)})
			sc.lks = append(sc.lks, lookup{seg: c.seg, val: span{n: -1}})
		}
		if !hasOwn {
			sc.ord = append(sc.ord, seek{seg: own, hi: hi, lk: int32(len(sc.lks)), entry: int32(i)})
			sc.lks = append(sc.lks, lookup{seg: own, val: span{n: -1}, noRead: true})
		}
	}
	sc.first = append(sc.first, int32(len(sc.lks)))
	slices.SortFunc(sc.ord, func(a, b seek) int { return cmpKey(entries, a, b.seg, b.hi, entries[b.entry].ID) })
	// Lookups of one key are adjacent in key order: the first is the
	// group, whose overlay slot they share. A segment is read by all of
	// its lookups or by none (noRead), so groups never mix the two.
	sc.overlay = slices.Grow(sc.overlay[:0], len(sc.lks))[:len(sc.lks)]
	for k := range sc.ord {
		o := &sc.ord[k]
		g := o.lk
		if k > 0 {
			if q := sc.ord[k-1]; cmpKey(entries, q, o.seg, o.hi, entries[o.entry].ID) == 0 {
				g = sc.lks[q.lk].grp
			}
		}
		sc.lks[o.lk].grp = g
		sc.overlay[o.lk] = span{n: -1}
	}

	lower, upper := partSpan(prefixID, p)
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: lower, UpperBound: upper, UseL6Filters: true})
	if err != nil {
		return err
	}
	for k := range sc.ord {
		o := &sc.ord[k]
		if sc.lks[o.lk].noRead {
			continue
		}
		if g := sc.lks[o.lk].grp; g != o.lk {
			sc.lks[o.lk].val = sc.lks[g].val // the same id twice in the batch, read already
			continue
		}
		sc.key = appendIDKey(sc.key[:0], p, o.seg, entries[o.entry].ID)
		if !it.SeekPrefixGE(sc.key) || !bytes.Equal(it.Key(), sc.key) {
			if err := it.Error(); err != nil {
				it.Close()
				return err
			}
			continue
		}
		v, err := it.ValueAndErr()
		if err != nil {
			it.Close()
			return err
		}
		sc.lks[o.lk].val = span{off: int32(len(sc.vals)), n: int32(len(v))}
		sc.vals = append(sc.vals, v...)
	}
	return it.Close()
}

// write sets, in key order, the final value of every key recorded in this
// call: the memtable takes sorted inserts much faster than random ones.
func (s *Store) write(p int32, sc *scratch, b *pebble.Batch, entries []Entry) error {
	last := int32(-1)
	for k := range sc.ord {
		o := &sc.ord[k]
		if !sc.lks[o.lk].rec {
			continue
		}
		g := sc.lks[o.lk].grp
		if g == last {
			continue // recorded twice in this call; the overlay has the final value
		}
		last = g
		sc.key = appendIDKey(sc.key[:0], p, o.seg, entries[o.entry].ID)
		v, _ := sc.overlaid(o.lk) // recorded: present
		if err := b.Set(sc.key, v, nil); err != nil {
			return err
		}
	}
	return nil
}

// idHi is the first 8 bytes of id, zero-padded, as a big-endian number:
// ordering by it agrees with bytes.Compare whenever it differs.
func idHi(id []byte) uint64 {
	var b [8]byte
	copy(b[:], id)
	return binary.BigEndian.Uint64(b[:])
}
