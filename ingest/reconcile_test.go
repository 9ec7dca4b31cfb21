package ingest

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"sort"
	"testing"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
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

// fakeAcks serves acknowledged ranges a page at a time, as ClickHouseSink
// does, and records the lowest offset each scan asked about.
type fakeAcks struct {
	ranges []Range // sorted by first offset, unique first offsets
	froms  []int64 // the from of every query
}

func (f *fakeAcks) AckedPage(_ context.Context, _, _ string, p int32, from, after, to int64, limit int) ([]Range, error) {
	f.froms = append(f.froms, from)
	var out []Range
	for _, r := range f.ranges {
		if r.Partition == p && r.First > after && r.First < to && r.Last >= from && len(out) < limit {
			out = append(out, r)
		}
	}
	return out, nil
}

func (f *fakeAcks) add(rs ...Range) {
	f.ranges = append(f.ranges, rs...)
	sort.Slice(f.ranges, func(i, j int) bool { return f.ranges[i].First < f.ranges[j].First })
}

// TestWalkPartitionPaged checks that reading the acknowledged ranges a page
// at a time finds exactly the gaps Gaps finds over all of them at once.
func TestWalkPartitionPaged(t *testing.T) {
	rnd := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < 500; i++ {
		var acked []Range
		used := map[int64]bool{}
		for n := rnd.IntN(12); n > 0; n-- {
			first := rnd.Int64N(100)
			if used[first] {
				continue
			}
			used[first] = true
			acked = append(acked, Range{First: first, Last: first + rnd.Int64N(15)})
		}
		from, to := rnd.Int64N(40), rnd.Int64N(120)
		want := fmt.Sprint(Gaps(acked, from, to))
		for page := 1; page <= 4; page++ {
			f := &fakeAcks{}
			f.add(acked...)
			r := &Reconciler{Acks: f, AckPage: page}
			var got []Range
			if err := r.walkPartition(context.Background(), "", 0, from, to, func(g Range) error { got = append(got, g); return nil }); err != nil {
				t.Fatal(err)
			}
			if fmt.Sprint(got) != want && !(len(got) == 0 && want == "[]") {
				t.Fatalf("acked %v, [%d, %d), page %d: walk found %v, Gaps %s", acked, from, to, page, got, want)
			}
		}
	}
}

// TestFindRemembersFloor runs Find repeatedly, as reconcile --watch does. A
// scan asks only about the ranges above the offset below which the previous
// scan found everything acknowledged; a gap still holding records keeps
// that offset below it, so it is found again, and a gap that appears later
// above it (offsets moved past records by hand) is found too.
func TestFindRemembersFloor(t *testing.T) {
	const topic, group = "events", "g"
	cluster, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(1, topic))
	if err != nil {
		t.Fatal(err)
	}
	defer cluster.Close()
	cl, err := kgo.NewClient(kgo.SeedBrokers(cluster.ListenAddrs()...), kgo.DefaultProduceTopic(topic))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx := context.Background()
	for i := 0; i < 30; i++ {
		if err := cl.ProduceSync(ctx, &kgo.Record{Value: []byte(fmt.Sprint(i))}).FirstErr(); err != nil {
			t.Fatal(err)
		}
	}
	adm := kadm.NewClient(cl)
	commit := func(at int64) {
		t.Helper()
		offs := kadm.Offsets{}
		offs.AddOffset(topic, 0, at, -1)
		resp, err := adm.CommitOffsets(ctx, group, offs)
		if err == nil {
			err = resp.Error()
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	acks := &fakeAcks{}
	acks.add(Range{First: 0, Last: 4}, Range{First: 10, Last: 19}, Range{First: 20, Last: 24})
	r := &Reconciler{Client: cl, Topic: topic, Group: group, Acks: acks, AckPage: 1}
	find := func(want string, lowest int64) {
		t.Helper()
		acks.froms = nil
		gaps, err := r.Find(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if got := fmt.Sprint(gaps); got != want && !(len(gaps) == 0 && want == "[]") {
			t.Fatalf("Find = %s, want %s", got, want)
		}
		if len(acks.froms) == 0 || slices.Min(acks.froms) != lowest {
			t.Fatalf("the scan asked for acks from %v, want from %d on", acks.froms, lowest)
		}
	}
	commit(20)
	find("[{{0 5 9} 5}]", 0)
	find("[{{0 5 9} 5}]", 5) // not processed: found again
	acks.add(Range{First: 5, Last: 9})
	find("[]", 5)
	commit(30) // offsets moved past 25…29 by hand
	find("[{{0 25 29} 5}]", 20)
}
