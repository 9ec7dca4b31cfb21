package ingest

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/shopspring/decimal"

	"github.com/canopyhq/canopy/schema"
)

// ClickHouseSink writes batches with one columnar INSERT per table. It relies
// on the tables' Replicated engines to drop a block that was inserted before
// (schema.ClickHouse); each INSERT sends exactly one block. Safe for
// concurrent use.
type ClickHouseSink struct {
	Conn   driver.Conn
	Schema schema.ClickHouse
}

// Write inserts the batch's events, hourly and daily rollups, then its
// acknowledgement. The ack goes last: a row in ingest_acks means the range is
// fully written.
func (s *ClickHouseSink) Write(ctx context.Context, b *Batch) error {
	unit := b.Unit()
	if len(b.Events) > 0 {
		if err := s.insertEvents(ctx, b); err != nil {
			return err
		}
		if err := s.WriteRollup(ctx, schema.TableRollupHourly, b.Hourly, unit, 0); err != nil {
			return err
		}
		if err := s.WriteRollup(ctx, schema.TableRollupDaily, b.Daily, unit, 0); err != nil {
			return err
		}
		if err := s.WriteRollup(ctx, schema.TableRollupAsIs, b.AsIs, unit, b.Intent.PendingVersion); err != nil {
			return err
		}
	}
	return s.insertAck(ctx, b)
}

func (s *ClickHouseSink) prepare(ctx context.Context, table string, cols []schema.Column) (driver.Batch, error) {
	batch, err := s.Conn.PrepareBatch(ctx, s.Schema.Insert(table, cols))
	if err != nil {
		return nil, fmt.Errorf("prepare insert into %s: %w", table, err)
	}
	return batch, nil
}

func send(batch driver.Batch, table string, cols [][]any) error {
	for i, c := range cols {
		if err := batch.Column(i).Append(c[0]); err != nil {
			_ = batch.Abort()
			return fmt.Errorf("insert into %s, column %d: %w", table, i, err)
		}
	}
	if err := batch.Send(); err != nil {
		return fmt.Errorf("insert into %s: %w", table, err)
	}
	return nil
}

func (s *ClickHouseSink) insertEvents(ctx context.Context, b *Batch) error {
	ms := s.Schema.Measures
	n := len(b.Events)
	ids := make([]string, n)
	entities := make([]uint64, n)
	at := make([]time.Time, n)
	types := make([]string, n)
	measures := make([][]any, len(ms))
	decs := make([][]decimal.Decimal, len(ms))
	ints := make([][]int64, len(ms))
	for m, meas := range ms {
		if meas.Kind == schema.KindDecimal {
			decs[m] = make([]decimal.Decimal, n)
		} else {
			ints[m] = make([]int64, n)
		}
	}
	ingested := make([]time.Time, n)
	topics := make([]string, n)
	parts := make([]int32, n)
	offsets := make([]int64, n)
	versions := make([]int64, n)
	for i, e := range b.Events {
		ids[i] = e.ID
		entities[i] = uint64(e.EntityID) //nolint:gosec // validated >= 1
		at[i] = e.OccurredAt
		types[i] = e.Type
		for m, meas := range ms {
			if meas.Kind == schema.KindDecimal {
				decs[m][i] = decimal.New(e.Measures[m], -int32(meas.Scale)) //nolint:gosec // scale <= 9
			} else {
				ints[m][i] = e.Measures[m]
			}
		}
		ingested[i] = b.Intent.CreatedAt
		topics[i] = b.Intent.Topic
		parts[i] = b.Intent.Partition
		offsets[i] = e.Offset
		versions[i] = b.Intent.HierarchyVersion
	}
	cols := [][]any{{ids}, {entities}, {at}, {types}}
	for m, meas := range ms {
		if meas.Kind == schema.KindDecimal {
			measures[m] = []any{decs[m]}
		} else {
			measures[m] = []any{ints[m]}
		}
	}
	cols = append(cols, measures...)
	cols = append(cols, []any{ingested}, []any{topics}, []any{parts}, []any{offsets}, []any{versions})
	batch, err := s.prepare(ctx, schema.TableEvents, s.Schema.EventColumns())
	if err != nil {
		return err
	}
	return send(batch, schema.TableEvents, cols)
}

// WriteRollup inserts r into one of the rollup tables as one block; pending
// is the pending_version of rollup_daily_current rows (ignored elsewhere).
func (s *ClickHouseSink) WriteRollup(ctx context.Context, table string, r *Rollup, unit string, pending int64) error {
	return s.WriteRollupTo(ctx, table, table, r, unit, pending)
}

// WriteRollupTo is WriteRollup into another table of the same columns as
// the rollup table named by table (a staging copy).
func (s *ClickHouseSink) WriteRollupTo(ctx context.Context, table, into string, r *Rollup, unit string, pending int64) error {
	if r.Len() == 0 {
		return nil
	}
	cols, ok := s.Schema.RollupTableColumns(table)
	if !ok {
		return fmt.Errorf("write rollup: %s is not a rollup table", table)
	}
	ms := s.Schema.Measures
	n := r.Len()
	entities := make([]uint64, n)
	buckets := make([]time.Time, n)
	depths := make([]uint8, n)
	types := make([]string, n)
	for i, k := range r.Keys {
		entities[i] = uint64(k.EntityID) //nolint:gosec // ids are >= 1
		buckets[i] = time.Unix(k.Bucket, 0).UTC()
		depths[i] = k.Depth
		types[i] = k.Type
	}
	units := unitColumn(buckets, unit)
	vals := [][]any{{entities}, {buckets}, {depths}, {types}, {r.Events}}
	for m, meas := range ms {
		if meas.Kind == schema.KindDecimal {
			col := make([]decimal.Decimal, n)
			for i, sum := range r.Sums[m] {
				if v, ok := sum.Int64(); ok {
					col[i] = decimal.New(v, -int32(meas.Scale)) //nolint:gosec // scale <= 9
				} else {
					col[i] = decimal.NewFromBigInt(sum.Big(), -int32(meas.Scale)) //nolint:gosec // scale <= 9
				}
			}
			vals = append(vals, []any{col})
		} else {
			col := make([]int64, n)
			for i, sum := range r.Sums[m] {
				col[i] = int64(sum.Lo) //nolint:gosec // Int64 sums wrap as ClickHouse's do
			}
			vals = append(vals, []any{col})
		}
	}
	if table == schema.TableRollupAsIs {
		tags := make([]uint64, n)
		for i := range tags {
			tags[i] = uint64(pending) //nolint:gosec // versions are >= 0
		}
		vals = append(vals, []any{tags})
	}
	vals = append(vals, []any{units})
	batch, err := s.prepare(ctx, into, cols)
	if err != nil {
		return err
	}
	return send(batch, into, vals)
}

// unitColumn is the ingest_unit column of a rollup block: the unit on the
// first row of each month and "" elsewhere. ClickHouse splits an INSERT by
// partition (toYYYYMM(bucket)) and hashes each part for deduplication, so
// one row per month is what makes every part of the block unique to its
// batch; repeating the unit on every row only made the block larger (it was
// the largest column of the rollups).
func unitColumn(buckets []time.Time, unit string) []string {
	units := make([]string, len(buckets))
	var (
		seen  []int
		prev  time.Time
		month int
	)
	for i, b := range buckets {
		if i == 0 || !b.Equal(prev) { // rows of one entity share buckets
			prev, month = b, b.Year()*12+int(b.Month())
		}
		if !slices.Contains(seen, month) {
			seen = append(seen, month)
			units[i] = unit
		}
	}
	return units
}

func (s *ClickHouseSink) insertAck(ctx context.Context, b *Batch) error {
	batch, err := s.prepare(ctx, schema.TableAcks, s.Schema.AckColumns())
	if err != nil {
		return err
	}
	in, c := b.Intent, b.Counts
	if err := batch.Append(in.Topic, in.Partition, in.First, in.Last, c.Records, c.Accepted, c.Duplicates,
		c.DeadLettered, c.Retried, in.HierarchyVersion, in.CreatedAt); err != nil {
		_ = batch.Abort()
		return fmt.Errorf("insert into %s: %w", schema.TableAcks, err)
	}
	if err := batch.Send(); err != nil {
		return fmt.Errorf("insert into %s: %w", schema.TableAcks, err)
	}
	return nil
}

// AckedRanges reads the acknowledged ranges of a topic (implements Acks).
func (s *ClickHouseSink) AckedRanges(ctx context.Context, topic string) (map[int32][]Range, error) {
	rows, err := s.Conn.Query(ctx, fmt.Sprintf(`SELECT partition, first_offset, last_offset FROM %s.%s FINAL
		WHERE topic = ? ORDER BY partition, first_offset`, s.Schema.Database, schema.TableAcks), topic)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", schema.TableAcks, err)
	}
	defer rows.Close()
	out := map[int32][]Range{}
	for rows.Next() {
		var r Range
		if err := rows.Scan(&r.Partition, &r.First, &r.Last); err != nil {
			return nil, fmt.Errorf("read %s: %w", schema.TableAcks, err)
		}
		out[r.Partition] = append(out[r.Partition], r)
	}
	return out, rows.Err()
}

func first(f Failure) time.Time {
	if f.First.IsZero() {
		return f.At
	}
	return f.First
}

// WriteFailures inserts one ingest_failures row per failure.
func (s *ClickHouseSink) WriteFailures(ctx context.Context, fs []Failure) error {
	batch, err := s.prepare(ctx, schema.TableFailures, s.Schema.FailureColumns())
	if err != nil {
		return err
	}
	for _, f := range fs {
		if err := batch.Append(f.Source.Topic, f.Source.Partition, f.Source.First, f.EventID, uint64(f.EntityID), //nolint:gosec // ids >= 0
			string(f.Raw), string(f.Class), f.Message, f.Attempts, first(f), f.At, f.Resolution); err != nil {
			_ = batch.Abort()
			return fmt.Errorf("insert into %s: %w", schema.TableFailures, err)
		}
	}
	if err := batch.Send(); err != nil {
		return fmt.Errorf("insert into %s: %w", schema.TableFailures, err)
	}
	return nil
}
