package ingest

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strconv"
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
	deadline := time.Now().Add(20 * time.Second)
	for {
		sink.mu.Lock()
		n := len(sink.batches)
		sink.mu.Unlock()
		if n > 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("the partition stayed stuck after its lease was taken")
		}
		time.Sleep(50 * time.Millisecond)
	}
}
