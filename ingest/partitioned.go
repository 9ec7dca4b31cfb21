package ingest

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/canopyhq/canopy/ingest/idstate"
)

// PartitionedClaims is the Ledger of the partitioned deduplication mode
// (ingest.dedup = partitioned, docs/exactly-once.md): leases and batch
// intents stay in the wrapped Ledger (PostgreSQL, one row per batch), and
// event ids are claimed in local state, one part per partition of the by-id
// topic, which the Router fills keyed by event id. Every copy of an id
// therefore arrives in one partition, and its owner is decided by that
// partition's log alone: the first decodable record of the id within the
// horizon, or the retry (HeaderRetryOf) of the record holding the claim. A
// new owner rebuilds the state by reading the partition (Restore), so the
// state moves with partition ownership and needs no central store.
type PartitionedClaims struct {
	Ledger                 // leases and intents; called without claims
	State   *idstate.Store // the local claims
	Restore Restorer       // reads the by-id partition to rebuild State
	Decoder *Decoder       // decides, as the Processor does, which records claim
	Horizon time.Duration
	Log     *slog.Logger
	Metrics *Metrics // may be nil
	// Markers produces release markers to Topic, the by-id topic, into the
	// partition named on each record (a kgo.Client with
	// kgo.ManualPartitioner).
	Markers interface {
		ProduceSync(ctx context.Context, rs ...*kgo.Record) kgo.ProduceResults
	}
	Topic string
	// ProgressEvery is how often a restore that is still reading logs its
	// progress; default 30s. Records read and records left are metrics
	// after every chunk (canopy_dedup_restored_records_total,
	// canopy_dedup_restore_remaining_records).
	ProgressEvery time.Duration

	mu    sync.Mutex
	ready map[int32]int64 // per partition: State reflects the log up to here (inclusive)
}

// Restorer reads the records of one partition of the by-id topic, from the
// first at or after from (or the first at or after the time since, when from
// is negative) up to offset to, exclusive, in chunks.
type Restorer interface {
	Read(ctx context.Context, partition int32, from int64, since time.Time, to int64, fn func([]Record) error) error
}

var _ Ledger = (*PartitionedClaims)(nil)

// ClaimsEveryDecoded tells the Processor to claim every decodable record,
// its entity known or not: the state must be a function of the log.
func (c *PartitionedClaims) ClaimsEveryDecoded() bool { return true }

// Begin records or finds the intent in the wrapped Ledger, then decides the
// claims in the local state, which it first brings up to the batch's first
// offset.
func (c *PartitionedClaims) Begin(ctx context.Context, epoch int64, in Intent, claims []Claim) (Intent, *Owned, error) {
	got, _, err := c.Ledger.Begin(ctx, epoch, in, nil)
	if err != nil {
		return got, nil, err
	}
	if got.Last != in.Last || got.HierarchyVersion != in.HierarchyVersion || !got.CreatedAt.Equal(in.CreatedAt) {
		return got, nil, nil // the Processor attempts the recorded intent instead
	}
	since := time.Now()
	for _, cl := range claims {
		if !cl.Time.IsZero() && cl.Time.Before(since) {
			since = cl.Time
		}
	}
	if err := c.catchUp(ctx, in.Partition, in.First, since.Add(-c.Horizon)); err != nil {
		return got, nil, err
	}
	res, err := c.claim(in.Partition, claims)
	if err != nil {
		return got, nil, err
	}
	c.mu.Lock()
	c.ready[in.Partition] = max(c.ready[in.Partition], in.Last)
	c.mu.Unlock()
	owned := NewOwned(in.Source)
	for i, ok := range res {
		if ok {
			owned.Add(claims[i].Offset)
		}
	}
	return got, owned, nil
}

func (c *PartitionedClaims) claim(p int32, claims []Claim) ([]bool, error) {
	entries := make([]idstate.Entry, len(claims))
	size := 0
	for i := range claims {
		size += len(claims[i].EventID)
	}
	ids := make([]byte, 0, size) // every id in one allocation
	for i := range claims {
		cl := &claims[i]
		at := len(ids)
		ids = append(ids, cl.EventID...)
		entries[i] = idstate.Entry{ID: ids[at:len(ids):len(ids)], Offset: cl.Offset, Time: cl.Time, RetryOf: cl.RetryOf, Release: cl.Release}
	}
	res, err := c.State.Claim(p, entries)
	if err != nil {
		return nil, fmt.Errorf("claim event ids in partition %d: %w", p, err)
	}
	return res, nil
}

// catchUp makes the state of partition p reflect every record before first:
// it reads the records the state lacks, from the state's own mark or, for a
// partition new to this machine, from since (the horizon before the batch).
func (c *PartitionedClaims) catchUp(ctx context.Context, p int32, first int64, since time.Time) error {
	c.mu.Lock()
	if c.ready == nil {
		c.ready = map[int32]int64{}
	}
	r, known := c.ready[p]
	c.mu.Unlock()
	if known && r >= first-1 {
		return nil
	}
	from := int64(-1)
	if through, ok := c.State.Through(p); ok {
		if through >= first-1 {
			c.setReady(p, through)
			return nil
		}
		from = through + 1
	}
	now := time.Now()
	pr := restoreProgress{p: p, from: from, since: since, to: first, start: now, logged: now,
		every: cmp.Or(max(c.ProgressEvery, 0), 30*time.Second), log: c.log(), m: c.Metrics}
	defer pr.done()
	var ev Event
	err := c.Restore.Read(ctx, p, from, since, first, func(recs []Record) error {
		claims := make([]Claim, 0, len(recs))
		for i := range recs {
			r := &recs[i]
			o := DecodeOrigin(r.Headers)
			if rel, ok := releaseIn(r, &o); ok {
				claims = append(claims, rel)
				continue
			}
			if c.Decoder.Decode(r.Value, &ev) != nil {
				continue // a poison record claims nothing
			}
			claims = append(claims, Claim{EventID: ev.ID, OccurredAt: ev.OccurredAt, Offset: r.Offset,
				Time: r.Time, RetryOf: o.RetryOf})
		}
		if _, err := c.claim(p, claims); err != nil {
			return err
		}
		if len(recs) > 0 {
			pr.read(len(recs), recs[len(recs)-1].Offset+1)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("restore event-id state of partition %d: %w", p, err)
	}
	c.setReady(p, first-1)
	pr.finished()
	return nil
}

// restoreProgress reports one partition's restore as it reads: the
// records read and left as metrics after every chunk, and a log line every
// ProgressEvery, so a new owner reading days of the by-id topic is seen
// working rather than stuck.
type restoreProgress struct {
	p             int32
	from, to      int64
	since         time.Time
	start, logged time.Time // logged: when progress was last logged
	every         time.Duration
	log           *slog.Logger
	m             *Metrics
	n             int   // records read
	left          int64 // offsets left to read, as added to the metric
}

// read records n more records read, next the offset after the last.
func (r *restoreProgress) read(n int, next int64) {
	r.n += n
	left := max(r.to-next, 0)
	r.m.restoreRead(n, left-r.left)
	r.left = left
	now := time.Now()
	if now.Sub(r.logged) < r.every || left == 0 {
		return
	}
	r.logged = now
	took := now.Sub(r.start)
	rate := float64(r.n) / took.Seconds()
	args := []any{"partition", r.p, "records", r.n, "next", next, "to", r.to, "left", left,
		"records_per_second", int64(rate), "took", took.Round(time.Second)}
	if rate > 0 {
		args = append(args, "eta", time.Duration(float64(left)/rate*float64(time.Second)).Round(time.Second))
	}
	r.log.Info("restoring event-id state from the by-id topic", args...)
}

// finished reports a restore that read every record it needed.
func (r *restoreProgress) finished() {
	if r.n == 0 {
		return
	}
	d := time.Since(r.start)
	r.m.restoreFinished(d)
	r.log.Info("event-id state restored from the by-id topic", "partition", r.p, "from", r.from, "since", r.since,
		"to", r.to-1, "records", r.n, "took", d.Round(time.Millisecond))
}

// done takes the partition's offsets left off the metric, the restore
// finished or not: a failed one is tried again by the next batch, which
// adds them anew.
func (r *restoreProgress) done() {
	r.m.restoreRead(0, -r.left)
	r.left = 0
}

// Release implements Releaser: for every dead letter whose record held its
// id's claim, it appends a release marker to the by-id partition, after
// which the id is free again (a retry or replay of the dead letter owns it,
// as does a new copy). Before the batch's acknowledgement, like the dead
// letters: a replay repeats the markers, and a repeated marker frees
// nothing more.
func (c *PartitionedClaims) Release(ctx context.Context, partition int32, dead []Failure) error {
	var recs []*kgo.Record
	for _, f := range dead {
		if !f.HoldsClaim || f.EventID == "" {
			continue
		}
		recs = append(recs, &kgo.Record{Topic: c.Topic, Partition: partition, Key: []byte(f.EventID),
			Headers: releaseHeaders(f.Claim)})
	}
	if len(recs) == 0 {
		return nil
	}
	if c.Markers == nil {
		return errors.New("no producer for release markers")
	}
	return c.Markers.ProduceSync(ctx, recs...).FirstErr()
}

func (c *PartitionedClaims) setReady(p int32, through int64) {
	c.mu.Lock()
	c.ready[p] = max(c.ready[p], through)
	c.mu.Unlock()
}

// Acquire takes the partition's lease; the local state is caught up by the
// first Begin, from wherever this machine's state of the partition stops.
func (c *PartitionedClaims) Acquire(ctx context.Context, src Source, owner string) (int64, error) {
	c.mu.Lock()
	delete(c.ready, src.Partition) // another owner may have read further since
	c.mu.Unlock()
	return c.Ledger.Acquire(ctx, src, owner)
}

func (c *PartitionedClaims) log() *slog.Logger {
	if c.Log != nil {
		return c.Log
	}
	return slog.Default()
}

// KafkaRestorer reads the by-id topic for PartitionedClaims.
type KafkaRestorer struct {
	Opts  []kgo.Opt // brokers and security; no consumer group
	Topic string
}

// Read implements Restorer.
func (k *KafkaRestorer) Read(ctx context.Context, partition int32, from int64, since time.Time, to int64, fn func([]Record) error) error {
	cl, err := kgo.NewClient(k.Opts...)
	if err != nil {
		return err
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)
	starts, err := adm.ListStartOffsets(ctx, k.Topic)
	if err == nil {
		err = starts.Error()
	}
	if err != nil {
		return fmt.Errorf("start offsets of %s: %w", k.Topic, err)
	}
	lo, ok := starts.Lookup(k.Topic, partition)
	if !ok {
		return fmt.Errorf("%s has no partition %d", k.Topic, partition)
	}
	begin := max(from, lo.Offset)
	if from < 0 {
		at, err := adm.ListOffsetsAfterMilli(ctx, since.UnixMilli(), k.Topic)
		if err == nil {
			err = at.Error()
		}
		if err != nil {
			return fmt.Errorf("offsets of %s at %s: %w", k.Topic, since, err)
		}
		o, ok := at.Lookup(k.Topic, partition)
		if !ok {
			return fmt.Errorf("%s has no partition %d", k.Topic, partition)
		}
		begin = max(o.Offset, lo.Offset)
		if o.Offset < 0 { // nothing at or after since
			begin = to
		}
	}
	if begin >= to {
		return nil
	}
	cl.AddConsumePartitions(map[string]map[int32]kgo.Offset{k.Topic: {partition: kgo.NewOffset().At(begin)}})
	next := begin
	for next < to {
		pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		fetches := cl.PollRecords(pctx, 10000)
		cancel()
		if err := ctx.Err(); err != nil {
			return err
		}
		var ferr error
		fetches.EachError(func(_ string, _ int32, err error) {
			if !errors.Is(err, context.DeadlineExceeded) {
				ferr = err
			}
		})
		if ferr != nil {
			return fmt.Errorf("fetch %s/%d: %w", k.Topic, partition, ferr)
		}
		var recs []Record
		for it := fetches.RecordIter(); !it.Done(); {
			r := it.Next()
			if r.Offset < next || r.Offset >= to {
				continue
			}
			next = r.Offset + 1
			recs = append(recs, Record{Topic: r.Topic, Partition: r.Partition, Offset: r.Offset, Key: r.Key,
				Value: r.Value, Headers: r.Headers, Time: r.Timestamp})
		}
		if len(recs) > 0 {
			if err := fn(recs); err != nil {
				return err
			}
		} else if fetches.Empty() && next < to {
			hw, err := adm.ListEndOffsets(ctx, k.Topic)
			if err == nil {
				if o, ok := hw.Lookup(k.Topic, partition); ok && o.Offset <= next {
					return nil // the records before the batch are gone (retention) or were never there
				}
			}
		}
	}
	return nil
}
