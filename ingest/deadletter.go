package ingest

import (
	"cmp"
	"context"
	"fmt"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
)

// Dead-letter record headers. The value is the original record's bytes.
const (
	HeaderErrorClass      = "canopy.error.class"
	HeaderErrorMessage    = "canopy.error.message"
	HeaderAttempts        = "canopy.attempts"
	HeaderSourceTopic     = "canopy.source.topic"
	HeaderSourcePartition = "canopy.source.partition"
	HeaderSourceOffset    = "canopy.source.offset"
	HeaderFailedAt        = "canopy.failed.at"
)

// KafkaDeadLetters publishes failures to a dead-letter topic. Safe for
// concurrent use.
type KafkaDeadLetters struct {
	Client *kgo.Client
	Topic  string // default "canopy.events.dlq"
}

// Publish produces one record per failure and waits until all are acked.
func (d *KafkaDeadLetters) Publish(ctx context.Context, fs []Failure) error {
	return publishFailures(ctx, d.Client, cmp.Or(d.Topic, "canopy.events.dlq"), fs, false)
}

// publishFailures produces one record per failure (the original key and
// bytes, headers naming the failure and, for a retry, when it is due) and
// waits until all are acked.
func publishFailures(ctx context.Context, cl *kgo.Client, topic string, fs []Failure, retry bool) error {
	recs := make([]*kgo.Record, len(fs))
	for i, f := range fs {
		hs := failureHeaders(f)
		if retry {
			hs = append(hs, kgo.RecordHeader{Key: HeaderRetryAt, Value: []byte(f.RetryAt.UTC().Format(time.RFC3339Nano))})
		}
		recs[i] = &kgo.Record{Topic: topic, Key: f.Key, Value: f.Raw, Headers: hs}
	}
	if err := cl.ProduceSync(ctx, recs...).FirstErr(); err != nil {
		return fmt.Errorf("produce to %s: %w", topic, err)
	}
	return nil
}
