package ingest

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
)

// Failure payloads above DeadLetterMaxBytes are published truncated to
// TruncatedBytes, with HeaderRawBytes and HeaderRawSHA256 naming the
// original: a topic's default max.message.bytes (1 MiB) never refuses them,
// and ingest_failures keeps the same prefix.
const (
	DeadLetterMaxBytes = 512 << 10
	TruncatedBytes     = 64 << 10
)

// ClassUnpublishable is the class, in ingest_failures, of a failure the
// dead-letter topic refused for good (too large for it, an invalid record):
// ingest_failures is its only record. The message names the original class.
const ClassUnpublishable Class = "unpublishable"

// fit truncates f's payload when it is too large to dead-letter whole.
func (f *Failure) fit() {
	if len(f.Raw) <= DeadLetterMaxBytes || f.RawBytes > 0 {
		return
	}
	sum := sha256.Sum256(f.Raw)
	f.RawBytes, f.RawSHA256 = len(f.Raw), hex.EncodeToString(sum[:])
	f.Raw = f.Raw[:TruncatedBytes:TruncatedBytes]
	f.Message += fmt.Sprintf(" (payload of %d bytes kept truncated to its first %d, sha256 %s)", f.RawBytes, TruncatedBytes, f.RawSHA256)
}

// withoutCanopyHeaders drops every canopy.* header. On a topic anyone may
// write (the events topic) such headers are not Canopy's: a record carrying
// them is an ordinary event, not a replay, a retry or a truncated payload.
func withoutCanopyHeaders(hs []kgo.RecordHeader) []kgo.RecordHeader {
	kept := 0
	for _, h := range hs {
		if !isCanopyHeader(h.Key) {
			kept++
		}
	}
	if kept == len(hs) {
		return hs
	}
	out := make([]kgo.RecordHeader, 0, kept)
	for _, h := range hs {
		if !isCanopyHeader(h.Key) {
			out = append(out, h)
		}
	}
	return out
}

// RefusedError reports failures a topic refused for good: publishing them
// again can never succeed. Every other failure of the call was published.
type RefusedError struct {
	Topic   string
	Refused map[int]error // index into the published failures → why
}

func (e *RefusedError) Error() string {
	for _, err := range e.Refused {
		return fmt.Sprintf("%s refused %d record(s) for good, e.g.: %v", e.Topic, len(e.Refused), err)
	}
	return e.Topic + " refused records"
}

// publishFailures produces one record per failure (the original key and
// bytes, truncated if too large; headers naming the failure and, for a
// retry, when it is due) and waits until all are acknowledged. Records the
// topic refused for good are returned in a *RefusedError; any other error
// means the call should be repeated.
func publishFailures(ctx context.Context, cl *kgo.Client, topic string, fs []Failure, retry bool) error {
	recs := make([]*kgo.Record, len(fs))
	index := make(map[*kgo.Record]int, len(fs))
	for i, f := range fs {
		if !retry {
			f.fit() // a retry must carry the whole record; its topic is Canopy's
		}
		recs[i] = &kgo.Record{Topic: topic, Key: f.Key, Value: f.Raw, Headers: EncodeFailure(f)}
		index[recs[i]] = i
	}
	var refused map[int]error
	for _, res := range cl.ProduceSync(ctx, recs...) {
		switch {
		case res.Err == nil:
		case Classify(res.Err) == Refused:
			if refused == nil {
				refused = map[int]error{}
			}
			refused[index[res.Record]] = res.Err
		default:
			forgetRecreated(cl, topic, res.Err)
			return fmt.Errorf("produce to %s: %w", topic, res.Err)
		}
	}
	// Kafka judges a record batch as a whole: one record too large fails
	// every record batched with it. Each refused record is tried again on
	// its own, and only a refusal of it alone counts.
	if len(refused) > 0 && len(recs) > 1 {
		for i := range refused {
			err := cl.ProduceSync(ctx, recs[i]).FirstErr()
			switch {
			case err == nil:
				delete(refused, i)
			case Classify(err) == Refused:
				refused[i] = err
			default:
				forgetRecreated(cl, topic, err)
				return fmt.Errorf("produce to %s: %w", topic, err)
			}
		}
	}
	if len(refused) > 0 {
		return &RefusedError{Topic: topic, Refused: refused}
	}
	return nil
}

// forgetRecreated lets a long-lived producer follow a topic that was
// deleted and created again: franz-go keys a topic by the id it first saw
// and fails every later produce with UNKNOWN_TOPIC_ID until the topic is
// purged from the client, after which the next produce looks it up anew.
func forgetRecreated(cl *kgo.Client, topic string, err error) {
	if errors.Is(err, kerr.UnknownTopicID) {
		cl.PurgeTopicsFromProducing(topic)
	}
}
