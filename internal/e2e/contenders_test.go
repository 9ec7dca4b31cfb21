package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/canopyhq/canopy/internal/benchreport"
)

// BenchmarkContenders is the head-to-head benchmark of issue 7, run by
// scripts/bench-report: one seeded data set (a forest of
// CANOPY_BENCH_ENTITIES entities, default 1,000,000, mean chain about 7;
// CANOPY_BENCH_EVENTS events, default 5,000,000, over 30 days, 3 types),
// and on it, in one run on the real services:
//
//   - Canopy with 1 and with 2 workers, from produce to rows visible;
//   - the ClickHouse-native design (Kafka engine → materialized views with
//     arrayJoin → SummingMergeTree), with the chain in the message and
//     through a hierarchical dictionary;
//   - the per-event PostgreSQL design (one upsert transaction per event for
//     every ancestor) on 1 and 8 connections, each for
//     CANOPY_BENCH_PG_SECONDS (default 60): the whole set would add 10 to 30
//     minutes and the rate is steady after a minute;
//   - the Entity-overview read (daily series and downline totals for 30
//     days) on Canopy's rollups and as a recursive CTE in PostgreSQL, for
//     CANOPY_BENCH_READ_SAMPLES (default 100) entities per depth class;
//   - freshness (produce to visible) at half Canopy's 1-worker rate for
//     CANOPY_BENCH_FRESHNESS_SECONDS (default 30).
//
// Every ingest contender's daily table and every read answer is compared
// with a plain recursive computation over the same events and hierarchy. It
// writes report.md, ingest.png and read.png to CANOPY_BENCH_REPORT_DIR
// (default docs/bench).
func BenchmarkContenders(b *testing.B) {
	entities := envInt(b, "CANOPY_BENCH_ENTITIES", 1_000_000)
	events := envInt(b, "CANOPY_BENCH_EVENTS", 5_000_000)
	pgBudget := time.Duration(envInt(b, "CANOPY_BENCH_PG_SECONDS", 60)) * time.Second
	perClass := envInt(b, "CANOPY_BENCH_READ_SAMPLES", 100)
	freshSeconds := envInt(b, "CANOPY_BENCH_FRESHNESS_SECONDS", 30)
	dir := os.Getenv("CANOPY_BENCH_REPORT_DIR")
	if dir == "" {
		dir = filepath.Join("..", "..", "docs", "bench")
	}
	for i := 0; i < b.N; i++ {
		ctx := context.Background()
		rep := &report{started: time.Now(), entities: entities, events: events}
		t0 := time.Now()
		bd := newBenchData(entities, events)
		full := bd.oracle(bd.gen)
		rep.meanChain = float64(full.chains) / float64(events)
		b.Logf("data set and oracle ready in %s: mean chain %.2f, %d (entity, day) rows",
			time.Since(t0).Round(time.Second), rep.meanChain, len(full.total))

		check := func(r *ingestResult, e *env, table string) {
			v, err := checkCH(ctx, e.ch, rollupCheckSQL(table), full.total)
			if err != nil {
				b.Fatal(err)
			}
			r.verdict = v
			b.Logf("%s: %d events in %s = %.0f events/s; %s", r.name, r.events, r.elapsed.Round(time.Millisecond), r.rate(), v)
			rep.ingest = append(rep.ingest, *r)
		}

		// Canopy, 1 worker; its environment serves every later stage.
		r, envA := bd.runCanopy(b, 1)
		check(&r, envA, envA.chDB+".rollup_daily")
		rep.bytesPerEntity = float64(r.peakRSS) / float64(entities)
		envA.waitMerges(10 * time.Minute)

		// Canopy, 2 workers, then freshness on the same environment.
		r2, envB := bd.runCanopy(b, 2)
		check(&r2, envB, envB.chDB+".rollup_daily")
		rep.fresh = bd.runFreshness(b, envB, r.rate()/2, freshSeconds)
		b.Logf("freshness at %.0f events/s: p50 %s p99 %s", rep.fresh.rate, rep.fresh.p50, rep.fresh.p99)
		_ = envB.ch.Exec(ctx, "DROP DATABASE IF EXISTS "+envB.chDB)
		envA.waitMerges(10 * time.Minute)

		for _, variant := range []string{nativeInMessage, nativeDictionary} {
			nr := bd.runNative(b, envA, variant)
			nr.rowsPerEvent = 2 * rep.meanChain
			check(&nr, envA, nativePrefix(envA, variant)+"_daily")
			for _, t := range []string{"hourly", "daily"} {
				_ = envA.ch.Exec(ctx, "DROP TABLE IF EXISTS "+nativePrefix(envA, variant)+"_"+t)
			}
		}

		for _, conns := range []int{1, 8} {
			pr := bd.runPGPerEvent(b, envA, conns, pgBudget)
			b.Logf("%s: %d events in %s = %.0f events/s; %s", pr.name, pr.events, pr.elapsed.Round(time.Millisecond), pr.rate(), pr.verdict)
			rep.ingest = append(rep.ingest, pr)
		}

		t0 = time.Now()
		bd.loadRawEvents(b, envA)
		b.Logf("raw events loaded into PostgreSQL and indexed in %s", time.Since(t0).Round(time.Second))
		envA.waitMerges(10 * time.Minute)
		if err := envA.ch.QueryRow(ctx, "SELECT count(), uniqExact(partition) FROM system.parts WHERE database = ? AND table = 'rollup_daily' AND active",
			envA.chDB).Scan(&rep.parts, &rep.partitions); err != nil {
			b.Fatal(err)
		}
		rep.reads = bd.runReads(b, envA, full, bd.readClasses(perClass))

		rep.versions = serviceVersions(ctx, envA)
		if err := rep.write(dir); err != nil {
			b.Fatal(err)
		}
		b.Logf("report written to %s", filepath.Join(dir, "report.md"))
	}
}

// report is what BenchmarkContenders measured.
type report struct {
	started          time.Time
	entities, events int
	meanChain        float64
	ingest           []ingestResult
	bytesPerEntity   float64 // peak RSS of the 1-worker run per entity
	fresh            freshness
	reads            []readResult
	parts            uint64 // active parts of rollup_daily when the reads ran
	partitions       uint64
	versions         string
}

func serviceVersions(ctx context.Context, e *env) string {
	var ch, pg string
	_ = e.ch.QueryRow(ctx, "SELECT version()").Scan(&ch)
	_ = e.pg.QueryRow(ctx, "show server_version").Scan(&pg)
	kafka := "(version unknown)"
	if v, err := os.ReadFile(filepath.Join(servicesDir(), "kafka", "libs", ".version")); err == nil {
		kafka = strings.TrimSpace(string(v))
	}
	return fmt.Sprintf("ClickHouse %s, PostgreSQL %s, Apache Kafka %s (KRaft, one broker), %s",
		ch, strings.Fields(pg + " ")[0], kafka, runtime.Version())
}

func (rep *report) find(prefix string) (ingestResult, bool) {
	for _, r := range rep.ingest {
		if strings.HasPrefix(r.name, prefix) {
			return r, true
		}
	}
	return ingestResult{}, false
}

// best is the fastest run whose name starts with prefix.
func (rep *report) best(prefix string) ingestResult {
	var best ingestResult
	for _, r := range rep.ingest {
		if strings.HasPrefix(r.name, prefix) && (best.events == 0 || r.rate() > best.rate()) {
			best = r
		}
	}
	return best
}

func (rep *report) write(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil { //nolint:gosec // a docs directory
		return err
	}
	var w strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&w, format+"\n", args...) }
	cores := runtime.NumCPU()
	p("# Canopy against the alternatives")
	p("")
	p("Generated by `scripts/bench-report` (BenchmarkContenders in `internal/e2e/contenders_test.go`) on %s,", rep.started.UTC().Format("2006-01-02 15:04 MST"))
	p("on one machine with %d cores that also runs every server: %s.", cores, rep.versions)
	p("")
	p("**Data set** (one, seeded, shared by every contender): %d entities in 7 hierarchies (`hierarchy.Synthesize`, seed 1),", rep.entities)
	p("mean chain (entity and its ancestors) %.2f; %d events (`synth.Events`, seed 2) over the 30 days before the run, 3 types.", rep.meanChain, rep.events)
	p("Every contender's result is compared, row by row per (entity, day), with a plain recursive computation over the same")
	p("events and hierarchy (events, amount, quantity of the entity and its whole downline); the *result* column says what it found.")
	p("")

	c1, _ := rep.find("Canopy, 1 worker")
	c2, _ := rep.find("Canopy, 2 workers")
	canopy := rep.best("Canopy")
	native := rep.best("ClickHouse-native")
	pg8, _ := rep.find("PostgreSQL per-event upserts, 8")
	p("## Ingest")
	p("")
	p("| contender | events | events/s | Canopy's best ÷ it | rollup rows / event | CPU s per 1M events: worker · driver · Kafka · ClickHouse · PostgreSQL | result |")
	p("|---|---|---|---|---|---|---|")
	var bars []benchreport.Bar
	for _, r := range rep.ingest {
		var cpu []string
		for _, proc := range []string{"worker", "driver", "kafka", "clickhouse", "postgres"} {
			if v, ok := r.cpuPerMillion(proc); ok {
				cpu = append(cpu, fmt.Sprintf("%.1f", v))
			} else {
				cpu = append(cpu, "–")
			}
		}
		result := "exact"
		if !r.verdict.ok() {
			result = "**" + r.verdict.String() + "**"
		}
		p("| %s | %d | %.0f | %s | %.1f | %s | %s |", r.name, r.events, r.rate(), ratio(canopy.rate(), r.rate()),
			r.rowsPerEvent, strings.Join(cpu, " · "), result)
		bars = append(bars, benchreport.Bar{Label: shortName(r.name), Value: r.rate()})
	}
	p("")
	for _, r := range rep.ingest {
		p("- *%s*: %s.", r.name, r.how)
	}
	p("- *Rollup rows / event*: rows sent to the hourly and daily tables per event. Canopy sums each batch in memory first;")
	p("  the native design writes one row per chain link per table (2 × mean chain); the per-event design updates one row per link.")
	p("- *CPU*: user + system time of each process over the run (the worker from its rusage; servers from `/proc`, PostgreSQL")
	p("  with its backends); *driver* is the benchmark process where it plays the producer or the client.")
	p("")
	p("![events per second](ingest.png)")
	p("")
	p("**Worker memory** (1 worker): peak RSS %.0f MiB for %d entities = **%.0f bytes per entity**; Go heap after loading the hierarchy %d bytes per entity.",
		float64(c1.peakRSS)/(1<<20), rep.entities, rep.bytesPerEntity, c1.heapPerEnt)
	p("")
	p("**Scaling**: 1 → 2 workers on 4 partitions: %.0f → %.0f events/s (×%.2f).", c1.rate(), c2.rate(), c2.rate()/c1.rate())
	p("")
	p("**Freshness** at %.0f events/s (half the 1-worker rate), %d events, 1 worker: produce → rows and ack visible p50 **%s**, p99 **%s**",
		rep.fresh.rate, rep.fresh.events, rep.fresh.p50.Round(time.Millisecond), rep.fresh.p99.Round(time.Millisecond))
	p("(`ingest_acks` polled every %s, so each figure may be up to that much late).", rep.fresh.poll)
	p("")

	p("## Read path: the Entity overview")
	p("")
	p("One answer: the entity's own and downline events, amount and quantity per day for 30 days (the totals are their sums).")
	p("Canopy reads `rollup_daily` (one ClickHouse query, native protocol); the alternative computes it on request in PostgreSQL")
	p("with a recursive CTE over `canopy.entities` joined to the raw events (indexed by entity and time, covering the measures).")
	p("Latencies in ms include the round trip and reading the rows; the two queries alternate entity by entity.")
	p("At depths 1, 3 and 5 the entities are those with the largest downlines at that depth (the CTE's worst case, and the")
	p("teams a dashboard is opened on most); leaves and the last class are drawn at random. Canopy's query runs with")
	p("`SETTINGS max_threads = 1, use_uncompressed_cache = 1`, as a point read should. `rollup_daily` had %d active parts in",
		rep.parts)
	p("%d monthly partitions, merges settled; each part costs a point read a granule per column.", rep.partitions)
	p("")
	p("| class | entities | mean downline | Canopy p50 | Canopy p99 | CTE p50 | CTE p99 | CTE p99 ÷ Canopy p99 | answers equal to the oracle (Canopy · CTE) |")
	p("|---|---|---|---|---|---|---|---|---|")
	var groups []string
	series := []benchreport.Series{{Name: "Canopy p50"}, {Name: "Canopy p99"}, {Name: "CTE p50"}, {Name: "CTE p99"}}
	var canopyWorst, cteWorst float64
	for _, r := range rep.reads {
		cp50, cp99 := benchreport.Percentile(r.canopy, 50), benchreport.Percentile(r.canopy, 99)
		tp50, tp99 := benchreport.Percentile(r.cte, 50), benchreport.Percentile(r.cte, 99)
		canopyWorst, cteWorst = max(canopyWorst, cp99), max(cteWorst, tp99)
		p("| %s | %d | %.0f | %.1f | %.1f | %.1f | %.1f | %s | %d · %d |", r.class, r.entities, r.meanDownline,
			cp50, cp99, tp50, tp99, ratio(tp99, cp99), r.canopyOK, r.cteOK)
		groups = append(groups, r.short)
		for i, v := range []float64{cp50, cp99, tp50, tp99} {
			series[i].Values = append(series[i].Values, v)
		}
	}
	for _, r := range rep.reads {
		if r.canopyErr != "" {
			p("\n**Canopy answered wrong** (%s): %s", r.class, r.canopyErr)
		}
		if r.cteEr != "" {
			p("\n**The CTE answered wrong** (%s): %s", r.class, r.cteEr)
		}
	}
	p("")
	p("![read latency per depth](read.png)")
	p("")

	p("## Targets")
	p("")
	p("| target | measured | met |")
	p("|---|---|---|")
	check := func(ok bool) string {
		if ok {
			return "yes"
		}
		return "**no**"
	}
	exact := canopy.verdict.ok()
	p("| Canopy ingest ≥ 2× the ClickHouse-native design (%s) | %s | %s |", native.name, ratio(canopy.rate(), native.rate()),
		check(exact && canopy.rate() >= 2*native.rate()))
	p("| Canopy ingest ≥ 50× per-event PostgreSQL on 8 connections | %s | %s |", ratio(canopy.rate(), pg8.rate()),
		check(exact && canopy.rate() >= 50*pg8.rate()))
	p("| Canopy's worst per-depth read p99 ≥ 100× below the CTE's worst | %.1f ms vs %.1f ms: %s | %s |", canopyWorst, cteWorst,
		ratio(cteWorst, canopyWorst), check(cteWorst >= 100*canopyWorst))
	p("| Canopy's worst per-depth read p99 ≤ 10 ms | %.1f ms | %s |", canopyWorst, check(canopyWorst <= 10))
	p("| Every result exact | %s | %s |", exactSummary(rep), check(allExact(rep)))

	if err := os.WriteFile(filepath.Join(dir, "report.md"), []byte(w.String()), 0o644); err != nil { //nolint:gosec // a report
		return err
	}
	if err := benchreport.BarChart(filepath.Join(dir, "ingest.png"),
		"Ingest events/s (CH: ClickHouse-native, PG: per-event PostgreSQL)",
		"events/s", bars, true); err != nil {
		return err
	}
	return benchreport.GroupedBarChart(filepath.Join(dir, "read.png"), "Entity overview latency by depth (30 days)",
		"ms", groups, series, true)
}

func ratio(a, b float64) string {
	if b <= 0 {
		return "–"
	}
	return fmt.Sprintf("×%.1f", a/b)
}

func shortName(s string) string {
	r := strings.NewReplacer("Canopy, 1 worker", "Canopy ×1", "Canopy, 2 workers", "Canopy ×2",
		"ClickHouse-native, ancestors in message", "CH msg", "ClickHouse-native, hierarchical dictionary", "CH dict",
		"PostgreSQL per-event upserts, 1 connection", "PG ×1", "PostgreSQL per-event upserts, 8 connections", "PG ×8")
	return r.Replace(s)
}

func allExact(rep *report) bool {
	for _, r := range rep.ingest {
		if !r.verdict.ok() {
			return false
		}
	}
	for _, r := range rep.reads {
		if r.canopyOK != r.entities || r.cteOK != r.entities {
			return false
		}
	}
	return true
}

func exactSummary(rep *report) string {
	n, wrong := 0, 0
	for _, r := range rep.ingest {
		n++
		if !r.verdict.ok() {
			wrong++
		}
	}
	answers, bad := 0, 0
	for _, r := range rep.reads {
		answers += 2 * r.entities
		bad += 2*r.entities - r.canopyOK - r.cteOK
	}
	return fmt.Sprintf("%d of %d ingest results and %d of %d read answers exact", n-wrong, n, answers-bad, answers)
}
