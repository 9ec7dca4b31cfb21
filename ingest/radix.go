package ingest

// radixSort sorts a by key with a stable least-significant-digit radix sort
// of the low keyBits bits, one byte per pass, using buf (as long as a) as
// scratch. It returns the sorted slice, which is a or buf. A pass whose
// byte is the same in every key moves nothing and is skipped: a batch's
// keys often share their top bytes.
func radixSort(a, buf []fanoutLink, keyBits int) []fanoutLink {
	passes := (keyBits + 7) / 8
	if len(a) < 2 || passes == 0 {
		return a
	}
	// One read of the keys counts every byte (unrolled: the loop over the
	// passes cost more than the counting).
	var counts [8][256]int
	for _, it := range a {
		k := it.key
		switch passes {
		case 8:
			counts[7][byte(k>>56)]++
			fallthrough
		case 7:
			counts[6][byte(k>>48)]++
			fallthrough
		case 6:
			counts[5][byte(k>>40)]++
			fallthrough
		case 5:
			counts[4][byte(k>>32)]++
			fallthrough
		case 4:
			counts[3][byte(k>>24)]++
			fallthrough
		case 3:
			counts[2][byte(k>>16)]++
			fallthrough
		case 2:
			counts[1][byte(k>>8)]++
			fallthrough
		default:
			counts[0][byte(k)]++
		}
	}
	src, dst := a, buf[:len(a)]
	for p := range passes {
		c := &counts[p]
		shift := 8 * uint(p) //nolint:gosec // p < 8
		if c[byte(src[0].key>>shift)] == len(src) {
			continue
		}
		// counts → start offsets.
		off := 0
		for d, n := range c {
			c[d] = off
			off += n
		}
		for _, it := range src {
			d := byte(it.key >> shift)
			dst[c[d]] = it
			c[d]++
		}
		src, dst = dst, src
	}
	return src
}
