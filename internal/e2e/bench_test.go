package e2e

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// BenchmarkPipeline measures the worker end to end on real services: events
// are produced to Kafka first, then workers drain them into ClickHouse; the
// time from the workers' start to the last ack gives events/s. It reports
// rollup rows written per event (after in-batch aggregation) and the worker's
// heap bytes per entity after loading the hierarchy.
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
		addrs := make([]string, workers)
		ws := make([]*worker, workers)
		for w := range ws {
			addrs[w] = freeAddr(b)
			e.vars = append(e.vars, "CANOPY_HTTP_ADDR="+addrs[w])
			ws[w] = e.startWorker(w)
		}
		e.waitAcked(uint64(events), 2*time.Hour)
		elapsed := time.Since(start)
		b.StopTimer()

		var rows, accepted float64
		for _, a := range addrs {
			m := scrape(b, a)
			rows += m[`canopy_rows_written_total{table="rollup_hourly"}`] + m[`canopy_rows_written_total{table="rollup_daily"}`]
			accepted += m[`canopy_records_total{outcome="accepted"}`]
		}
		perEntity := logInt(b, ws[0].log, `heap_bytes_per_entity=(\d+)`)
		for _, w := range ws {
			w.stop(b)
		}
		b.ReportMetric(float64(events)/elapsed.Seconds(), "events/s")
		b.ReportMetric(rows/accepted, "rollup-rows/event")
		b.ReportMetric(float64(perEntity), "worker-heap-B/entity")
		b.Logf("%d workers drained %d events in %s: %.0f events/s, %.2f rollup rows per event (hourly+daily), %d heap bytes per entity",
			workers, events, elapsed.Round(time.Millisecond), float64(events)/elapsed.Seconds(), rows/accepted, perEntity)
	}
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
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/metrics", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("scrape %s: %v", addr, err)
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
	return out
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
// its embedded broker, to completion and checks that every event it
// produced is in the events table and, once, at depth 0 of the rollups.
func TestDevModeCountsEverything(t *testing.T) {
	e := newEnv(t, 1)
	const n = 5000
	out := e.run("dev", "--data-dir", t.TempDir(), "--entities", "500", "--events", strconv.Itoa(n), "--rate", "0", "--exit-when-done")
	if !strings.Contains(out, "all events counted") {
		t.Fatalf("dev did not finish:\n%s", out)
	}
	var stored, own uint64
	if err := e.ch.QueryRow(context.Background(), fmt.Sprintf("SELECT count() FROM %s.events", e.chDB)).Scan(&stored); err != nil {
		t.Fatal(err)
	}
	if err := e.ch.QueryRow(context.Background(), fmt.Sprintf("SELECT sum(events) FROM %s.rollup_daily WHERE depth = 0", e.chDB)).Scan(&own); err != nil {
		t.Fatal(err)
	}
	if stored != n || own != n {
		t.Fatalf("events table has %d, depth-0 rollups count %d; produced %d", stored, own, n)
	}
}
