package ingest

import (
	"context"
	"fmt"
	"sync"
)

// Backfill loads files through a Processor: the same validation, fan-out
// and exactly-once path as live ingestion. Batches are cut at fixed offset
// strides of each file, so a backfill killed at any point and started again
// with the same files finds the batches it finished (and skips them) and
// the one it was writing (and replays it exactly); a second run changes
// nothing. Event ids are claimed like live events, so an event that also
// arrives through Kafka counts once.
type Backfill struct {
	Processor    *Processor
	BatchRecords int // records per stride; default 5000
	// Progress, if set, is called after each batch with the bytes read of
	// the current file, the sum of the sizes of the files before it, and
	// the records handled so far.
	Progress func(bytesDone int64, records int64)
}

// BackfillStats sums what a backfill did.
type BackfillStats struct {
	Records      int64 // records read
	Skipped      int64 // records of batches an earlier run finished
	Accepted     int64
	Duplicates   int64
	DeadLettered map[Class]int64
}

// Run processes the files in order.
func (b *Backfill) Run(ctx context.Context, files []InputFile) (BackfillStats, error) {
	stride := int64(b.BatchRecords)
	if stride <= 0 {
		stride = 5000
	}
	st := BackfillStats{DeadLettered: map[Class]int64{}}
	var mu sync.Mutex
	written := int64(0)
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

	var before int64 // bytes of the files already done
	for _, f := range files {
		var (
			batch []Record
			read  int64
		)
		flush := func() error {
			for len(batch) > 0 {
				n, err := b.Processor.Process(ctx, 0, batch)
				if err != nil {
					return fmt.Errorf("%s offsets %d…%d: %w", f.Path, batch[0].Offset, batch[len(batch)-1].Offset, err)
				}
				if n == 0 {
					return fmt.Errorf("%s offset %d: %w: a batch recorded earlier spans this one", f.Path, batch[0].Offset, ErrOverlap)
				}
				batch = batch[n:]
			}
			if b.Progress != nil {
				b.Progress(before+read, st.Records)
			}
			return nil
		}
		err := f.Records(func(r Record, n int64) error {
			if len(batch) > 0 && r.Offset/stride != batch[0].Offset/stride {
				if err := flush(); err != nil {
					return err
				}
			}
			read = n
			st.Records++
			batch = append(batch, r)
			return ctx.Err()
		})
		if err == nil {
			err = flush()
		}
		if err != nil {
			return st, err
		}
		before += f.Size
	}
	mu.Lock()
	st.Skipped = st.Records - written
	mu.Unlock()
	return st, nil
}
