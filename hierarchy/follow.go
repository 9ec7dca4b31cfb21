package hierarchy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/canopyhq/canopy/internal/recreated"
	"github.com/canopyhq/canopy/internal/wait"
)

// Follower applies the changes published on the hierarchy topic to a Tree,
// so a worker sees a change as soon as the relay publishes it, without
// reloading. It reads read_committed and applies in offset order, which is
// commit order; Tree.Apply ignores what it already has, so overlapping with
// a load from PostgreSQL is harmless.
//
// The topic is not trusted: each poll's messages are looked up in
// PostgreSQL's history by history_seq in one query, and only a message that
// matches its history row is applied (the row's values, not the message's).
// The others are logged without their payload, counted in Rejected and
// skipped, so a forged message cannot move the tree's version. See
// docs/hierarchy.md, "Verification".
type Follower struct {
	Brokers []string
	Topic   string
	Tree    *Tree
	Log     *slog.Logger
	// History is what messages are verified against (the worker's
	// *Store). Without it the topic is ignored: the tree then only moves
	// through loads and PostgreSQL polls.
	History History
	// Rejected, if set, counts the messages not applied, by reason
	// (NewRejectedCounter makes it).
	Rejected *prometheus.CounterVec
	// Applied, if set, is called after each change the topic brought first
	// (not already loaded or polled) with the time since the change was
	// recorded in PostgreSQL: the propagation delay.
	Applied func(delay time.Duration)
	Opts    []kgo.Opt
}

// EndOffsets returns the current end of every partition of topic. Take it
// before loading the tree from PostgreSQL and follow from there: a change
// committed after the load is published after that end, and one published
// after it but committed before the load is ignored by Apply.
func EndOffsets(ctx context.Context, brokers []string, topic string, opts ...kgo.Opt) (map[int32]int64, error) {
	cl, err := kgo.NewClient(append([]kgo.Opt{kgo.SeedBrokers(brokers...)}, opts...)...)
	if err != nil {
		return nil, err
	}
	defer cl.Close()
	ends, err := kadm.NewClient(cl).ListCommittedOffsets(ctx, topic)
	if err != nil {
		return nil, fmt.Errorf("hierarchy: end offsets of %s: %w", topic, err)
	}
	out := map[int32]int64{}
	var firstErr error
	ends.Each(func(o kadm.ListedOffset) {
		if o.Err != nil && firstErr == nil {
			firstErr = o.Err
		}
		out[o.Partition] = o.Offset
	})
	if firstErr != nil {
		return nil, fmt.Errorf("hierarchy: end offsets of %s: %w", topic, firstErr)
	}
	return out, nil
}

// Run follows the topic from the given offsets (nil: from the start of
// every partition, for a topic that did not exist yet) until ctx ends.
func (f *Follower) Run(ctx context.Context, from map[int32]int64) error {
	if f.Log == nil {
		f.Log = slog.Default()
	}
	if f.History == nil {
		f.Log.Warn("hierarchy topic ignored: no PostgreSQL history to verify its messages against; the tree follows PostgreSQL polls only", "topic", f.Topic)
		<-ctx.Done()
		return nil
	}
	v := &verifier{history: f.History, tree: f.Tree, log: f.Log, rejected: f.Rejected, applied: f.Applied}
	opts := []kgo.Opt{
		kgo.SeedBrokers(f.Brokers...),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		kgo.FetchMaxWait(100 * time.Millisecond),
		// Where the topic starts again (created again, or from before
		// retention), it is read from its start: Apply skips what the
		// tree holds already.
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
	}
	if from == nil {
		opts = append(opts, kgo.ConsumeTopics(f.Topic))
	} else {
		offsets := map[int32]kgo.Offset{}
		for p, o := range from {
			offsets[p] = kgo.NewOffset().At(o)
		}
		opts = append(opts, kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{f.Topic: offsets}))
	}
	cl, err := kgo.NewClient(append(opts, f.Opts...)...)
	if err != nil {
		return fmt.Errorf("hierarchy follower: %w", err)
	}
	defer cl.Close()
	watch := recreated.Watch{Log: f.Log}
	for {
		// While a message waits for its history row, later ones wait
		// behind it: changes apply in topic order.
		if !v.pending() {
			fs := cl.PollFetches(ctx)
			if ctx.Err() != nil || fs.IsClientClosed() {
				return nil
			}
			others, gone, idle := watch.Note(fs)
			for _, fe := range others {
				if !errors.Is(fe.Err, context.Canceled) {
					f.Log.Warn("hierarchy topic fetch failed", "topic", fe.Topic, "partition", fe.Partition, "err", fe.Err)
				}
			}
			fs.EachRecord(func(r *kgo.Record) { v.add(r.Partition, r.Offset, r.Value) })
			if len(gone) > 0 {
				// Deleted and created again: read the new topic from its
				// start. PostgreSQL polls cover whatever the gap held.
				f.Log.Warn("hierarchy topic deleted and created again: reading the new topic from its start", "topic", f.Topic)
				recreated.Follow(cl, gone...)
			}
			if idle && !wait.Sleep(ctx, 100*time.Millisecond) {
				return nil
			}
		}
		pause, err := v.step(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			f.Log.Warn("hierarchy messages wait: their history could not be read", "err", err, "retry_in", pause)
		}
		if pause > 0 && !wait.Sleep(ctx, pause) {
			return nil
		}
	}
}
