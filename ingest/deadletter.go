package ingest

import (
	"cmp"
	"context"

	"github.com/twmb/franz-go/pkg/kgo"
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
