package ingest

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"strings"
	"sync"
	"time"

	"github.com/ClickHouse/ch-go/proto"
	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/column"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/shopspring/decimal"
	"golang.org/x/sync/errgroup"
	"golang.org/x/sync/semaphore"

	"github.com/canopyhq/canopy/schema"
)

// ClickHouseSink writes batches with one columnar INSERT per table. It relies
// on the tables' block deduplication to drop a block that was inserted
// before: Replicated* engines, or plain ones with
// non_replicated_deduplication_window where no Keeper answers, whichever
// canopy migrate chose (schema.ClickHouse, docs/exactly-once.md; on a
// server with neither, nothing drops it, and migrate warns). Each INSERT
// sends exactly one block. Safe for concurrent use.
type ClickHouseSink struct {
	Conn   driver.Conn
	Schema schema.ClickHouse
	// Shards are, on a cluster (Schema.Cluster), one connection per shard
	// in remote_servers order, each to that shard's replicas. A batch's
	// rows of the sharded tables are split by entity (ShardOf), in order,
	// and each shard's part is inserted into its local tables, so a
	// replayed part is the same block on the same shard and is dropped
	// there. Conn stays the connection for reads and for the tables whole
	// on every node (acks, failures, entities). Nil on one server.
	Shards []driver.Conn
	// Inserts caps the INSERTs of batches' tables the sink runs at once,
	// across all the batches it writes (default DefaultSinkInserts). Keep
	// it below the connection pool's size: an INSERT waiting here waits as
	// long as its batch's context allows, one waiting for a connection
	// only the driver's dial timeout.
	Inserts int

	slotsOnce sync.Once
	slots     *semaphore.Weighted
}

// DefaultSinkInserts is ClickHouseSink.Inserts by default: half the pool
// of 16 connections the CLI opens, the rest for acks and reads.
const DefaultSinkInserts = 8

// Write inserts the batch's events, its rollup of each grain (hourly,
// daily, then any coarser) and the as-is rollup, each its own INSERT and
// all at once, then its acknowledgement, shard by shard on a cluster. The
// ack goes last: a row in ingest_acks means the range is fully written, on
// every shard. It keeps no reference to the batch once it returns: the
// Processor then reuses the batch's arrays (copiesBatch, pool.go).
func (s *ClickHouseSink) Write(ctx context.Context, b *Batch) error {
	err := s.perShard(func(conn driver.Conn, i, n int) error {
		return s.writeParts(ctx, conn, b.shard(i, n))
	})
	if err != nil {
		return err
	}
	return s.insertAck(ctx, b)
}

// perShard calls write with each shard's connection, its index and the
// number of shards, in order; on one server once, with Conn, 0 and 1.
func (s *ClickHouseSink) perShard(write func(conn driver.Conn, i, n int) error) error {
	if len(s.Shards) == 0 {
		return write(s.Conn, 0, 1)
	}
	for i, conn := range s.Shards {
		if err := write(conn, i, len(s.Shards)); err != nil {
			return fmt.Errorf("shard %d: %w", i+1, err)
		}
	}
	return nil
}

// writeParts inserts b's rows of every sharded table through conn, the
// tables' INSERTs at once: each is a block of its own, deduplicated on its
// own and verified on its own (Landed), so their order never mattered, and
// one after the other a batch's write took the sum of their round trips
// (the server's part commit, and ZooKeeper's for a replicated table) where
// it now takes the longest.
func (s *ClickHouseSink) writeParts(ctx context.Context, conn driver.Conn, b *Batch) error {
	unit := b.Unit()
	g, gctx := errgroup.WithContext(ctx)
	insert := func(write func(context.Context) error) {
		g.Go(func() error {
			slots := s.insertSlots()
			if err := slots.Acquire(gctx, 1); err != nil {
				return err
			}
			defer slots.Release(1)
			return write(gctx)
		})
	}
	rollup := func(table string, r *Rollup, pending int64) {
		if r.Len() == 0 {
			return // an empty rollup writes nothing
		}
		insert(func(ctx context.Context) error { return s.writeRollup(ctx, conn, table, "", r, unit, pending) })
	}
	// Each table is written when its part of the batch has rows, not only
	// when the batch has events: a replay that verified what landed
	// (Batch.without) may have every events row written already and rollup
	// parts still missing.
	if len(b.Events) > 0 {
		insert(func(ctx context.Context) error { return s.insertEvents(ctx, conn, b) })
	}
	rollup(schema.TableRollupHourly, b.Hourly, 0)
	rollup(schema.TableRollupDaily, b.Daily, 0)
	for _, c := range b.Coarser {
		rollup(c.Grain.Table, c.Rollup, 0)
	}
	rollup(schema.TableRollupAsIs, b.AsIs, b.Intent.PendingVersion)
	return g.Wait()
}

// insertSlots is the semaphore of Inserts.
func (s *ClickHouseSink) insertSlots() *semaphore.Weighted {
	s.slotsOnce.Do(func() {
		s.slots = semaphore.NewWeighted(int64(cmp.Or(max(s.Inserts, 0), DefaultSinkInserts)))
	})
	return s.slots
}

// prepare starts an INSERT into table through conn.
func (s *ClickHouseSink) prepare(ctx context.Context, conn driver.Conn, table string, cols []schema.Column) (driver.Batch, error) {
	batch, err := conn.PrepareBatch(ctx, s.Schema.Insert(table, cols))
	if err != nil {
		var ex *clickhouse.Exception
		if errors.As(err, &ex) && ex.Code == 16 { // NO_SUCH_COLUMN_IN_TABLE
			return nil, fmt.Errorf("prepare insert into %s: %w (the table lacks a column this release writes: run canopy migrate)", table, err)
		}
		return nil, fmt.Errorf("prepare insert into %s: %w", table, err)
	}
	return batch, nil
}

// send appends one value per column, a slice of the column's rows or a
// decimalColumn (see appendColumn), and sends the block.
func send(batch driver.Batch, table string, cols []any) error {
	chCols := batch.Columns()
	for i, c := range cols {
		if err := appendColumn(batch.Column(i), chCols[i], c); err != nil {
			_ = batch.Abort()
			return fmt.Errorf("insert into %s, column %d: %w", table, i, err)
		}
	}
	if err := batch.Send(); err != nil {
		return fmt.Errorf("insert into %s: %w", table, err)
	}
	return nil
}

func (s *ClickHouseSink) insertEvents(ctx context.Context, conn driver.Conn, b *Batch) error {
	ms := s.Schema.Measures
	n := len(b.Events)
	ids := make([]string, n)
	entities := make([]uint64, n)
	at := make([]time.Time, n)
	types := make([]string, n)
	measures := make([][]int64, len(ms))
	for m := range ms {
		measures[m] = make([]int64, n)
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
		for m := range ms {
			measures[m][i] = e.Measures[m]
		}
		ingested[i] = b.Intent.CreatedAt
		topics[i] = b.Intent.Topic
		parts[i] = b.Intent.Partition
		offsets[i] = e.Offset
		versions[i] = b.Intent.HierarchyVersion
	}
	cols := make([]any, 0, 9+len(ms))
	cols = append(cols, ids, entities, at, types)
	for m, meas := range ms {
		if meas.Kind == schema.KindDecimal {
			cols = append(cols, decimalColumn{scale: meas.Scale, units: measures[m]})
		} else {
			cols = append(cols, measures[m])
		}
	}
	cols = append(cols, ingested, topics, parts, offsets, versions)
	batch, err := s.prepare(ctx, conn, s.Schema.Local(schema.TableEvents), s.Schema.EventColumns())
	if err != nil {
		return err
	}
	return send(batch, schema.TableEvents, cols)
}

// WriteRollup inserts r into one of the rollup tables as one block (one
// per shard on a cluster); pending is the pending_version of
// rollup_daily_current rows (ignored elsewhere).
func (s *ClickHouseSink) WriteRollup(ctx context.Context, table string, r *Rollup, unit string, pending int64) error {
	return s.WriteRollupTo(ctx, table, "", r, unit, pending)
}

// WriteRollupTo is WriteRollup into another table of the same columns as
// the rollup table named by table (a staging copy); on a cluster, into is
// a table of that name on each shard, and gets the shard's rows. An empty
// into is table itself (its local table on a cluster).
func (s *ClickHouseSink) WriteRollupTo(ctx context.Context, table, into string, r *Rollup, unit string, pending int64) error {
	return s.perShard(func(conn driver.Conn, i, n int) error {
		return s.writeRollup(ctx, conn, table, into, r.shard(i, n), unit, pending)
	})
}

// writeRollup inserts r through conn into into, or into table's local
// table when into is "".
func (s *ClickHouseSink) writeRollup(ctx context.Context, conn driver.Conn, table, into string, r *Rollup, unit string, pending int64) error {
	if r.Len() == 0 {
		return nil
	}
	if into == "" {
		into = s.Schema.Local(table)
	}
	cols, ok := s.Schema.RollupTableColumns(table)
	if !ok {
		return fmt.Errorf("write rollup: %s is not a rollup table", table)
	}
	ms := s.Schema.Measures
	n := r.Len()
	// The columns are encoded from the rollup as they are read (keyColumn,
	// int64Sums, constUint64, unitColumn): no copy of the rows in between.
	vals := make([]any, 0, 7+len(ms))
	vals = append(vals, keyColumn{r.Keys, keyEntity}, keyColumn{r.Keys, keyBucket}, keyColumn{r.Keys, keyDepth}, keyColumn{r.Keys, keyType}, r.Events)
	for m, meas := range ms {
		if meas.Kind == schema.KindDecimal {
			vals = append(vals, decimalColumn{scale: meas.Scale, sums: r.Sums[m]})
		} else {
			vals = append(vals, int64Sums(r.Sums[m]))
		}
	}
	if table == schema.TableRollupAsIs {
		vals = append(vals, constUint64{v: uint64(pending), n: n}) //nolint:gosec // versions are >= 0
	}
	vals = append(vals, unitColumn{r.Keys, unit})
	batch, err := s.prepare(ctx, conn, into, cols)
	if err != nil {
		return err
	}
	return send(batch, into, vals)
}

// bucketColumn is a rollup's bucket column in Unix seconds (UTC), for a
// DateTime or a Date column.
type bucketColumn []int64

// keyColumn is one field of a rollup's keys as a column: the entity
// (UInt64), the bucket (a bucketColumn) or the depth (UInt8).
type keyColumn struct {
	keys  []RollupKey
	field keyField
}

type keyField int

const (
	keyEntity keyField = iota
	keyBucket
	keyDepth
	keyType // a String column
)

// values returns the column as the slice appendColumn takes for it.
func (c keyColumn) values() any {
	switch c.field {
	case keyEntity:
		v := make([]uint64, len(c.keys))
		for i := range c.keys {
			v[i] = uint64(c.keys[i].EntityID) //nolint:gosec // ids are >= 1
		}
		return v
	case keyBucket:
		v := make(bucketColumn, len(c.keys))
		for i := range c.keys {
			v[i] = c.keys[i].Bucket
		}
		return v
	case keyDepth:
		v := make([]uint8, len(c.keys))
		for i := range c.keys {
			v[i] = c.keys[i].Depth
		}
		return v
	default:
		v := make([]string, len(c.keys))
		for i := range c.keys {
			v[i] = c.keys[i].Type
		}
		return v
	}
}

// unitColumn is the ingest_unit column of a rollup block: the unit on the
// first row of each month and "" elsewhere. ClickHouse splits an INSERT by
// partition (toYYYYMM(bucket)) and hashes each part for deduplication, so
// one row per month is what makes every part of the block unique to its
// batch; repeating the unit on every row only made the block larger (it was
// the largest column of the rollups).
type unitColumn struct {
	keys []RollupKey
	unit string
}

// marked calls mark for each row that carries the unit, in order.
func (c unitColumn) marked(mark func(row int)) {
	var months []struct{ lo, hi int64 } // seconds [lo, hi) of the months seen
	last := -1                          // the month of the row before
next:
	for i := range c.keys {
		b := c.keys[i].Bucket
		if last >= 0 && b >= months[last].lo && b < months[last].hi {
			continue
		}
		for m, r := range months { // a batch spans a month or two
			if b >= r.lo && b < r.hi {
				last = m
				continue next
			}
		}
		t := time.Unix(b, 0).UTC()
		first := time.Date(t.Year(), t.Month(), 1, 0, 0, 0, 0, time.UTC)
		months = append(months, struct{ lo, hi int64 }{first.Unix(), first.AddDate(0, 1, 0).Unix()})
		last = len(months) - 1
		mark(i)
	}
}

// values returns the column as strings.
func (c unitColumn) values() []string {
	units := make([]string, len(c.keys))
	c.marked(func(row int) { units[row] = c.unit })
	return units
}

// appendStrings appends the rows of a String column col one by one, each
// a pointer to the string (an interface holding a pointer allocates
// nothing; one holding a string copies it to the heap). row(i) returns row
// i or nil for "".
func appendStrings(col *column.String, rows, size int, row func(i int) *string) error {
	presize(col, rows, size)
	for i := range rows {
		var err error
		if p := row(i); p != nil {
			err = col.AppendRow(p)
		} else {
			err = col.AppendRow("")
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// rows returns the column in col's Native format when it has a fixed width
// the column's type encodes (see appendColumn), else nil.
func (c keyColumn) rows(col column.Interface) fixedRows {
	switch col.(type) {
	case *column.UInt64:
		if c.field == keyEntity {
			return entityRows(c.keys)
		}
	case *column.UInt8:
		if c.field == keyDepth {
			return depthRows(c.keys)
		}
	case *column.DateTime:
		if c.field == keyBucket {
			return bucketRows{keys: c.keys, w: 4}
		}
	case *column.Date:
		if c.field == keyBucket {
			return bucketRows{keys: c.keys, w: 2}
		}
	}
	return nil
}

// int64Sums is an Int64 measure's sums as its column: each sum's low 64
// bits, which wrap as ClickHouse's Int64 sums do.
type int64Sums []schema.Sum128

// constUint64 is a column of n rows of v.
type constUint64 struct {
	v uint64
	n int
}

// decimalColumn is a decimal measure's column as counts of 10^-scale
// units: units (events) or sums (rollups), one of them set.
type decimalColumn struct {
	scale int
	units []int64
	sums  []schema.Sum128
}

func (d decimalColumn) len() int { return len(d.units) + len(d.sums) }

// at returns row i as a 128-bit integer.
func (d decimalColumn) at(i int) schema.Sum128 {
	if d.units != nil {
		var s schema.Sum128
		s.Add(d.units[i])
		return s
	}
	return d.sums[i]
}

// appendColumn appends v, the rows of the batch column bc, to col, bc's
// driver column.
//
// clickhouse-go appends a slice one row at a time to a column array it grows
// by doubling (twice the block in garbage), and decimals only as shopspring
// decimals (or strings) that it turns into a big.Int each: a few allocations
// a value, the largest part of the sink's CPU. But a driver column also
// decodes its rows from the Native format, into an array sized once, and
// for integer columns that format is the little-endian integers: a Decimal
// its units in 4, 8, 16 or 32 bytes by precision, two's complement (the
// same since Decimal appeared in ClickHouse 18.12), a DateTime its Unix
// seconds in 4 bytes, a Date its days in 2. So v is handed over encoded, as
// the decoder reads it, and the block's bytes are the driver's own (see
// TestAppendColumnEncodesAsDriver). Strings stay with Append: the String
// decoder reads row by row through a bufio.Reader and costs more CPU than the
// garbage it saves. Any other pairing of a slice and a column (another
// decimal scale, a Nullable) takes the driver's Append.
func appendColumn(bc driver.BatchColumn, col column.Interface, v any) error {
	var rows fixedRows
	switch v := v.(type) {
	case decimalColumn:
		dec, ok := col.(*column.Decimal)
		if !ok || dec.Scale() != int64(v.scale) {
			return bc.Append(v.decimals())
		}
		var err error
		if rows, err = v.rows(dec); err != nil {
			return err
		}
	case bucketColumn:
		switch col.(type) {
		case *column.DateTime:
			rows = dateTimeRows(v)
		case *column.Date:
			rows = dateRows(v)
		default:
			times := make([]time.Time, len(v))
			for i, b := range v {
				times[i] = time.Unix(b, 0).UTC()
			}
			return bc.Append(times)
		}
	case []int64:
		if _, ok := col.(*column.Int64); ok {
			rows = int64Rows(v)
		}
	case []uint64:
		if _, ok := col.(*column.UInt64); ok {
			rows = uint64Rows(v)
		}
	case []int32:
		if _, ok := col.(*column.Int32); ok {
			rows = int32Rows(v)
		}
	case []uint8:
		if _, ok := col.(*column.UInt8); ok {
			rows = uint8Rows(v)
		}
	case []string:
		if s, ok := col.(*column.String); ok {
			presizeStrings(s, v)
		}
	case keyColumn:
		if s, ok := col.(*column.String); ok && v.field == keyType {
			size := 0
			for i := range v.keys {
				size += len(v.keys[i].Type)
			}
			return appendStrings(s, len(v.keys), size, func(i int) *string { return &v.keys[i].Type })
		}
		if rows = v.rows(col); rows == nil {
			return appendColumn(bc, col, v.values())
		}
	case unitColumn:
		s, ok := col.(*column.String)
		if !ok {
			return bc.Append(v.values())
		}
		marks := make([]bool, len(v.keys))
		size := 0
		v.marked(func(row int) { marks[row], size = true, size+len(v.unit) })
		return appendStrings(s, len(v.keys), size, func(i int) *string {
			if marks[i] {
				return &v.unit
			}
			return nil
		})
	case int64Sums:
		if _, ok := col.(*column.Int64); !ok {
			lo := make([]int64, len(v))
			for i, sum := range v {
				lo[i] = int64(sum.Lo) //nolint:gosec // wraps as ClickHouse's sums do
			}
			return bc.Append(lo)
		}
		rows = int64SumRows(v)
	case constUint64:
		if _, ok := col.(*column.UInt64); !ok {
			vals := make([]uint64, v.n)
			for i := range vals {
				vals[i] = v.v
			}
			return bc.Append(vals)
		}
		rows = v
	}
	if rows == nil {
		return bc.Append(v)
	}
	if rows.len() == 0 {
		return nil
	}
	r := nativeReaderOf(&nativeReader{rows: rows})
	defer putNativeReader(r)
	if err := col.Decode(r.proto, rows.len()); err != nil {
		return fmt.Errorf("encode %s: %w", col.Type(), err)
	}
	return nil
}

// nativeBufSize is the read buffer of proto.NewReader, which wraps a
// bufio.Reader at least this large as it is rather than allocating one.
const nativeBufSize = 128 << 10

// pooledReader is a proto.Reader over a reused read buffer: a new one
// costs 128 KiB for each column of each block, the most of a small
// batch's garbage.
type pooledReader struct {
	buf   *bufio.Reader
	proto *proto.Reader
}

var nativeReaders sync.Pool // of *pooledReader

// nativeReaderOf returns a proto.Reader reading src.
func nativeReaderOf(src io.Reader) *pooledReader {
	r, ok := nativeReaders.Get().(*pooledReader)
	if !ok {
		r = &pooledReader{buf: bufio.NewReaderSize(nil, nativeBufSize)}
	}
	r.buf.Reset(src)
	r.proto = proto.NewReader(r.buf)
	return r
}

func putNativeReader(r *pooledReader) {
	r.buf.Reset(nil)
	r.proto = nil
	nativeReaders.Put(r)
}

// presizeStrings gives col, an empty String column, room for vals in one
// allocation each of its arrays (offsets and bytes), so that the driver's
// Append of vals, row by row, no longer grows them by doubling: for a
// rollup block's type and ingest_unit columns that growth was the largest
// part of the sink's garbage and a tenth of the worker's CPU. The driver
// has no call for it; what sizes a String column's arrays is its decoder,
// which makes room for all rows and for the first row's bytes before it
// reads them. So col decodes a stream that announces len(vals) rows, the
// first of them as long as all of vals, and then ends: the decode fails
// with both arrays allocated, and Reset empties the column keeping them.
// Whatever the driver's decoder does, col is empty afterwards and Append
// writes the same rows.
func presizeStrings(col *column.String, vals []string) {
	size := 0
	for _, v := range vals {
		size += len(v)
	}
	presize(col, len(vals), size)
}

// presize is presizeStrings for rows strings of size bytes in all.
func presize(col *column.String, rows, size int) {
	if col.Rows() != 0 || rows < 256 { // doubling a few times costs less
		return
	}
	// Below 128 bytes the decoder sizes for every row at the first row's
	// length: announce 128.
	var hdr [binary.MaxVarintLen64]byte
	n := binary.PutUvarint(hdr[:], uint64(max(size, 128))) //nolint:gosec // a length
	r := nativeReaderOf(bytes.NewReader(hdr[:n]))
	_ = col.Decode(r.proto, rows)
	putNativeReader(r)
	col.Reset()
}

// decimals converts d to shopspring decimals, for the driver to convert.
func (d decimalColumn) decimals() []decimal.Decimal {
	vals := make([]decimal.Decimal, d.len())
	for i := range vals {
		s := d.at(i)
		if v, ok := s.Int64(); ok {
			vals[i] = decimal.New(v, -int32(d.scale)) //nolint:gosec // scale <= 9
		} else {
			vals[i] = decimal.NewFromBigInt(s.Big(), -int32(d.scale)) //nolint:gosec // scale <= 9
		}
	}
	return vals
}

// rows returns d in the Native format of col, which has d's scale, or an
// error when a value does not fit col's width (as the driver's conversion
// would).
func (d decimalColumn) rows(col *column.Decimal) (fixedRows, error) {
	r := decimalRows{d: d}
	switch p := col.Precision(); {
	case p <= 9:
		r.w = 4
	case p <= 18:
		r.w = 8
	case p <= 38:
		r.w = 16
	default:
		r.w = 32
	}
	if r.w < 16 {
		lo, hi := int64(math.MinInt64), int64(math.MaxInt64)
		if r.w == 4 {
			lo, hi = math.MinInt32, math.MaxInt32
		}
		for i := range d.len() {
			s := d.at(i)
			if v, ok := s.Int64(); !ok || v < lo || v > hi {
				return nil, fmt.Errorf("row %d: %s overflows %s", i, schema.FormatBigDecimal(s.Big(), d.scale), col.Type())
			}
		}
	}
	return r, nil
}

// fixedRows is a column of fixed-width rows in the Native format.
type fixedRows interface {
	len() int
	width() int
	// encode writes rows from, from+1, … to p while they fit whole and
	// returns how many it wrote.
	encode(p []byte, from int) int
}

type (
	dateTimeRows []int64 // Unix seconds
	dateRows     []int64 // Unix seconds of UTC midnights
	int64Rows    []int64
	uint64Rows   []uint64
	int32Rows    []int32
	uint8Rows    []uint8
	decimalRows  struct {
		d decimalColumn
		w int // 4, 8, 16 or 32 bytes; the values fit it
	}
)

func (r dateTimeRows) len() int { return len(r) }
func (r dateRows) len() int     { return len(r) }
func (r int64Rows) len() int    { return len(r) }
func (r uint64Rows) len() int   { return len(r) }
func (r int32Rows) len() int    { return len(r) }
func (r uint8Rows) len() int    { return len(r) }

func (r decimalRows) len() int { return r.d.len() }

type (
	entityRows   []RollupKey
	depthRows    []RollupKey
	int64SumRows []schema.Sum128
	bucketRows   struct {
		keys []RollupKey
		w    int // 4: DateTime, 2: Date
	}
)

func (r entityRows) len() int   { return len(r) }
func (r depthRows) len() int    { return len(r) }
func (r int64SumRows) len() int { return len(r) }
func (r bucketRows) len() int   { return len(r.keys) }
func (r constUint64) len() int  { return r.n }
func (entityRows) width() int   { return 8 }
func (depthRows) width() int    { return 1 }
func (int64SumRows) width() int { return 8 }
func (r bucketRows) width() int { return r.w }
func (constUint64) width() int  { return 8 }

func (r entityRows) encode(p []byte, from int) int {
	k := min(len(p)/8, len(r)-from)
	for i := range r[from : from+k] {
		binary.LittleEndian.PutUint64(p[8*i:], uint64(r[from+i].EntityID)) //nolint:gosec // ids are >= 1
	}
	return k
}

func (r depthRows) encode(p []byte, from int) int {
	k := min(len(p), len(r)-from)
	for i := range r[from : from+k] {
		p[i] = r[from+i].Depth
	}
	return k
}

func (r int64SumRows) encode(p []byte, from int) int {
	k := min(len(p)/8, len(r)-from)
	for i := range r[from : from+k] {
		binary.LittleEndian.PutUint64(p[8*i:], r[from+i].Lo)
	}
	return k
}

func (r constUint64) encode(p []byte, from int) int {
	k := min(len(p)/8, r.n-from)
	for i := range k {
		binary.LittleEndian.PutUint64(p[8*i:], r.v)
	}
	return k
}

// encode writes the buckets as dateTimeRows or dateRows do.
func (r bucketRows) encode(p []byte, from int) int {
	k := min(len(p)/r.w, len(r.keys)-from)
	for i := range k {
		v := r.keys[from+i].Bucket
		if v == zeroTimeUnix {
			v = 0
		}
		if r.w == 4 {
			binary.LittleEndian.PutUint32(p[4*i:], uint32(v)) //nolint:gosec // wraps as the driver's
		} else {
			binary.LittleEndian.PutUint16(p[2*i:], uint16(v/secondsPerDay)) //nolint:gosec // wraps as the driver's
		}
	}
	return k
}

func (dateTimeRows) width() int { return 4 }
func (dateRows) width() int     { return 2 }
func (int64Rows) width() int    { return 8 }
func (uint64Rows) width() int   { return 8 }
func (int32Rows) width() int    { return 4 }
func (uint8Rows) width() int    { return 1 }

func (r decimalRows) width() int { return r.w }

// encode writes each time as a DateTime: uint32 seconds, wrapping as the
// driver's conversion of a time.Time does (and 0 for the zero time).
func (r dateTimeRows) encode(p []byte, from int) int {
	k := min(len(p)/4, len(r)-from)
	for i, v := range r[from : from+k] {
		if v == zeroTimeUnix {
			v = 0
		}
		binary.LittleEndian.PutUint32(p[4*i:], uint32(v)) //nolint:gosec // wraps as the driver's
	}
	return k
}

// encode writes each time as a Date: uint16 days since 1970, wrapping as
// the driver's conversion of a UTC time.Time does (and 0 for the zero time).
func (r dateRows) encode(p []byte, from int) int {
	k := min(len(p)/2, len(r)-from)
	for i, v := range r[from : from+k] {
		if v == zeroTimeUnix {
			v = 0
		}
		binary.LittleEndian.PutUint16(p[2*i:], uint16(v/secondsPerDay)) //nolint:gosec // wraps as the driver's
	}
	return k
}

// zeroTimeUnix is time.Time{}.Unix(), which the driver writes as 0.
const zeroTimeUnix = -62135596800

func (r int64Rows) encode(p []byte, from int) int {
	k := min(len(p)/8, len(r)-from)
	for i, v := range r[from : from+k] {
		binary.LittleEndian.PutUint64(p[8*i:], uint64(v)) //nolint:gosec // two's complement
	}
	return k
}

func (r uint64Rows) encode(p []byte, from int) int {
	k := min(len(p)/8, len(r)-from)
	for i, v := range r[from : from+k] {
		binary.LittleEndian.PutUint64(p[8*i:], v)
	}
	return k
}

func (r int32Rows) encode(p []byte, from int) int {
	k := min(len(p)/4, len(r)-from)
	for i, v := range r[from : from+k] {
		binary.LittleEndian.PutUint32(p[4*i:], uint32(v)) //nolint:gosec // two's complement
	}
	return k
}

func (r uint8Rows) encode(p []byte, from int) int { return copy(p, r[from:]) }

// encode writes each value as a little-endian two's complement integer of
// r.w bytes.
func (r decimalRows) encode(p []byte, from int) int {
	k := min(len(p)/r.w, r.d.len()-from)
	for i := range k {
		s, b := r.d.at(from+i), p[r.w*i:]
		switch r.w {
		case 4:
			binary.LittleEndian.PutUint32(b, uint32(s.Lo)) //nolint:gosec // checked to fit
		case 8:
			binary.LittleEndian.PutUint64(b, s.Lo)
		default:
			binary.LittleEndian.PutUint64(b, s.Lo)
			binary.LittleEndian.PutUint64(b[8:], uint64(s.Hi)) //nolint:gosec // two's complement on purpose
			if r.w == 32 {
				ext := uint64(s.Hi >> 63) //nolint:gosec // the sign, extended
				binary.LittleEndian.PutUint64(b[16:], ext)
				binary.LittleEndian.PutUint64(b[24:], ext)
			}
		}
	}
	return k
}

// nativeReader reads rows in the Native format, encoding them as it goes: a
// driver column's decoder reads a large column straight into its own array,
// with no copy of the block in between.
type nativeReader struct {
	rows    fixedRows
	row     int    // next row to encode
	pending []byte // the end of a row that the last Read had no room for
	buf     [32]byte
}

func (r *nativeReader) Read(p []byte) (int, error) {
	n := copy(p, r.pending)
	r.pending = r.pending[n:]
	if r.row < r.rows.len() && n < len(p) {
		k := r.rows.encode(p[n:], r.row)
		r.row += k
		n += k * r.rows.width()
		if r.row < r.rows.len() && n < len(p) {
			w := r.rows.width()
			r.rows.encode(r.buf[:w], r.row)
			r.row++
			c := copy(p[n:], r.buf[:w])
			r.pending = r.buf[c:w]
			n += c
		}
	}
	if n == 0 && len(p) > 0 {
		return 0, io.EOF
	}
	return n, nil
}

func (s *ClickHouseSink) insertAck(ctx context.Context, b *Batch) error {
	batch, err := s.prepare(ctx, s.Conn, schema.TableAcks, s.Schema.AckColumns())
	if err != nil {
		return err
	}
	in, c := b.Intent, b.Counts
	if err := batch.Append(in.Topic, in.Partition, in.First, in.Last, c.Records, c.Accepted, c.Duplicates,
		c.DeadLettered, c.Retried, in.HierarchyVersion, in.CreatedAt, in.TopicID); err != nil {
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

// AckedWithin implements Outcomes.
func (s *ClickHouseSink) AckedWithin(ctx context.Context, topic string, partition int32, first, last int64) ([]Range, error) {
	rows, err := s.Conn.Query(ctx, fmt.Sprintf(`SELECT first_offset, last_offset FROM %s.%s
		WHERE topic = ? AND partition = ? AND last_offset >= ? AND first_offset <= ?`, s.Schema.Database, schema.TableAcks),
		topic, partition, first, last)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", schema.TableAcks, err)
	}
	defer rows.Close()
	var out []Range
	for rows.Next() {
		r := Range{Partition: partition}
		if err := rows.Scan(&r.First, &r.Last); err != nil {
			return nil, fmt.Errorf("read %s: %w", schema.TableAcks, err)
		}
		out = append(out, r)
	}
	return out, rows.Err()
}

// AcceptedIn implements Outcomes: it counts the events table's rows written
// from the offsets of ranges, a hundred ranges per query.
func (s *ClickHouseSink) AcceptedIn(ctx context.Context, topic string, partition int32, ranges []Range) (int64, error) {
	var total int64
	for len(ranges) > 0 {
		n := min(len(ranges), 100)
		conds := make([]string, n)
		args := []any{topic, partition}
		for i, r := range ranges[:n] {
			conds[i] = "(src_offset >= ? AND src_offset <= ?)"
			args = append(args, r.First, r.Last)
		}
		var c uint64
		if err := s.Conn.QueryRow(ctx, fmt.Sprintf(`SELECT count() FROM %s.%s WHERE src_topic = ? AND src_partition = ? AND (%s)`,
			s.Schema.Database, schema.TableEvents, strings.Join(conds, " OR ")), args...).Scan(&c); err != nil {
			return 0, fmt.Errorf("count accepted events: %w", err)
		}
		total += int64(c) //nolint:gosec // a count of rows
		ranges = ranges[n:]
	}
	return total, nil
}

// DeadLettered implements Outcomes.
func (s *ClickHouseSink) DeadLettered(ctx context.Context, src Source, since time.Time) (map[Class]int64, error) {
	rows, err := s.Conn.Query(ctx, fmt.Sprintf(`SELECT error_class, count() FROM %s.%s FINAL
		WHERE source_topic = ? AND source_partition = ? AND source_offset >= ? AND source_offset <= ?
		  AND last_failure >= ? AND resolution = '' GROUP BY error_class`, s.Schema.Database, schema.TableFailures),
		src.Topic, src.Partition, src.First, src.Last, since.UTC())
	if err != nil {
		return nil, fmt.Errorf("count dead letters: %w", err)
	}
	defer rows.Close()
	out := map[Class]int64{}
	for rows.Next() {
		var (
			c string
			n uint64
		)
		if err := rows.Scan(&c, &n); err != nil {
			return nil, fmt.Errorf("count dead letters: %w", err)
		}
		out[Class(c)] += int64(n) //nolint:gosec // a count of rows
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
	batch, err := s.prepare(ctx, s.Conn, schema.TableFailures, s.Schema.FailureColumns())
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
