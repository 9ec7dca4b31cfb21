package ingest

import (
	"context"
	"fmt"

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
	topic := d.Topic
	if topic == "" {
		topic = "canopy.events.dlq"
	}
	recs := make([]*kgo.Record, len(fs))
	for i, f := range fs {
		recs[i] = &kgo.Record{Topic: topic, Key: f.Key, Value: f.Raw, Headers: failureHeaders(f)}
	}
	if err := d.Client.ProduceSync(ctx, recs...).FirstErr(); err != nil {
		return fmt.Errorf("produce to %s: %w", topic, err)
	}
	return nil
}
