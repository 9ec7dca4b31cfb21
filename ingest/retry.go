package ingest

import (
	"cmp"
	"context"
	"strconv"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
)

// Retry and replay record headers, besides the dead-letter ones.
const (
	// HeaderRetryAt is when a record on the retry topic is due again (RFC 3339).
	HeaderRetryAt = "canopy.retry.at"
	// HeaderFirstFailure is when the record first failed (RFC 3339).
	HeaderFirstFailure = "canopy.first.failure"
	// HeaderReplay marks a dead letter replayed by canopy dlq replay; its
	// success resolves the failure named by the source headers.
	HeaderReplay = "canopy.replay"
	// HeaderRetryOf carries, on a retried or replayed record, the by-id
	// offset of the record that holds its event id's claim
	// (PartitionedClaims): the retry takes that claim over.
	HeaderRetryOf = "canopy.retry.of"
	// HeaderBackfill marks a record a backfill forwarded to the by-id topic
	// (Forward): like a backfill's own batches, it is dead-lettered at once
	// when its entity is still unknown after a catch-up, not retried.
	HeaderBackfill = "canopy.backfill"
	// HeaderReleaseOf marks a release marker of the by-id topic: its key is
	// an event id and the header the by-id offset of the id's owner, which
	// was dead-lettered for good; the id is free again for later records
	// (PartitionedClaims). Only the by-id stage writes it.
	HeaderReleaseOf = "canopy.release.of"
)

// releaseOf reads a release marker: the claim it makes, if r is one.
func releaseOf(r Record) (Claim, bool) {
	s, ok := header(r.Headers, HeaderReleaseOf)
	if !ok || len(r.Key) == 0 || len(r.Key) > maxEventIDBytes {
		return Claim{}, false
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 {
		return Claim{}, false
	}
	return Claim{EventID: string(r.Key), Offset: r.Offset, Time: r.Time, RetryOf: n, Release: true}, true
}

// RetryPolicy says how transient per-record failures (an entity not in the
// hierarchy yet) are retried through the retry topic, so the main partition
// never waits for them.
type RetryPolicy struct {
	Publisher   RetryPublisher // nil: transient failures dead-letter at once
	MaxAttempts uint32         // attempts in all, the first included; default 8
	Backoff     time.Duration  // before the second attempt, doubling; default 1s
	MaxBackoff  time.Duration  // default 1m
	MaxAge      time.Duration  // give up this long after the first failure; default 1h
}

func (p RetryPolicy) withDefaults() RetryPolicy {
	if p.MaxAttempts == 0 {
		p.MaxAttempts = 8
	}
	if p.Backoff <= 0 {
		p.Backoff = time.Second
	}
	if p.MaxBackoff <= 0 {
		p.MaxBackoff = time.Minute
	}
	if p.MaxAge <= 0 {
		p.MaxAge = time.Hour
	}
	return p
}

// delay is the wait before attempt n+1 after n attempts.
func (p RetryPolicy) delay(n uint32) time.Duration {
	d := p.Backoff
	for i := uint32(1); i < n && d < p.MaxBackoff; i++ {
		d *= 2
	}
	return min(d, p.MaxBackoff)
}

// RetryPublisher sends failures to the retry topic.
type RetryPublisher interface {
	PublishRetries(ctx context.Context, fs []Failure) error
}

// KafkaRetries publishes to the retry topic. Safe for concurrent use.
type KafkaRetries struct {
	Client *kgo.Client
	Topic  string // default "canopy.events.retry"
}

// PublishRetries produces one record per failure, with the original bytes
// and headers naming the source, the attempts so far and when it is due.
func (k *KafkaRetries) PublishRetries(ctx context.Context, fs []Failure) error {
	return publishFailures(ctx, k.Client, cmp.Or(k.Topic, "canopy.events.retry"), fs, true)
}

// failureHeaders are the headers that name a failure and its source.
func failureHeaders(f Failure) []kgo.RecordHeader {
	first := f.First
	if first.IsZero() {
		first = f.At
	}
	hs := []kgo.RecordHeader{
		{Key: HeaderErrorClass, Value: []byte(f.Class)},
		{Key: HeaderErrorMessage, Value: []byte(f.Message)},
		{Key: HeaderAttempts, Value: []byte(strconv.FormatUint(uint64(f.Attempts), 10))},
		{Key: HeaderSourceTopic, Value: []byte(f.Source.Topic)},
		{Key: HeaderSourcePartition, Value: []byte(strconv.Itoa(int(f.Source.Partition)))},
		{Key: HeaderSourceOffset, Value: []byte(strconv.FormatInt(f.Source.First, 10))},
		{Key: HeaderFailedAt, Value: []byte(f.At.UTC().Format(time.RFC3339))},
		{Key: HeaderFirstFailure, Value: []byte(first.UTC().Format(time.RFC3339))},
	}
	if f.RawBytes > 0 {
		hs = append(hs,
			kgo.RecordHeader{Key: HeaderRawBytes, Value: []byte(strconv.Itoa(f.RawBytes))},
			kgo.RecordHeader{Key: HeaderRawSHA256, Value: []byte(f.RawSHA256)})
	}
	if f.HoldsClaim {
		hs = append(hs, kgo.RecordHeader{Key: HeaderRetryOf, Value: []byte(strconv.FormatInt(f.Claim, 10))})
	}
	return hs
}

// origin is what a record's headers say about an earlier failure of it: on
// the retry topic, or replayed from the dead letters.
type origin struct {
	known    bool // the record carries a source
	source   Source
	attempts uint32
	first    time.Time
	retryAt  time.Time
	replay   bool
	backfill bool  // HeaderBackfill
	retryOf  int64 // HeaderRetryOf, or -1
	class    Class
	message  string
}

func header(hs []kgo.RecordHeader, key string) (string, bool) {
	for _, h := range hs {
		if h.Key == key {
			return string(h.Value), true
		}
	}
	return "", false
}

// originOf reads the canopy headers of a record. Malformed headers are
// ignored: the record is then treated as new.
func originOf(r Record) origin {
	o := origin{retryOf: -1}
	if len(r.Headers) == 0 {
		return o
	}
	topic, ok1 := header(r.Headers, HeaderSourceTopic)
	part, ok2 := header(r.Headers, HeaderSourcePartition)
	off, ok3 := header(r.Headers, HeaderSourceOffset)
	if ok1 && ok2 && ok3 {
		p, err1 := strconv.ParseInt(part, 10, 32)
		o2, err2 := strconv.ParseInt(off, 10, 64)
		if err1 == nil && err2 == nil {
			o.known = true
			o.source = Source{Topic: topic, Partition: int32(p), First: o2, Last: o2}
		}
	}
	if s, ok := header(r.Headers, HeaderAttempts); ok {
		if n, err := strconv.ParseUint(s, 10, 32); err == nil {
			o.attempts = uint32(n)
		}
	}
	if s, ok := header(r.Headers, HeaderFirstFailure); ok {
		o.first, _ = time.Parse(time.RFC3339, s)
	}
	if s, ok := header(r.Headers, HeaderRetryAt); ok {
		o.retryAt, _ = time.Parse(time.RFC3339Nano, s)
	}
	if s, ok := header(r.Headers, HeaderErrorClass); ok {
		o.class = Class(s)
	}
	o.message, _ = header(r.Headers, HeaderErrorMessage)
	_, o.replay = header(r.Headers, HeaderReplay)
	_, o.backfill = header(r.Headers, HeaderBackfill)
	if s, ok := header(r.Headers, HeaderRetryOf); ok {
		if n, err := strconv.ParseInt(s, 10, 64); err == nil && n >= 0 {
			o.retryOf = n
		}
	}
	return o
}
