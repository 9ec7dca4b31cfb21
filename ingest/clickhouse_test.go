package ingest

import (
	"bytes"
	"encoding/binary"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"testing/iotest"
	"time"

	"github.com/ClickHouse/ch-go/proto"
	"github.com/ClickHouse/clickhouse-go/v2/lib/column"

	"github.com/canopyhq/canopy/schema"
)

// Every month of a block — each becomes its own part, deduplicated by its
// own hash — carries the batch's unit on exactly one row, so the parts of
// two batches with otherwise equal rows always differ.
func TestUnitColumnMarksEveryMonth(t *testing.T) {
	day := func(s string) time.Time { d, _ := time.Parse(time.DateOnly, s); return d }
	buckets := []time.Time{day("2026-10-30"), day("2026-11-01"), day("2026-10-31"), day("2026-11-02"), day("2026-12-01"), day("2026-10-30")}
	keys := make([]RollupKey, len(buckets))
	for i, b := range buckets {
		keys[i].Bucket = b.Unix()
	}
	got := unitColumn{keys, "t/0/5"}.values()
	perMonth := map[time.Month]int{}
	for i, u := range got {
		switch u {
		case "t/0/5":
			perMonth[buckets[i].Month()]++
		case "":
		default:
			t.Fatalf("row %d: unit %q", i, u)
		}
	}
	for _, m := range []time.Month{time.October, time.November, time.December} {
		if perMonth[m] != 1 {
			t.Errorf("%s carries the unit on %d rows, want 1 (%q)", m, perMonth[m], got)
		}
	}
	if len(unitColumn{nil, "x"}.values()) != 0 {
		t.Error("an empty block has units")
	}
}

// batchColumn is a driver column as a batch hands it out.
type batchColumn struct{ column.Interface }

func (c batchColumn) Append(v any) error {
	_, err := c.Interface.Append(v)
	return err
}

func (c batchColumn) AppendRow(v any) error { return c.Interface.AppendRow(v) }

// appendColumn puts on the wire exactly the bytes the driver's own Append
// does, for every width of Decimal and the other column types it encodes,
// or fails where the driver fails.
func TestAppendColumnEncodesAsDriver(t *testing.T) {
	rng := rand.New(rand.NewPCG(13, 14))
	sums := []schema.Sum128{{}, {Hi: -1, Lo: math.MaxUint64}, {Lo: 1}}
	var units []int64
	for _, v := range []int64{0, -1, 1, math.MaxInt32, math.MinInt32, schema.MaxUnits, -schema.MaxUnits, math.MaxInt64, math.MinInt64} {
		var s schema.Sum128
		s.Add(v)
		sums, units = append(sums, s), append(units, v)
	}
	strs := []string{"", "sale", strings.Repeat("x", 127), strings.Repeat("y", 128), strings.Repeat("é", 300), ""}
	for range 200 {
		var s schema.Sum128
		for range 1 + rng.IntN(40) {
			s.Add(rng.Int64())
		}
		sums = append(sums, s)
		units = append(units, rng.Int64N(2*schema.MaxUnits+1)-schema.MaxUnits)
		strs = append(strs, strings.Repeat("z", rng.IntN(200)))
	}
	small := []int64{0, 1, -1, math.MaxInt32, math.MinInt32, 12345678}
	keys := []RollupKey{{EntityID: 1, Bucket: 0, Depth: 0}, {EntityID: math.MaxInt64, Bucket: 1_790_000_000 - 1_790_000_000%86400, Depth: 255},
		{EntityID: 42, Bucket: -86400, Depth: 7}, {EntityID: 7, Bucket: 1 << 33, Depth: 1}, {EntityID: 8, Bucket: zeroTimeUnix, Depth: 2}}
	typedKeys := slices.Clone(keys)
	for i := range typedKeys {
		typedKeys[i].Type = []string{"sale", "", strings.Repeat("t", 200), "refund", "é"}[i%5]
	}
	for _, c := range []struct {
		name    string
		typ     column.Type
		v       any
		wantErr bool
	}{
		{"rollup sums", "Decimal(38, 4)", decimalColumn{scale: 4, sums: sums}, false},
		{"Decimal256", "Decimal(76, 4)", decimalColumn{scale: 4, sums: sums}, false},
		{"event units", "Decimal(18, 4)", decimalColumn{scale: 4, units: units}, false},
		{"event units, scale 9", "Decimal(18, 9)", decimalColumn{scale: 9, units: units}, false},
		{"Decimal32", "Decimal(9, 2)", decimalColumn{scale: 2, units: small}, false},
		{"another scale: the driver converts", "Decimal(38, 6)", decimalColumn{scale: 4, units: units}, false},
		{"sums past Decimal64", "Decimal(18, 4)", decimalColumn{scale: 4, sums: sums}, true},
		{"units past Decimal32", "Decimal(9, 2)", decimalColumn{scale: 2, units: units}, true},
		{"Int64", "Int64", units, false},
		{"UInt64", "UInt64", []uint64{0, 1, math.MaxUint64, 1 << 63}, false},
		{"Int32", "Int32", []int32{0, -1, math.MaxInt32, math.MinInt32}, false},
		{"UInt8", "UInt8", []uint8{0, 1, 255, 7}, false},
		{"no rows", "Int64", []int64{}, false},
		{"DateTime", "DateTime('UTC')", bucketColumn{0, 3600, 1_790_000_000, -3600, 1 << 33, zeroTimeUnix}, false},
		{"DateTime, server time zone", "DateTime", bucketColumn{0, 3600, 1_790_000_000}, false},
		{"Date", "Date", bucketColumn{0, 86400, 1_789_948_800, -86400, 1 << 33, zeroTimeUnix}, false},
		{"DateTime64: the driver converts", "DateTime64(3, 'UTC')", bucketColumn{0, 3600, 1_790_000_000}, false},
		{"String: the driver's Append", "String", strs, false},
		{"String, under 128 bytes in all", "String", []string{"", "t/0/5@1", "", "", "x"}, false},
		{"String, every row empty", "String", []string{"", "", ""}, false},
		{"String, no rows", "String", []string{}, false},
		{"a wrapper type: the driver converts", "Nullable(Int64)", units, false},
		{"rollup entities", "UInt64", keyColumn{keys, keyEntity}, false},
		{"rollup depths", "UInt8", keyColumn{keys, keyDepth}, false},
		{"rollup hours", "DateTime('UTC')", keyColumn{keys, keyBucket}, false},
		{"rollup days", "Date", keyColumn{keys, keyBucket}, false},
		{"rollup entities, another type: the driver converts", "Nullable(UInt64)", keyColumn{keys, keyEntity}, false},
		{"rollup depths, another type: the driver converts", "Nullable(UInt8)", keyColumn{keys, keyDepth}, false},
		{"rollup buckets, another type: the driver converts", "DateTime64(3, 'UTC')", keyColumn{keys, keyBucket}, false},
		{"Int64 sums", "Int64", int64Sums(sums), false},
		{"Int64 sums, another type: the driver converts", "Nullable(Int64)", int64Sums(sums), false},
		{"a constant", "UInt64", constUint64{v: 1 << 40, n: 3}, false},
		{"a constant, another type: the driver converts", "Nullable(UInt64)", constUint64{v: 5, n: 2}, false},
		{"no keys", "UInt64", keyColumn{nil, keyEntity}, false},
		{"rollup types", "String", keyColumn{typedKeys, keyType}, false},
		{"rollup types, another type: the driver converts", "Nullable(String)", keyColumn{typedKeys, keyType}, false},
		{"ingest units", "String", unitColumn{keys, "t/0/5@1790000000"}, false},
		{"ingest units, another type: the driver converts", "Nullable(String)", unitColumn{keys, "u"}, false},
		{"no units", "String", unitColumn{nil, "u"}, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			sc := &column.ServerContext{Timezone: time.FixedZone("server", 3*3600)}
			want, err := c.typ.Column("c", sc)
			if err != nil {
				t.Fatal(err)
			}
			got, _ := c.typ.Column("c", sc)
			v := c.v
			switch x := v.(type) {
			case decimalColumn:
				v = x.decimals()
			case bucketColumn:
				times := make([]time.Time, len(x))
				for i, b := range x {
					times[i] = time.Unix(b, 0).UTC()
				}
				v = times
			case keyColumn:
				var entities []uint64
				var depths []uint8
				var times []time.Time
				for _, k := range x.keys {
					entities, depths = append(entities, uint64(k.EntityID)), append(depths, k.Depth)
					times = append(times, time.Unix(k.Bucket, 0).UTC())
				}
				var types []string
				for _, k := range x.keys {
					types = append(types, k.Type)
				}
				v = map[keyField]any{keyEntity: entities, keyDepth: depths, keyBucket: times, keyType: types}[x.field]
			case unitColumn:
				v = x.values()
			case int64Sums:
				var lo []int64
				for _, sum := range x {
					lo = append(lo, int64(sum.Lo))
				}
				v = lo
			case constUint64:
				var vals []uint64
				for range x.n {
					vals = append(vals, x.v)
				}
				v = vals
			}
			_, wantErr := want.Append(v)
			gotErr := appendColumn(batchColumn{got}, got, c.v)
			if (wantErr != nil) != c.wantErr || (gotErr != nil) != c.wantErr {
				t.Fatalf("errors: driver %v, appendColumn %v; want an error: %v", wantErr, gotErr, c.wantErr)
			}
			if c.wantErr {
				return
			}
			var wb, gb proto.Buffer
			want.Encode(&wb)
			got.Encode(&gb)
			if got.Rows() != want.Rows() || !bytes.Equal(wb.Buf, gb.Buf) {
				t.Fatalf("%d rows encode as %x, want %d rows as %x", got.Rows(), gb.Buf, want.Rows(), wb.Buf)
			}
		})
	}
}

// nativeReader gives the same bytes whatever the sizes it is read in, rows
// split across reads included.
func TestNativeReaderSplitsRows(t *testing.T) {
	var sums []schema.Sum128
	for _, v := range []int64{0, -1, 1, math.MaxInt64, math.MinInt64, 7} {
		var s schema.Sum128
		s.Add(v)
		s.Add(v)
		sums = append(sums, s)
	}
	ints := []int64{0, -1, 1, math.MaxInt64, math.MinInt64, 7, 1 << 40}
	le := func(width int, vs ...uint64) (b []byte) {
		for _, v := range vs {
			b = binary.LittleEndian.AppendUint64(b, v)[:len(b)+width]
		}
		return b
	}
	var want256 []byte
	for _, s := range sums {
		ext := uint64(s.Hi >> 63)                                         //nolint:gosec // the sign
		want256 = append(want256, le(8, s.Lo, uint64(s.Hi), ext, ext)...) //nolint:gosec // two's complement
	}
	var want64 []byte
	for _, v := range ints {
		want64 = append(want64, le(8, uint64(v))...) //nolint:gosec // two's complement
	}
	for _, c := range []struct {
		name string
		rows fixedRows
		want []byte
	}{
		{"Decimal256", decimalRows{d: decimalColumn{scale: 2, sums: sums}, w: 32}, want256},
		{"Int64", int64Rows(ints), want64},
		{"Int32", int32Rows{1, -1}, []byte{1, 0, 0, 0, 0xff, 0xff, 0xff, 0xff}},
		{"UInt8", uint8Rows{1, 2, 3}, []byte{1, 2, 3}},
		{"no rows", int64Rows{}, nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			if err := iotest.TestReader(&nativeReader{rows: c.rows}, c.want); err != nil {
				t.Error(err)
			}
		})
	}
}

// BenchmarkAppendColumn is the columns of a rollup of 350,000 rows (a batch
// of 50,000 events with chains of 7): through the driver's Append (and, for
// decimals, shopspring decimals and big.Int), as the sink did, and encoded
// by appendColumn.
func BenchmarkAppendColumn(b *testing.B) {
	rng := rand.New(rand.NewPCG(15, 16))
	const n = 350_000
	d := decimalColumn{scale: 4, sums: make([]schema.Sum128, n)}
	events := make([]int64, n)
	for i := range d.sums {
		d.sums[i].Add(rng.Int64N(2e10) - 1e10)
		events[i] = 1 + rng.Int64N(3)
	}
	for _, c := range []struct {
		name string
		typ  column.Type
		v    any
	}{{"Decimal(38, 4)", "Decimal(38, 4)", d}, {"Int64", "Int64", events}} {
		b.Run(c.name+"/driver", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				col, _ := c.typ.Column("c", nil)
				v := c.v
				if d, ok := v.(decimalColumn); ok {
					v = d.decimals()
				}
				if _, err := col.Append(v); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(c.name+"/encoded", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				col, _ := c.typ.Column("c", nil)
				if err := appendColumn(batchColumn{col}, col, c.v); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// A String column takes its rows in a fixed number of allocations, however
// many rows: presizeStrings sized its arrays (else they grow by doubling,
// a few dozen allocations and copies at a rollup block's size).
func TestAppendStringsPresized(t *testing.T) {
	var few float64
	for _, n := range []int{1000, 100_000} {
		vals := make([]string, n)
		for i := range vals {
			vals[i] = []string{"sale", "refund", "subscription"}[i%3]
		}
		allocs := testing.AllocsPerRun(5, func() {
			col, _ := column.Type("String").Column("type", nil)
			if err := appendColumn(batchColumn{col}, col, vals); err != nil {
				t.Fatal(err)
			}
		})
		if n == 1000 {
			few = allocs
		} else if allocs > few+10 { // by doubling it would take some 30 more
			t.Errorf("%d rows take %.0f allocations, 1000 rows %.0f: the column grew row by row", n, allocs, few)
		}
	}
}
