package ingest

import (
	"fmt"
	"testing"
)

func TestGaps(t *testing.T) {
	r := func(a, b int64) Range { return Range{First: a, Last: b} }
	tests := []struct {
		name     string
		acked    []Range
		from, to int64
		want     string
	}{
		{"nothing acked", nil, 0, 10, "[{0 0 9}]"},
		{"all acked", []Range{r(0, 4), r(5, 9)}, 0, 10, "[]"},
		{"hole in the middle", []Range{r(0, 3), r(7, 9)}, 0, 10, "[{0 4 6}]"},
		{"unsorted and overlapping", []Range{r(6, 9), r(0, 2), r(1, 3)}, 0, 10, "[{0 4 5}]"},
		{"start after retention", []Range{r(0, 3)}, 5, 10, "[{0 5 9}]"},
		{"acked past the committed offset", []Range{r(0, 3), r(8, 20)}, 0, 10, "[{0 4 7}]"},
		{"empty interval", []Range{r(0, 3)}, 10, 10, "[]"},
		{"tail", []Range{r(0, 3)}, 0, 6, "[{0 4 5}]"},
	}
	for _, tt := range tests {
		if got := fmt.Sprint(Gaps(tt.acked, tt.from, tt.to)); got != tt.want && !(got == "[]" && tt.want == "[]") {
			t.Errorf("%s: Gaps = %s, want %s", tt.name, got, tt.want)
		}
	}
}
