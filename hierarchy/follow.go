package hierarchy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
)

// Follower applies the changes published on the hierarchy topic to a Tree,
// so a worker sees a change as soon as the relay publishes it, without
// reloading. It reads read_committed and applies in offset order, which is
// commit order; Tree.Apply ignores what it already has, so overlapping with
// a load from PostgreSQL is harmless.
type Follower struct {
	Brokers []string
	Topic   string
	Tree    *Tree
	Log     *slog.Logger
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
	opts := []kgo.Opt{
		kgo.SeedBrokers(f.Brokers...),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		kgo.FetchMaxWait(100 * time.Millisecond),
	}
	if from == nil {
		opts = append(opts, kgo.ConsumeTopics(f.Topic), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
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
	for {
		fs := cl.PollFetches(ctx)
		if ctx.Err() != nil || fs.IsClientClosed() {
			return nil
		}
		for _, fe := range fs.Errors() {
			if !errors.Is(fe.Err, context.Canceled) {
				f.Log.Warn("hierarchy topic fetch failed", "topic", fe.Topic, "partition", fe.Partition, "err", fe.Err)
			}
		}
		fs.EachRecord(func(r *kgo.Record) {
			c, recorded, err := decodeMessage(r.Value)
			if err != nil {
				// Not from the relay (the fencing record has no value):
				// PostgreSQL remains the source of truth, skip it.
				return
			}
			first := c.Seq > f.Tree.Version() // not brought already by a load or poll
			if err := f.Tree.Apply(c); err != nil {
				f.Log.Error("hierarchy change not applied", "seq", c.Seq, "entity", c.ID, "err", err)
				return
			}
			if first && f.Applied != nil && !recorded.IsZero() {
				f.Applied(time.Since(recorded))
			}
		})
	}
}

func decodeMessage(value []byte) (Change, time.Time, error) {
	var m Message
	if len(value) == 0 {
		return Change{}, time.Time{}, errors.New("empty")
	}
	if err := json.Unmarshal(value, &m); err != nil {
		return Change{}, time.Time{}, err
	}
	st, err := ParseStatus(m.Status)
	if err != nil {
		return Change{}, time.Time{}, err
	}
	c := Change{Seq: m.HistorySeq, ID: m.EntityID, Status: st}
	if m.ParentID != nil {
		c.ParentID = *m.ParentID
	}
	if m.EffectiveAt != nil {
		if c.ValidFrom, err = time.Parse(time.RFC3339Nano, *m.EffectiveAt); err != nil {
			return Change{}, time.Time{}, err
		}
	}
	recorded, _ := time.Parse(time.RFC3339Nano, m.RecordedAt)
	return c, recorded, nil
}
