package ingest

import (
	"context"
	"fmt"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/canopyhq/canopy/schema"
)

// A replay relies on ClickHouse dropping the blocks that an earlier attempt
// wrote. ClickHouse remembers only the most recent blocks of a table
// (replicated_deduplication_window, or non_replicated_deduplication_window:
// a count of blocks, plus up to 7 days for Replicated tables), so at a high
// insert rate the hash of an old batch's block can be forgotten before an
// unfinished batch is replayed (a worker group down for hours, a backfill
// resumed the next day). A replay older than Processor.ReplayVerifyAfter
// therefore does not rely on the window: it asks ClickHouse which of the
// batch's parts are there, by the marks every part carries (the unit on
// the first row of each month of a rollup block; the source offsets and
// ingest time of events rows), and writes only the missing ones. A part
// is one month of one table, the same unit ClickHouse deduplicates, so a
// part written now is byte-identical to the one the earlier attempt would
// have written: a late zombie's repeat of it is still dropped.

// Landed is what ClickHouse already holds of a batch.
type Landed struct {
	// Acked: the acknowledgement is written, hence every block before it.
	Acked bool
	// Months[shard][table] are the months (year*100+month) whose part of
	// the batch's block for table is written on that shard: one shard on
	// one server, else one per shard in remote_servers order.
	Months []map[string]map[int]bool
}

// has reports whether the part of table's block holding entity's rows of
// month landed.
func (l Landed) has(table string, entity int64, month int) bool {
	if len(l.Months) == 0 {
		return false
	}
	return l.Months[ShardOf(entity, len(l.Months))][table][month]
}

// LandedSink is a Sink that can tell which parts of a batch it holds.
type LandedSink interface {
	Sink
	Landed(ctx context.Context, b *Batch) (Landed, error)
}

func yyyymm(t time.Time) int { return t.Year()*100 + int(t.Month()) }

// without returns b less the parts that landed, with the same rows in the
// same order in every part that remains.
func (b *Batch) without(l Landed) *Batch {
	out := *b
	out.Events = nil
	for _, e := range b.Events {
		if !l.has(schema.TableEvents, e.EntityID, yyyymm(e.OccurredAt)) {
			out.Events = append(out.Events, e)
		}
	}
	out.Hourly = b.Hourly.withoutLanded(l, schema.TableRollupHourly)
	out.Daily = b.Daily.withoutLanded(l, schema.TableRollupDaily)
	out.AsIs = b.AsIs.withoutLanded(l, schema.TableRollupAsIs)
	if len(b.Coarser) > 0 {
		out.Coarser = make([]GrainRollup, len(b.Coarser))
		for i, c := range b.Coarser {
			out.Coarser[i] = GrainRollup{Grain: c.Grain, Rollup: c.Rollup.withoutLanded(l, c.Grain.Table)}
		}
	}
	return &out
}

// withoutLanded returns r less the rows whose part of table landed.
func (r *Rollup) withoutLanded(l Landed, table string) *Rollup {
	return r.filter(func(k RollupKey) bool {
		return !l.has(table, k.EntityID, yyyymm(time.Unix(k.Bucket, 0).UTC()))
	})
}

// filter returns r's rows whose key keep accepts, in order, or r itself
// when it keeps them all.
func (r *Rollup) filter(keep func(RollupKey) bool) *Rollup {
	if r == nil {
		return r
	}
	var out *Rollup
	for i, k := range r.Keys {
		if keep(k) {
			if out != nil {
				out.appendRow(r, i)
			}
			continue
		}
		if out == nil { // the first row dropped: copy the rows before it
			out = &Rollup{Sums: make([][]schema.Sum128, len(r.Sums))}
			for j := range i {
				out.appendRow(r, j)
			}
		}
	}
	if out == nil {
		return r
	}
	return out
}

// appendRow appends row i of r.
func (r *Rollup) appendRow(from *Rollup, i int) {
	r.Keys = append(r.Keys, from.Keys[i])
	r.Events = append(r.Events, from.Events[i])
	for m := range from.Sums {
		r.Sums[m] = append(r.Sums[m], from.Sums[m][i])
	}
}

// Landed implements LandedSink. Each query reads only the months the batch
// touches (the tables are partitioned by month), and runs only for replays
// older than the replay verification age. On a cluster each shard's local
// tables are asked about that shard's part of the batch.
func (s *ClickHouseSink) Landed(ctx context.Context, b *Batch) (Landed, error) {
	l := Landed{}
	in := b.Intent
	var n uint64
	if err := s.Conn.QueryRow(ctx, fmt.Sprintf(
		"SELECT count() FROM %s.%s WHERE topic = ? AND partition = ? AND first_offset = ? AND last_offset = ? AND processed_at = ?",
		s.Schema.Database, schema.TableAcks), in.Topic, in.Partition, in.First, in.Last, in.CreatedAt).Scan(&n); err != nil {
		return l, fmt.Errorf("look up the ack of %s: %w", b.Unit(), err)
	}
	if n > 0 {
		l.Acked = true
		return l, nil
	}
	err := s.perShard(func(conn driver.Conn, i, n int) error {
		months, err := s.landedParts(ctx, conn, b.shard(i, n))
		l.Months = append(l.Months, months)
		return err
	})
	return l, err
}

// landedParts are the months of each table whose part of b conn holds.
func (s *ClickHouseSink) landedParts(ctx context.Context, conn driver.Conn, b *Batch) (map[string]map[int]bool, error) {
	out := map[string]map[int]bool{}
	in := b.Intent
	if len(b.Events) > 0 {
		lo, hi := b.Events[0].OccurredAt, b.Events[0].OccurredAt
		for _, e := range b.Events {
			if e.OccurredAt.Before(lo) {
				lo = e.OccurredAt
			}
			if e.OccurredAt.After(hi) {
				hi = e.OccurredAt
			}
		}
		months, err := writtenMonths(ctx, conn, fmt.Sprintf(
			"SELECT DISTINCT toYYYYMM(occurred_at) FROM %s.%s WHERE occurred_at >= ? AND occurred_at <= ?"+
				" AND src_topic = ? AND src_partition = ? AND src_offset >= ? AND src_offset <= ? AND ingested_at = ?",
			s.Schema.Database, s.Schema.Local(schema.TableEvents)), lo, hi, in.Topic, in.Partition, in.First, in.Last, in.CreatedAt)
		if err != nil {
			return out, err
		}
		out[schema.TableEvents] = months
	}
	type part struct {
		table string
		r     *Rollup
		at    string // the bucket column's type
	}
	parts := []part{{schema.TableRollupHourly, b.Hourly, "toDateTime"}, {schema.TableRollupDaily, b.Daily, "toDate"}, {schema.TableRollupAsIs, b.AsIs, "toDate"}}
	for _, c := range b.Coarser {
		parts = append(parts, part{c.Grain.Table, c.Rollup, "toDate"}) // coarser than a day: a Date
	}
	for _, t := range parts {
		if t.r.Len() == 0 {
			continue
		}
		lo, hi := t.r.Keys[0].Bucket, t.r.Keys[0].Bucket
		for _, k := range t.r.Keys {
			lo, hi = min(lo, k.Bucket), max(hi, k.Bucket)
		}
		months, err := writtenMonths(ctx, conn, fmt.Sprintf(
			"SELECT DISTINCT toYYYYMM(bucket) FROM %s.%s WHERE bucket >= %s(?) AND bucket <= %s(?) AND ingest_unit = ?",
			s.Schema.Database, s.Schema.Local(t.table), t.at, t.at), time.Unix(lo, 0).UTC(), time.Unix(hi, 0).UTC(), b.Unit())
		if err != nil {
			return out, err
		}
		out[t.table] = months
	}
	return out, nil
}

func writtenMonths(ctx context.Context, conn driver.Conn, query string, args ...any) (map[int]bool, error) {
	rows, err := conn.Query(ctx, query, args...)
	if err != nil {
		return nil, fmt.Errorf("look up written parts: %w", err)
	}
	defer rows.Close()
	out := map[int]bool{}
	for rows.Next() {
		var m uint32
		if err := rows.Scan(&m); err != nil {
			return nil, fmt.Errorf("look up written parts: %w", err)
		}
		out[int(m)] = true
	}
	return out, rows.Err()
}
