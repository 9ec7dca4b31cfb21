package ingest

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/canopyhq/canopy/internal/backoff"
	"github.com/canopyhq/canopy/internal/wait"
)

// StrideLog remembers which strides of a backfill's inputs were forwarded
// (pgledger.Ledger), so a rerun skips them.
type StrideLog interface {
	// Forwarded returns the last offset forwarded of the stride that
	// starts at src.First, if an earlier run forwarded it.
	Forwarded(ctx context.Context, src Source) (last int64, found bool, err error)
	// MarkForwarded records src (extending a stride recorded with the same
	// first offset) and how many records were forwarded of it.
	MarkForwarded(ctx context.Context, src Source, records int) error
}

// Outcomes reads what the workers made of forwarded records
// (ClickHouseSink).
type Outcomes interface {
	// AckedWithin returns the acknowledged ranges of a partition that
	// overlap first…last.
	AckedWithin(ctx context.Context, topic string, partition int32, first, last int64) ([]Range, error)
	// AcceptedIn counts the events accepted from the given offsets of a
	// partition.
	AcceptedIn(ctx context.Context, topic string, partition int32, ranges []Range) (int64, error)
	// DeadLettered counts, by class, the unresolved failures of the
	// records of src that failed at or after since.
	DeadLettered(ctx context.Context, src Source, since time.Time) (map[Class]int64, error)
}

// Forward is a backfill under partitioned deduplication: the event ids are
// owned by the workers' by-id partitions, so instead of writing batches
// itself it forwards every record of its inputs to the by-id topic, keyed by
// its event id and marked with HeaderBackfill and source headers naming the
// input and offset, waits until the workers have acknowledged all of them,
// and reads back what became of them. An id that also arrives through the
// events topic meets its other copies in one partition and counts once.
//
// Inputs are cut into strides of BatchRecords offsets, as Backfill cuts
// them. A stride is recorded once Kafka has acknowledged every record of it,
// and a rerun skips the recorded ones; a stride interrupted by a kill is
// sent again, and its records are then duplicates of the first copies
// (records without an event id are dead-lettered again).
//
// A rerun that skips strides also waits for them: an earlier run may have
// been killed after forwarding them but before the workers got to them. It
// cannot tell which by-id offsets those records took, so it waits for every
// record in the by-id topic that Group had not committed when it finished
// forwarding.
type Forward struct {
	Client       *kgo.Client
	Target       string // the by-id topic
	Group        string // the workers' consumer group of Target
	Strides      StrideLog
	Outcomes     Outcomes
	BatchRecords int // records per stride; default 25000
	// RetryFor bounds how long a failing produce or database call is
	// retried before the backfill gives up; default 10m.
	RetryFor time.Duration
	// Poll is the interval between looks at the acknowledgements; default
	// 500ms.
	Poll time.Duration
	// Progress, if set, is called after each stride with the units read of
	// all inputs so far and the records read.
	Progress func(done int64, records int64)
	// Waiting, if set, is called at each look at the acknowledgements
	// until every forwarded record is acknowledged.
	Waiting func(acked, sent int64)
	Log     *slog.Logger
}

// forwarding is the state of one Forward.Run.
type forwarding struct {
	st      BackfillStats
	offsets map[int32][]Range // by-id offsets written, by partition
	sources []Source          // source ranges forwarded, adjacent strides merged
	chained bool              // the last stride was forwarded, not skipped
	sent    int64
}

// Run forwards the inputs in order, then waits for the workers.
func (f *Forward) Run(ctx context.Context, inputs []Input) (BackfillStats, error) {
	size := int64(cmp.Or(f.BatchRecords, 25000))
	// Failures are told apart from an earlier run's by their time, kept in
	// whole seconds: start on a fresh one.
	since := time.Now().Truncate(time.Second).Add(time.Second)
	if !wait.Sleep(ctx, time.Until(since)) {
		return BackfillStats{}, ctx.Err()
	}
	fw := &forwarding{st: BackfillStats{DeadLettered: map[Class]int64{}}, offsets: map[int32][]Range{}}
	var before int64
	for _, in := range inputs {
		var stride []Record
		err := in.Records(func(r Record, done int64) error {
			if len(stride) > 0 && r.Offset/size != stride[0].Offset/size {
				if err := f.stride(ctx, fw, stride); err != nil {
					return err
				}
				stride = stride[:0]
				if f.Progress != nil {
					f.Progress(before+done, fw.st.Records)
				}
			}
			stride = append(stride, r)
			return ctx.Err()
		})
		if err == nil && len(stride) > 0 {
			err = f.stride(ctx, fw, stride)
		}
		if err != nil {
			return fw.st, fmt.Errorf("%s: %w", in.Name(), err)
		}
		before += in.Total()
		fw.chained = false
		if f.Progress != nil {
			f.Progress(before, fw.st.Records)
		}
	}
	if err := f.await(ctx, fw); err != nil {
		return fw.st, err
	}
	return fw.st, f.count(ctx, fw, since)
}

// stride forwards one stride, or what of it an earlier run did not.
func (f *Forward) stride(ctx context.Context, fw *forwarding, recs []Record) error {
	first, last := recs[0], recs[len(recs)-1]
	key := Source{Topic: first.Topic, TopicID: first.TopicID, Partition: first.Partition, First: first.Offset, Last: last.Offset}
	fw.st.Records += int64(len(recs))
	var (
		upTo  int64
		found bool
	)
	if err := f.retry(ctx, "look up stride", func() (err error) {
		upTo, found, err = f.Strides.Forwarded(ctx, key)
		return err
	}); err != nil {
		return err
	}
	if found {
		// An earlier run forwarded the stride up to upTo; a run over a
		// shorter range may have stopped inside it.
		n := 0
		for n < len(recs) && recs[n].Offset <= upTo {
			n++
		}
		fw.st.Skipped += int64(n)
		recs = recs[n:]
		fw.chained = false
		if len(recs) == 0 {
			return nil
		}
	}
	mark := kgo.RecordHeader{Key: HeaderBackfill, Value: []byte("1")}
	out := make([]*kgo.Record, len(recs))
	made := newByIDRecords(f.Target, len(recs))
	for i, r := range recs {
		out[i] = made.add(r.Value, r.Headers, Source{Topic: r.Topic, Partition: r.Partition, First: r.Offset}, mark)
	}
	if err := f.produce(ctx, out); err != nil {
		return err
	}
	for _, r := range out {
		fw.offsets[r.Partition] = addOffset(fw.offsets[r.Partition], r.Partition, r.Offset)
	}
	fw.sent += int64(len(out))
	if err := f.retry(ctx, "record stride", func() error { return f.Strides.MarkForwarded(ctx, key, len(recs)) }); err != nil {
		return err
	}
	sent := Source{Topic: key.Topic, Partition: key.Partition, First: recs[0].Offset, Last: key.Last}
	if n := len(fw.sources); fw.chained && n > 0 && fw.sources[n-1].Topic == sent.Topic && fw.sources[n-1].Partition == sent.Partition {
		fw.sources[n-1].Last = sent.Last
	} else {
		fw.sources = append(fw.sources, sent)
	}
	fw.chained = true
	return nil
}

// addOffset adds offset o to the sorted, disjoint, maximal ranges rs of one
// partition. Records of one produce call land in increasing offsets, so this
// is almost always an extension of the last range.
func addOffset(rs []Range, partition int32, o int64) []Range {
	if n := len(rs); n > 0 && rs[n-1].Last+1 == o {
		rs[n-1].Last = o
		return rs
	}
	// i is the first range starting after o.
	i, _ := slices.BinarySearchFunc(rs, o, func(r Range, o int64) int { return cmp.Compare(r.First, o+1) })
	joinsLeft := i > 0 && rs[i-1].Last+1 == o
	joinsRight := i < len(rs) && rs[i].First == o+1
	switch {
	case joinsLeft && joinsRight:
		rs[i-1].Last = rs[i].Last
		return slices.Delete(rs, i, i+1)
	case joinsLeft:
		rs[i-1].Last = o
		return rs
	case joinsRight:
		rs[i].First = o
		return rs
	}
	return slices.Insert(rs, i, Range{Partition: partition, First: o, Last: o})
}

// mergeRange adds r to the sorted, disjoint ranges rs of one partition.
// The backlog takes in this run's own offsets, which lie at its end.
func mergeRange(rs []Range, r Range) []Range {
	out := make([]Range, 0, len(rs)+1)
	for _, x := range rs {
		switch {
		case x.Last+1 < r.First:
			out = append(out, x)
		case r.Last+1 < x.First:
			out = append(out, r)
			r = x
		default:
			r.First, r.Last = min(r.First, x.First), max(r.Last, x.Last)
		}
	}
	return append(out, r)
}

// produce sends recs until Kafka has acknowledged every one, sending again
// only those that failed.
func (f *Forward) produce(ctx context.Context, recs []*kgo.Record) error {
	pending := recs
	return f.retry(ctx, "forward to "+f.Target, func() error {
		res := f.Client.ProduceSync(ctx, pending...)
		var failed []*kgo.Record
		var first error
		for _, r := range res {
			if r.Err != nil {
				failed = append(failed, r.Record)
				first = cmp.Or(first, r.Err)
			}
		}
		pending = failed
		return first
	})
}

// retry calls fn until it succeeds, ctx ends or RetryFor has passed since
// the first failure, backing off between calls.
func (f *Forward) retry(ctx context.Context, what string, fn func() error) error {
	retryFor := cmp.Or(f.RetryFor, 10*time.Minute)
	pace := backoff.New(100*time.Millisecond, 30*time.Second)
	var failing time.Time
	for {
		err := fn()
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return errors.Join(ctx.Err(), err)
		}
		if failing.IsZero() {
			failing = time.Now()
		} else if time.Since(failing) > retryFor {
			return fmt.Errorf("%s: gave up after retrying for %s: %w", what, retryFor, err)
		}
		d := pace.Next()
		f.log().Warn("backfill: "+what+" failed, retrying", "err", err, "backoff", d)
		if !wait.Sleep(ctx, d) {
			return errors.Join(ctx.Err(), err)
		}
	}
}

// backlog returns, by partition of the by-id topic, the offsets from the
// group's committed offset (or the log start, if later or nothing is
// committed) to the end: the records the workers have not finished.
func (f *Forward) backlog(ctx context.Context) (map[int32]Range, error) {
	adm := kadm.NewClient(f.Client)
	starts, err := adm.ListStartOffsets(ctx, f.Target)
	if err == nil {
		err = starts.Error()
	}
	if err != nil {
		return nil, fmt.Errorf("start offsets: %w", err)
	}
	ends, err := adm.ListEndOffsets(ctx, f.Target)
	if err == nil {
		err = ends.Error()
	}
	if err != nil {
		return nil, fmt.Errorf("end offsets: %w", err)
	}
	committed := kadm.OffsetResponses{}
	if f.Group != "" {
		committed, err = adm.FetchOffsets(ctx, f.Group)
		if errors.Is(err, kerr.GroupIDNotFound) {
			committed, err = kadm.OffsetResponses{}, nil
		}
		if err == nil {
			err = committed.Error()
		}
		if err != nil {
			return nil, fmt.Errorf("offsets committed by group %s: %w", f.Group, err)
		}
	}
	out := map[int32]Range{}
	ends.Each(func(end kadm.ListedOffset) {
		from := int64(0)
		if s, ok := starts.Lookup(f.Target, end.Partition); ok {
			from = s.Offset
		}
		if c, ok := committed.Lookup(f.Target, end.Partition); ok {
			from = max(from, c.At)
		}
		if from < end.Offset {
			out[end.Partition] = Range{Partition: end.Partition, First: from, Last: end.Offset - 1}
		}
	})
	return out, nil
}

// await returns once the workers have acknowledged every forwarded offset
// and, if strides were skipped, the backlog.
func (f *Forward) await(ctx context.Context, fw *forwarding) error {
	open := map[int32][]Range{}
	for p, rs := range fw.offsets {
		open[p] = slices.Clone(rs)
	}
	if fw.st.Skipped > 0 {
		var backlog map[int32]Range
		if err := f.retry(ctx, "read the by-id topic's offsets", func() (err error) {
			backlog, err = f.backlog(ctx)
			return err
		}); err != nil {
			return err
		}
		for p, r := range backlog {
			open[p] = mergeRange(open[p], r)
		}
	}
	var total int64 // records to wait for: fw.sent, and the backlog if any
	for _, rs := range open {
		for _, r := range rs {
			total += r.Last - r.First + 1
		}
	}
	poll := cmp.Or(f.Poll, 500*time.Millisecond)
	for {
		var waiting int64
		for p, rs := range open {
			var acked []Range
			if err := f.retry(ctx, "read acknowledgements", func() (err error) {
				acked, err = f.Outcomes.AckedWithin(ctx, f.Target, p, rs[0].First, rs[len(rs)-1].Last)
				return err
			}); err != nil {
				return err
			}
			var left []Range
			for _, r := range rs {
				for _, g := range Gaps(acked, r.First, r.Last+1) {
					g.Partition = p
					left = append(left, g)
					waiting += g.Last - g.First + 1
				}
			}
			if len(left) == 0 {
				delete(open, p)
			} else {
				open[p] = left
			}
		}
		if f.Waiting != nil {
			f.Waiting(total-waiting, total)
		}
		if len(open) == 0 {
			return nil
		}
		if !wait.Sleep(ctx, poll) {
			return fmt.Errorf("%w: %d of %d forwarded records not acknowledged yet; the workers will still process them",
				ctx.Err(), waiting, total)
		}
	}
}

// count reads what became of the forwarded records: accepted events by
// their by-id offsets, dead letters by their source since the run began,
// and the rest were duplicates.
func (f *Forward) count(ctx context.Context, fw *forwarding, since time.Time) error {
	for p, rs := range fw.offsets {
		var n int64
		if err := f.retry(ctx, "count accepted events", func() (err error) {
			n, err = f.Outcomes.AcceptedIn(ctx, f.Target, p, rs)
			return err
		}); err != nil {
			return err
		}
		fw.st.Accepted += n
	}
	var dead int64
	for _, src := range fw.sources {
		var byClass map[Class]int64
		if err := f.retry(ctx, "count dead letters", func() (err error) {
			byClass, err = f.Outcomes.DeadLettered(ctx, src, since)
			return err
		}); err != nil {
			return err
		}
		for c, n := range byClass {
			fw.st.DeadLettered[c] += n
			dead += n
		}
	}
	fw.st.Duplicates = fw.sent - fw.st.Accepted - dead
	if fw.st.Duplicates < 0 {
		// Another run over the same inputs failed records meanwhile.
		f.log().Warn("backfill: more failures than forwarded records were found; was another backfill of the same inputs running?",
			"forwarded", fw.sent, "accepted", fw.st.Accepted, "dead_lettered", dead)
		fw.st.Duplicates = 0
	}
	return nil
}

func (f *Forward) log() *slog.Logger {
	if f.Log != nil {
		return f.Log
	}
	return slog.Default()
}
