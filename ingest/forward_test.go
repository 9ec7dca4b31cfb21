package ingest

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
)

// recordsInput is an Input over records in memory.
type recordsInput struct {
	name string
	recs []Record
}

func (in recordsInput) Name() string { return in.name }
func (in recordsInput) Total() int64 { return int64(len(in.recs)) }
func (in recordsInput) Records(fn func(Record, int64) error) error {
	for i, r := range in.recs {
		if err := fn(r, int64(i+1)); err != nil {
			return err
		}
	}
	return nil
}

type memStrides struct {
	mu   sync.Mutex
	done map[Source]int64 // by topic, partition and first offset: the last offset
}

func (m *memStrides) Forwarded(_ context.Context, src Source) (int64, bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	last, ok := m.done[Source{Topic: src.Topic, Partition: src.Partition, First: src.First}]
	return last, ok, nil
}

func (m *memStrides) MarkForwarded(_ context.Context, src Source, _ int) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	k := Source{Topic: src.Topic, Partition: src.Partition, First: src.First}
	m.done[k] = max(m.done[k], src.Last)
	return nil
}

// modelWorkers plays the workers over the by-id topic as the contract has
// them, with no horizon: per partition, the first record of an id is
// accepted and later ones are duplicates; a record without an id is
// dead-lettered in the name of its source. It acknowledges everything only
// from its second look on, so Forward has to wait.
type modelWorkers struct {
	t       *testing.T
	brokers []string
	topic   string
	looks   int // AckedWithin calls so far
	unacked int // the first calls that acknowledge nothing
}

type modelRecord struct {
	key      string
	src      Source
	backfill bool
	at       time.Time
}

// read returns the topic's records by partition and offset.
func (m *modelWorkers) read() map[int32][]modelRecord {
	m.t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(m.brokers...), kgo.ConsumeTopics(m.topic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		m.t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ends, err := kadm.NewClient(cl).ListEndOffsets(ctx, m.topic)
	if err != nil {
		m.t.Fatal(err)
	}
	want := map[int32]int64{}
	ends.Each(func(o kadm.ListedOffset) { want[o.Partition] = o.Offset })
	out := map[int32][]modelRecord{}
	complete := func() bool {
		for p, n := range want {
			if int64(len(out[p])) < n {
				return false
			}
		}
		return true
	}
	for !complete() {
		fs := cl.PollFetches(ctx)
		if ctx.Err() != nil {
			m.t.Fatal("reading the by-id topic timed out")
		}
		fs.EachRecord(func(r *kgo.Record) {
			o := originOf(Record{Headers: r.Headers})
			out[r.Partition] = append(out[r.Partition], modelRecord{key: string(r.Key), src: o.Source, backfill: o.Backfill, at: r.Timestamp})
		})
	}
	return out
}

func (m *modelWorkers) AckedWithin(_ context.Context, _ string, p int32, first, last int64) ([]Range, error) {
	m.looks++
	if m.looks <= m.unacked {
		return nil, nil
	}
	return []Range{{Partition: p, First: first, Last: last}}, nil
}

func (m *modelWorkers) AcceptedIn(_ context.Context, _ string, p int32, ranges []Range) (int64, error) {
	recs := m.read()[p]
	seen := map[string]bool{}
	var n int64
	for off, r := range recs {
		if r.key == "" || seen[r.key] {
			continue
		}
		seen[r.key] = true
		for _, rg := range ranges {
			if int64(off) >= rg.First && int64(off) <= rg.Last {
				n++
			}
		}
	}
	return n, nil
}

func (m *modelWorkers) DeadLettered(_ context.Context, src Source, since time.Time) (map[Class]int64, error) {
	out := map[Class]int64{}
	for _, recs := range m.read() {
		for _, r := range recs {
			if r.key == "" && r.src.Topic == src.Topic && r.src.First >= src.First && r.src.First <= src.Last && !r.at.Before(since) {
				out[ClassInvalidJSON]++
			}
		}
	}
	return out, nil
}

// fakeByID starts a kfake broker holding topic with the given partitions and
// a client of it; both close with the test.
func fakeByID(t *testing.T, topic string, partitions int32) (*kfake.Cluster, *kgo.Client) {
	t.Helper()
	cluster, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(partitions, topic))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cluster.Close)
	cl, err := kgo.NewClient(kgo.SeedBrokers(cluster.ListenAddrs()...))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	return cluster, cl
}

// TestForwardCountsAndSkips forwards two inputs holding 300 distinct ids,
// 40 repeats and 3 lines without an id in strides of 50: every record lands
// in the by-id topic keyed by its id and marked as a backfill's, named by
// its input and offset; the summary is what the model workers made of them;
// a second run skips every stride and forwards nothing.
func TestForwardCountsAndSkips(t *testing.T) {
	const topic = "byid"
	cluster, cl := fakeByID(t, topic, 3)

	rng := rand.New(rand.NewPCG(7, 13))
	var inputs []Input
	var lines []string
	for i := range 300 {
		lines = append(lines, fmt.Sprintf(`{"event_id":"e%d","entity_id":1,"occurred_at":"2026-11-01T00:00:00Z","type":"sale"}`, i))
	}
	for range 40 {
		lines = append(lines, lines[rng.IntN(300)])
	}
	lines = append(lines, `{"event_id":`, `not json`, `{}`)
	rng.Shuffle(len(lines), func(i, j int) { lines[i], lines[j] = lines[j], lines[i] })
	for k, part := range [][]string{lines[:150], lines[150:]} {
		in := recordsInput{name: "file:" + strconv.Itoa(k)}
		for i, l := range part {
			in.recs = append(in.recs, Record{Topic: in.name, Offset: int64(10 * i), Value: []byte(l)})
		}
		inputs = append(inputs, in)
	}

	model := &modelWorkers{t: t, brokers: cluster.ListenAddrs(), topic: topic, unacked: 3} // a look at each partition
	strides := &memStrides{done: map[Source]int64{}}
	var waited []int64
	f := &Forward{Client: cl, Target: topic, Strides: strides, Outcomes: model, BatchRecords: 500,
		Poll: time.Millisecond, Waiting: func(acked, sent int64) { waited = append(waited, acked, sent) }}
	st, err := f.Run(context.Background(), inputs)
	if err != nil {
		t.Fatal(err)
	}
	want := BackfillStats{Records: 343, Accepted: 300, Duplicates: 40, DeadLettered: map[Class]int64{ClassInvalidJSON: 3}}
	if fmt.Sprint(st) != fmt.Sprint(want) {
		t.Fatalf("stats %+v, want %+v", st, want)
	}
	if !slices.Equal(waited, []int64{0, 343, 343, 343}) {
		t.Fatalf("waiting reports %v, want one look with nothing acknowledged, then all (holds when all 3 partitions got records)", waited)
	}
	if len(strides.done) != 7 { // 150 and 193 records at offsets 10 apart, in strides of 500 offsets: 3 + 4
		t.Fatalf("%d strides recorded, want 7", len(strides.done))
	}
	got := map[string]int{}
	for _, recs := range model.read() {
		for _, r := range recs {
			if !r.backfill || r.src.Topic == "" {
				t.Fatalf("by-id record %+v lacks the backfill or source headers", r)
			}
			in := inputs[r.src.Topic[len("file:")]-'0'].(recordsInput)
			src := in.recs[r.src.First/10]
			if id, _ := EventIDOf(src.Value); id != r.key {
				t.Fatalf("by-id record keyed %q, its source line holds %q", r.key, src.Value)
			}
			got[r.key]++
		}
	}
	if got[""] != 3 || len(got) != 301 {
		t.Fatalf("by-id topic: %d keys, %d without a key; want 300 and 3", len(got)-1, got[""])
	}

	model.looks = 0
	st, err = f.Run(context.Background(), inputs)
	if err != nil {
		t.Fatal(err)
	}
	want = BackfillStats{Records: 343, Skipped: 343, DeadLettered: map[Class]int64{}}
	if fmt.Sprint(st) != fmt.Sprint(want) {
		t.Fatalf("second run: stats %+v, want %+v", st, want)
	}
}

// addOffset keeps a partition's offsets as sorted, disjoint, maximal ranges
// whatever order they come in.
func TestAddOffset(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for range 200 {
		offs := rng.Perm(60)[:rng.IntN(60)]
		var rs []Range
		for _, o := range offs {
			rs = addOffset(rs, 0, int64(o))
		}
		var flat []int64
		for i, r := range rs {
			if r.First > r.Last || (i > 0 && rs[i-1].Last+1 >= r.First) {
				t.Fatalf("ranges %v not sorted, disjoint and maximal", rs)
			}
			for o := r.First; o <= r.Last; o++ {
				flat = append(flat, o)
			}
		}
		sorted := make([]int64, len(offs))
		for i, o := range offs {
			sorted[i] = int64(o)
		}
		slices.Sort(sorted)
		if !slices.Equal(flat, sorted) {
			t.Fatalf("ranges %v hold %v, want %v", rs, flat, sorted)
		}
	}
}

// TestForwardExtendsAStride forwards the first 37 records of an input, then
// the whole input: the second run skips exactly those 37, even where they
// end inside a stride, and forwards every other record once.
func TestForwardExtendsAStride(t *testing.T) {
	const topic = "byid"
	cluster, cl := fakeByID(t, topic, 2)
	in := recordsInput{name: "kafka:archive"}
	for i := range 100 {
		in.recs = append(in.recs, Record{Topic: in.name, Offset: int64(i),
			Value: fmt.Appendf(nil, `{"event_id":"e%d","entity_id":1,"occurred_at":"2026-11-01T00:00:00Z","type":"sale"}`, i)})
	}
	head := recordsInput{name: in.name, recs: in.recs[:37]}
	model := &modelWorkers{t: t, brokers: cluster.ListenAddrs(), topic: topic}
	f := &Forward{Client: cl, Target: topic, Strides: &memStrides{done: map[Source]int64{}}, Outcomes: model,
		BatchRecords: 25, Poll: time.Millisecond}
	if _, err := f.Run(context.Background(), []Input{head}); err != nil {
		t.Fatal(err)
	}
	st, err := f.Run(context.Background(), []Input{in})
	if err != nil {
		t.Fatal(err)
	}
	if st.Skipped != 37 || st.Accepted != 63 || st.Duplicates != 0 {
		t.Fatalf("second run: %+v, want 37 skipped and 63 accepted", st)
	}
	seen := map[int64]int{}
	for _, recs := range model.read() {
		for _, r := range recs {
			seen[r.src.First]++
		}
	}
	for i := range int64(100) {
		if seen[i] != 1 {
			t.Fatalf("source offset %d forwarded %d times, want once", i, seen[i])
		}
	}
}

// TestForwardRerunWaitsForSkippedStrides is a backfill killed after
// forwarding every stride but before the workers got to them: the rerun
// skips every stride, and still returns only once the workers have
// acknowledged what the group had not committed when it began.
func TestForwardRerunWaitsForSkippedStrides(t *testing.T) {
	const topic, group = "byid", "workers"
	cluster, cl := fakeByID(t, topic, 3)
	in := recordsInput{name: "file:history"}
	for i := range 120 {
		in.recs = append(in.recs, Record{Topic: in.name, Offset: int64(i),
			Value: fmt.Appendf(nil, `{"event_id":"e%d","entity_id":1,"occurred_at":"2026-11-01T00:00:00Z","type":"sale"}`, i)})
	}
	model := &modelWorkers{t: t, brokers: cluster.ListenAddrs(), topic: topic, unacked: 1 << 30}
	var waited [][2]int64
	f := &Forward{Client: cl, Target: topic, Group: group, Strides: &memStrides{done: map[Source]int64{}}, Outcomes: model,
		BatchRecords: 25, Poll: time.Millisecond, Waiting: func(acked, sent int64) { waited = append(waited, [2]int64{acked, sent}) }}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if _, err := f.Run(ctx, []Input{in}); err == nil {
		t.Fatal("first run returned without its records acknowledged")
	}

	// The workers' group has committed all of partition 0, and nothing of
	// the others.
	adm := kadm.NewClient(cl)
	ends, err := adm.ListEndOffsets(context.Background(), topic)
	if err != nil {
		t.Fatal(err)
	}
	end0, _ := ends.Lookup(topic, 0)
	var commit kadm.Offsets
	commit.Add(kadm.Offset{Topic: topic, Partition: 0, At: end0.Offset, LeaderEpoch: -1})
	if _, err := adm.CommitOffsets(context.Background(), group, commit); err != nil {
		t.Fatal(err)
	}
	model.looks, model.unacked, waited = 0, 4, nil
	st, err := f.Run(context.Background(), []Input{in})
	if err != nil {
		t.Fatal(err)
	}
	if st.Skipped != 120 || st.Accepted != 0 {
		t.Fatalf("rerun: %+v, want all 120 skipped", st)
	}
	pending := 120 - end0.Offset
	if len(waited) < 2 || waited[0] != [2]int64{0, pending} || waited[len(waited)-1] != [2]int64{pending, pending} {
		t.Fatalf("rerun's waiting reports %v, want it to wait for the %d records of partitions 1 and 2 until all were acknowledged",
			waited, pending)
	}
}

// mergeRange keeps a partition's ranges sorted and disjoint, joining what
// overlaps or touches.
func TestMergeRange(t *testing.T) {
	rs := []Range{{First: 5, Last: 9}, {First: 20, Last: 29}, {First: 40, Last: 40}}
	for _, c := range []struct {
		add  Range
		want []Range
	}{
		{Range{First: 0, Last: 3}, []Range{{First: 0, Last: 3}, {First: 5, Last: 9}, {First: 20, Last: 29}, {First: 40, Last: 40}}},
		{Range{First: 0, Last: 4}, []Range{{First: 0, Last: 9}, {First: 20, Last: 29}, {First: 40, Last: 40}}},
		{Range{First: 10, Last: 19}, []Range{{First: 5, Last: 29}, {First: 40, Last: 40}}},
		{Range{First: 12, Last: 15}, []Range{{First: 5, Last: 9}, {First: 12, Last: 15}, {First: 20, Last: 29}, {First: 40, Last: 40}}},
		{Range{First: 0, Last: 50}, []Range{{First: 0, Last: 50}}},
		{Range{First: 42, Last: 50}, []Range{{First: 5, Last: 9}, {First: 20, Last: 29}, {First: 40, Last: 40}, {First: 42, Last: 50}}},
	} {
		if got := mergeRange(slices.Clone(rs), c.add); !slices.Equal(got, c.want) {
			t.Errorf("mergeRange(%v, %v) = %v, want %v", rs, c.add, got, c.want)
		}
	}
}
