package hierarchy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
)

// The hierarchy topic deleted and created again while a follower reads it:
// the follower reads the new topic from its start (franz-go would otherwise
// fail its every fetch with UNKNOWN_TOPIC_ID for as long as it ran). Fed by
// the topic alone, its tree must equal PostgreSQL's hierarchy after changes
// made once the topic is back. A worker's follower starts at given offsets
// (the topic's end when the tree was loaded), a follower of a topic that
// did not exist yet at its start: both ways are run.
func TestFollowerFollowsARecreatedTopic(t *testing.T) {
	for name, from := range map[string]map[int32]int64{"from offsets": {0: 0}, "from the start": nil} {
		t.Run(name, func(t *testing.T) { followerFollowsARecreatedTopic(t, from) })
	}
}

func followerFollowsARecreatedTopic(t *testing.T, from map[int32]int64) {
	pool := testDB(t, false)
	brokers, topic, producer := testTopic(t)
	s := NewStore(pool)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	for id := int64(1); id <= 6; id++ {
		if err := s.Create(ctx, id, max(0, id-1), fmt.Sprintf("e%d", id), StatusActive, nil); err != nil {
			t.Fatal(err)
		}
	}
	relay := &Relay{Pool: pool, Brokers: brokers, Topic: topic, Name: "test", Log: log}
	go func() { _ = relay.Run(ctx) }()
	tr := NewTree()
	f := &Follower{Brokers: brokers, Topic: topic, Tree: tr, Log: log, History: s}
	done := make(chan error, 1)
	go func() { done <- f.Run(ctx, from) }()
	waitVersion(t, s, tr, time.Minute)

	adm := kadm.NewClient(producer)
	if _, err := adm.DeleteTopics(ctx, topic); err != nil {
		t.Fatal(err)
	}
	for {
		d, err := adm.ListTopics(ctx, topic)
		if dt, ok := d[topic]; err == nil && (!ok || errors.Is(dt.Err, kerr.UnknownTopicOrPartition)) {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("topic %s never went: %v", topic, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if _, err := adm.CreateTopic(ctx, 1, 1, nil, topic); err != nil {
		t.Fatal(err)
	}

	if err := s.Move(ctx, 5, 2, nil); err != nil { // 5 and 6 from under 4 to under 2
		t.Fatal(err)
	}
	if err := s.SetStatus(ctx, 3, StatusSuspended, nil); err != nil {
		t.Fatal(err)
	}
	if err := s.Create(ctx, 7, 6, "", StatusActive, nil); err != nil {
		t.Fatal(err)
	}
	waitVersion(t, s, tr, 2*time.Minute)

	want := pgPaths(t, pool)
	if len(want) != 7 || tr.Len() != 7 {
		t.Fatalf("PostgreSQL has %d entities, the tree %d; want 7", len(want), tr.Len())
	}
	for id, w := range want {
		_, st, _ := tr.Current(id)
		parts := []string{}
		for _, p := range tr.Path(id) {
			parts = append(parts, fmt.Sprint(p))
		}
		if got := strings.Join(parts, "/") + " " + st.String(); got != w {
			t.Errorf("entity %d: tree %q, PostgreSQL %q", id, got, w)
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("follower: %v", err)
	}
}
