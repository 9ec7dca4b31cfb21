package ingest

import (
	"cmp"
	"context"
	"crypto/sha256"
	"fmt"
	"hash"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/ClickHouse/ch-go/proto"
	"github.com/ClickHouse/clickhouse-go/v2/lib/column"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	chproto "github.com/ClickHouse/clickhouse-go/v2/lib/proto"

	"github.com/canopyhq/canopy/internal/cputime"
	"github.com/canopyhq/canopy/internal/synth"
	"github.com/canopyhq/canopy/schema"
)

// The worker's batch path end to end, with everything outside the process
// faked cheaply: records (as the synth generator writes them) are decoded,
// expanded over a hierarchy of a million entities (chains of about 7),
// claimed by a ledger that owns every id, fanned out, summed and encoded
// into the Native blocks the driver would send. What it measures is the
// worker's own CPU per event.

// benchTree is a hierarchy in which entity i's parent is i/7: chains of
// 7 or 8 links at a million entities.
type benchTree struct{ n int64 }

func (benchTree) Version() int64 { return 1 }

func (t benchTree) Ancestors(id int64, _ time.Time, _ int64, dst []Ancestor) ([]Ancestor, bool) {
	if id < 1 || id > t.n {
		return dst, false
	}
	for d := uint8(0); id != 0; d++ {
		dst = append(dst, Ancestor{ID: id, Depth: d})
		id /= 7
	}
	return dst, true
}

// ownAllLedger records nothing and lets every record own its id.
type ownAllLedger struct{}

func (ownAllLedger) Acquire(context.Context, Source, string) (int64, error) { return 1, nil }
func (ownAllLedger) Intent(context.Context, Source) (Intent, bool, error) {
	return Intent{}, false, nil
}
func (ownAllLedger) Done(context.Context, Source) error { return nil }
func (ownAllLedger) Begin(_ context.Context, _ int64, in Intent, claims []Claim) (Intent, *Owned, error) {
	owned := NewOwned(in.Source)
	for _, c := range claims {
		owned.Add(c.Offset)
	}
	return in, owned, nil
}

// encodingConn is a driver.Conn whose batches are real driver columns,
// encoded as the driver sends them (one Native block) into a hash instead
// of a socket. Only PrepareBatch is implemented. A batch's tables are
// sent at once (writeParts): their blocks are hashed in the order of
// parts, the order they were once sent in, when the batch's ack (or any
// other statement) comes.
type encodingConn struct {
	driver.Conn
	cols  map[string][]schema.Column // by INSERT statement
	parts map[string]int             // the rank of a statement inserting a batch's part
	sum   hash.Hash
	// notIdentity is the statement whose blocks sum leaves out: the ack's.
	notIdentity string

	mu      sync.Mutex
	bytes   int
	pending []sentBlock // parts of the batch being written
}

// sentBlock is a statement and the block it sent.
type sentBlock struct {
	rank         int
	query, block []byte
}

func newEncodingConn(s schema.ClickHouse) *encodingConn {
	c := &encodingConn{cols: map[string][]schema.Column{}, parts: map[string]int{}}
	add := func(table string, cols []schema.Column) string {
		q := s.Insert(table, cols)
		c.cols[q] = cols
		return q
	}
	c.parts[add(schema.TableEvents, s.EventColumns())] = 0
	for i, t := range []string{schema.TableRollupHourly, schema.TableRollupDaily, schema.TableRollupAsIs} {
		cols, _ := s.RollupTableColumns(t)
		c.parts[add(t, cols)] = 1 + i
	}
	// The ack's bytes are not part of a batch's identity: ingest_acks is a
	// ReplacingMergeTree keyed by (topic, partition, first_offset), so an
	// ack replayed with other bytes (by a release that writes more ack
	// columns) is a second copy of the same key, which merges collapse and
	// readers take once (FINAL, or any() per key). Events and rollups are
	// summed: their replay must write the very bytes.
	c.notIdentity = add(schema.TableAcks, s.AckColumns())
	add(schema.TableFailures, s.FailureColumns())
	return c
}

func (c *encodingConn) PrepareBatch(_ context.Context, query string, _ ...driver.PrepareBatchOption) (driver.Batch, error) {
	cols, ok := c.cols[query]
	if !ok {
		return nil, fmt.Errorf("unknown insert %q", query)
	}
	b := &encodingBatch{conn: c, query: query, block: chproto.NewBlock()}
	for _, col := range cols {
		if err := b.block.AddColumn(col.Name, column.Type(col.Type)); err != nil {
			return nil, err
		}
	}
	return b, nil
}

// sent takes b's encoded block: a part waits for the rest of its batch's
// parts; anything else first hashes the parts waiting, in rank order.
func (c *encodingConn) sent(query string, block []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.bytes += len(block)
	if c.sum == nil {
		return
	}
	if rank, ok := c.parts[query]; ok {
		c.pending = append(c.pending, sentBlock{rank, []byte(query + "\n"), slices.Clone(block)})
		return
	}
	slices.SortFunc(c.pending, func(a, b sentBlock) int { return cmp.Compare(a.rank, b.rank) })
	for _, p := range c.pending {
		_, _ = c.sum.Write(p.query)
		_, _ = c.sum.Write(p.block)
	}
	c.pending = c.pending[:0]
	if query == c.notIdentity {
		return
	}
	fmt.Fprintf(c.sum, "%s\n", query)
	_, _ = c.sum.Write(block)
}

type encodingBatch struct {
	driver.Batch
	conn  *encodingConn
	query string
	block *chproto.Block
}

func (b *encodingBatch) Abort() error                    { return nil }
func (b *encodingBatch) Columns() []column.Interface     { return b.block.Columns }
func (b *encodingBatch) Column(i int) driver.BatchColumn { return batchColumn{b.block.Columns[i]} }

func (b *encodingBatch) Append(v ...any) error {
	return b.block.Append(v...)
}

// encodeBuffers are the buffers blocks are encoded into, reused as the
// driver reuses its connection's.
var encodeBuffers = sync.Pool{New: func() any { return new(proto.Buffer) }}

func (b *encodingBatch) Send() error {
	buf := encodeBuffers.Get().(*proto.Buffer)
	defer encodeBuffers.Put(buf)
	buf.Reset()
	if err := b.block.Encode(buf, chproto.DBMS_TCP_PROTOCOL_VERSION); err != nil {
		return err
	}
	b.conn.sent(b.query, buf.Buf)
	return nil
}

// benchRecords is n synth events over entities as Kafka records of one
// partition.
func benchRecords(tb testing.TB, n int, entities int64) []Record {
	recs := make([]Record, 0, n)
	err := synth.Events{Seed: 1, Count: n, Entities: entities}.Each(func(i int, e synth.Event) error {
		recs = append(recs, Record{Topic: "events", Partition: 0, Offset: int64(i), Value: e.JSON(),
			Time: time.Date(2026, 11, 27, 0, 0, 0, 0, time.UTC)})
		return nil
	})
	if err != nil {
		tb.Fatal(err)
	}
	return recs
}

func benchProcessor(conn *encodingConn, entities int64) *Processor {
	s := schema.ClickHouse{Database: "canopy", Measures: schema.DefaultMeasures()}
	return &Processor{
		Decoder:  NewDecoder(s.Measures, 0),
		Resolver: benchTree{n: entities},
		Ledger:   ownAllLedger{},
		Sink:     &ClickHouseSink{Conn: conn, Schema: s},
		DLQ:      &memDLQ{},
		Now:      func() time.Time { return time.Date(2026, 11, 27, 0, 0, 0, 0, time.UTC) },
	}
}

// BenchmarkProcessorBatch is one batch of 100,000 events at a million
// entities through Processor.Process into encoded blocks; ns/op divided by
// 100,000 is the worker's CPU per event on this path.
func BenchmarkProcessorBatch(b *testing.B) {
	const n, entities = 100_000, 1_000_000
	recs := benchRecords(b, n, entities)
	conn := newEncodingConn(schema.ClickHouse{Database: "canopy", Measures: schema.DefaultMeasures()})
	p := benchProcessor(conn, entities)
	b.ReportAllocs()
	var cpu time.Duration
	for b.Loop() {
		c0 := cputime.Self()
		if got, err := p.Process(context.Background(), 1, recs); err != nil || got != n {
			b.Fatalf("processed %d of %d: %v", got, n, err)
		}
		cpu += cputime.Self() - c0
	}
	// CPU time, garbage collection on the other cores included: what the
	// worker's CPU seconds per event count.
	b.ReportMetric(float64(cpu.Nanoseconds())/float64(b.N)/n, "cpu-ns/event")
}

// blocksDigestWant is blocksDigest(t, 20_000) in block format 2.
const blocksDigestWant = "cdf733b24c9ec04a4ed72b552d86d72038075620e4b83eaf74aba7f2abf181eb"

// blocksDigest is the SHA-256 of every block (and its INSERT) a batch of n
// synth events writes, but for the ack's (see newEncodingConn).
func blocksDigest(t *testing.T, n int) string {
	const entities = 1_000_000
	recs := benchRecords(t, n, entities)
	conn := newEncodingConn(schema.ClickHouse{Database: "canopy", Measures: schema.DefaultMeasures()})
	conn.sum = sha256.New()
	if got, err := benchProcessor(conn, entities).Process(context.Background(), 1, recs); err != nil || got != n {
		t.Fatalf("processed %d of %d: %v", got, n, err)
	}
	return fmt.Sprintf("%x", conn.sum.Sum(nil))
}

// The bytes a batch writes are its identity in ClickHouse's deduplication:
// a replay by this code must write what the code that began the batch
// wrote, byte for byte. The digest was taken before the CPU work of issue
// 13 (at 2426d04), whose changes must leave it alone; any change of it
// must bump blockFormat. It was 0b487345… with the ack's block; without it
// (the ack gained topic_id) it is blocksDigestWant, the same on fcd1747,
// whose blocks gave 0b487345… with the ack, as on the code that added the
// column.
func TestBlocksStayTheSame(t *testing.T) {
	if blockFormat != 2 {
		t.Skip("the digest is of block format 2")
	}
	const want = blocksDigestWant
	if got := blocksDigest(t, 20_000); got != want {
		t.Errorf("blocks of a fixed batch: digest %s, want %s", got, want)
	}
}

// BenchmarkProcessorSmallBatches is BenchmarkProcessorBatch's records in
// batches of 1,000, as a partition that keeps up sees them.
func BenchmarkProcessorSmallBatches(b *testing.B) {
	const n, batch, entities = 100_000, 1000, 1_000_000
	recs := benchRecords(b, n, entities)
	conn := newEncodingConn(schema.ClickHouse{Database: "canopy", Measures: schema.DefaultMeasures()})
	p := benchProcessor(conn, entities)
	b.ReportAllocs()
	var cpu time.Duration
	for b.Loop() {
		c0 := cputime.Self()
		for i := 0; i < n; i += batch {
			if got, err := p.Process(context.Background(), 1, recs[i:i+batch]); err != nil || got != batch {
				b.Fatalf("processed %d of %d: %v", got, batch, err)
			}
		}
		cpu += cputime.Self() - c0
	}
	b.ReportMetric(float64(cpu.Nanoseconds())/float64(b.N)/n, "cpu-ns/event")
}

// BenchmarkDecode is the decoder alone over synth records.
func BenchmarkDecode(b *testing.B) {
	recs := benchRecords(b, 10_000, 1_000_000)
	d := NewDecoder(schema.DefaultMeasures(), 0)
	var ev Event
	b.ReportAllocs()
	for b.Loop() {
		for _, r := range recs {
			if err := d.Decode(r.Value, &ev); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(len(recs)), "ns/event")
}
