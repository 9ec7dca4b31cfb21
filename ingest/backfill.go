package ingest

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/canopyhq/canopy/internal/backoff"
	"github.com/canopyhq/canopy/internal/wait"
)

// Input is one log a backfill reads: a file, one partition of a Kafka
// offset range, a spooled query result. Reading it again gives the same
// records at the same offsets; that is what makes a backfill resumable.
type Input interface {
	// Name is the input as the user knows it, for messages.
	Name() string
	// Total is the input's size in progress units (bytes of a file,
	// records of a Kafka range).
	Total() int64
	// Records calls fn for each record in offset order, with the units of
	// the input consumed so far.
	Records(fn func(r Record, done int64) error) error
}

// Backfill loads inputs through a Processor: the same validation, fan-out
// and exactly-once path as live ingestion. Batches are cut at fixed offset
// strides of each input, so a backfill killed at any point and started again
// with the same inputs finds the batches it finished (and skips them) and
// the ones it was writing (and replays them exactly); a second run changes
// nothing. Event ids are claimed like live events, so an event that also
// arrives through Kafka counts once.
//
// Strides are independent batches, so Parallel of them are processed at
// once while the next ones are read.
type Backfill struct {
	Processor    *Processor
	BatchRecords int // records per stride; default 25000
	Parallel     int // batches in flight; default 3
	// RetryFor bounds how long a batch is retried after transient failures
	// (a database down) before the backfill gives up; default 10m.
	RetryFor time.Duration
	// Progress, if set, is called after each batch with the units read of
	// all inputs so far and the records handled.
	Progress func(done int64, records int64)
	Log      *slog.Logger
}

// BackfillStats sums what a backfill did.
type BackfillStats struct {
	Records      int64 // records read
	Skipped      int64 // records of batches an earlier run finished
	Accepted     int64
	Duplicates   int64
	DeadLettered map[Class]int64
}

type stride struct {
	input Input
	recs  []Record
}

// Run processes the inputs in order, Parallel batches at a time.
func (b *Backfill) Run(ctx context.Context, inputs []Input) (BackfillStats, error) {
	size := int64(b.BatchRecords)
	if size <= 0 {
		size = 25000
	}
	parallel := max(b.Parallel, 1)
	if b.Parallel == 0 {
		parallel = 3
	}
	st := BackfillStats{DeadLettered: map[Class]int64{}}
	var (
		mu      sync.Mutex
		written int64
		read    atomic.Int64 // units read, over all inputs
		records atomic.Int64
	)
	prev := b.Processor.Observer
	b.Processor.Observer = func(c Counts, dead []Failure) {
		mu.Lock()
		defer mu.Unlock()
		written += int64(c.Records)
		st.Accepted += int64(c.Accepted)
		st.Duplicates += int64(c.Duplicates)
		for _, f := range dead {
			st.DeadLettered[f.Class]++
		}
		if prev != nil {
			prev(c, dead)
		}
	}
	defer func() { b.Processor.Observer = prev }()

	g, gctx := errgroup.WithContext(ctx)
	strides := make(chan stride, parallel)
	for range parallel {
		g.Go(func() error {
			for s := range strides {
				if err := b.process(gctx, s); err != nil {
					return err
				}
				if b.Progress != nil {
					b.Progress(read.Load(), records.Load())
				}
			}
			return nil
		})
	}
	g.Go(func() error {
		defer close(strides)
		var before int64
		for _, in := range inputs {
			var batch []Record
			send := func() error {
				select {
				case strides <- stride{in, batch}:
					batch = nil
					return nil
				case <-gctx.Done():
					return gctx.Err()
				}
			}
			err := in.Records(func(r Record, done int64) error {
				if len(batch) > 0 && r.Offset/size != batch[0].Offset/size {
					if err := send(); err != nil {
						return err
					}
				}
				read.Store(before + done)
				records.Add(1)
				batch = append(batch, r)
				return gctx.Err()
			})
			if err == nil && len(batch) > 0 {
				err = send()
			}
			if err != nil {
				if gctx.Err() != nil {
					return nil // a batch failed; its error is the one to report
				}
				return fmt.Errorf("%s: %w", in.Name(), err)
			}
			before += in.Total()
			read.Store(before)
		}
		return nil
	})
	err := g.Wait()
	if err == nil {
		err = ctx.Err()
	}
	mu.Lock()
	defer mu.Unlock()
	st.Records = records.Load()
	if err == nil {
		st.Skipped = st.Records - written
	}
	return st, err
}

// process writes one stride, retrying transient failures with capped
// backoff for up to RetryFor.
func (b *Backfill) process(ctx context.Context, s stride) error {
	retryFor := b.RetryFor
	if retryFor <= 0 {
		retryFor = 10 * time.Minute
	}
	recs := s.recs
	pace := backoff.New(100*time.Millisecond, 30*time.Second)
	var failing time.Time
	for len(recs) > 0 {
		n, err := b.Processor.Process(ctx, 0, recs)
		if err == nil && n == 0 {
			err = fmt.Errorf("%w: a batch recorded earlier spans this one (was --batch changed?)", ErrOverlap)
		}
		if err != nil {
			err = fmt.Errorf("%s offsets %d…%d: %w", s.input.Name(), recs[0].Offset, recs[len(recs)-1].Offset, err)
			if !Retryable(err) || ctx.Err() != nil {
				return err
			}
			if failing.IsZero() {
				failing = time.Now()
			} else if time.Since(failing) > retryFor {
				return fmt.Errorf("gave up after retrying for %s: %w", retryFor, err)
			}
			d := pace.Next()
			if b.Log != nil {
				b.Log.Warn("backfill batch failed, retrying", "err", err, "backoff", d)
			}
			if !wait.Sleep(ctx, d) {
				return errors.Join(ctx.Err(), err)
			}
			continue
		}
		recs = recs[n:]
		failing = time.Time{}
		pace.Reset()
	}
	return nil
}
