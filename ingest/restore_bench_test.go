package ingest

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/canopyhq/canopy/ingest/idstate"
	"github.com/canopyhq/canopy/internal/cputime"
	"github.com/canopyhq/canopy/schema"
)

// BenchmarkRestore is what a new owner does before a partition's first
// batch: it reads the partition's by-id records (served from memory here,
// in chunks of 5,000, about what one fetch brings) and claims their ids
// into an empty local state, four partitions at once into one store, as a
// worker taking over a lost machine's partitions does. Random ids (36-byte
// UUID-like) are beside time-ordered ones ("ev-1-<n>", as the synthetic
// workload's); the state starts empty, so a restore into billions of ids
// costs more per id. It reports records/s and the process's CPU per record
// (the store's background compactions included). The work does not depend
// on b.N: run it with -benchtime 1x. CANOPY_BENCH_RESTORE_RECORDS sets the
// records per partition (default 1,000,000).
func BenchmarkRestore(b *testing.B) {
	perPart := 1_000_000
	if v := os.Getenv("CANOPY_BENCH_RESTORE_RECORDS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			b.Fatalf("CANOPY_BENCH_RESTORE_RECORDS=%q: want a positive integer", v)
		}
		perPart = n
	}
	const parts, chunk = 4, 5000
	at := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
	for _, seq := range []bool{false, true} {
		name := "random-ids"
		if seq {
			name = "time-ordered-ids"
		}
		b.Run(name, func(b *testing.B) {
			r := rand.New(rand.NewPCG(1, 2))
			logs := make([][]Record, parts)
			for p := range logs {
				logs[p] = make([]Record, perPart)
				for i := range logs[p] {
					off := int64(i)
					id := fmt.Sprintf("ev-1-%d", int64(p)*int64(perPart)+off)
					if !seq {
						id = fmt.Sprintf("%08x-%04x-%04x-%04x-%012x", r.Uint32(), r.Uint32()&0xffff, r.Uint32()&0xffff, r.Uint32()&0xffff, r.Uint64()&(1<<48-1))
					}
					logs[p][i] = Record{Topic: "byid", Partition: int32(p), Offset: off, //nolint:gosec // < parts
						Time:  at.Add(time.Duration(off) * time.Millisecond),
						Value: []byte(ev(id, 3+i%1000, "12.50"))}
				}
			}
			for range b.N {
				st, err := idstate.Open(b.TempDir(), idstate.Options{Horizon: 7 * 24 * time.Hour})
				if err != nil {
					b.Fatal(err)
				}
				c := &PartitionedClaims{State: st, Restore: &partsRestorer{logs: logs, chunk: chunk},
					Decoder: NewDecoder(schema.DefaultMeasures(), 0), Horizon: 7 * 24 * time.Hour, Log: slog.New(slog.DiscardHandler)}
				b.ResetTimer()
				cpu0, start := cputime.Self(), time.Now()
				var wg sync.WaitGroup
				errs := make([]error, parts)
				for p := range parts {
					wg.Go(func() { errs[p] = c.catchUp(context.Background(), int32(p), int64(perPart), at) }) //nolint:gosec // < parts
				}
				wg.Wait()
				wall, cpu := time.Since(start), cputime.Self()-cpu0
				b.StopTimer()
				for _, err := range errs {
					if err != nil {
						b.Fatal(err)
					}
				}
				n := float64(parts * perPart)
				b.ReportMetric(n/wall.Seconds(), "records/s")
				b.ReportMetric(float64(cpu.Microseconds())/n, "cpu-µs/record")
				b.ReportMetric(0, "ns/op")
				if err := st.Close(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// partsRestorer serves each partition's log from memory in chunks.
type partsRestorer struct {
	logs  [][]Record
	chunk int
}

func (r *partsRestorer) Read(_ context.Context, p int32, from int64, _ time.Time, to int64, fn func([]Record) error) error {
	log := r.logs[p]
	for i := max(from, 0); i < to && i < int64(len(log)); i += int64(r.chunk) {
		if err := fn(log[i:min(i+int64(r.chunk), to, int64(len(log)))]); err != nil {
			return err
		}
	}
	return nil
}
