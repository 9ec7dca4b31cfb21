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
	// One read of the keys counts every byte.
	var counts [8][256]int
	for _, it := range a {
		k := it.key
		for p := range passes {
			counts[p][byte(k>>(8*p))]++
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
