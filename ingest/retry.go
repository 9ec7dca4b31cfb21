package ingest

import (
	"cmp"
	"context"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
)

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
