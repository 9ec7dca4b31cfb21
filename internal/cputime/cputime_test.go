package cputime

import "testing"

// Self grows while the process computes.
func TestSelfGrows(t *testing.T) {
	before := Self()
	x := uint64(1)
	for i := range 50_000_000 {
		x = x*6364136223846793005 + uint64(i)
	}
	if x == 0 {
		t.Log(x) // keeps the loop
	}
	if after := Self(); after <= before {
		t.Fatalf("CPU time %v after a busy loop, %v before", after, before)
	}
}
