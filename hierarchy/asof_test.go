package hierarchy

import (
	"testing"
	"time"
)

func TestAncestorsAsOf(t *testing.T) {
	day := func(d int) time.Time { return time.Date(2026, 11, d, 0, 0, 0, 0, time.UTC) }
	tr := NewTree()
	for _, c := range []Change{
		{Seq: 1, ID: 1},
		{Seq: 2, ID: 2},
		{Seq: 3, ID: 3, ParentID: 1},
		{Seq: 4, ID: 3, ParentID: 2, ValidFrom: day(10)}, // 3 moves under 2 on the 10th
		{Seq: 5, ID: 3, ParentID: 1, ValidFrom: day(5)},  // back-dated: under 1 again from the 5th
		{Seq: 6, ID: 4, ParentID: 3, ValidFrom: day(1)},  // created later
		{Seq: 7, ID: 3, ParentID: 2, Status: StatusSuspended, ValidFrom: day(20)},
	} {
		if err := tr.Apply(c); err != nil {
			t.Fatal(err)
		}
	}
	chain := func(id int64, at time.Time, asOf int64) []int64 {
		got, ok := tr.AncestorsAsOf(id, at, asOf, nil)
		if !ok {
			return nil
		}
		ids := make([]int64, len(got))
		for i, a := range got {
			ids[i] = a.ID
		}
		return ids
	}
	tests := []struct {
		name string
		id   int64
		at   time.Time
		asOf int64
		want []int64
	}{
		{"before any move, as of 3", 3, day(12), 3, []int64{3, 1}},
		{"after the move, as of 4", 3, day(12), 4, []int64{3, 2}},
		{"the 7th as of 4: the move is later", 3, day(7), 4, []int64{3, 1}},
		{"the 12th as of 5: the back-dated change superseded the move", 3, day(12), 5, []int64{3, 1}},
		{"the 12th as of 4 still sees the move", 3, day(12), 4, []int64{3, 2}},
		{"the 6th as of 5", 3, day(6), 5, []int64{3, 1}},
		{"unknown before creation", 4, day(12), 5, nil},
		{"known after creation", 4, day(12), 6, []int64{4, 3, 1}},
		{"latest", 4, day(25), 7, []int64{4, 3, 2}},
		{"latest equals Ancestors", 3, day(2), 100, []int64{3, 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := chain(tt.id, tt.at, tt.asOf)
			if len(got) != len(tt.want) {
				t.Fatalf("chain = %v, want %v", got, tt.want)
			}
			for i := range got {
				if got[i] != tt.want[i] {
					t.Fatalf("chain = %v, want %v", got, tt.want)
				}
			}
		})
	}
	if got, _ := tr.AncestorsAsOf(3, day(21), 7, nil); got[0].Status != StatusSuspended {
		t.Fatalf("status as of 7 = %v", got[0].Status)
	}
	if got, _ := tr.AncestorsAsOf(3, day(21), 6, nil); got[0].Status != StatusActive {
		t.Fatalf("status as of 6 = %v", got[0].Status)
	}
}
