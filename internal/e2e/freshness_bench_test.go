package e2e

import (
	"cmp"
	"context"
	"os"
	"testing"

	"github.com/canopyhq/canopy/internal/synth"
)

// BenchmarkFreshness is the freshness measurement of BenchmarkContenders on
// its own, for comparing worker changes in minutes rather than the report's
// hour: Canopy (1 worker, ingest.dedup as CANOPY_BENCH_DEDUP says:
// partitioned, the default, or postgres) ingests CANOPY_BENCH_EVENTS events
// (default 1,000,000) over CANOPY_BENCH_ENTITIES entities (default
// 1,000,000), spread over them as CANOPY_BENCH_WORKLOAD says (uniform, the
// default, or zipf, as in the report); then a new worker takes over, and
// events are produced at CANOPY_BENCH_FRESHNESS_RATE per second (default
// half the ingest's rate) for CANOPY_BENCH_FRESHNESS_SECONDS (default 30),
// each timed from its Produce call to the first poll of ingest_acks that
// covers it. Their occurred_at is the moment each is produced (live, the
// default) or, with CANOPY_BENCH_FRESHNESS_TIMES=dataset, the data set's own
// (spread over its 30 days, as before 2026-12-05). The ingest is checked
// against the oracle, as in the report, and its CPU per event and the
// worker's peak RSS reported as the report's (the clock starts once the
// restater has written the import);
// CANOPY_BENCH_FRESHNESS_SECONDS=0 measures only that.
// CANOPY_BENCH_PARTITIONS (default 4, as in the report) is the events
// topic's partition count, and so the by-id topic's.
// Worker settings come from the environment
// (CANOPY_INGEST_FETCH_MAX_PARTITION_MB=8, …).
func BenchmarkFreshness(b *testing.B) {
	entities := envInt(b, "CANOPY_BENCH_ENTITIES", 1_000_000)
	events := envInt(b, "CANOPY_BENCH_EVENTS", 1_000_000)
	seconds := envInt(b, "CANOPY_BENCH_FRESHNESS_SECONDS", 30)
	rate := float64(envInt(b, "CANOPY_BENCH_FRESHNESS_RATE", 0))
	var partitioned bool
	switch d := os.Getenv("CANOPY_BENCH_DEDUP"); d {
	case "", "partitioned":
		partitioned = true
	case "postgres":
	default:
		b.Fatalf("CANOPY_BENCH_DEDUP: %q is neither partitioned nor postgres", d)
	}
	times, err := parseEventTimes(os.Getenv("CANOPY_BENCH_FRESHNESS_TIMES"))
	if err != nil {
		b.Fatalf("CANOPY_BENCH_FRESHNESS_TIMES: %v", err)
	}
	dist, err := synth.ParseDistribution(cmp.Or(os.Getenv("CANOPY_BENCH_WORKLOAD"), "uniform"))
	if err != nil {
		b.Fatalf("CANOPY_BENCH_WORKLOAD: %v", err)
	}
	bd := newBenchData(entities, events).workload(dist)
	parts := envInt(b, "CANOPY_BENCH_PARTITIONS", int(bd.partitions))
	if parts < 1 || parts > 1024 {
		b.Fatalf("CANOPY_BENCH_PARTITIONS: %d is not between 1 and 1024", parts)
	}
	bd.partitions = int32(parts) //nolint:gosec // checked above
	full := bd.oracle(bd.gen)
	for i := 0; i < b.N; i++ {
		r, e := bd.runCanopy(b, 1, partitioned)
		v, err := checkCH(context.Background(), e.ch, rollupCheckSQL(e.chDB+".rollup_daily"), full.total)
		if err != nil {
			b.Fatal(err)
		}
		if !v.ok() {
			b.Fatalf("%s: %s", r.name, v) // a wrong build's freshness means nothing
		}
		b.Logf("%s: %.0f events/s; %s", r.name, r.rate(), v)
		b.ReportMetric(r.rate(), "ingest-events/s")
		b.ReportMetric(float64(r.peakRSS)/(1<<20), "worker-peak-rss-MiB")
		for _, proc := range []string{"worker", "kafka", "clickhouse", "postgres"} {
			if c, ok := r.cpuPerMillion(proc); ok {
				b.ReportMetric(c, proc+"-cpu-s/1M-events") // the report's figures, the restater's import done
			}
		}
		if seconds > 0 {
			at := rate
			if at == 0 {
				at = r.rate() / 2
			}
			f := bd.runFreshness(b, e, at, seconds, times)
			b.Logf("freshness (%s event times) at %.0f events/s: p50 %s p99 %s; CPU s per 1M events (worker · driver · kafka · clickhouse · zookeeper): %s",
				f.times, f.rate, f.p50, f.p99, cpuLine(f.cpu, f.events, "worker", "driver", "kafka", "clickhouse", "zookeeper"))
			b.ReportMetric(f.rate, "fresh-events/s")
			b.ReportMetric(f.p50.Seconds(), "p50-s")
			b.ReportMetric(f.p99.Seconds(), "p99-s")
			for _, proc := range []string{"worker", "clickhouse"} {
				if c, ok := f.cpuPerMillion(proc); ok {
					b.ReportMetric(c, "fresh-"+proc+"-cpu-s/1M-events")
				}
			}
		}
		_ = e.ch.Exec(context.Background(), "DROP DATABASE IF EXISTS "+e.chDB)
	}
}
