package idstate

import (
	"encoding/binary"
	"errors"
)

// Key prefixes and meta kinds; see the package doc for the layout.
const (
	prefixID   = 'i'
	prefixMeta = 'm'
	prefixConf = 's'
	metaThru   = 't'
	metaCount  = 'c'
)

// partBytes encodes p so that byte order matches numeric order.
func partBytes(p int32) uint32 { return uint32(p) ^ 1<<31 }

// appendIDKey appends the key of id in segment seg of partition p.
func appendIDKey(dst []byte, p int32, seg uint32, id []byte) []byte {
	dst = append(dst, prefixID)
	dst = binary.BigEndian.AppendUint32(dst, partBytes(p))
	dst = binary.BigEndian.AppendUint32(dst, seg)
	return append(dst, id...)
}

// idSpan returns the bounds of p's ids in segments [from, to).
func idSpan(p int32, from, to uint64) (start, end []byte) {
	return segBound(prefixID, p, nil, from), segBound(prefixID, p, nil, to)
}

// countSpan returns the bounds of p's segment counts for segments [from, to).
func countSpan(p int32, from, to uint64) (start, end []byte) {
	k := []byte{metaCount}
	return segBound(prefixMeta, p, k, from), segBound(prefixMeta, p, k, to)
}

// segBound is prefix, partition, infix, then seg; seg 1<<32 (one past the
// last segment) becomes the successor of the shorter key.
func segBound(prefix byte, p int32, infix []byte, seg uint64) []byte {
	k := binary.BigEndian.AppendUint32([]byte{prefix}, partBytes(p))
	k = append(k, infix...)
	if seg > 1<<32-1 {
		return successor(k)
	}
	return binary.BigEndian.AppendUint32(k, uint32(seg))
}

// partSpan returns the bounds of every key of p under prefix.
func partSpan(prefix byte, p int32) (start, end []byte) {
	k := binary.BigEndian.AppendUint32([]byte{prefix}, partBytes(p))
	return k, successor(k)
}

// successor returns the smallest key greater than every key starting with k.
func successor(k []byte) []byte {
	s := append([]byte(nil), k...)
	for i := len(s) - 1; i >= 0; i-- {
		if s[i] != 0xff {
			s[i]++
			return s[:i+1]
		}
	}
	return nil // every byte 0xff: no upper bound; not reachable with our prefixes
}

// segmentKey holds the segment width (uvarint ms) the directory was
// written with.
var segmentKey = []byte{prefixConf, 's', 'e', 'g'}

// formatKey holds the value format (uvarint); valueFormat is this code's.
var formatKey = []byte{prefixConf, 'f', 'm', 't'}

const valueFormat = 2 // 1 (no key) had no release bit

func thruKey(p int32) []byte {
	k := binary.BigEndian.AppendUint32([]byte{prefixMeta}, partBytes(p))
	return append(k, metaThru)
}

func countKey(p int32, seg uint32) []byte {
	k := binary.BigEndian.AppendUint32([]byte{prefixMeta}, partBytes(p))
	k = append(k, metaCount)
	return binary.BigEndian.AppendUint32(k, seg)
}

// metaKey is a decoded meta key.
type metaKey struct {
	part int32
	kind byte
	seg  uint32
}

var errBadKey = errors.New("idstate: malformed meta key")

func parseMetaKey(k []byte) (metaKey, error) {
	if len(k) < 6 || k[0] != prefixMeta {
		return metaKey{}, errBadKey
	}
	m := metaKey{part: int32(binary.BigEndian.Uint32(k[1:5]) ^ 1<<31), kind: k[5]}
	switch {
	case m.kind == metaThru && len(k) == 6:
	case m.kind == metaCount && len(k) == 10:
		m.seg = binary.BigEndian.Uint32(k[6:])
	default:
		return metaKey{}, errBadKey
	}
	return m, nil
}

// occ is one recorded occurrence: its offset, its time in unix ms, and
// whether it is a release (Entry.Release) rather than an owner.
type occ struct {
	off  int64
	ms   int64
	tomb bool
}

// appendOcc appends o to a value of segment starting at segStart (unix ms).
// The offset is shifted left by one; the low bit is the release flag.
func appendOcc(dst []byte, o occ, segStart int64) []byte {
	v := uint64(o.off) << 1
	if o.tomb {
		v |= 1
	}
	dst = binary.AppendUvarint(dst, v)
	return binary.AppendUvarint(dst, uint64(o.ms-segStart))
}

// nextOcc decodes the first occurrence of v, returning the rest; ok is false
// when v is empty or malformed.
func nextOcc(v []byte, segStart int64) (o occ, rest []byte, ok bool) {
	off, n := binary.Uvarint(v)
	if n <= 0 {
		return occ{}, nil, false
	}
	d, m := binary.Uvarint(v[n:])
	if m <= 0 {
		return occ{}, nil, false
	}
	return occ{off: int64(off >> 1), ms: segStart + int64(d), tomb: off&1 == 1}, v[n+m:], true
}

var errBadValue = errors.New("idstate: malformed value")

// appendSegInfo encodes the value of a segment's count key.
func appendSegInfo(dst []byte, si segInfo) []byte {
	dst = binary.AppendUvarint(dst, uint64(si.n))
	return binary.AppendUvarint(dst, uint64(si.minOff))
}

func parseSegInfo(seg uint32, v []byte) (segInfo, error) {
	n, k := binary.Uvarint(v)
	if k <= 0 {
		return segInfo{}, errBadValue
	}
	m, err := uvarint(v[k:])
	if err != nil {
		return segInfo{}, err
	}
	return segInfo{seg: seg, n: int64(n), minOff: int64(m)}, nil
}

// uvarint decodes a value that is exactly one uvarint.
func uvarint(v []byte) (uint64, error) {
	n, k := binary.Uvarint(v)
	if k <= 0 || k != len(v) {
		return 0, errBadValue
	}
	return n, nil
}
