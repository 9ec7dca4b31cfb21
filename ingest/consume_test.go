package ingest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
)

// Members joining and leaving mid-stream must leave every record processed
// exactly once, with no partition stalled.
//
// It was written after a stall on real Kafka: when a second member joined, a
// cooperative rebalance revoked some partitions of the first, which then
// forgot the topic id of the partitions it kept, ledgered their records under
// another name and was fenced on every batch. kfake rebalances in a way that
// does not reproduce that sequence; TestPipelineMatchesOracle (two workers on
// real Kafka) does.
func TestWorkersSplitPartitionsThroughRebalances(t *testing.T) {
	const topic, partitions, total = "events", 4, 6000
	cluster, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(partitions, topic))
	if err != nil {
		t.Fatal(err)
	}
	defer cluster.Close()
	brokers := cluster.ListenAddrs()

	producer, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.DefaultProduceTopic(topic))
	if err != nil {
		t.Fatal(err)
	}
	defer producer.Close()
	produce := func(from, to int) {
		for i := from; i < to; i++ {
			r := &kgo.Record{Key: []byte(strconv.Itoa(i % 7)), Value: []byte(ev(fmt.Sprintf("e%d", i), 1+i%3, "1"))}
			if err := producer.ProduceSync(context.Background(), r).FirstErr(); err != nil {
				t.Fatal(err)
			}
		}
	}

	p, ledger, sink := newTestProcessor()
	p.Ledger = ledger
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	start := func(name string) (context.CancelFunc, chan error) {
		w, err := NewWorker(WorkerConfig{Brokers: brokers, Topic: topic, Group: "g", Owner: name,
			MaxPollRecords: 300, FetchMaxWait: 20 * time.Millisecond, SessionTimeout: 6 * time.Second},
			p, quiet, kgo.FetchMinBytes(1))
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- w.Run(ctx) }()
		return cancel, done
	}
	accepted := func() int {
		sink.mu.Lock()
		defer sink.mu.Unlock()
		n := 0
		for _, b := range sink.batches {
			n += int(b.Counts.Accepted)
		}
		return n
	}
	waitFor := func(n int) {
		t.Helper()
		deadline := time.Now().Add(60 * time.Second)
		for accepted() < n {
			if time.Now().After(deadline) {
				t.Fatalf("accepted %d of %d records", accepted(), n)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}

	stop1, done1 := start("w1")
	produce(0, total/3)
	waitFor(total / 3)
	stop2, done2 := start("w2") // rebalance: w1 keeps some partitions
	produce(total/3, 2*total/3)
	waitFor(2 * total / 3)
	stop1() // rebalance: w2 takes everything
	if err := <-done1; err != nil {
		t.Fatal(err)
	}
	produce(2*total/3, total)
	waitFor(total)
	stop2()
	if err := <-done2; err != nil {
		t.Fatal(err)
	}
	if got := accepted(); got != total {
		t.Fatalf("accepted %d records, want exactly %d", got, total)
	}
	seen := map[string]int{}
	for _, b := range sink.batches {
		for _, e := range b.Events {
			seen[e.ID]++
		}
	}
	for id, n := range seen {
		if n != 1 {
			t.Fatalf("event %s written %d times", id, n)
		}
	}
}

// A member whose lease was taken while the group still assigns it the
// partition (no rebalance follows) must take the lease back instead of
// leaving the partition stuck.
func TestWorkerRecoversLeaseWhenStillAssigned(t *testing.T) {
	const topic = "events"
	cluster, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(1, topic), kfake.GroupMinSessionTimeout(100*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer cluster.Close()
	producer, err := kgo.NewClient(kgo.SeedBrokers(cluster.ListenAddrs()...), kgo.DefaultProduceTopic(topic))
	if err != nil {
		t.Fatal(err)
	}
	defer producer.Close()
	p, ledger, sink := newTestProcessor()
	w, err := NewWorker(WorkerConfig{Brokers: cluster.ListenAddrs(), Topic: topic, Group: "g", Owner: "w",
		FetchMaxWait: 20 * time.Millisecond, SessionTimeout: time.Second},
		p, slog.New(slog.NewTextHandler(io.Discard, nil)), kgo.FetchMinBytes(1))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	defer func() { cancel(); <-done }()
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		ledger.mu.Lock()
		n := len(ledger.epoch)
		ledger.mu.Unlock()
		if n > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the worker never took its partition")
		}
	}

	// Someone else bumps every lease of the topic behind the worker's back.
	ledger.mu.Lock()
	for lp := range ledger.epoch {
		ledger.epoch[lp] += 10
	}
	ledger.mu.Unlock()
	if err := producer.ProduceSync(context.Background(), &kgo.Record{Value: []byte(ev("x", 1, "1"))}).FirstErr(); err != nil {
		t.Fatal(err)
	}
	waitForBatch(t, sink, 20*time.Second, "the partition stayed stuck after its lease was taken")
}

// waitForBatch waits until sink holds a batch, failing with msg after d.
func waitForBatch(t *testing.T, sink *memSink, d time.Duration, msg string) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		sink.mu.Lock()
		n := len(sink.batches)
		sink.mu.Unlock()
		if n > 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal(msg)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// partitionSink fails every write of one partition while broken is set.
type partitionSink struct {
	*memSink
	mu       sync.Mutex
	broken   bool
	badPart  int32
	maxBatch int
}

func (s *partitionSink) Write(ctx context.Context, b *Batch) error {
	s.mu.Lock()
	if s.broken && b.Intent.Partition == s.badPart {
		s.mu.Unlock()
		return errors.New("sink down for this partition")
	}
	s.maxBatch = max(s.maxBatch, int(b.Intent.Last-b.Intent.First+1))
	s.mu.Unlock()
	return s.memSink.Write(ctx, b)
}

// A partition whose batches keep failing rests and, once it holds too
// many records, is paused at the fetch; the worker's other partitions go
// on meanwhile. When the fault clears, every record counts once and no
// batch was larger than the cap.
func TestFailingPartitionIsPausedOthersGoOn(t *testing.T) {
	const topic, perPart = "events", 3000
	cluster, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(2, topic))
	if err != nil {
		t.Fatal(err)
	}
	defer cluster.Close()
	producer, err := kgo.NewClient(kgo.SeedBrokers(cluster.ListenAddrs()...), kgo.DefaultProduceTopic(topic),
		kgo.RecordPartitioner(kgo.ManualPartitioner()))
	if err != nil {
		t.Fatal(err)
	}
	defer producer.Close()
	var recs []*kgo.Record
	for i := range 2 * perPart {
		recs = append(recs, &kgo.Record{Partition: int32(i % 2), Value: []byte(ev(fmt.Sprintf("e%d", i), 1+i%3, "1"))})
	}
	if err := producer.ProduceSync(context.Background(), recs...).FirstErr(); err != nil {
		t.Fatal(err)
	}

	p, _, mem := newTestProcessor()
	sink := &partitionSink{memSink: mem, broken: true, badPart: 0}
	p.Sink, p.MaxBatchRecords = sink, 100
	w, err := NewWorker(WorkerConfig{Brokers: cluster.ListenAddrs(), Topic: topic, Group: "g", MaxPollRecords: 100,
		MaxBufferedRecords: 400, FetchMaxWait: 20 * time.Millisecond, RetryBackoffMax: 200 * time.Millisecond},
		p, slog.New(slog.NewTextHandler(io.Discard, nil)), kgo.FetchMinBytes(1), kgo.FetchMaxPartitionBytes(4<<10))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	accepted := func(part int32) int {
		mem.mu.Lock()
		defer mem.mu.Unlock()
		n := 0
		for _, b := range mem.batches {
			if b.Intent.Partition == part {
				n += int(b.Counts.Accepted)
			}
		}
		return n
	}
	deadline := time.Now().Add(60 * time.Second)
	for accepted(1) < perPart {
		if time.Now().After(deadline) {
			t.Fatalf("healthy partition: %d of %d while the other fails", accepted(1), perPart)
		}
		time.Sleep(20 * time.Millisecond)
	}
	// Held records of the failing partition stay bounded: the cap plus at
	// most one fetch taken before the pause.
	time.Sleep(500 * time.Millisecond)
	w.mu.Lock()
	h := w.parts[partitionKey{topic, 0}]
	heldRecs, paused := len(h.recs), h.paused
	w.mu.Unlock()
	if !paused || heldRecs > 400+200 || accepted(0) != 0 {
		t.Fatalf("failing partition: paused %v, holds %d records, accepted %d", paused, heldRecs, accepted(0))
	}
	sink.mu.Lock()
	sink.broken = false
	sink.mu.Unlock()
	for accepted(0) < perPart {
		if time.Now().After(deadline) {
			t.Fatalf("recovered partition: %d of %d", accepted(0), perPart)
		}
		time.Sleep(20 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if a0, a1 := accepted(0), accepted(1); a0 != perPart || a1 != perPart {
		t.Fatalf("accepted %d and %d, want %d each", a0, a1, perPart)
	}
	if sink.maxBatch > 100 {
		t.Fatalf("largest batch %d records, cap 100", sink.maxBatch)
	}
}

func TestDropFront(t *testing.T) {
	mk := func(n int) []Record {
		recs := make([]Record, n, n+4)
		for i := range recs {
			recs[i] = Record{Offset: int64(i), Value: []byte{byte(i)}}
		}
		return recs
	}
	for _, tc := range []struct{ n, drop int }{{10, 10}, {10, 6}, {10, 5}, {10, 4}, {10, 0}, {0, 0}} {
		recs := mk(tc.n)
		full := recs[:cap(recs)]
		got := dropFront(recs, tc.drop)
		if len(got) != tc.n-tc.drop {
			t.Fatalf("%+v: %d records left, want %d", tc, len(got), tc.n-tc.drop)
		}
		for i, r := range got {
			if r.Offset != int64(tc.drop+i) || len(r.Value) != 1 || r.Value[0] != byte(tc.drop+i) {
				t.Fatalf("%+v: record %d is offset %d, want %d", tc, i, r.Offset, tc.drop+i)
			}
		}
		// Whatever the array holds outside got is zero: nothing dropped
		// stays reachable through it.
		start := 0
		if len(got) > 0 {
			start = int(cap(full) - cap(got)) // got's place in the array
		}
		for i := range full[:tc.n] {
			if i >= start && i < start+len(got) {
				continue
			}
			if full[i].Value != nil {
				t.Fatalf("%+v: array element %d still holds a record", tc, i)
			}
		}
		if tc.drop >= tc.n-tc.drop && tc.n > 0 && cap(got) != cap(full) {
			t.Fatalf("%+v: capacity %d, want the whole array's %d (moved to the front)", tc, cap(got), cap(full))
		}
	}
}

// uncompressedTopic starts a kfake broker with topic (one partition) and a
// producer to it that does not compress, so fetch sizes count the events'
// own bytes; both close with the test.
func uncompressedTopic(t *testing.T, topic string) ([]string, *kgo.Client) {
	t.Helper()
	cluster, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(1, topic))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cluster.Close)
	brokers := cluster.ListenAddrs()
	producer, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.DefaultProduceTopic(topic),
		kgo.ProducerBatchCompression(kgo.NoCompression()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(producer.Close)
	return brokers, producer
}

// runWorker runs a worker of cfg and p until the returned stop is called,
// which fails the test if Run failed.
func runWorker(t *testing.T, cfg WorkerConfig, p *Processor) (stop func()) {
	t.Helper()
	w, err := NewWorker(cfg, p, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	return func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}
}

// A partition's batches are sized by how far behind it is. Behind (the
// broker holds more than the fetches brought), a batch is what the fetches
// brought: FetchMaxPartitionBytes must reach the Kafka client and size it.
// At its head (all there is was fetched), a batch takes at most
// HeadBatchBytes, so what arrived during a turn is acknowledged batch by
// batch.
func TestBatchesAreSizedByHowFarBehind(t *testing.T) {
	const topic, total = "events", 40000
	brokers, producer := uncompressedTopic(t, topic)
	recs := make([]*kgo.Record, total)
	size, longest := 0, 0
	for i := range recs {
		recs[i] = &kgo.Record{Value: []byte(ev(fmt.Sprintf("backlog-event-%08d", i), 1+i%3, "1"))}
		size += len(recs[i].Value)
		longest = max(longest, len(recs[i].Value))
	}
	if err := producer.ProduceSync(context.Background(), recs...).FirstErr(); err != nil {
		t.Fatal(err)
	}
	const fetch, head = 1 << 20, 256 << 10
	if size <= 3*fetch || size >= DefaultFetchMaxPartitionBytes {
		t.Fatalf("the backlog is %d bytes: it must lie between three 1 MiB fetches and the default fetch", size)
	}
	// batches drains the backlog with a new group and returns its batches'
	// sizes in records, in order.
	batches := func(group string, fetch, head int) []int {
		p, ledger, sink := newTestProcessor()
		p.Ledger = ledger
		stop := runWorker(t, WorkerConfig{Brokers: brokers, Topic: topic, Group: group, Owner: "w",
			FetchMaxPartitionBytes: fetch, HeadBatchBytes: head}, p)
		defer stop()
		deadline := time.Now().Add(60 * time.Second)
		for {
			sizes, done := batchSizes(sink)
			if done == total {
				return sizes
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: batches of %v records after 60 s, want %d records in all", group, sizes, total)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	atMost := func(bytes int) int { return bytes/longest + 1 } // records a cap of bytes may take

	// The default fetch brings the whole backlog at once: the partition is
	// at its head, and every batch takes at most the head's cap.
	got := batches("whole", 0, head)
	for i, n := range got {
		if n > atMost(head) {
			t.Fatalf("the whole backlog fetched at once: batch %d of %v took %d records, over the head's cap (%d)", i, got, n, atMost(head))
		}
	}
	// 1 MiB fetches: behind, a batch is what the fetches brought, more than
	// the head's cap and less than the backlog; the tail, fetched once
	// nothing more waited, goes in batches of the head's size.
	got = batches("behind", fetch, head)
	if got[0] <= atMost(head) || got[0] >= total/2 {
		t.Fatalf("fetching 1 MiB of a %d-byte backlog, the first batch took %d of its %d records (batches %v): want more than the head's cap (%d), under half",
			size, got[0], total, got, atMost(head))
	}
	if last := got[len(got)-1]; last > atMost(head) {
		t.Fatalf("fetching 1 MiB, the last batch took %d records (batches %v), over the head's cap (%d)", last, got, atMost(head))
	}
}

// batchSizes returns the records of each batch sink has written, in order,
// and their sum.
func batchSizes(sink *memSink) (sizes []int, total int) {
	sink.mu.Lock()
	defer sink.mu.Unlock()
	for _, b := range sink.batches {
		sizes = append(sizes, int(b.Counts.Records))
		total += int(b.Counts.Records)
	}
	return sizes, total
}

// gatedSink holds its first Write until open is closed.
type gatedSink struct {
	*memSink
	entered, open chan struct{}
	once          sync.Once
}

func (s *gatedSink) Write(ctx context.Context, b *Batch) error {
	first := false
	s.once.Do(func() { first = true })
	if first {
		close(s.entered)
		<-s.open
	}
	return s.memSink.Write(ctx, b)
}

// TestPollTakesWhatArrivedDuringTheTurn: records that reach Kafka while a
// batch is being written go into the next batch, not the one after. b
// arrives during the first batch's turn and is fetched then (the one fetch
// franz-go keeps buffered); the c records arrive after that fetch
// returned, so only the fetch sent when the next poll takes b brings them.
func TestPollTakesWhatArrivedDuringTheTurn(t *testing.T) {
	const topic, maxWait = "events", time.Second
	brokers, producer := uncompressedTopic(t, topic)
	produce := func(prefix string, n int) {
		t.Helper()
		recs := make([]*kgo.Record, n)
		for i := range recs {
			recs[i] = &kgo.Record{Value: []byte(ev(fmt.Sprintf("%s-%08d", prefix, i), 3, "1"))}
		}
		if err := producer.ProduceSync(context.Background(), recs...).FirstErr(); err != nil {
			t.Fatal(err)
		}
	}

	p, ledger, mem := newTestProcessor()
	p.Ledger = ledger
	sink := &gatedSink{memSink: mem, entered: make(chan struct{}), open: make(chan struct{})}
	p.Sink = sink
	defer runWorker(t, WorkerConfig{Brokers: brokers, Topic: topic, Group: "g", Owner: "w", FetchMaxWait: maxWait}, p)()

	const many = 12000 // about 1.4 MB, over FetchMinBytes (1 MiB)
	produce("a", 1)
	select {
	case <-sink.entered:
	case <-time.After(60 * time.Second):
		t.Fatal("the first batch was not written")
	}
	produce("b", 1)
	time.Sleep(3 * maxWait) // the buffered fetch returns with b
	produce("c", many)
	time.Sleep(maxWait)
	close(sink.open)

	deadline := time.Now().Add(60 * time.Second)
	for {
		sizes, total := batchSizes(mem)
		if len(sizes) >= 2 && sizes[1] < 2 {
			t.Fatalf("batches of %v records: the second took b alone, leaving the c records that were waiting in Kafka for a later turn", sizes)
		}
		if total == 2+many {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("batches of %v records after 60 s, want %d records in all", sizes, 2+many)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
