package ingest

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/canopyhq/canopy/schema"
)

// Range is an inclusive offset range of one partition.
type Range struct {
	Partition   int32
	First, Last int64
}

// Gaps returns the parts of [from, to) that no acknowledged range covers,
// in offset order. acked may overlap and come in any order.
func Gaps(acked []Range, from, to int64) []Range {
	sorted := append([]Range(nil), acked...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].First < sorted[j].First })
	var out []Range
	w := gapWalk{next: from, to: to}
	emit := func(g Range) error { out = append(out, g); return nil }
	for _, a := range sorted {
		if w.done() {
			break
		}
		_ = w.add(a, emit)
	}
	_ = w.finish(emit)
	return out
}

// gapWalk finds the gaps of [next, to) from acknowledged ranges handed to
// it in order of their first offsets, one at a time, so the ranges can be
// read a page at a time.
type gapWalk struct {
	next int64 // first offset not known to be covered
	to   int64
}

func (w *gapWalk) done() bool { return w.next >= w.to }

func (w *gapWalk) add(a Range, emit func(Range) error) error {
	if a.Last < w.next || w.done() {
		return nil
	}
	if a.First >= w.to {
		a.First = w.to // covers nothing of [next, to); only ends the last gap
	}
	if a.First > w.next {
		if err := emit(Range{First: w.next, Last: a.First - 1}); err != nil {
			return err
		}
	}
	w.next = max(w.next, a.Last+1)
	return nil
}

func (w *gapWalk) finish(emit func(Range) error) error {
	if w.next < w.to {
		g := Range{First: w.next, Last: w.to - 1}
		w.next = w.to
		return emit(g)
	}
	return nil
}

// Acks reads acknowledged ranges.
type Acks interface {
	// AckedPage returns up to limit acknowledged ranges of a partition of
	// the topic's incarnation log (its Kafka topic id; "" where there is
	// none), ordered by first offset, that end at or after from and start
	// after after and before to. Ranges with the same first offset count
	// once. Ranges acknowledged without a topic id (before acks kept it)
	// count for every incarnation.
	AckedPage(ctx context.Context, topic, log string, partition int32, from, after, to int64, limit int) ([]Range, error)
}

// AckedPage implements Acks. (It sits here, beside its only user, rather
// than with the sink's other queries.) The sort key (topic, partition,
// first_offset) bounds what ClickHouse reads to the partition's ranges from
// after on.
func (s *ClickHouseSink) AckedPage(ctx context.Context, topic, log string, partition int32, from, after, to int64, limit int) ([]Range, error) {
	rows, err := s.Conn.Query(ctx, fmt.Sprintf(`SELECT first_offset, last_offset FROM %s.%s FINAL
		WHERE topic = ? AND partition = ? AND first_offset > ? AND first_offset < ? AND last_offset >= ?
		AND topic_id IN (?, '')
		ORDER BY first_offset LIMIT %d`, s.Schema.Database, schema.TableAcks, limit), topic, partition, after, to, from, log)
	if err != nil {
		return nil, fmt.Errorf("read %s of %s/%d: %w", schema.TableAcks, topic, partition, err)
	}
	defer rows.Close()
	var out []Range
	for rows.Next() {
		r := Range{Partition: partition}
		if err := rows.Scan(&r.First, &r.Last); err != nil {
			return nil, fmt.Errorf("read %s of %s/%d: %w", schema.TableAcks, topic, partition, err)
		}
		out = append(out, r)
	}
	return out, rows.Err()
}

// Reconciler finds the records of a topic that lie below the consumer
// group's committed offsets but were never acknowledged (lost by offsets
// moved by hand, or by a bug), and processes them through the same
// exactly-once path as the worker: a range that was in fact processed is
// found in the ledger and skipped, and every event id still counts once.
//
// It works in bounded memory: acknowledged ranges are read a page at a
// time, and a gap's records a batch at a time, however long the gap. A
// Reconciler used for repeated scans (reconcile --watch) remembers, per
// partition, the offset below which everything was acknowledged at its last
// scan and reads only the ranges above it; that offset never passes a gap
// still holding unprocessed records, so a gap is found until it is
// processed. Not safe for concurrent use.
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
	// AckPage is how many acknowledged ranges are read per query; default
	// 10000.
	AckPage int

	floors map[floorKey]int64
}

// floorKey names a partition of one incarnation of the topic: a topic
// deleted and created again starts over.
type floorKey struct {
	log       string
	partition int32
}

// Gap is an unacknowledged range and the records found in it.
type Gap struct {
	Range
	Records int
}

// Find lists the unacknowledged ranges below the committed offsets that
// hold records (ranges without any, e.g. compacted away, are left out).
func (r *Reconciler) Find(ctx context.Context) ([]Gap, error) {
	return r.scan(ctx, false)
}

// Run processes every gap and returns them.
func (r *Reconciler) Run(ctx context.Context) ([]Gap, error) {
	return r.scan(ctx, true)
}

// scan walks each partition's unacknowledged ranges below its committed
// offset, gap by gap, counting (or, with process, processing) the records
// of each as they are read.
func (r *Reconciler) scan(ctx context.Context, process bool) ([]Gap, error) {
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
	if r.floors == nil {
		r.floors = map[floorKey]int64{}
	}
	var out []Gap
	for _, p := range details[r.Topic].Partitions.Numbers() {
		c, ok := committed.Lookup(r.Topic, p)
		if !ok || c.At <= 0 {
			continue // nothing committed: nothing can have been skipped
		}
		s, _ := starts.Lookup(r.Topic, p)
		key := floorKey{log: cmp.Or(log, r.Topic), partition: p}
		from := max(s.Offset, r.floors[key])
		floor := c.At // lowered to the first gap left with records
		err := r.walkPartition(ctx, log, p, from, c.At, func(g Range) error {
			g.Partition = p
			n, err := r.handle(ctx, g, log, process)
			if err != nil {
				floor = min(floor, g.First)
				return err
			}
			if n > 0 {
				out = append(out, Gap{Range: g, Records: n})
				if !process {
					floor = min(floor, g.First) // still a gap at the next scan
				}
			}
			return nil
		})
		if err != nil {
			return out, err
		}
		r.floors[key] = floor
	}
	return out, nil
}

// walkPartition hands fn the unacknowledged ranges of [from, to) of a
// partition of the topic's incarnation log in offset order, reading the
// acknowledged ranges a page at a time. fn may write acknowledgements: they
// lie below the ranges still to be read.
func (r *Reconciler) walkPartition(ctx context.Context, log string, p int32, from, to int64, fn func(Range) error) error {
	page := r.AckPage
	if page <= 0 {
		page = 10000
	}
	w := gapWalk{next: from, to: to}
	after := int64(-1)
	for !w.done() {
		acked, err := r.Acks.AckedPage(ctx, r.Topic, log, p, w.next, after, to, page)
		if err != nil {
			return err
		}
		for _, a := range acked {
			after = a.First
			if err := w.add(a, fn); err != nil {
				return err
			}
		}
		if len(acked) < page {
			break
		}
	}
	return w.finish(fn)
}

// handle reads the records of an unacknowledged range and, with process,
// processes them; it returns how many records the range holds (as far as
// it got).
func (r *Reconciler) handle(ctx context.Context, g Range, log string, process bool) (int, error) {
	size := r.BatchRecords
	if size <= 0 {
		size = 5000
	}
	var (
		read, done int
		buf        []Record // at most a batch and a poll
		reported   = time.Now()
	)
	// flush processes the batches buf holds whole: each is cut at a fixed
	// stride from the gap's start, so a rerun records the same intents.
	// With last, the range is read and the rest of buf is a batch too.
	flush := func(last bool) error {
		for len(buf) > 0 {
			limit := g.First + int64(size)*((buf[0].Offset-g.First)/int64(size)+1)
			end := sort.Search(len(buf), func(i int) bool { return buf[i].Offset >= limit })
			if end == len(buf) && !last {
				return nil // the batch is not read whole yet
			}
			n, err := r.Processor.Process(ctx, 0, buf[:end])
			if err != nil {
				return fmt.Errorf("partition %d offsets %d…%d: %w", g.Partition, buf[0].Offset, buf[end-1].Offset, err)
			}
			if n == 0 {
				return fmt.Errorf("partition %d offset %d: %w: an earlier batch spans the gap's edge", g.Partition, buf[0].Offset, ErrOverlap)
			}
			done += n
			rest := copy(buf, buf[n:])
			clear(buf[rest:]) // let the processed records go
			buf = buf[:rest]
		}
		return nil
	}
	err := r.read(ctx, g, log, size, func(recs []Record) error {
		read += len(recs)
		if process {
			buf = append(buf, recs...)
			if err := flush(false); err != nil {
				return err
			}
		}
		if time.Since(reported) >= 5*time.Second {
			reported = time.Now()
			r.log().Info("reading unacknowledged range", "topic", r.Topic, "partition", g.Partition,
				"first", g.First, "last", g.Last, "read", read, "processed", done)
		}
		return nil
	})
	if err == nil && process {
		err = flush(true)
	}
	if err != nil {
		return read, err
	}
	if process && read > 0 {
		r.log().Info("reprocessed unacknowledged range", "topic", r.Topic, "partition", g.Partition,
			"first", g.First, "last", g.Last, "records", read)
	}
	return read, nil
}

// read fetches the records of one range in order and hands them to fn, at
// most max at a time.
func (r *Reconciler) read(ctx context.Context, g Range, log string, maxRecs int, fn func([]Record) error) error {
	cl, err := kgo.NewClient(append(r.Client.Opts(),
		kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{r.Topic: {g.Partition: kgo.NewOffset().At(g.First)}}),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		// Bounded fetch buffers: memory does not grow with the range.
		kgo.FetchMaxBytes(16<<20), kgo.FetchMaxPartitionBytes(8<<20))...)
	if err != nil {
		return err
	}
	defer cl.Close()
	idle := time.Now()
	recs := make([]Record, 0, maxRecs)
	for {
		if time.Since(idle) > 10*time.Second {
			// Nothing more arrives below the range's end: the rest of it holds
			// no data records (transaction markers, compaction).
			return nil
		}
		fctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		fs := cl.PollRecords(fctx, maxRecs)
		cancel()
		if ctx.Err() != nil {
			return ctx.Err()
		}
		for _, e := range fs.Errors() {
			if !errors.Is(e.Err, context.DeadlineExceeded) {
				return fmt.Errorf("read %s/%d: %w", r.Topic, g.Partition, e.Err)
			}
		}
		done := false
		recs = recs[:0]
		fs.EachRecord(func(rec *kgo.Record) {
			idle = time.Now()
			if rec.Offset > g.Last {
				done = true
				return
			}
			if rec.Offset >= g.First {
				recs = append(recs, Record{Topic: rec.Topic, TopicID: log, Partition: rec.Partition, Offset: rec.Offset,
					Key: rec.Key, Value: rec.Value, Headers: rec.Headers, Time: rec.Timestamp})
				done = done || rec.Offset == g.Last
			}
		})
		if len(recs) > 0 {
			if err := fn(recs); err != nil {
				return err
			}
			clear(recs)
		}
		if done {
			return nil
		}
	}
}

func (r *Reconciler) log() *slog.Logger {
	if r.Log != nil {
		return r.Log
	}
	return slog.Default()
}
