package ingest

import (
	"math/bits"
	"strconv"
	"strings"
)

// Owned is the set of offsets of a batch whose records own their event id
// (Ledger.Begin). It is a bitmap from the batch's first offset: built once
// per batch and asked once per record, where a map cost a hash and a probe
// per record. The zero value and nil are empty.
type Owned struct {
	first int64
	words []uint64
}

// NewOwned returns an empty set with room for the offsets of src.
func NewOwned(src Source) *Owned {
	o := &Owned{first: src.First}
	if src.Last >= src.First {
		o.words = make([]uint64, (src.Last-src.First)/64+1)
	}
	return o
}

// Add puts off in the set. An offset outside the room NewOwned made is
// added too (the set grows): losing one would not count an event.
func (o *Owned) Add(off int64) {
	if len(o.words) == 0 {
		o.first = off - off%64
	}
	if off < o.first {
		shift := (o.first - off + 63) / 64
		o.words = append(make([]uint64, shift, shift+int64(len(o.words))), o.words...)
		o.first -= shift * 64
	}
	i := off - o.first
	w := int(i / 64)
	if w >= len(o.words) {
		o.words = append(o.words, make([]uint64, w+1-len(o.words))...)
	}
	o.words[w] |= 1 << (i % 64)
}

// Has reports whether off is in the set.
func (o *Owned) Has(off int64) bool {
	if o == nil || off < o.first {
		return false
	}
	i := off - o.first
	w := i / 64
	return w < int64(len(o.words)) && o.words[w]&(1<<(i%64)) != 0
}

// Len is the number of offsets in the set.
func (o *Owned) Len() int {
	if o == nil {
		return 0
	}
	n := 0
	for _, word := range o.words {
		n += bits.OnesCount64(word)
	}
	return n
}

// Offsets returns the set's offsets in ascending order.
func (o *Owned) Offsets() []int64 {
	if o == nil {
		return nil
	}
	out := make([]int64, 0, o.Len())
	for w, word := range o.words {
		for word != 0 {
			b := bits.TrailingZeros64(word)
			out = append(out, o.first+int64(w)*64+int64(b))
			word &= word - 1
		}
	}
	return out
}

// String lists the offsets, as fmt prints a slice.
func (o *Owned) String() string {
	var sb strings.Builder
	sb.WriteByte('[')
	for i, off := range o.Offsets() {
		if i > 0 {
			sb.WriteByte(' ')
		}
		sb.WriteString(strconv.FormatInt(off, 10))
	}
	sb.WriteByte(']')
	return sb.String()
}
