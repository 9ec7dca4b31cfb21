package ingest

import (
	"cmp"
	"context"

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
