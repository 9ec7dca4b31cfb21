package ingest

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
)

// Range is an inclusive offset range of one partition.
type Range struct {
	Partition   int32
	First, Last int64
}

// Gaps returns the parts of [from, to) that no acknowledged range covers,
// in offset order. acked may overlap and come in any order.
func Gaps(acked []Range, from, to int64) []Range {
	if from >= to {
		return nil
	}
	sorted := append([]Range(nil), acked...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].First < sorted[j].First })
	var out []Range
	next := from // first offset not known to be covered
	for _, a := range sorted {
		if a.Last < next {
			continue
		}
		if a.First >= to {
			break
		}
		if a.First > next {
			out = append(out, Range{First: next, Last: a.First - 1})
		}
		next = a.Last + 1
		if next >= to {
			break
		}
	}
	if next < to {
		out = append(out, Range{First: next, Last: to - 1})
	}
	return out
}

// Acks reads acknowledged ranges of a topic, by partition.
type Acks interface {
	AckedRanges(ctx context.Context, topic string) (map[int32][]Range, error)
}

// Reconciler finds the records of a topic that lie below the consumer
// group's committed offsets but were never acknowledged (lost by offsets
// moved by hand, or by a bug), and processes them through the same
// exactly-once path as the worker: a range that was in fact processed is
// found in the ledger and skipped, and every event id still counts once.
type Reconciler struct {
	Client    *kgo.Client // for metadata, offsets and reading records
	Topic     string
	Group     string
	Acks      Acks
	Processor *Processor
	Log       *slog.Logger
	// BatchRecords bounds the records per batch; default 5000. Batches
	// start at fixed offsets of each gap, so two runs cut the same batches.
	BatchRecords int
}

// Gap is an unacknowledged range and the records found in it.
type Gap struct {
	Range
	Records int
}

// Find lists the unacknowledged ranges below the committed offsets that
// hold records (ranges without any, e.g. compacted away, are left out).
func (r *Reconciler) Find(ctx context.Context) ([]Gap, error) {
	recs, err := r.scan(ctx)
	if err != nil {
		return nil, err
	}
	var out []Gap
	for _, g := range recs {
		out = append(out, Gap{Range: g.Range, Records: len(g.recs)})
	}
	return out, nil
}

// Run processes every gap and returns them.
func (r *Reconciler) Run(ctx context.Context) ([]Gap, error) {
	found, err := r.scan(ctx)
	if err != nil {
		return nil, err
	}
	size := r.BatchRecords
	if size <= 0 {
		size = 5000
	}
	var out []Gap
	for _, g := range found {
		recs := g.recs
		for len(recs) > 0 {
			// Cut at fixed offset strides from the gap's start, so a rerun
			// records the same intents.
			end := len(recs)
			limit := g.First + int64(size)*((recs[0].Offset-g.First)/int64(size)+1)
			for i, rec := range recs {
				if rec.Offset >= limit {
					end = i
					break
				}
			}
			n, err := r.Processor.Process(ctx, 0, recs[:end])
			if err != nil {
				return out, fmt.Errorf("partition %d offsets %d…%d: %w", g.Partition, recs[0].Offset, recs[end-1].Offset, err)
			}
			if n == 0 {
				return out, fmt.Errorf("partition %d offset %d: %w: an earlier batch spans the gap's edge", g.Partition, recs[0].Offset, ErrOverlap)
			}
			recs = recs[n:]
		}
		out = append(out, Gap{Range: g.Range, Records: len(g.recs)})
		r.log().Info("reprocessed unacknowledged range", "topic", r.Topic, "partition", g.Partition,
			"first", g.First, "last", g.Last, "records", len(g.recs))
	}
	return out, nil
}

type foundGap struct {
	Range
	recs []Record
}

func (r *Reconciler) scan(ctx context.Context) ([]foundGap, error) {
	adm := kadm.NewClient(r.Client)
	details, err := adm.ListTopics(ctx, r.Topic)
	if err == nil {
		err = details.Error()
	}
	if err != nil {
		return nil, fmt.Errorf("topic %s: %w", r.Topic, err)
	}
	var (
		zero kadm.TopicID
		log  string
	)
	if d := details[r.Topic]; d.ID != zero {
		log = d.ID.String()
	}
	starts, err := adm.ListStartOffsets(ctx, r.Topic)
	if err == nil {
		err = starts.Error()
	}
	if err != nil {
		return nil, fmt.Errorf("start offsets of %s: %w", r.Topic, err)
	}
	committed, err := adm.FetchOffsets(ctx, r.Group)
	if err == nil {
		err = committed.Error()
	}
	if err != nil {
		return nil, fmt.Errorf("committed offsets of group %s: %w", r.Group, err)
	}
	acked, err := r.Acks.AckedRanges(ctx, r.Topic)
	if err != nil {
		return nil, err
	}
	var out []foundGap
	for _, p := range details[r.Topic].Partitions.Numbers() {
		c, ok := committed.Lookup(r.Topic, p)
		if !ok || c.At <= 0 {
			continue // nothing committed: nothing can have been skipped
		}
		s, _ := starts.Lookup(r.Topic, p)
		for _, g := range Gaps(acked[p], s.Offset, c.At) {
			g.Partition = p
			recs, err := r.read(ctx, g, log)
			if err != nil {
				return nil, err
			}
			if len(recs) == 0 {
				continue
			}
			out = append(out, foundGap{Range: g, recs: recs})
		}
	}
	return out, nil
}

// read fetches the records of one range.
func (r *Reconciler) read(ctx context.Context, g Range, log string) ([]Record, error) {
	cl, err := kgo.NewClient(append(r.Client.Opts(),
		kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{r.Topic: {g.Partition: kgo.NewOffset().At(g.First)}}),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()))...)
	if err != nil {
		return nil, err
	}
	defer cl.Close()
	var out []Record
	idle := time.Now()
	for {
		if time.Since(idle) > 10*time.Second {
			// Nothing more arrives below the range's end: the rest of it holds
			// no data records (transaction markers, compaction).
			return out, nil
		}
		fctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		fs := cl.PollFetches(fctx)
		cancel()
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		for _, e := range fs.Errors() {
			if !errors.Is(e.Err, context.DeadlineExceeded) {
				return nil, fmt.Errorf("read %s/%d: %w", r.Topic, g.Partition, e.Err)
			}
		}
		done := false
		fs.EachRecord(func(rec *kgo.Record) {
			idle = time.Now()
			if rec.Offset > g.Last {
				done = true
				return
			}
			if rec.Offset >= g.First {
				out = append(out, Record{Topic: rec.Topic, Log: log, Partition: rec.Partition, Offset: rec.Offset,
					Key: rec.Key, Value: rec.Value, Headers: rec.Headers, Time: rec.Timestamp})
			}
		})
		if done || (len(out) > 0 && out[len(out)-1].Offset == g.Last) {
			return out, nil
		}
	}
}

func (r *Reconciler) log() *slog.Logger {
	if r.Log != nil {
		return r.Log
	}
	return slog.Default()
}
