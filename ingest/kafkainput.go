package ingest

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
)

// KafkaBound is one end of a Kafka backfill range: a time (the first record
// whose timestamp is at or after it) or an offset, the same in every
// partition. The zero bound is the start (as From) or the end (as To) of
// each partition.
type KafkaBound struct {
	Time     time.Time
	Offset   int64
	IsOffset bool
}

func (b KafkaBound) set() bool { return b.IsOffset || !b.Time.IsZero() }

func (b KafkaBound) String() string {
	switch {
	case b.IsOffset:
		return fmt.Sprintf("offset %d", b.Offset)
	case !b.Time.IsZero():
		return b.Time.UTC().Format(time.RFC3339Nano)
	}
	return "the end"
}

// kafkaInput is one partition's offsets [start, end) of a topic.
type kafkaInput struct {
	opts       []kgo.Opt
	ctx        context.Context
	topic, log string
	partition  int32
	start, end int64
	logger     *slog.Logger
}

// KafkaSourcePrefix starts the source name of records a backfill reads
// from Kafka, so their batches never collide with the live worker's batches
// of the same topic in the ledger; their event ids are claimed like any
// other, so an event read both ways counts once.
const KafkaSourcePrefix = "kafka:"

// KafkaRange resolves the records of topic from from (inclusive) to to
// (exclusive) into one input per partition. The end is fixed when it is
// resolved: records produced afterwards are not part of the range. A
// missing topic or an unreachable broker is an error.
func KafkaRange(ctx context.Context, opts []kgo.Opt, topic string, from, to KafkaBound, logger *slog.Logger) ([]Input, error) {
	cl, err := kgo.NewClient(opts...)
	if err != nil {
		return nil, err
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)
	details, err := adm.ListTopics(ctx, topic)
	if err != nil {
		return nil, fmt.Errorf("kafka: %w", err)
	}
	d, ok := details[topic]
	if !ok || errors.Is(d.Err, kerr.UnknownTopicOrPartition) {
		return nil, fmt.Errorf("kafka topic %s: no such topic", topic)
	}
	if d.Err != nil {
		return nil, fmt.Errorf("kafka topic %s: %w", topic, d.Err)
	}
	var zero kadm.TopicID
	log := ""
	if d.ID != zero {
		log = d.ID.String()
	}
	list := func(what string, fn func() (kadm.ListedOffsets, error)) (map[int32]int64, error) {
		l, err := fn()
		if err == nil {
			err = l.Error()
		}
		if err != nil {
			return nil, fmt.Errorf("kafka topic %s: %s offsets: %w", topic, what, err)
		}
		out := map[int32]int64{}
		l.Each(func(o kadm.ListedOffset) { out[o.Partition] = o.Offset })
		return out, nil
	}
	starts, err := list("start", func() (kadm.ListedOffsets, error) { return adm.ListStartOffsets(ctx, topic) })
	if err != nil {
		return nil, err
	}
	ends, err := list("end", func() (kadm.ListedOffsets, error) { return adm.ListCommittedOffsets(ctx, topic) })
	if err != nil {
		return nil, err
	}
	at := func(b KafkaBound, def map[int32]int64) (map[int32]int64, error) {
		switch {
		case b.IsOffset:
			out := map[int32]int64{}
			for p := range def {
				out[p] = b.Offset
			}
			return out, nil
		case !b.Time.IsZero():
			return list("time", func() (kadm.ListedOffsets, error) {
				return adm.ListOffsetsAfterMilli(ctx, b.Time.UnixMilli(), topic)
			})
		}
		return def, nil
	}
	lo, err := at(from, starts)
	if err != nil {
		return nil, err
	}
	hi, err := at(to, ends)
	if err != nil {
		return nil, err
	}
	var parts []int32
	for p := range ends {
		parts = append(parts, p)
	}
	sort.Slice(parts, func(i, j int) bool { return parts[i] < parts[j] })
	var out []Input
	for _, p := range parts {
		start := max(lo[p], starts[p])
		end := hi[p]
		if end < 0 || end > ends[p] {
			end = ends[p]
		}
		if start >= end {
			continue
		}
		out = append(out, &kafkaInput{opts: opts, ctx: ctx, topic: topic, log: log, partition: p, start: start, end: end, logger: logger})
	}
	return out, nil
}

func (k *kafkaInput) Name() string {
	return fmt.Sprintf("%s partition %d offsets %d…%d", k.topic, k.partition, k.start, k.end-1)
}

func (k *kafkaInput) Total() int64 { return k.end - k.start }

// Records reads the partition from start to end. Transaction markers are
// read too (and skipped), so a range ending in one is seen to end. Offsets
// that never arrive (records a transaction aborted, or compaction removed,
// at the very end of the range) end the range only once the broker has
// answered three fetches for the partition with nothing: a slow or absent
// broker makes the backfill wait, never skip.
func (k *kafkaInput) Records(fn func(Record, int64) error) error {
	opts := append(append([]kgo.Opt(nil), k.opts...),
		kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{k.topic: {k.partition: kgo.NewOffset().At(k.start)}}),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		kgo.KeepControlRecords(),
		// Records of the range deleted meanwhile (retention, delete-records)
		// are an error: reset to the partition's new start, the client
		// would skip them as silently as an offset gap.
		kgo.ConsumeResetOffset(kgo.NoResetOffset()),
	)
	cl, err := kgo.NewClient(opts...)
	if err != nil {
		return err
	}
	defer cl.Close()
	source := KafkaSourcePrefix + k.topic
	next := k.start
	empty := 0
	waiting := time.Now()
	for next < k.end {
		pctx, cancel := context.WithTimeout(k.ctx, 2*time.Second)
		fetches := cl.PollFetches(pctx)
		cancel()
		if err := k.ctx.Err(); err != nil {
			return err
		}
		var ferr error
		answered := false
		fetches.EachPartition(func(fp kgo.FetchTopicPartition) {
			switch {
			case fp.Err == nil:
				answered = answered || fp.Partition == k.partition
			case !errors.Is(fp.Err, context.DeadlineExceeded):
				ferr = fp.Err
			}
		})
		if errors.Is(ferr, kerr.OffsetOutOfRange) {
			return fmt.Errorf("kafka topic %s partition %d: records from offset %d were deleted from the topic "+
				"(retention or delete-records) while the backfill read them; the batches before them are written, "+
				"and a new backfill of the range loads what the topic still holds: %w", k.topic, k.partition, next, ferr)
		}
		if ferr != nil {
			return fmt.Errorf("fetch: %w", ferr)
		}
		got := false
		for it := fetches.RecordIter(); !it.Done(); {
			r := it.Next()
			if r.Offset < next || r.Offset >= k.end {
				continue
			}
			got = true
			next = r.Offset + 1
			if r.Attrs.IsControl() {
				continue
			}
			if err := fn(Record{Topic: source, TopicID: k.log, Partition: k.partition, Offset: r.Offset, Key: r.Key, Value: r.Value}, next-k.start); err != nil {
				return err
			}
		}
		switch {
		case got:
			empty, waiting = 0, time.Now()
		case answered:
			if empty++; empty >= 3 {
				k.logger.Info("kafka backfill: no readable records left in range (aborted or compacted)", "topic", k.topic, "partition", k.partition, "from", next, "end", k.end)
				return nil
			}
		case time.Since(waiting) > 30*time.Second:
			waiting = time.Now()
			k.logger.Warn("kafka backfill: no answer from the broker, waiting", "topic", k.topic, "partition", k.partition, "next", next, "end", k.end)
		}
	}
	return nil
}
