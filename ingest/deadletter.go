package ingest

import (
	"context"
	"fmt"
	"strconv"
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
	topic := d.Topic
	if topic == "" {
		topic = "canopy.events.dlq"
	}
	recs := make([]*kgo.Record, len(fs))
	for i, f := range fs {
		recs[i] = &kgo.Record{
			Topic: topic,
			Key:   f.Key,
			Value: f.Raw,
			Headers: []kgo.RecordHeader{
				{Key: HeaderErrorClass, Value: []byte(f.Class)},
				{Key: HeaderErrorMessage, Value: []byte(f.Message)},
				{Key: HeaderAttempts, Value: []byte(strconv.FormatUint(uint64(f.Attempts), 10))},
				{Key: HeaderSourceTopic, Value: []byte(f.Source.Topic)},
				{Key: HeaderSourcePartition, Value: []byte(strconv.Itoa(int(f.Source.Partition)))},
				{Key: HeaderSourceOffset, Value: []byte(strconv.FormatInt(f.Source.First, 10))},
				{Key: HeaderFailedAt, Value: []byte(f.At.Format(time.RFC3339))},
			},
		}
	}
	if err := d.Client.ProduceSync(ctx, recs...).FirstErr(); err != nil {
		return fmt.Errorf("produce to %s: %w", topic, err)
	}
	return nil
}
