// Package recreated keeps a long-lived franz-go consumer reading a topic
// that was deleted and created again while it ran.
//
// franz-go never adopts a recreated topic's new id. Once its metadata shows
// the new id, every fetch of the topic fails with UNKNOWN_TOPIC_ID, at once
// and on every poll, until the topic is purged from the client and added
// back (franz-go's README, "Topic recreation"). Left alone, a consumer
// spins on that error and never reads the new topic.
package recreated

import (
	"errors"
	"log/slog"
	"sort"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
)

// ConfirmAfter is how long a topic's fetches must keep failing with
// UNKNOWN_TOPIC_ID before Watch takes the topic for recreated: a broker
// that has not yet learnt a new topic's id answers the same for a moment.
const ConfirmAfter = 3 * time.Second

// Watch notices, from a consumer's polls, the topics it can no longer read.
// The zero value is ready; it is not safe for concurrent use.
type Watch struct {
	// Log, if set, gets one warning when a topic's fetches start failing
	// with UNKNOWN_TOPIC_ID.
	Log *slog.Logger
	// Now is the clock (tests); nil means time.Now.
	Now func() time.Time

	first, last map[string]time.Time // of the current run of failures, per topic
}

// Note reads one poll's fetches. It returns:
//   - others: the fetch errors other than UNKNOWN_TOPIC_ID, for the caller
//     to handle as it did before;
//   - gone: the topics whose fetches have failed with UNKNOWN_TOPIC_ID for
//     ConfirmAfter, which the caller follows (Follow) or gives up on; Watch
//     forgets them;
//   - idle: the poll brought only UNKNOWN_TOPIC_ID failures, no records and
//     no other error. franz-go answers such polls at once, so the caller
//     should pause a little before the next.
func (w *Watch) Note(fs kgo.Fetches) (others []kgo.FetchError, gone []string, idle bool) {
	now := time.Now()
	if w.Now != nil {
		now = w.Now()
	}
	if w.first == nil {
		w.first, w.last = map[string]time.Time{}, map[string]time.Time{}
	}
	failing := map[string]bool{}
	for _, fe := range fs.Errors() {
		if !errors.Is(fe.Err, kerr.UnknownTopicID) {
			others = append(others, fe)
			continue
		}
		failing[fe.Topic] = true
	}
	fs.EachTopic(func(ft kgo.FetchTopic) {
		ft.EachPartition(func(fp kgo.FetchPartition) {
			if len(fp.Records) > 0 {
				delete(w.first, ft.Topic) // it reads: not gone
				delete(w.last, ft.Topic)
			}
		})
	})
	for topic := range failing {
		last, ok := w.last[topic]
		if !ok || now.Sub(last) > ConfirmAfter {
			// A new run of failures: an old one ended without confirming.
			w.first[topic] = now
			if w.Log != nil {
				w.Log.Warn("fetches of a topic fail with UNKNOWN_TOPIC_ID: it may have been deleted and created again",
					"topic", topic, "confirm_after", ConfirmAfter)
			}
		}
		w.last[topic] = now
		if now.Sub(w.first[topic]) >= ConfirmAfter {
			gone = append(gone, topic)
			delete(w.first, topic)
			delete(w.last, topic)
		}
	}
	sort.Strings(gone)
	return others, gone, len(failing) > 0 && len(others) == 0 && fs.NumRecords() == 0
}

// Follow purges topics from cl's consuming and adds them back, so cl reads
// the topics as they now are. A group member then starts each partition
// from the group's committed offset, or from its reset offset where there
// is none (Kafka drops a deleted topic's committed offsets); franz-go never
// commits offsets taken from the old topic to the new one. A direct
// consumer starts from its reset offset.
func Follow(cl *kgo.Client, topics ...string) {
	if len(topics) == 0 {
		return
	}
	cl.PurgeTopicsFromConsuming(topics...)
	cl.AddConsumeTopics(topics...)
}
