package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/canopyhq/canopy/internal/benchreport"
	"github.com/canopyhq/canopy/internal/synth"
	"github.com/canopyhq/canopy/internal/testenv"
)

// BenchmarkContenders is the head-to-head benchmark of issue 7, run by
// scripts/bench-report: one seeded hierarchy (a forest of
// CANOPY_BENCH_ENTITIES entities, default 1,000,000, mean chain about 7)
// and CANOPY_BENCH_EVENTS events (default 5,000,000, over 30 days, 3
// types) in the workloads CANOPY_BENCH_WORKLOADS names (default
// "uniform,zipf"): events spread uniformly over the entities, and skewed
// over them as a Zipf distribution with s = 1.1 (synth.Zipf). On each
// workload, in one run on the real services:
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
//     CANOPY_BENCH_FRESHNESS_SECONDS (default 30), of live events
//     (occurred_at when produced) and then of events dated as the data
//     set's (spread over its 30 days);
//   - ClickHouse rows and bytes per event of each table Canopy and the
//     native design write (system.parts, after the ingest and its merges),
//     and PostgreSQL rows Canopy inserts per event (pg_stat_user_tables).
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
	workloads := envWorkloads(b, "CANOPY_BENCH_WORKLOADS", "uniform,zipf")
	dir := os.Getenv("CANOPY_BENCH_REPORT_DIR")
	if dir == "" {
		dir = filepath.Join("..", "..", "docs", "bench")
	}
	for i := 0; i < b.N; i++ {
		rep := &report{started: time.Now(), entities: entities, events: events}
		base := newBenchData(entities, events)
		for _, d := range workloads {
			wr := base.workload(d).run(b, pgBudget, perClass, freshSeconds)
			rep.workloads = append(rep.workloads, wr)
			rep.versions = wr.versions
		}
		if err := rep.write(dir); err != nil {
			b.Fatal(err)
		}
		b.Logf("report written to %s", filepath.Join(dir, "report.md"))
	}
}

// envWorkloads reads a comma-separated list of synth distributions.
func envWorkloads(t testing.TB, name, def string) []synth.Distribution {
	s := os.Getenv(name)
	if s == "" {
		s = def
	}
	var out []synth.Distribution
	for _, f := range strings.Split(s, ",") {
		d, err := synth.ParseDistribution(strings.TrimSpace(f))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if !slices.Contains(out, d) {
			out = append(out, d)
		}
	}
	return out
}

// run runs every contender on bd's workload, each in turn on the same
// services, and leaves no large table behind for the next workload's
// timings to compete with.
func (bd *benchData) run(b *testing.B, pgBudget time.Duration, perClass, freshSeconds int) workloadReport {
	ctx := context.Background()
	name := bd.gen.Distribution.String()
	wr := workloadReport{name: name, zipfS: bd.gen.ZipfS}
	if bd.gen.Distribution == synth.Zipf && wr.zipfS == 0 {
		wr.zipfS = synth.DefaultZipfS
	}
	logf := func(format string, args ...any) { b.Helper(); b.Logf(name+": "+format, args...) }
	t0 := time.Now()
	full := bd.oracle(bd.gen)
	wr.meanChain = float64(full.chains) / float64(bd.gen.Count)
	wr.answerRows = len(full.total)
	wr.skew = bd.skew()
	logf("data set and oracle ready in %s: mean chain %.2f, %d (entity, day) rows, busiest 1%% of entities %.1f%% of events",
		time.Since(t0).Round(time.Second), wr.meanChain, len(full.total), 100*wr.skew.top1)

	check := func(r *ingestResult, e *env, table string) {
		v, err := checkCH(ctx, e.ch, rollupCheckSQL(table), full.total)
		if err != nil {
			b.Fatal(err)
		}
		r.verdict = v
		logf("%s: %d events in %s = %.0f events/s; %s", r.name, r.events, r.elapsed.Round(time.Millisecond), r.rate(), v)
		wr.ingest = append(wr.ingest, *r)
	}

	// Canopy, 1 worker; its environment serves every later stage.
	r, envA := bd.runCanopy(b, 1, false)
	check(&r, envA, envA.chDB+".rollup_daily")
	wr.bytesPerEntity = float64(r.peakRSS) / float64(bd.n)
	envA.waitMerges(10 * time.Minute)
	wr.storage = append(wr.storage, envA.storage(b, r.name, r.events, canopyTables...)...)

	// Canopy, 2 workers, then freshness on the same environment.
	r2, envB := bd.runCanopy(b, 2, false)
	check(&r2, envB, envB.chDB+".rollup_daily")
	wr.fresh = bd.freshnessPair(b, envB, r.rate()/2, freshSeconds, "postgres", logf)
	_ = envB.ch.Exec(ctx, "DROP DATABASE IF EXISTS "+envB.chDB)

	// Canopy with partitioned deduplication (issue 13's design), 1 worker.
	rp, envP := bd.runCanopy(b, 1, true)
	check(&rp, envP, envP.chDB+".rollup_daily")
	wr.freshPart = bd.freshnessPair(b, envP, rp.rate()/2, freshSeconds, "partitioned", logf)
	wr.restore = bd.measureRestore(b, envP)
	logf("restore of the partitioned state: %d partitions, %.0f records in %.2f s (slowest partition %.2f s)",
		wr.restore.partitions, wr.restore.records, wr.restore.seconds, wr.restore.slowest)
	_ = envP.ch.Exec(ctx, "DROP DATABASE IF EXISTS "+envP.chDB)
	envA.waitMerges(10 * time.Minute)

	for _, variant := range []string{nativeInMessage, nativeDictionary} {
		nr := bd.runNative(b, envA, variant)
		nr.rowsPerEvent = 2 * wr.meanChain
		check(&nr, envA, nativePrefix(envA, variant)+"_daily")
		envA.waitMerges(10 * time.Minute)
		var tables []string
		for _, t := range []string{"hourly", "daily"} {
			tables = append(tables, strings.TrimPrefix(nativePrefix(envA, variant), envA.chDB+".")+"_"+t)
		}
		wr.storage = append(wr.storage, envA.storage(b, nr.name, nr.events, tables...)...)
		for _, t := range tables {
			_ = envA.ch.Exec(ctx, "DROP TABLE IF EXISTS "+envA.chDB+"."+t)
		}
	}

	for _, conns := range []int{1, 8} {
		pr := bd.runPGPerEvent(b, envA, conns, pgBudget)
		logf("%s: %d events in %s = %.0f events/s; %s", pr.name, pr.events, pr.elapsed.Round(time.Millisecond), pr.rate(), pr.verdict)
		wr.ingest = append(wr.ingest, pr)
	}

	t0 = time.Now()
	bd.loadRawEvents(b, envA)
	logf("raw events loaded into PostgreSQL and indexed in %s", time.Since(t0).Round(time.Second))
	envA.waitMerges(10 * time.Minute)
	if err := envA.ch.QueryRow(ctx, "SELECT count(), uniqExact(partition) FROM system.parts WHERE database = ? AND table = 'rollup_daily' AND active",
		envA.chDB).Scan(&wr.parts, &wr.partitions); err != nil {
		b.Fatal(err)
	}
	wr.reads = bd.runReads(b, envA, full, bd.readClasses(perClass))
	wr.versions = serviceVersions(ctx, envA)

	// The next workload's runs should not share the machine with this one's
	// merges and vacuums.
	_ = envA.ch.Exec(ctx, "DROP DATABASE IF EXISTS "+envA.chDB)
	_, _ = envA.pg.Exec(ctx, "drop table if exists bench_events, bench_summary")
	return wr
}

// report is what BenchmarkContenders measured.
type report struct {
	started          time.Time
	entities, events int
	workloads        []workloadReport
	versions         string
}

// workloadReport is what BenchmarkContenders measured on one workload.
type workloadReport struct {
	name           string
	zipfS          float64 // the Zipf exponent, or 0
	meanChain      float64
	answerRows     int // (entity, day) rows of the oracle's answer
	skew           skew
	ingest         []ingestResult
	storage        []tableStorage
	bytesPerEntity float64      // peak RSS of the 1-worker run per entity
	fresh          [2]freshness // ingest.dedup=postgres: live, then dataset event times
	freshPart      [2]freshness // ingest.dedup=partitioned, the default: live, then dataset
	reads          []readResult
	parts          uint64 // active parts of rollup_daily when the reads ran
	partitions     uint64
	versions       string
	restore        restoreResult // partitioned dedup: a new owner rebuilding its state
}

func serviceVersions(ctx context.Context, e *env) string {
	var ch, pg string
	_ = e.ch.QueryRow(ctx, "SELECT version()").Scan(&ch)
	_ = e.pg.QueryRow(ctx, "show server_version").Scan(&pg)
	kafka := "(version unknown)"
	if v, err := os.ReadFile(filepath.Join(testenv.ServicesDir(), "kafka", "libs", ".version")); err == nil {
		kafka = strings.TrimSpace(string(v))
	}
	return fmt.Sprintf("ClickHouse %s, PostgreSQL %s, Apache Kafka %s (KRaft, one broker), %s",
		ch, strings.Fields(pg + " ")[0], kafka, runtime.Version())
}

func (wr *workloadReport) find(prefix string) (ingestResult, bool) {
	for _, r := range wr.ingest {
		if strings.HasPrefix(r.name, prefix) {
			return r, true
		}
	}
	return ingestResult{}, false
}

// best is the fastest run whose name starts with prefix.
func (wr *workloadReport) best(prefix string) ingestResult {
	var best ingestResult
	for _, r := range wr.ingest {
		if strings.HasPrefix(r.name, prefix) && (best.events == 0 || r.rate() > best.rate()) {
			best = r
		}
	}
	return best
}

// worstP99 is the largest per-class p99 of Canopy's and of the CTE's reads.
func (wr *workloadReport) worstP99() (canopy, cte float64) {
	for _, r := range wr.reads {
		canopy = max(canopy, benchreport.Percentile(r.canopy, 99))
		cte = max(cte, benchreport.Percentile(r.cte, 99))
	}
	return canopy, cte
}

// drawn says how a workload draws each event's entity.
func (wr *workloadReport) drawn() string {
	if wr.zipfS > 0 {
		return fmt.Sprintf("Zipf, s = %.2g, over ranks mapped to ids by a seeded permutation (hot entities at every depth)", wr.zipfS)
	}
	return "uniformly from all entities"
}

func (rep *report) write(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil { //nolint:gosec // a docs directory
		return err
	}
	var w strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&w, format+"\n", args...) }
	cores := runtime.NumCPU()
	wls := rep.workloads
	p("# Canopy against the alternatives")
	p("")
	p("Generated by `scripts/bench-report` (BenchmarkContenders in `internal/e2e/contenders_test.go`) on %s,", rep.started.UTC().Format("2006-01-02 15:04 MST"))
	p("on one machine with %d cores that also runs every server: %s.", cores, rep.versions)
	p("")
	p("**Data set** (seeded, shared by every contender): %d entities in 7 hierarchies (`hierarchy.Synthesize`, seed 1) and", rep.entities)
	p("%d events (`synth.Events`, seed 2) over the 30 days before the run, 3 types, in %s that differ only in", rep.events,
		map[bool]string{true: "one workload", false: fmt.Sprintf("%d workloads", len(wls))}[len(wls) == 1])
	p("which entity each event belongs to. Every contender runs on every workload, one workload after the other in one run;")
	p("every ratio below compares runs on the same workload (`CANOPY_BENCH_WORKLOADS` chooses them).")
	p("")
	p("| workload | each event's entity drawn | entities with events of their own | busiest 1%% of entities' share of events | busiest entity's share | mean chain | (entity, day) rows in the answer |")
	p("|---|---|---|---|---|---|---|")
	for _, wr := range wls {
		p("| %s | %s | %d (%.0f%%) | %.1f%% | %.2f%% | %.2f | %d |", wr.name, wr.drawn(), wr.skew.withEvents,
			100*float64(wr.skew.withEvents)/float64(rep.entities), 100*wr.skew.top1, 100*wr.skew.top, wr.meanChain, wr.answerRows)
	}
	p("")
	p("*Mean chain*: the entity and its ancestors, averaged over events. Every contender's result is compared, row by row per")
	p("(entity, day), with a plain recursive computation over the same events and hierarchy (events, amount, quantity of the")
	p("entity and its whole downline); the *result* column says what it found.")
	p("")

	p("## Ingest")
	p("")
	p("| workload | contender | events | events/s | Canopy's best ÷ it | rollup rows / event | CPU s per 1M events: worker · driver · Kafka · ClickHouse · PostgreSQL | result |")
	p("|---|---|---|---|---|---|---|---|")
	var names []string
	rates := map[string]map[string]float64{} // contender → workload → events/s
	for _, wr := range wls {
		canopy := wr.best("Canopy")
		for _, r := range wr.ingest {
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
			p("| %s | %s | %d | %.0f | %s | %.1f | %s | %s |", wr.name, r.name, r.events, r.rate(), ratio(canopy.rate(), r.rate()),
				r.rowsPerEvent, strings.Join(cpu, " · "), result)
			if rates[r.name] == nil {
				names = append(names, r.name)
				rates[r.name] = map[string]float64{}
			}
			rates[r.name][wr.name] = r.rate()
		}
	}
	p("")
	seen := map[string]bool{}
	for _, wr := range wls {
		for _, r := range wr.ingest {
			if !seen[r.name] {
				seen[r.name] = true
				p("- *%s*: %s.", r.name, r.how)
			}
		}
	}
	p("- *Canopy's best ÷ it*: the faster Canopy run's events/s on the same workload over the contender's.")
	p("- *Rollup rows / event*: rows sent to the hourly and daily tables per event. Canopy sums each batch in memory first;")
	p("  the native design writes one row per chain link per table (2 × mean chain); the per-event design updates one row per link.")
	p("- *CPU*: user + system time of each process over the run (the worker: its rusage at exit less its `/proc` time when the")
	p("  clock started, so loading the hierarchy and the restater's import are left out as for every server; servers from `/proc`, PostgreSQL")
	p("  with its backends); *driver* is the benchmark process where it plays the producer or the client. The targets also give")
	p("  PostgreSQL's CPU for Canopy's own connections alone (the backends connected to the run's database), without the")
	p("  server's background processes (checkpointer, WAL writer, autovacuum, statistics) that the whole-server figure includes.")
	p("")
	p("![events per second](ingest.png)")
	p("")
	p("| workload | worker peak RSS, 1 worker | bytes per entity | Go heap per entity after loading the hierarchy | 1 → 2 workers on 4 partitions | freshness: design | event times | rate | events | p50 | p99 |")
	p("|---|---|---|---|---|---|---|---|---|---|---|")
	for _, wr := range wls {
		c1, _ := wr.find("Canopy, 1 worker")
		c2, _ := wr.find("Canopy, 2 workers")
		lead := fmt.Sprintf("| %s | %.0f MiB | **%.0f** | %d | %.0f → %.0f events/s (×%.2f) ", wr.name,
			float64(c1.peakRSS)/(1<<20), wr.bytesPerEntity, c1.heapPerEnt, c1.rate(), c2.rate(), c2.rate()/c1.rate())
		for _, d := range []struct {
			design string
			f      [2]freshness
		}{{"postgres", wr.fresh}, {"partitioned (default)", wr.freshPart}} {
			for _, f := range d.f {
				p("%s| %s | %s | %.0f events/s | %d | **%s** | **%s** |", lead, d.design, f.times,
					f.rate, f.events, f.p50.Round(time.Millisecond), f.p99.Round(time.Millisecond))
				lead = "| | | | | "
			}
		}
	}
	p("")
	if len(wls) > 0 {
		p("*Freshness*: at half the 1-worker rate, 1 worker, from produce to rows and ack visible (`ingest_acks` polled every %s,", wls[0].fresh[0].poll)
		p("so each figure may be up to that much late). The events are the workload's (entities, types, measures); *event times*")
		p("says their `occurred_at`: *live*, the moment each was produced, as a live producer sends them (the head, which the")
		p("freshness target is about), or *dataset*, the data set's own spread over its 30 days — history arriving at the head's")
		p("rate, so every batch writes a part per month per table and sums almost nothing across events (before 2026-12-05")
		p("this report measured only that). The live window runs first, the dataset one right after on the same worker's state.")
		p("")
		p("What the steady head costs, against a backlog: CPU s per 1M events while the freshness events were produced and")
		p("acknowledged, beside the same design's ingest (the *Ingest* table). Batches at the head are as small as a turn's")
		p("arrivals, so ClickHouse makes (and then merges) many more parts per event; on this 2-core machine the head's")
		p("CPU, the producing test's included, is what sets the latency.")
		p("")
		p("| workload | design | phase | worker · driver · Kafka · ClickHouse · ZooKeeper |")
		p("|---|---|---|---|")
		procs := []string{"worker", "driver", "kafka", "clickhouse", "zookeeper"}
		for _, wr := range wls {
			for _, d := range []struct {
				design, contender string
				f                 [2]freshness
			}{{"postgres", "Canopy, 1 worker", wr.fresh}, {"partitioned (default)", "Canopy partitioned, 1 worker", wr.freshPart}} {
				if c, ok := wr.find(d.contender); ok {
					p("| %s | %s | ingest | %s |", wr.name, d.design, cpuLine(c.cpu, c.events, procs...))
				}
				for _, f := range d.f {
					p("| %s | %s | freshness, %s event times, %.0f events/s | %s |", wr.name, d.design, f.times, f.rate, cpuLine(f.cpu, f.events, procs...))
				}
			}
		}
		p("")
	}

	p("## Storage per event")
	p("")
	p("ClickHouse tables as `system.parts` has them (active parts) after each contender's ingest, once the merges had settled")
	p("(no `OPTIMIZE`: SummingMergeTree has summed rows only as far as its merges got, as in a live system), divided by the")
	p("run's events: *rows*, *disk* (`bytes_on_disk`: compressed columns, marks and primary index) and *data*")
	p("(`data_compressed_bytes`). Canopy's figures are its 1-worker run's; the native design's Kafka engine table stores nothing.")
	p("")
	head, rule := "| contender | table |", "|---|---|"
	for _, wr := range wls {
		head += fmt.Sprintf(" %[1]s rows / event | %[1]s disk B / event | %[1]s data B / event | %[1]s parts |", wr.name)
		rule += "---|---|---|---|"
	}
	p("%s", head)
	p("%s", rule)
	type key struct{ contender, table string }
	var keys []key
	storage := map[key]map[string]tableStorage{}
	for _, wr := range wls {
		for _, s := range wr.storage {
			k := key{s.contender, s.table}
			if storage[k] == nil {
				keys = append(keys, k)
				storage[k] = map[string]tableStorage{}
			}
			storage[k][wr.name] = s
		}
	}
	row := func(contender, table string, get func(wl string) (tableStorage, bool)) {
		line := fmt.Sprintf("| %s | %s |", contender, table)
		for _, wr := range wls {
			s, ok := get(wr.name)
			if !ok || s.events == 0 {
				line += " – | – | – | – |"
				continue
			}
			line += fmt.Sprintf(" %s | %s | %s | %d |", perEvent(s.perEvent(s.rows)), perEvent(s.perEvent(s.onDisk)),
				perEvent(s.perEvent(s.compressed)), s.parts)
		}
		p("%s", line)
	}
	for i, k := range keys {
		row(k.contender, "`"+k.table+"`", func(wl string) (tableStorage, bool) { s, ok := storage[k][wl]; return s, ok })
		if i+1 == len(keys) || keys[i+1].contender != k.contender {
			row(k.contender, "**all**", func(wl string) (tableStorage, bool) {
				var sum tableStorage
				for _, kk := range keys {
					if s, ok := storage[kk][wl]; ok && kk.contender == k.contender {
						sum.events = s.events
						sum.rows += s.rows
						sum.onDisk += s.onDisk
						sum.compressed += s.compressed
						sum.parts += s.parts
					}
				}
				return sum, sum.events > 0
			})
		}
	}
	p("")
	p("**PostgreSQL rows Canopy inserts per event**: the growth of `n_tup_ins` in `pg_stat_user_tables`, summed over the")
	p("`canopy` schema's tables, from after the hierarchy's import to after the workers stopped, over the run's events.")
	p("")
	p("| workload | contender | rows inserted / event | by table |")
	p("|---|---|---|---|")
	for _, wr := range wls {
		for _, r := range wr.ingest {
			if r.pgInserts != nil {
				total, byTable := formatInserts(r.pgInserts, r.events)
				p("| %s | %s | %s | %s |", wr.name, r.name, total, byTable)
			}
		}
	}
	p("")
	p("**Moving partitioned deduplication state** (`Canopy partitioned`): after its run, a worker with an empty state")
	p("directory takes every partition over and rebuilds each one's event-id state from the by-id topic before its first")
	p("batch (`canopy_dedup_restore_seconds`, `canopy_dedup_restored_records_total`):")
	p("")
	p("| workload | partitions rebuilt | records read | seconds in all | slowest partition | records/s |")
	p("|---|---|---|---|---|---|")
	for _, wr := range wls {
		if rs := wr.restore; rs.partitions > 0 {
			p("| %s | %d | %.0f | %.2f | %.2f s | %.0f |", wr.name, rs.partitions, rs.records, rs.seconds, rs.slowest, rs.records/max(rs.seconds, 1e-9))
		}
	}
	p("")

	p("## Read path: the Entity overview")
	p("")
	p("One answer: the entity's own and downline events, amount and quantity per day for 30 days (the totals are their sums).")
	p("Canopy reads `rollup_daily` (one ClickHouse query, native protocol); the alternative computes it on request in PostgreSQL")
	p("with a recursive CTE over `canopy.entities` joined to the raw events (indexed by entity and time, covering the measures).")
	p("Latencies in ms include the round trip and reading the rows; the two queries alternate entity by entity.")
	p("At depths 1, 3 and 5 the entities are those with the largest downlines at that depth (the CTE's worst case, and the")
	p("teams a dashboard is opened on most); leaves and the last class are drawn at random; the same entities on every workload.")
	p("Canopy's query runs with `SETTINGS max_threads = 1, use_uncompressed_cache = 1`, as a point read should. When the reads")
	p("ran, merges had settled and `rollup_daily` had %s; each part costs a point read a granule per column.",
		strings.Join(mapWorkloads(wls, func(wr workloadReport) string {
			return fmt.Sprintf("%d active parts in %d monthly partitions (%s)", wr.parts, wr.partitions, wr.name)
		}), ", "))
	p("")
	p("| workload | class | entities | mean downline | Canopy p50 | Canopy p99 | CTE p50 | CTE p99 | CTE p99 ÷ Canopy p99 | answers equal to the oracle (Canopy · CTE) |")
	p("|---|---|---|---|---|---|---|---|---|---|")
	var groups []string
	var canopySeries, cteSeries []benchreport.Series
	for _, wr := range wls {
		cs, ts := benchreport.Series{Name: "Canopy p99, " + wr.name}, benchreport.Series{Name: "CTE p99, " + wr.name}
		for _, r := range wr.reads {
			cp50, cp99 := benchreport.Percentile(r.canopy, 50), benchreport.Percentile(r.canopy, 99)
			tp50, tp99 := benchreport.Percentile(r.cte, 50), benchreport.Percentile(r.cte, 99)
			p("| %s | %s | %d | %.0f | %.1f | %.1f | %.1f | %.1f | %s | %d · %d |", wr.name, r.class, r.entities, r.meanDownline,
				cp50, cp99, tp50, tp99, ratio(tp99, cp99), r.canopyOK, r.cteOK)
			if len(canopySeries) == 0 {
				groups = append(groups, r.short)
			}
			cs.Values = append(cs.Values, cp99)
			ts.Values = append(ts.Values, tp99)
		}
		canopySeries, cteSeries = append(canopySeries, cs), append(cteSeries, ts)
	}
	for _, wr := range wls {
		for _, r := range wr.reads {
			if r.canopyErr != "" {
				p("\n**Canopy answered wrong** (%s, %s): %s", wr.name, r.class, r.canopyErr)
			}
			if r.cteEr != "" {
				p("\n**The CTE answered wrong** (%s, %s): %s", wr.name, r.class, r.cteEr)
			}
		}
	}
	p("")
	p("![read latency per depth](read.png)")
	p("")

	p("## Targets")
	p("")
	head, rule = "| target |", "|---|"
	for _, wr := range wls {
		head += fmt.Sprintf(" %[1]s: measured | %[1]s: met |", wr.name)
		rule += "---|---|"
	}
	p("%s", head)
	p("%s", rule)
	check := func(ok bool) string {
		if ok {
			return "yes"
		}
		return "**no**"
	}
	target := func(name string, cell func(wr *workloadReport) (string, bool)) {
		line := "| " + name + " |"
		for i := range wls {
			m, ok := cell(&wls[i])
			line += fmt.Sprintf(" %s | %s |", m, check(ok))
		}
		p("%s", line)
	}
	target("Canopy ingest ≥ 2× the ClickHouse-native design (its faster variant)", func(wr *workloadReport) (string, bool) {
		canopy, native := wr.best("Canopy"), wr.best("ClickHouse-native")
		return ratio(canopy.rate(), native.rate()), canopy.verdict.ok() && canopy.rate() >= 2*native.rate()
	})
	target("Canopy ingest ≥ 50× per-event PostgreSQL on 8 connections", func(wr *workloadReport) (string, bool) {
		canopy := wr.best("Canopy")
		pg8, _ := wr.find("PostgreSQL per-event upserts, 8")
		return ratio(canopy.rate(), pg8.rate()), canopy.verdict.ok() && canopy.rate() >= 50*pg8.rate()
	})
	target("Canopy's worst per-depth read p99 ≥ 100× below the CTE's worst", func(wr *workloadReport) (string, bool) {
		c, t := wr.worstP99()
		return fmt.Sprintf("%.1f ms vs %.1f ms: %s", c, t, ratio(t, c)), t >= 100*c
	})
	target("Canopy's worst per-depth read p99 ≤ 10 ms", func(wr *workloadReport) (string, bool) {
		c, _ := wr.worstP99()
		return fmt.Sprintf("%.1f ms", c), c <= 10
	})
	target("Every result exact", func(wr *workloadReport) (string, bool) { return exactSummary(wr), allExact(wr) })
	// Issue 13's targets, for Canopy's 1-worker runs: PostgreSQL claims
	// (the default) and partitioned deduplication.
	for _, run := range []string{"Canopy, 1 worker", "Canopy partitioned, 1 worker"} {
		target(run+": ≥ 1.5× the faster ClickHouse-native variant (uniform), ≥ 3× (skewed)", func(wr *workloadReport) (string, bool) {
			canopy, _ := wr.find(run)
			native := wr.best("ClickHouse-native")
			want := 1.5
			if wr.zipfS > 0 {
				want = 3
			}
			return ratio(canopy.rate(), native.rate()), canopy.verdict.ok() && canopy.rate() >= want*native.rate()
		})
		target(run+": PostgreSQL rows inserted per event ≤ 0.001", func(wr *workloadReport) (string, bool) {
			canopy, _ := wr.find(run)
			var rows int64
			for _, n := range canopy.pgInserts {
				rows += n
			}
			per := float64(rows) / float64(max(canopy.events, 1))
			return fmt.Sprintf("%.3g", per), canopy.pgInserts != nil && per <= 0.001
		})
		cpuTarget := func(proc string, limit float64) func(wr *workloadReport) (string, bool) {
			return func(wr *workloadReport) (string, bool) {
				canopy, _ := wr.find(run)
				s, ok := canopy.cpuPerMillion(proc)
				if !ok {
					return "not measured", false
				}
				return fmt.Sprintf("%.1f s", s), s <= limit
			}
		}
		target(run+": PostgreSQL CPU ≤ 1 s per 1M events", cpuTarget("postgres", 1))
		target(run+": PostgreSQL CPU of its own connections ≤ 1 s per 1M events (the server's background left out)", cpuTarget("postgres backends", 1))
		target(run+": worker CPU ≤ 5 s per 1M events", cpuTarget("worker", 5))
	}
	for i, times := range freshnessTimes {
		for _, d := range []struct {
			design string
			f      func(*workloadReport) freshness
		}{{"ingest.dedup=postgres", func(wr *workloadReport) freshness { return wr.fresh[i] }},
			{"partitioned, the default", func(wr *workloadReport) freshness { return wr.freshPart[i] }}} {
			target(fmt.Sprintf("Freshness p99 ≤ 2 s at half the 1-worker rate (%s, %s event times)", d.design, times), func(wr *workloadReport) (string, bool) {
				f := d.f(wr)
				return f.p99.Round(time.Millisecond).String(), f.p99 > 0 && f.p99 <= 2*time.Second
			})
		}
	}

	if err := os.WriteFile(filepath.Join(dir, "report.md"), []byte(w.String()), 0o644); err != nil { //nolint:gosec // a report
		return err
	}
	var ingestSeries []benchreport.Series
	for _, wr := range wls {
		s := benchreport.Series{Name: wr.name}
		for _, n := range names {
			s.Values = append(s.Values, rates[n][wr.name])
		}
		ingestSeries = append(ingestSeries, s)
	}
	short := make([]string, len(names))
	for i, n := range names {
		short[i] = shortName(n)
	}
	if err := benchreport.GroupedBarChart(filepath.Join(dir, "ingest.png"),
		"Ingest events/s per workload (CH: ClickHouse-native, PG: per-event PostgreSQL)",
		"events/s", short, ingestSeries, true); err != nil {
		return err
	}
	return benchreport.GroupedBarChart(filepath.Join(dir, "read.png"), "Entity overview p99 latency by depth (30 days), per workload",
		"ms", groups, append(canopySeries, cteSeries...), true)
}

func mapWorkloads(wls []workloadReport, f func(workloadReport) string) []string {
	out := make([]string, len(wls))
	for i, wr := range wls {
		out[i] = f(wr)
	}
	return out
}

func ratio(a, b float64) string {
	if b <= 0 {
		return "–"
	}
	return fmt.Sprintf("×%.1f", a/b)
}

func shortName(s string) string {
	r := strings.NewReplacer("Canopy partitioned, 1 worker", "Canopy part. ×1", "Canopy, 1 worker", "Canopy ×1", "Canopy, 2 workers", "Canopy ×2",
		"ClickHouse-native, ancestors in message", "CH msg", "ClickHouse-native, hierarchical dictionary", "CH dict",
		"PostgreSQL per-event upserts, 1 connection", "PG ×1", "PostgreSQL per-event upserts, 8 connections", "PG ×8")
	return r.Replace(s)
}

func allExact(wr *workloadReport) bool {
	for _, r := range wr.ingest {
		if !r.verdict.ok() {
			return false
		}
	}
	for _, r := range wr.reads {
		if r.canopyOK != r.entities || r.cteOK != r.entities {
			return false
		}
	}
	return true
}

func exactSummary(wr *workloadReport) string {
	n, wrong := 0, 0
	for _, r := range wr.ingest {
		n++
		if !r.verdict.ok() {
			wrong++
		}
	}
	answers, bad := 0, 0
	for _, r := range wr.reads {
		answers += 2 * r.entities
		bad += 2*r.entities - r.canopyOK - r.cteOK
	}
	return fmt.Sprintf("%d of %d ingest results and %d of %d read answers exact", n-wrong, n, answers-bad, answers)
}
