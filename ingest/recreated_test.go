package ingest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/canopyhq/canopy/schema"
)

// Topics that Canopy reads (the events topic, the retry topic), deleted and
// created again while a worker or router runs, are read again from their
// start. franz-go never adopts a recreated topic's new id: without this,
// every later fetch fails with UNKNOWN_TOPIC_ID, at once and on every
// poll, for as long as the process runs, and nothing of the new topic is
// read.

// recreateTopic deletes topic, creates it again, and makes cl produce to
// the new one.
func recreateTopic(ctx context.Context, t *testing.T, cl *kgo.Client, adm *kadm.Client, topic string) {
	t.Helper()
	deleteTopic(ctx, t, adm, topic)
	createTopic(ctx, t, adm, topic)
	cl.PurgeTopicsFromProducing(topic)
}

// produceIDs writes one event per id to topic.
func produceIDs(ctx context.Context, t *testing.T, cl *kgo.Client, topic string, ids ...string) {
	t.Helper()
	recs := make([]*kgo.Record, len(ids))
	for i, id := range ids {
		recs[i] = &kgo.Record{Topic: topic, Value: []byte(ev(id, 3, "1"))}
	}
	if err := cl.ProduceSync(ctx, recs...).FirstErr(); err != nil {
		t.Fatal(err)
	}
}

func ids(prefix string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("%s%d", prefix, i)
	}
	return out
}

// recreatedTestWorker is a worker of topic, in a group of the topic's name,
// writing to the returned sink.
func recreatedTestWorker(t *testing.T, brokers []string, topic string, stateFromTopic bool) (*Worker, *memSink) {
	t.Helper()
	p, _, sink := newTestProcessor()
	w, err := NewWorker(WorkerConfig{Brokers: brokers, Topic: topic, Group: topic, Owner: "w", StateFromTopic: stateFromTopic,
		FetchMaxWait: 20 * time.Millisecond, SessionTimeout: 6 * time.Second},
		p, slog.New(slog.NewTextHandler(io.Discard, nil)), kgo.FetchMinBytes(1))
	if err != nil {
		t.Fatal(err)
	}
	return w, sink
}

func TestWorkerFollowsARecreatedTopic(t *testing.T) {
	onEachKafka(t, func(t *testing.T, brokers []string) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		stamp := time.Now().UnixNano()
		topic := fmt.Sprintf("canopy_recreated_%d", stamp)
		cl, adm := testAdmin(t, brokers)
		newTopics(ctx, t, adm, topic)

		w, sink := recreatedTestWorker(t, brokers, topic, false)
		wctx, stop := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- w.Run(wctx) }()
		defer func() {
			stop()
			if err := <-done; err != nil {
				t.Errorf("worker: %v", err)
			}
		}()

		// written returns the sources of the batches that accepted each id.
		written := func() map[string][]Source {
			sink.mu.Lock()
			defer sink.mu.Unlock()
			out := map[string][]Source{}
			for _, b := range sink.batches {
				for _, e := range b.Events {
					out[e.ID] = append(out[e.ID], b.Intent.Source)
				}
			}
			return out
		}
		all := func(want []string) func() (bool, error) {
			return func() (bool, error) {
				got := written()
				for _, id := range want {
					if len(got[id]) == 0 {
						return false, nil
					}
				}
				return true, nil
			}
		}
		before, after := ids("old-", 10), ids("new-", 7)
		produceIDs(ctx, t, cl, topic, before...)
		eventually(ctx, t, "the first topic's events written", all(before))

		recreateTopic(ctx, t, cl, adm, topic)
		produceIDs(ctx, t, cl, topic, after...)
		eventually(ctx, t, "the new topic's events written", all(after))

		got := written()
		oldID := got[before[0]][0].TopicID
		for i, id := range after {
			srcs := got[id]
			if len(srcs) != 1 {
				t.Errorf("%s written %d times, want once", id, len(srcs))
				continue
			}
			s := srcs[0]
			if s.TopicID == oldID || s.TopicID == "" {
				t.Errorf("%s ledgered under topic id %q, the old topic's is %q: want the new topic's", id, s.TopicID, oldID)
			}
			if off := int64(i); off < s.First || off > s.Last {
				t.Errorf("%s in a batch of offsets %d–%d, want its offset %d in the new topic", id, s.First, s.Last, off)
			}
		}
		for _, id := range before {
			if n := len(got[id]); n != 1 {
				t.Errorf("%s written %d times, want once", id, n)
			}
		}
	})
}

// A worker whose state comes from its topic (the by-id topic's event ids)
// does not follow it: it stops with ErrTopicGone, as the router does, and
// its restart forgets the state.
func TestWorkerStopsWhenItsStateTopicIsRecreated(t *testing.T) {
	onEachKafka(t, func(t *testing.T, brokers []string) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		stamp := time.Now().UnixNano()
		topic := fmt.Sprintf("canopy_recreated_byid_%d", stamp)
		cl, adm := testAdmin(t, brokers)
		newTopics(ctx, t, adm, topic)

		w, sink := recreatedTestWorker(t, brokers, topic, true)
		done := make(chan error, 1)
		go func() { done <- w.Run(ctx) }()
		produceIDs(ctx, t, cl, topic, "a")
		waitForBatch(t, sink, time.Minute, "the first event was never written")

		recreateTopic(ctx, t, cl, adm, topic)
		produceIDs(ctx, t, cl, topic, "b")
		select {
		case err := <-done:
			if !errors.Is(err, ErrTopicGone) {
				t.Fatalf("worker ended with %v, want ErrTopicGone", err)
			}
		case <-ctx.Done():
			t.Fatal("the worker went on with its state topic created again")
		}
		sink.mu.Lock()
		defer sink.mu.Unlock()
		if n := len(sink.batches); n != 1 {
			t.Errorf("%d batches written, want only the first topic's", n)
		}
	})
}

func TestRouterFollowsARecreatedEventsTopic(t *testing.T) {
	onEachKafka(t, func(t *testing.T, brokers []string) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		stamp := time.Now().UnixNano()
		events, byid, group := fmt.Sprintf("canopy_recreated_events_%d", stamp), fmt.Sprintf("canopy_recreated_target_%d", stamp), fmt.Sprintf("canopy_recreated_router_%d", stamp)
		cl, adm := testAdmin(t, brokers)
		newTopics(ctx, t, adm, events, byid)

		r, err := NewRouter(RouterConfig{Topic: events, Target: byid, Group: group, SessionTimeout: 6 * time.Second},
			slog.New(slog.DiscardHandler), NewMetrics(prometheus.NewRegistry()), kgo.SeedBrokers(brokers...))
		if err != nil {
			t.Fatal(err)
		}
		rctx, stop := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- r.Run(rctx) }()
		defer func() {
			stop()
			if err := <-done; err != nil {
				t.Errorf("router: %v", err)
			}
		}()

		// routed reads the by-id topic's event ids, in order.
		routed := func() ([]string, error) {
			ends, err := adm.ListEndOffsets(ctx, byid)
			if err != nil {
				return nil, err
			}
			end, _ := ends.Lookup(byid, 0)
			rd, err := kgo.NewClient(kgo.SeedBrokers(brokers...),
				kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{byid: {0: kgo.NewOffset().AtStart()}}))
			if err != nil {
				return nil, err
			}
			defer rd.Close()
			var out []string
			for int64(len(out)) < end.Offset {
				fs := rd.PollFetches(ctx)
				if err := fs.Err0(); err != nil {
					return nil, err
				}
				fs.EachRecord(func(rec *kgo.Record) {
					var e Event
					if err := NewDecoder(schema.DefaultMeasures(), 0).Decode(rec.Value, &e); err != nil {
						t.Errorf("by-id record %d: %v", rec.Offset, err)
					}
					out = append(out, e.ID)
				})
			}
			return out, nil
		}
		count := func(n int) func() (bool, error) {
			return func() (bool, error) {
				got, err := routed()
				return len(got) >= n, err
			}
		}
		before, after := ids("old-", 20), ids("new-", 30)
		produceIDs(ctx, t, cl, events, before...)
		eventually(ctx, t, "the first topic's events routed", count(len(before)))

		recreateTopic(ctx, t, cl, adm, events)
		produceIDs(ctx, t, cl, events, after...)
		eventually(ctx, t, "the new topic's events routed", count(len(before)+len(after)))

		got, err := routed()
		if err != nil {
			t.Fatal(err)
		}
		slices.Sort(got)
		want := append(append([]string(nil), before...), after...)
		slices.Sort(want)
		if !slices.Equal(got, want) {
			t.Errorf("the by-id topic holds %v, want each event once: %v", got, want)
		}
		eventually(ctx, t, "the new topic's offsets committed", func() (bool, error) {
			offs, err := adm.FetchOffsets(ctx, group)
			if err != nil {
				return false, err
			}
			o, ok := offs.Lookup(events, 0)
			return ok && o.At == int64(len(after)), o.Err
		})
	})
}
