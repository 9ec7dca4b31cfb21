package ingest

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
)

// A Kafka range whose first records are deleted after it was resolved (as
// retention does to an archive's oldest segments) fails the read loudly
// instead of going on from the partition's new start as if the deleted
// offsets were a gap. Against kfake always, and against the real broker
// when CANOPY_KAFKA_BROKERS names one (scripts/services).
func TestKafkaRangeDeletedWhileReadIsAnError(t *testing.T) {
	onEachKafka(t, deletedWhileRead)
}

func deletedWhileRead(t *testing.T, brokers []string) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	topic := fmt.Sprintf("canopy_kafkainput_%d", time.Now().UnixNano())
	// A new topic can be unknown to the broker for a moment after
	// CreateTopic returns (KRaft propagates it); keep retrying that until
	// ctx ends rather than franz-go's default four times.
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.DefaultProduceTopic(topic), kgo.UnknownTopicRetries(-1))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)
	if _, err := adm.CreateTopic(ctx, 1, 1, nil, topic); err != nil {
		t.Fatal(err)
	}
	defer func() { _, _ = adm.DeleteTopics(context.Background(), topic) }()
	const n = 100
	var recs []*kgo.Record
	for i := range n {
		recs = append(recs, &kgo.Record{Value: fmt.Appendf(nil, `{"n":%d}`, i)})
	}
	if err := cl.ProduceSync(ctx, recs...).FirstErr(); err != nil {
		t.Fatal(err)
	}
	inputs, err := KafkaRange(ctx, []kgo.Opt{kgo.SeedBrokers(brokers...)}, topic, KafkaBound{IsOffset: true}, KafkaBound{}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if len(inputs) != 1 {
		t.Fatalf("resolved %d inputs, want 1", len(inputs))
	}
	if got := inputs[0].Total(); got != n {
		t.Fatalf("resolved %d records, want %d", got, n)
	}
	// Delete the first half after the range was resolved.
	del := kadm.Offsets{}
	del.AddOffset(topic, 0, n/2, -1)
	if res, err := adm.DeleteRecords(ctx, del); err != nil || res.Error() != nil {
		t.Fatalf("delete records: %v %v", err, res.Error())
	}
	read := 0
	err = inputs[0].Records(func(Record, int64) error { read++; return nil })
	if !errors.Is(err, kerr.OffsetOutOfRange) || !strings.Contains(err.Error(), "deleted from the topic") {
		t.Fatalf("reading a range whose records were deleted: %v (%d records read), want the deletion named", err, read)
	}
	if read != 0 {
		t.Errorf("%d records read past the deleted ones", read)
	}
}
