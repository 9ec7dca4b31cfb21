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

// originOf reads the canopy headers of a record, in one pass over them;
// where a header repeats, its first value counts. Malformed headers are
// ignored: the record is then treated as new.
func originOf(r Record) origin {
	o := origin{retryOf: -1}
	if len(r.Headers) == 0 {
		return o
	}
	var seen uint16 // a bit per header below, once read
	first := func(bit uint16) bool {
		if seen&bit != 0 {
			return false
		}
		seen |= bit
		return true
	}
	var topic, part, off []byte
	for _, h := range r.Headers {
		switch h.Key {
		case HeaderSourceTopic:
			if first(1 << 0) {
				topic = h.Value
			}
		case HeaderSourcePartition:
			if first(1 << 1) {
				part = h.Value
			}
		case HeaderSourceOffset:
			if first(1 << 2) {
				off = h.Value
			}
		case HeaderAttempts:
			if first(1 << 3) {
				if n, err := strconv.ParseUint(string(h.Value), 10, 32); err == nil {
					o.attempts = uint32(n)
				}
			}
		case HeaderFirstFailure:
			if first(1 << 4) {
				o.first, _ = time.Parse(time.RFC3339, string(h.Value))
			}
		case HeaderRetryAt:
			if first(1 << 5) {
				o.retryAt, _ = time.Parse(time.RFC3339Nano, string(h.Value))
			}
		case HeaderErrorClass:
			if first(1 << 6) {
				o.class = Class(h.Value)
			}
		case HeaderErrorMessage:
			if first(1 << 7) {
				o.message = string(h.Value)
			}
		case HeaderReplay:
			o.replay = true
		case HeaderBackfill:
			o.backfill = true
		case HeaderRetryOf:
			if first(1 << 8) {
				if n, err := strconv.ParseInt(string(h.Value), 10, 64); err == nil && n >= 0 {
					o.retryOf = n
				}
			}
		}
	}
	if seen&0b111 == 0b111 {
		p, err1 := strconv.ParseInt(string(part), 10, 32)
		o2, err2 := strconv.ParseInt(string(off), 10, 64)
		if err1 == nil && err2 == nil {
			o.known = true
			o.source = Source{Topic: string(topic), Partition: int32(p), First: o2, Last: o2}
		}
	}
	return o
}

// retryAtOf is originOf(r).retryAt, reading only that header.
func retryAtOf(r Record) time.Time {
	for _, h := range r.Headers {
		if h.Key == HeaderRetryAt {
			at, _ := time.Parse(time.RFC3339Nano, string(h.Value))
			return at
		}
	}
	return time.Time{}
}
