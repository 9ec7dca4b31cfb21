package ingest

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/canopyhq/canopy/internal/testenv"
)

// onEachKafka runs test against kfake, and against the real broker when
// CANOPY_KAFKA_BROKERS names one (scripts/services; required in CI), side
// by side: each test names its own topics and groups.
func onEachKafka(t *testing.T, test func(t *testing.T, brokers []string)) {
	t.Run("kfake", func(t *testing.T) {
		t.Parallel()
		cluster, err := kfake.NewCluster(kfake.NumBrokers(1))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(cluster.Close)
		test(t, cluster.ListenAddrs())
	})
	t.Run("kafka", func(t *testing.T) {
		t.Parallel()
		test(t, strings.Split(testenv.Get(t, "CANOPY_KAFKA_BROKERS"), ","))
	})
}

// testAdmin is an admin client whose produces wait for a new topic to
// become known (KRaft propagates it) until the test's context ends.
func testAdmin(t *testing.T, brokers []string) (*kgo.Client, *kadm.Client) {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.UnknownTopicRetries(-1))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	return cl, kadm.NewClient(cl)
}

// createTopic creates a one-partition topic and waits until its metadata
// names it.
func createTopic(ctx context.Context, t *testing.T, adm *kadm.Client, topic string) {
	t.Helper()
	if _, err := adm.CreateTopic(ctx, 1, 1, nil, topic); err != nil {
		t.Fatalf("create %s: %v", topic, err)
	}
	for {
		d, err := adm.ListTopics(ctx, topic)
		if err == nil && d[topic].Err == nil && len(d[topic].Partitions) == 1 {
			return
		}
		if ctx.Err() != nil {
			t.Fatalf("topic %s never appeared: %v", topic, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// newTopics creates one-partition topics for the test and deletes them
// when it ends.
func newTopics(ctx context.Context, t *testing.T, adm *kadm.Client, topics ...string) {
	t.Helper()
	for _, topic := range topics {
		createTopic(ctx, t, adm, topic)
	}
	t.Cleanup(func() { _, _ = adm.DeleteTopics(context.Background(), topics...) })
}

// deleteTopic deletes topic and waits until the metadata says it does not
// exist.
func deleteTopic(ctx context.Context, t *testing.T, adm *kadm.Client, topic string) {
	t.Helper()
	if _, err := adm.DeleteTopics(ctx, topic); err != nil {
		t.Fatal(err)
	}
	eventually(ctx, t, "topic "+topic+" deleted", func() (bool, error) {
		d, err := adm.ListTopics(ctx, topic)
		if err != nil {
			return false, err
		}
		dt, ok := d[topic]
		return !ok || errors.Is(dt.Err, kerr.UnknownTopicOrPartition), nil
	})
}

// eventually polls f until it reports true or ctx ends.
func eventually(ctx context.Context, t *testing.T, what string, f func() (bool, error)) {
	t.Helper()
	var last error
	for {
		ok, err := f()
		if ok {
			return
		}
		last = err
		if ctx.Err() != nil {
			t.Fatalf("%s: never happened (last error %v)", what, last)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// A by-id topic deleted, or deleted and created again, while the router
// writes to it stops the router with ErrTopicGone (the worker exits 1 and
// its restart creates the topic and forgets state built from the old one)
// instead of retrying for as long as the worker runs. Records it could not
// route stay uncommitted in the events topic, and nothing goes to the new
// topic of the same name.
func TestRouterStopsWhenByIDTopicIsGone(t *testing.T) {
	for _, recreate := range []bool{false, true} {
		t.Run(map[bool]string{false: "deleted", true: "recreated"}[recreate], func(t *testing.T) {
			t.Parallel()
			onEachKafka(t, func(t *testing.T, brokers []string) {
				routerLosesTopic(t, brokers, recreate)
			})
		})
	}
}

func routerLosesTopic(t *testing.T, brokers []string, recreate bool) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	stamp := time.Now().UnixNano()
	events, byid, group := fmt.Sprintf("canopy_gone_events_%d", stamp), fmt.Sprintf("canopy_gone_byid_%d", stamp), fmt.Sprintf("canopy_gone_%d", stamp)
	cl, adm := testAdmin(t, brokers)
	newTopics(ctx, t, adm, events, byid)

	r, err := NewRouter(RouterConfig{
		Topic: events, Target: byid, Group: group,
		RetryBackoffMax: 200 * time.Millisecond, TopicGoneAfter: time.Second, SessionTimeout: 6 * time.Second,
	}, slog.New(slog.DiscardHandler), NewMetrics(prometheus.NewRegistry()), kgo.SeedBrokers(brokers...))
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()

	produce := func(from, n int) {
		t.Helper()
		var recs []*kgo.Record
		for i := from; i < from+n; i++ {
			recs = append(recs, &kgo.Record{Topic: events, Value: fmt.Appendf(nil, `{"event_id":"e%d"}`, i)})
		}
		if err := cl.ProduceSync(ctx, recs...).FirstErr(); err != nil {
			t.Fatal(err)
		}
	}
	committed := func() (int64, error) {
		offs, err := adm.FetchOffsets(ctx, group)
		if err != nil {
			return 0, err
		}
		o, _ := offs.Lookup(events, 0)
		return o.At, o.Err
	}
	const first = 20
	produce(0, first)
	eventually(ctx, t, "the first records routed and committed", func() (bool, error) {
		at, err := committed()
		return at == first, err
	})

	deleteTopic(ctx, t, adm, byid)
	if recreate {
		createTopic(ctx, t, adm, byid)
	}
	produce(first, 5)

	select {
	case err := <-done:
		if !errors.Is(err, ErrTopicGone) {
			t.Fatalf("router ended with %v, want ErrTopicGone", err)
		}
	case <-ctx.Done():
		t.Fatal("the router still retries a by-id topic that is gone")
	}
	if at, err := committed(); err != nil || at != first {
		t.Errorf("committed offset %d (%v) after the topic went, want %d: records not routed must stay uncommitted", at, err, first)
	}
	if recreate {
		ends, err := adm.ListEndOffsets(ctx, byid)
		if err != nil {
			t.Fatal(err)
		}
		if o, _ := ends.Lookup(byid, 0); o.Offset != 0 {
			t.Errorf("the new by-id topic holds %d records routed by a router of the old one", o.Offset)
		}
	}
}

// A retry or dead-letter topic deleted and created again while the worker
// runs is written again once it exists: franz-go would otherwise fail every
// produce with UNKNOWN_TOPIC_ID, leaving the partition resting for good.
func TestPublishFollowsARecreatedTopic(t *testing.T) {
	onEachKafka(t, func(t *testing.T, brokers []string) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		topic := fmt.Sprintf("canopy_recreated_dlq_%d", time.Now().UnixNano())
		_, adm := testAdmin(t, brokers)
		newTopics(ctx, t, adm, topic)
		cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...))
		if err != nil {
			t.Fatal(err)
		}
		defer cl.Close()
		f := []Failure{{Source: Source{Topic: "events", First: 1, Last: 1}, Class: ClassInvalidField, Key: []byte("k"), Raw: []byte(`{}`)}}
		if err := publishFailures(ctx, cl, topic, f, false); err != nil {
			t.Fatal(err)
		}
		deleteTopic(ctx, t, adm, topic)
		createTopic(ctx, t, adm, topic)
		// The batch is retried as the worker retries it; the first try may
		// meet the old id.
		eventually(ctx, t, "published to the new topic", func() (bool, error) {
			pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			defer cancel()
			err := publishFailures(pctx, cl, topic, f, false)
			return err == nil, err
		})
		ends, err := adm.ListEndOffsets(ctx, topic)
		if err != nil {
			t.Fatal(err)
		}
		if o, _ := ends.Lookup(topic, 0); o.Offset != 1 {
			t.Errorf("the new topic holds %d records, want 1", o.Offset)
		}
	})
}
