package recreated

import (
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
)

// poll is one poll's fetches: a failure or some records per topic.
func poll(failed map[string]error, records ...string) kgo.Fetches {
	var f kgo.Fetch
	for topic, err := range failed {
		f.Topics = append(f.Topics, kgo.FetchTopic{Topic: topic, Partitions: []kgo.FetchPartition{{Err: err}}})
	}
	for _, topic := range records {
		f.Topics = append(f.Topics, kgo.FetchTopic{Topic: topic, Partitions: []kgo.FetchPartition{{Records: []*kgo.Record{{Topic: topic}}}}})
	}
	return kgo.Fetches{f}
}

func TestWatchConfirmsOnlyLastingFailures(t *testing.T) {
	now := time.Unix(1000, 0)
	w := &Watch{Now: func() time.Time { return now }}
	gone := map[string]error{"a": kerr.UnknownTopicID}
	other := errors.New("broker down")
	step := func(d time.Duration, fs kgo.Fetches) ([]kgo.FetchError, []string, bool) {
		now = now.Add(d)
		return w.Note(fs)
	}

	if _, g, idle := step(0, poll(gone)); g != nil || !idle {
		t.Fatalf("first failure: gone %v idle %v, want none and idle", g, idle)
	}
	if _, g, _ := step(ConfirmAfter-time.Millisecond, poll(gone)); g != nil {
		t.Fatalf("before ConfirmAfter: gone %v", g)
	}
	// Records from the topic end the run of failures.
	if _, g, idle := step(time.Millisecond, poll(nil, "a")); g != nil || idle {
		t.Fatalf("records: gone %v idle %v", g, idle)
	}
	if _, g, _ := step(time.Second, poll(gone)); g != nil {
		t.Fatalf("a new run of failures confirmed at once: %v", g)
	}
	// So does a pause longer than ConfirmAfter between failures.
	if _, g, _ := step(ConfirmAfter+time.Second, poll(gone)); g != nil {
		t.Fatalf("failures far apart confirmed: %v", g)
	}
	others, g, idle := step(ConfirmAfter, poll(map[string]error{"a": kerr.UnknownTopicID, "b": other}, "c"))
	if !slices.Equal(g, []string{"a"}) {
		t.Fatalf("after ConfirmAfter of failures: gone %v, want [a]", g)
	}
	if idle {
		t.Error("a poll with records and another error is not idle")
	}
	if len(others) != 1 || others[0].Topic != "b" || !errors.Is(others[0].Err, other) {
		t.Errorf("other errors %v, want b's", others)
	}
	// Confirmed topics are forgotten: following them starts afresh.
	if _, g, _ := step(time.Second, poll(gone)); g != nil {
		t.Errorf("confirmed again at once: %v", g)
	}
}
