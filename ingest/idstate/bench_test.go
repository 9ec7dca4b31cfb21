package idstate

import (
	"context"
	"math/rand/v2"
	"strconv"
	"testing"
	"time"

	"github.com/canopyhq/canopy/internal/cputime"
)

// benchLog makes n entries with random 32-byte ids, one millisecond apart,
// starting just before a day boundary so lookups span two 24h segments.
// dupEvery > 0 makes every dupEvery-th entry repeat a recent id.
func benchLog(r *rand.Rand, n, dupEvery int, start time.Time, off int64) []Entry {
	return benchLogIDs(r, n, dupEvery, start, off, false)
}

// benchLogIDs is benchLog; with seq the ids are "ev-1-" and the offset, in
// the order they are made, as time-ordered ids (counters, UUIDv7, ULIDs)
// and the synthetic workload's are.
func benchLogIDs(r *rand.Rand, n, dupEvery int, start time.Time, off int64, seq bool) []Entry {
	log := make([]Entry, n)
	for i := range log {
		e := &log[i]
		e.Offset, e.Time, e.RetryOf = off+int64(i), start.Add(time.Duration(i)*time.Millisecond), -1
		if dupEvery > 0 && i%dupEvery == dupEvery-1 {
			e.ID = log[r.IntN(i)].ID
			continue
		}
		if seq {
			e.ID = []byte("ev-1-" + strconv.FormatInt(e.Offset, 10))
			continue
		}
		e.ID = make([]byte, 32)
		for j := 0; j < 32; j += 8 {
			v := r.Uint64()
			for k := range 8 {
				e.ID[j+k] = byte(v >> (8 * k))
			}
		}
	}
	return log
}

// BenchmarkClaim claims batches of 32-byte ids into a store that already
// holds 1,000,000 ids, as in steady state with a 24h horizon (two segments
// read per entry). Run it long enough for the compactions to show
// (-benchtime 100x for the 100k cases). The time includes the background
// flushes and compactions the batches cause; cpu-ns/entry is the process's
// CPU time, the background compactions' included, which wall time hides
// on more than one core.
func BenchmarkClaim(b *testing.B) {
	for _, bc := range []struct {
		name     string
		batch    int
		dupEvery int
		memTable int64 // 0: the default
		seq      bool  // time-ordered ids (benchLogIDs), not random ones
		parts    int32 // partitions the batches go to in turn; 0: one
	}{
		{"fresh", 10_000, 0, 0, false, 0},
		{"dup10pct", 10_000, 10, 0, false, 0},
		{"fresh-100k", 100_000, 0, 0, false, 0},
		// The former default memtable, beside the current one.
		{"fresh-100k-mem16", 100_000, 0, 16 << 20, false, 0},
		// Time-ordered ids: whole-id keys keep their order, so a flush
		// overlaps little below it. Hashing the ids into the keys (tried
		// and reverted) doubled this case's CPU per id.
		{"fresh-100k-seq", 100_000, 0, 0, true, 0},
		// The same ids over four partitions of one store, as a worker
		// owning four by-id partitions claims them: each partition's ids
		// still increase, but a flush holds all four.
		{"fresh-100k-seq-4p", 100_000, 0, 0, true, 4},
	} {
		b.Run(bc.name, func(b *testing.B) {
			s := openT(b, b.TempDir(), Options{Horizon: 24 * time.Hour, MemTableBytes: bc.memTable})
			defer s.Close()
			r := rand.New(rand.NewPCG(1, 2))
			start := base.Add(-10 * time.Minute)
			const prefill = 1_000_000
			parts := max(bc.parts, 1)
			pre := benchLogIDs(r, prefill, 0, start, 0, bc.seq)
			for i := 0; i < prefill; i += 10_000 {
				if _, err := s.Claim(int32(i/10_000)%parts, pre[i:i+10_000]); err != nil {
					b.Fatal(err)
				}
			}
			settle(b, s)
			batch := bc.batch
			log := benchLogIDs(r, b.N*batch, bc.dupEvery, start.Add(prefill*time.Millisecond), prefill, bc.seq)
			b.ResetTimer()
			cpu0 := cputime.Self()
			dups := 0
			for i := range b.N {
				owned, err := s.Claim(int32(i)%parts, log[i*batch:(i+1)*batch])
				if err != nil {
					b.Fatal(err)
				}
				for _, o := range owned {
					if !o {
						dups++
					}
				}
			}
			cpu := cputime.Self() - cpu0
			b.StopTimer()
			b.ReportMetric(float64(cpu.Nanoseconds())/float64(b.N*batch), "cpu-ns/entry")
			if bc.dupEvery > 0 && dups == 0 {
				b.Fatal("no duplicates found")
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*batch), "ns/entry")
			b.ReportMetric(0, "ns/op")
		})
	}
}

// settle flushes and compacts s, so that a benchmark does not pay for the
// compaction debt of its own set-up.
func settle(b *testing.B, s *Store) {
	b.Helper()
	if err := s.db.Flush(); err != nil {
		b.Fatal(err)
	}
	if err := s.db.Compact(context.Background(), []byte{0}, []byte{0xff}, false); err != nil {
		b.Fatal(err)
	}
}

// BenchmarkDiskPerID records 1,000,000 ids of 32 bytes, flushes and
// compacts, and reports the bytes per id of the tables (table-B/id) and of
// everything on disk (B/id: the WAL and manifest too, which do not grow
// with the ids held). The work does not depend on b.N.
func BenchmarkDiskPerID(b *testing.B) {
	const n = 1_000_000
	var perID, tablePerID float64
	for range b.N {
		func() {
			s := openT(b, b.TempDir(), Options{Horizon: 24 * time.Hour})
			defer s.Close()
			log := benchLog(rand.New(rand.NewPCG(3, 4)), n, 0, base, 1_000_000_000)
			for i := 0; i < n; i += 100_000 {
				if _, err := s.Claim(0, log[i:i+100_000]); err != nil {
					b.Fatal(err)
				}
			}
			settle(b, s)
			ids, bytes := s.Size()
			if ids != n {
				b.Fatalf("Size = %d ids, want %d", ids, n)
			}
			perID = float64(bytes) / float64(ids)
			tablePerID = float64(s.db.Metrics().Total().TablesSize) / float64(ids)
		}()
	}
	b.ReportMetric(perID, "B/id")
	b.ReportMetric(tablePerID, "table-B/id")
}
