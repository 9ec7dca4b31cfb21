package e2e

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/canopyhq/canopy/internal/synth"
)

// BenchmarkPipeline measures the worker end to end on real services: events
// are produced to Kafka first, then workers drain them into ClickHouse; the
// time from the workers' start to the last ack gives events/s. It reports
// rollup rows written per event (after in-batch aggregation), the workers'
// CPU time per million events (their start, hierarchy load included), the
// servers' CPU time per million events from the workers' start to the last
// ack, and the worker's heap bytes per entity after loading the hierarchy.
//
// Sizes: CANOPY_BENCH_ENTITIES (default 1,000,000), CANOPY_BENCH_EVENTS
// (default 5,000,000), CANOPY_BENCH_WORKERS (default 1). Run it with
// scripts/bench.
func BenchmarkPipeline(b *testing.B) {
	entities := envInt(b, "CANOPY_BENCH_ENTITIES", 1_000_000)
	events := envInt(b, "CANOPY_BENCH_EVENTS", 5_000_000)
	workers := envInt(b, "CANOPY_BENCH_WORKERS", 1)
	for i := 0; i < b.N; i++ {
		e := newEnv(b, 4)
		t0 := time.Now()
		e.run("gen", "--entities", strconv.Itoa(entities), "--seed", "1")
		b.Logf("hierarchy of %d entities imported in %s", entities, time.Since(t0).Round(time.Millisecond))
		t0 = time.Now()
		e.run("gen", "--events", strconv.Itoa(events), "--seed", "2", "--days", "30")
		b.Logf("%d events produced in %s", events, time.Since(t0).Round(time.Millisecond))

		b.ResetTimer()
		start := time.Now()
		servers := startCPU()
		ws, addrs := e.startWorkers(workers)
		e.waitAcked(uint64(events), 2*time.Hour)
		elapsed := time.Since(start)
		serverCPU := servers.stop()
		b.StopTimer()

		var rows, accepted float64
		for _, a := range addrs {
			m := scrape(b, a)
			rows += m[`canopy_rows_written_total{table="rollup_hourly"}`] + m[`canopy_rows_written_total{table="rollup_daily"}`]
			accepted += m[`canopy_records_total{outcome="accepted"}`]
		}
		perEntity := logInt(b, ws[0].log, `heap_bytes_per_entity=(\d+)`)
		var cpu time.Duration
		for _, w := range ws {
			w.stop(b)
			c, _ := workerUsage(w)
			cpu += c
		}
		b.ReportMetric(float64(events)/elapsed.Seconds(), "events/s")
		b.ReportMetric(cpu.Seconds()/float64(events)*1e6, "worker-cpu-s/1M-events")
		b.ReportMetric(rows/accepted, "rollup-rows/event")
		b.ReportMetric(float64(perEntity), "worker-heap-B/entity")
		for _, name := range []string{"clickhouse", "kafka", "postgres"} {
			if d, ok := serverCPU[name]; ok {
				b.ReportMetric(d.Seconds()/float64(events)*1e6, name+"-cpu-s/1M-events")
			}
		}
		b.Logf("%d workers drained %d events in %s: %.0f events/s, %.2f rollup rows per event (hourly+daily), %d heap bytes per entity",
			workers, events, elapsed.Round(time.Millisecond), float64(events)/elapsed.Seconds(), rows/accepted, perEntity)
	}
}

// startWorkers starts n workers, each serving HTTP on its own free address.
func (e *env) startWorkers(n int) ([]*worker, []string) {
	ws, addrs := make([]*worker, n), make([]string, n)
	for i := range ws {
		addrs[i] = freeAddr(e.t)
		e.vars = append(e.vars, "CANOPY_HTTP_ADDR="+addrs[i])
		ws[i] = e.startWorker(i)
	}
	return ws, addrs
}

func envInt(t testing.TB, name string, def int) int {
	s := os.Getenv(name)
	if s == "" {
		return def
	}
	v, err := strconv.Atoi(s)
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return v
}

func freeAddr(t testing.TB) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = ln.Close() }()
	return ln.Addr().String()
}

// scrape reads the plain counters and gauges of a worker's /metrics.
func scrape(t testing.TB, addr string) map[string]float64 {
	m, err := scrapeErr(addr)
	if err != nil {
		t.Fatalf("scrape %s: %v", addr, err)
	}
	return m
}

func scrapeErr(addr string) (map[string]float64, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/metrics", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer func() { _ = resp.Body.Close() }()
	body, _ := io.ReadAll(resp.Body)
	out := map[string]float64{}
	for _, line := range strings.Split(string(body), "\n") {
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if v, err := strconv.ParseFloat(line[i+1:], 64); err == nil {
			out[line[:i]] = v
		}
	}
	return out, nil
}

func logInt(t testing.TB, path, pattern string) int {
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(pattern).FindSubmatch(b)
	if m == nil {
		t.Fatalf("%s: no %s", path, pattern)
	}
	v, _ := strconv.Atoi(string(m[1]))
	return v
}

// TestDevModeCountsEverything runs the README's demo command, canopy dev on
// its embedded broker, with small sizes (and 5% repeated event ids) as a
// subprocess: it must end by itself with exit 0, print progress lines only
// when something changed, and its summary must equal what ClickHouse holds,
// counted here with the test's own SQL, and what the generated data implies
// (distinct event ids rebuilt from the same seed with internal/synth).
func TestDevModeCountsEverything(t *testing.T) {
	e := newEnv(t, 1)
	const n, entities, seed, dupes = 5000, 500, 42, 0.05
	start := time.Now()
	out := e.run("dev", "--data-dir", t.TempDir(), "--entities", strconv.Itoa(entities), "--events", strconv.Itoa(n),
		"--rate", "0", "--duplicates", strconv.FormatFloat(dupes, 'f', -1, 64), "--seed", strconv.Itoa(seed), "--timeout", "4m")
	t.Logf("canopy dev exited 0 by itself after %s", time.Since(start).Round(time.Millisecond))
	if !strings.Contains(out, "\ndone in ") || !strings.Contains(out, "What to try next") {
		t.Fatalf("no summary:\n%s", out)
	}
	// The summary's numbers, "  name    N".
	got := map[string]uint64{}
	for _, m := range regexp.MustCompile(`(?m)^  (\S+(?: letters)?) +(\d+)`).FindAllStringSubmatch(out, -1) {
		v, _ := strconv.ParseUint(m[2], 10, 64)
		got[m[1]] = v
	}
	ids := map[string]bool{}
	gen := synth.Events{Seed: seed, Count: n, Entities: entities, Span: 24 * time.Hour, Duplicates: dupes}
	_ = gen.Each(func(_ int, ev synth.Event) error { ids[ev.ID] = true; return nil })
	ctx := context.Background()
	count := func(sql string) uint64 {
		t.Helper()
		var v uint64
		if err := e.ch.QueryRow(ctx, fmt.Sprintf(sql, e.chDB)).Scan(&v); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
		return v
	}
	want := map[string]uint64{
		"produced":     n,
		"accepted":     uint64(len(ids)),
		"duplicates":   uint64(n - len(ids)),
		"dead letters": 0,
		"events":       count("SELECT count() FROM %s.events"),
		// No moves: no rollup row sums to zero, each key is one row once merged.
		"rollup_hourly":        count("SELECT uniqExact(entity_id, bucket, depth, type) FROM %s.rollup_hourly"),
		"rollup_daily":         count("SELECT uniqExact(entity_id, bucket, depth, type) FROM %s.rollup_daily"),
		"rollup_daily_current": count("SELECT uniqExact(entity_id, bucket, depth, type) FROM %s.rollup_daily_current"),
		"entities":             count("SELECT uniqExact(id) FROM %s.entities"),
		"ingest_acks":          count("SELECT uniqExact(topic, partition, first_offset) FROM %s.ingest_acks"),
		"ingest_failures":      count("SELECT uniqExact(source_topic, source_partition, source_offset) FROM %s.ingest_failures"),
	}
	for k, v := range want {
		if g, ok := got[k]; !ok || g != v {
			t.Errorf("summary %q = %d (printed: %v), want %d", k, g, ok, v)
		}
	}
	if want["events"] != uint64(len(ids)) || want["entities"] != entities {
		t.Errorf("ClickHouse holds %d events and %d entities; want %d distinct events over %d entities", want["events"], want["entities"], len(ids), entities)
	}
	if own := count("SELECT toUInt64(sum(events)) FROM %s.rollup_daily WHERE depth = 0"); own != uint64(len(ids)) {
		t.Errorf("depth-0 rollups count %d events, want %d", own, len(ids))
	}
	// Progress lines only when something changed: no two in a row alike
	// once their time and rate are cut off.
	progress := regexp.MustCompile(`(?m)^\d\d:\d\d:\d\d  (produced .*)  \(\d+ accepted/s\)$`).FindAllStringSubmatch(out, -1)
	for i := 1; i < len(progress); i++ {
		if progress[i][1] == progress[i-1][1] {
			t.Errorf("progress line repeated unchanged: %q", progress[i][1])
		}
	}
	for _, want := range []string{" show ", " hierarchy move ", "clickhouse-client --host ", "psql "} {
		if !strings.Contains(out, want) {
			t.Errorf("next steps lack %q:\n%s", want, out)
		}
	}
	// Bad sizes are usage errors naming the flag.
	for _, bad := range [][]string{{"--duplicates", "1.5"}, {"--events", "-1"}, {"--entities", "0"}, {"--rate", "-3"}} {
		msg, err := e.runErr(append([]string{"dev", "--data-dir", t.TempDir()}, bad...)...)
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 2 || !strings.Contains(msg, bad[0]) {
			t.Errorf("dev %s: %v, want exit 2 naming the flag:\n%s", strings.Join(bad, " "), err, msg)
		}
	}
}

// BenchmarkHierarchyPropagation commits 300 hierarchy changes, 10 ms apart,
// while a relay and two workers run, and reports the p50 and p99 delay from
// a change's commit to its use by a worker (the workers' histogram of
// canopy_hierarchy_propagation_seconds, merged; bucket upper bounds).
func BenchmarkHierarchyPropagation(b *testing.B) {
	for i := 0; i < b.N; i++ {
		e := newEnv(b, 1)
		e.vars = append(e.vars, "CANOPY_KAFKA_HIERARCHY_TOPIC="+e.name+".hierarchy")
		csv := filepath.Join(b.TempDir(), "h.csv")
		rows := []byte("id,parent_id,status,name\n1,,active,root\n")
		for id := 2; id <= 1000; id++ {
			rows = fmt.Appendf(rows, "%d,%d,active,e%d\n", id, 1+(id-2)/10, id)
		}
		if err := os.WriteFile(csv, rows, 0o600); err != nil {
			b.Fatal(err)
		}
		e.run("hierarchy", "import", csv)
		e.startRelay(0)
		e.waitRelayed(e.name+".hierarchy", e.maxOutboxSeq())
		addrs := []string{freeAddr(b), freeAddr(b)}
		for w, a := range addrs {
			e.vars = append(e.vars, "CANOPY_HTTP_ADDR="+a)
			e.startWorker(w)
			waitHTTP(b, a)
		}
		b.ResetTimer()
		ctx := context.Background()
		for c := 0; c < 300; c++ {
			if _, err := e.pg.Exec(ctx, `update canopy.entities
				set status = case status when 'active' then 'suspended' else 'active' end where id = $1`, 2+c%999); err != nil {
				b.Fatal(err)
			}
			time.Sleep(10 * time.Millisecond)
		}
		time.Sleep(3 * time.Second)
		b.StopTimer()
		buckets := map[float64]float64{}
		var count float64
		for _, a := range addrs {
			for k, v := range scrape(b, a) {
				if le, ok := strings.CutPrefix(k, `canopy_hierarchy_propagation_seconds_bucket{le="`); ok {
					bound, _ := strconv.ParseFloat(strings.TrimSuffix(le, `"}`), 64)
					buckets[bound] += v
				}
				if k == "canopy_hierarchy_propagation_seconds_count" {
					count += v
				}
			}
		}
		p50, p99 := quantile(buckets, count, 0.5), quantile(buckets, count, 0.99)
		b.ReportMetric(p50*1000, "p50-ms")
		b.ReportMetric(p99*1000, "p99-ms")
		b.Logf("%0.f changes applied via the topic by 2 workers (of 600); propagation p50 <= %.0f ms, p99 <= %.0f ms", count, p50*1000, p99*1000)
	}
}

// quantile returns the smallest bucket bound holding q of count.
func quantile(cumulative map[float64]float64, count, q float64) float64 {
	bounds := make([]float64, 0, len(cumulative))
	for b := range cumulative {
		bounds = append(bounds, b)
	}
	sort.Float64s(bounds)
	for _, b := range bounds {
		if cumulative[b] >= q*count {
			return b
		}
	}
	return math.Inf(1)
}

func waitHTTP(t testing.TB, addr string) {
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		if resp, err := http.Get("http://" + addr + "/healthz"); err == nil { //nolint:noctx // a probe
			_ = resp.Body.Close()
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("worker at %s did not answer", addr)
}

// BenchmarkRestateMove measures what a move costs the restater on real
// services: after a worker has drained the events of a large hierarchy, a
// subtree holding about 1% and then about 10% of the entities is moved under
// another root with one UPDATE, and the benchmark reports the time from the
// commit until the restater has applied it (as-is rows shifted, in-flight
// as-was events re-attributed, the subtree's entities rows rewritten) and the
// rows it wrote, by table.
//
// Sizes: CANOPY_BENCH_ENTITIES (default 1,000,000) and
// CANOPY_BENCH_RESTATE_EVENTS (default 1,000,000, over 30 days).
func BenchmarkRestateMove(b *testing.B) {
	entities := envInt(b, "CANOPY_BENCH_ENTITIES", 1_000_000)
	events := envInt(b, "CANOPY_BENCH_RESTATE_EVENTS", 1_000_000)
	for i := 0; i < b.N; i++ {
		e := newEnv(b, 4)
		e.run("gen", "--entities", strconv.Itoa(entities), "--seed", "1")
		e.run("gen", "--events", strconv.Itoa(events), "--seed", "2", "--days", "30")
		addr := freeAddr(b)
		e.vars = append(e.vars, "CANOPY_HTTP_ADDR="+addr)
		w := e.startWorker(0)
		e.waitAcked(uint64(events), time.Hour)
		e.waitRestated(30 * time.Minute)

		ctx := context.Background()
		parent := map[int64]int64{}
		rows, err := e.pg.Query(ctx, "select id, coalesce(parent_id, 0) from canopy.entities")
		if err != nil {
			b.Fatal(err)
		}
		for rows.Next() {
			var id, p int64
			if err := rows.Scan(&id, &p); err != nil {
				b.Fatal(err)
			}
			parent[id] = p
		}
		rows.Close()
		for _, frac := range []float64{0.01, 0.10} {
			size := subtreeSizes(parent)
			want := int(frac * float64(len(parent)))
			moved, best := int64(0), math.MaxInt
			for id, n := range size {
				if d := abs(n - want); parent[id] != 0 && d < best {
					moved, best = id, d
				}
			}
			root := moved
			for parent[root] != 0 {
				root = parent[root]
			}
			var target int64
			for id, p := range parent {
				if p == 0 && id != root {
					target = id
					break
				}
			}
			before := scrape(b, addr)
			t0 := time.Now()
			if _, err := e.pg.Exec(ctx, "update canopy.entities set parent_id = $1 where id = $2", target, moved); err != nil {
				b.Fatal(err)
			}
			e.waitRestated(30 * time.Minute)
			took := time.Since(t0)
			after := scrape(b, addr)
			parent[moved] = target
			delta := func(table string) float64 {
				k := `canopy_restate_rows_total{table="` + table + `"}`
				return after[k] - before[k]
			}
			label := fmt.Sprintf("%.0f%%", frac*100)
			b.ReportMetric(took.Seconds(), "restate-"+label+"-s")
			b.ReportMetric(delta("rollup_daily_current"), "restate-"+label+"-asis-rows")
			b.Logf("move of entity %d holding %d of %d entities (%s): restated in %s; rows written: rollup_daily_current %.0f, rollup_hourly %.0f, rollup_daily %.0f, entities %.0f",
				moved, size[moved], len(parent), label, took.Round(time.Millisecond),
				delta("rollup_daily_current"), delta("rollup_hourly"), delta("rollup_daily"), delta("entities"))
		}
		w.stop(b)
	}
}

// subtreeSizes counts every entity's subtree (itself included).
func subtreeSizes(parent map[int64]int64) map[int64]int {
	size := make(map[int64]int, len(parent))
	for id := range parent {
		for x, steps := id, 0; x != 0 && steps < 300; x, steps = parent[x], steps+1 {
			size[x]++
		}
	}
	return size
}

func abs(x int) int {
	if x < 0 {
		return -x
	}
	return x
}

// BenchmarkBackfillVsLive measures, in one run on one hierarchy, the live
// worker draining N events from Kafka (produced first) and canopy backfill
// loading N other events from an NDJSON file, and reports both rates and
// their ratio.
//
// Sizes: CANOPY_BENCH_ENTITIES (default 1,000,000),
// CANOPY_BENCH_BACKFILL_EVENTS (default 5,000,000),
// CANOPY_BENCH_BACKFILL_PARALLEL (default 3), CANOPY_BENCH_BACKFILL_BATCH
// (default 25000). Run it with scripts/bench.
func BenchmarkBackfillVsLive(b *testing.B) {
	entities := envInt(b, "CANOPY_BENCH_ENTITIES", 1_000_000)
	events := envInt(b, "CANOPY_BENCH_BACKFILL_EVENTS", 5_000_000)
	parallel := envInt(b, "CANOPY_BENCH_BACKFILL_PARALLEL", 3)
	batch := envInt(b, "CANOPY_BENCH_BACKFILL_BATCH", 25000)
	for i := 0; i < b.N; i++ {
		e := newEnv(b, 4)
		e.run("gen", "--entities", strconv.Itoa(entities), "--seed", "1")
		t0 := time.Now()
		e.run("gen", "--events", strconv.Itoa(events), "--seed", "2", "--days", "30")
		b.Logf("%d events produced to Kafka in %s", events, time.Since(t0).Round(time.Millisecond))
		file := filepath.Join(b.TempDir(), "history.ndjson")
		t0 = time.Now()
		e.run("gen", "--events", strconv.Itoa(events), "--seed", "3", "--days", "30", "--events-file", file)
		st, err := os.Stat(file)
		if err != nil {
			b.Fatal(err)
		}
		b.Logf("%d events written to %s (%d MiB) in %s", events, file, st.Size()>>20, time.Since(t0).Round(time.Millisecond))

		b.ResetTimer()
		start := time.Now()
		w := e.startWorker(0)
		e.waitAcked(uint64(events), 2*time.Hour)
		live := time.Since(start)
		w.stop(b)
		// Let ClickHouse finish merging the live run's parts first, so the
		// backfill does not pay for them.
		e.waitMerges(2 * time.Minute)

		start = time.Now()
		out := e.run("backfill", file, "--parallel", strconv.Itoa(parallel), "--batch", strconv.Itoa(batch))
		backfill := time.Since(start)
		b.StopTimer()
		if n, err := e.ackedRecordsOf(context.Background(), "file:%"); err != nil || n != uint64(events) {
			b.Fatalf("backfill acknowledged %d of %d records (%v)\n%s", n, events, err, out)
		}
		liveRate, fileRate := float64(events)/live.Seconds(), float64(events)/backfill.Seconds()
		b.ReportMetric(liveRate, "live-events/s")
		b.ReportMetric(fileRate, "backfill-events/s")
		b.ReportMetric(fileRate/liveRate, "backfill/live")
		b.Logf("%d events: live worker %s (%.0f events/s), backfill of an NDJSON file with --parallel %d --batch %d %s (%.0f events/s): backfill/live = %.2f",
			events, live.Round(time.Millisecond), liveRate, parallel, batch, backfill.Round(time.Millisecond), fileRate, fileRate/liveRate)
	}
}

// waitMerges waits (up to limit) until ClickHouse runs no merge in the
// test's database.
func (e *env) waitMerges(limit time.Duration) {
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		var n uint64
		if err := e.ch.QueryRow(context.Background(), "SELECT count() FROM system.merges WHERE database = ?", e.chDB).Scan(&n); err != nil || n == 0 {
			return
		}
		time.Sleep(time.Second)
	}
}

// BenchmarkOverviewPanels measures the latency of every query of the Entity
// overview dashboard, as Grafana sends it, on a large data set: per panel,
// p50 and p99 over entities drawn half from the top four levels (large
// downlines) and half at random (mostly small teams), for the last 30 days
// (daily) and the last 2 days (hourly), as-was and as-is.
//
// Sizes: CANOPY_BENCH_ENTITIES (default 1,000,000), CANOPY_BENCH_PANEL_EVENTS
// (default 20,000,000), CANOPY_BENCH_PANEL_SAMPLES (entities, default 200).
func BenchmarkOverviewPanels(b *testing.B) {
	entities := envInt(b, "CANOPY_BENCH_ENTITIES", 1_000_000)
	events := envInt(b, "CANOPY_BENCH_PANEL_EVENTS", 20_000_000)
	samples := envInt(b, "CANOPY_BENCH_PANEL_SAMPLES", 200)
	for i := 0; i < b.N; i++ {
		e := newEnv(b, 4)
		e.run("gen", "--entities", strconv.Itoa(entities), "--seed", "1")
		t0 := time.Now()
		e.run("gen", "--events", strconv.Itoa(events), "--seed", "2", "--days", "30")
		b.Logf("%d events produced in %s", events, time.Since(t0).Round(time.Second))
		w := e.startWorker(0)
		t0 = time.Now()
		e.waitAcked(uint64(events), 4*time.Hour)
		w.stop(b)
		b.Logf("ingested in %s", time.Since(t0).Round(time.Second))
		e.waitMerges(5 * time.Minute)

		ctx := context.Background()
		var ids []uint64
		for _, q := range []string{
			fmt.Sprintf("SELECT id FROM %s.entities FINAL WHERE level <= 3 ORDER BY cityHash64(id) LIMIT %d", e.chDB, samples/2),
			fmt.Sprintf("SELECT id FROM %s.entities FINAL ORDER BY cityHash64(id, 7) LIMIT %d", e.chDB, samples-samples/2),
		} {
			rows, err := e.ch.Query(ctx, q)
			if err != nil {
				b.Fatal(err)
			}
			for rows.Next() {
				var id uint64
				if err := rows.Scan(&id); err != nil {
					b.Fatal(err)
				}
				ids = append(ids, id)
			}
			rows.Close()
		}
		sqls, _ := loadDashboards(b)
		now := time.Now().UTC()
		ranges := map[string][2]time.Time{"30 days": {now.AddDate(0, 0, -30), now}, "2 days": {now.AddDate(0, 0, -2), now}}
		b.ResetTimer()
		var report []string
		for _, q := range sqls {
			if q.board != "canopy-entity-overview" || q.variable {
				continue
			}
			for _, rng := range []string{"30 days", "2 days"} {
				for _, view := range []string{"rollup_daily", "rollup_daily_current"} {
					var lat []time.Duration
					for _, id := range ids {
						vars := map[string]string{"entity": strconv.FormatUint(id, 10), "view": view}
						sql := expandGrafana(strings.ReplaceAll(q.sql, "canopy.", e.chDB+"."), vars, ranges[rng][0], ranges[rng][1], time.Minute)
						t0 := time.Now()
						if _, _, err := e.queryText(sql); err != nil {
							b.Fatalf("%s: %v", q.title, err)
						}
						lat = append(lat, time.Since(t0))
					}
					sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
					p50, p99 := lat[len(lat)/2], lat[min(len(lat)-1, len(lat)*99/100)]
					report = append(report, fmt.Sprintf("%-55s %-8s %-21s p50 %6.1f ms  p99 %6.1f ms",
						q.title, rng, view, ms(p50), ms(p99)))
				}
			}
		}
		b.StopTimer()
		b.Logf("Entity overview panel latency, %d entities, %d events, %d sampled entities:\n%s",
			entities, events, len(ids), strings.Join(report, "\n"))
	}
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
