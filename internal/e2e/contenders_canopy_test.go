package e2e

import (
	"cmp"
	"context"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/canopyhq/canopy/ingest"
	"github.com/canopyhq/canopy/internal/synth"
)

// ingestResult is one contender's ingest run.
type ingestResult struct {
	name         string
	events       int
	elapsed      time.Duration
	cpu          map[string]time.Duration // by process: worker, driver, kafka, clickhouse, postgres (and "postgres backends": its own connections)
	rowsPerEvent float64                  // rollup rows written per event
	peakRSS      int64                    // bytes, the largest worker's
	heapPerEnt   int                      // worker heap bytes per entity after loading the hierarchy
	verdict      verdict
	how          string           // one line on what was measured
	pgInserts    map[string]int64 // Canopy: rows inserted into each PostgreSQL table of the canopy schema
}

func (r ingestResult) rate() float64 { return float64(r.events) / r.elapsed.Seconds() }

// cpuPerMillion is a process's CPU seconds per million events.
func (r ingestResult) cpuPerMillion(proc string) (float64, bool) {
	return perMillion(r.cpu, r.events, proc)
}

// perMillion is proc's CPU seconds in cpu per million of events.
func perMillion(cpu map[string]time.Duration, events int, proc string) (float64, bool) {
	d, ok := cpu[proc]
	if !ok || events == 0 {
		return 0, false
	}
	return d.Seconds() / (float64(events) / 1e6), true
}

// waitReady waits until a worker's /readyz answers 200: it has joined the
// group and loaded the hierarchy.
func waitReady(t testing.TB, addr string) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for time.Now().Before(deadline) {
		resp, err := http.Get("http://" + addr + "/readyz") //nolint:noctx // a probe
		if err == nil {
			_ = resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("worker at %s not ready after 2m", addr)
}

// runCanopy runs the Canopy contender in a fresh environment: the hierarchy
// imported with `canopy gen`, `workers` workers started and ready, then the
// clock starts, every event is produced to Kafka and the clock stops when
// ingest_acks covers them all (an ack is written after the batch's rows).
// The environment is returned for later stages.
func (bd *benchData) runCanopy(b *testing.B, workers int, partitioned bool) (ingestResult, *env) {
	e := newEnv(b, bd.partitions)
	name, how := fmt.Sprintf("Canopy, %d worker%s", workers, map[bool]string{true: "s"}[workers > 1]),
		"produce to Kafka → worker(s) → ClickHouse rows and acks visible; exactly-once ledger on, event ids claimed in PostgreSQL (ingest.dedup=postgres)"
	if !partitioned {
		e.postgres()
	} else {
		e.partitioned()
		name = fmt.Sprintf("Canopy partitioned, %d worker%s", workers, map[bool]string{true: "s"}[workers > 1])
		how = "as Canopy, with ingest.dedup=partitioned (the default since issue 13): routed to the by-id topic, ids claimed in local state"
	}
	how += "; ClickHouse tables " + e.engine
	// Workers are ready once they follow the hierarchy's change topic to its
	// end; the hierarchy stays still here, so the topic stays empty.
	hierarchyTopic := e.name + ".hierarchy"
	if _, err := e.admin.CreateTopic(context.Background(), 1, 1, nil, hierarchyTopic); err != nil {
		b.Fatal(err)
	}
	e.vars = append(e.vars, "CANOPY_KAFKA_HIERARCHY_TOPIC="+hierarchyTopic)
	t0 := time.Now()
	e.run("gen", "--entities", strconv.Itoa(bd.n), "--seed", "1")
	b.Logf("canopy, %d workers: hierarchy of %d imported in %s", workers, bd.n, time.Since(t0).Round(time.Second))
	ws, addrs := e.startWorkers(workers)
	for _, a := range addrs {
		waitReady(b, a)
	}
	ctx := context.Background()
	// The import's after-effects (the restater writing the million new
	// entities to ClickHouse's entities table, autovacuum and analyze of
	// the new rows, the checkpoint) are not ingest work: settle them before
	// the clock.
	e.waitRestated(10 * time.Minute)
	if _, err := e.pg.Exec(ctx, "VACUUM ANALYZE"); err != nil {
		b.Fatal(err)
	}
	if _, err := e.pg.Exec(ctx, "CHECKPOINT"); err != nil {
		b.Logf("checkpoint: %v", err)
	}
	pgBefore := e.pgInserts(b)
	cpu := startCPUIn(e.name) // also the workers' PostgreSQL backends apart
	// The workers' CPU counts from here too: loading the hierarchy and the
	// restater's import are not ingest work.
	var workersBefore time.Duration
	for _, w := range ws {
		workersBefore += procCPU(w.cmd.Process.Pid, false)
	}
	start := time.Now()
	if err := produceAll(ctx, e.kafka, e.topic, bd.gen, synth.Event.JSON, nil); err != nil {
		b.Fatal(err)
	}
	b.Logf("canopy, %d workers: %d events produced after %s", workers, bd.gen.Count, time.Since(start).Round(time.Second))
	e.waitAcked(uint64(bd.gen.Count), 3*time.Hour)
	elapsed := time.Since(start)
	used := cpu.stop()

	var rows, accepted float64
	for _, a := range addrs {
		m := scrape(b, a)
		rows += m[`canopy_rows_written_total{table="rollup_hourly"}`] + m[`canopy_rows_written_total{table="rollup_daily"}`]
		accepted += m[`canopy_records_total{outcome="accepted"}`]
	}
	r := ingestResult{
		name:   name,
		events: bd.gen.Count, elapsed: elapsed, cpu: used, rowsPerEvent: rows / accepted,
		heapPerEnt: logInt(b, ws[0].log, `heap_bytes_per_entity=(\d+)`),
		how:        how,
	}
	for _, w := range ws {
		w.stop(b)
		c, rss := workerUsage(w)
		r.cpu["worker"] += c
		r.peakRSS = max(r.peakRSS, rss)
	}
	r.cpu["worker"] -= workersBefore
	// After the workers exit, so their backends have flushed their counters.
	r.pgInserts = insertsSince(pgBefore, e.pgInserts(b))
	delete(r.cpu, "driver") // the producer; not part of Canopy
	return r, e
}

// dedupEngine returns the engine that `canopy migrate` chose for e's
// rollup_daily, and fails b unless it deduplicates blocks: without
// ZooKeeper (or Keeper, or non_replicated_deduplication_window) migrate
// falls back to plain engines, which are cheaper to insert into but not
// exactly-once, so figures measured on them would not be Canopy's. Every
// benchmark's env checks it (newEnv).
func dedupEngine(b *testing.B, e *env) string {
	var engine, create string
	err := e.ch.QueryRow(context.Background(),
		"SELECT engine, create_table_query FROM system.tables WHERE database = ? AND name = 'rollup_daily'", e.chDB).Scan(&engine, &create)
	if err != nil {
		b.Fatalf("engine of %s.rollup_daily: %v", e.chDB, err)
	}
	switch {
	case strings.HasPrefix(engine, "Replicated"):
		return engine + " (block hashes in ZooKeeper)"
	case strings.Contains(create, "non_replicated_deduplication_window"):
		return engine + " with non_replicated_deduplication_window"
	}
	b.Fatalf("%s.rollup_daily is a plain %s: canopy migrate found no ZooKeeper or Keeper, so Canopy's tables "+
		"do not deduplicate blocks and a measurement would not be of Canopy's exactly-once configuration; "+
		"start it (scripts/services start zookeeper) and run again", e.chDB, engine)
	return ""
}

// eventTimes says what occurred_at the freshness events carry.
type eventTimes string

const (
	// liveTimes: the moment each event is produced, as a live producer
	// sends them; the head's load, which freshness is about.
	liveTimes eventTimes = "live"
	// datasetTimes: the data set's own, spread over its 30 days (and so
	// over two months, most runs): every batch then writes a part per
	// month per table and sums almost nothing across events — a replay of
	// history arriving at the rate of the head, not the head.
	datasetTimes eventTimes = "dataset"
)

// freshnessTimes is the order of the report's two freshness windows, as
// freshnessPair measures them and the report reads them.
var freshnessTimes = [2]eventTimes{liveTimes, datasetTimes}

// parseEventTimes reads CANOPY_BENCH_FRESHNESS_TIMES's value ("" is live).
func parseEventTimes(s string) (eventTimes, error) {
	switch t := eventTimes(s); t {
	case "", liveTimes:
		return liveTimes, nil
	case datasetTimes:
		return t, nil
	}
	return "", fmt.Errorf("%q is neither %s nor %s", s, liveTimes, datasetTimes)
}

// freshness is the delay from produce to visible at a steady rate.
type freshness struct {
	times    eventTimes
	rate     float64
	events   int
	p50, p99 time.Duration
	poll     time.Duration
	// cpu is each process's CPU time from the first event produced to the
	// last acknowledged (worker, driver, kafka, clickhouse, …, as in
	// ingestResult): what the steady head costs, against the ingest's
	// cost of a backlog.
	cpu map[string]time.Duration
}

// cpuPerMillion is a process's CPU seconds per million of the events
// produced at the steady rate.
func (f freshness) cpuPerMillion(proc string) (float64, bool) {
	return perMillion(f.cpu, f.events, proc)
}

// cpuLine is the CPU seconds in cpu per million of events of each process
// in procs, "·" apart, "–" for any not measured.
func cpuLine(cpu map[string]time.Duration, events int, procs ...string) string {
	parts := make([]string, len(procs))
	for i, proc := range procs {
		parts[i] = "–"
		if c, ok := perMillion(cpu, events, proc); ok {
			parts[i] = fmt.Sprintf("%.1f", c)
		}
	}
	return strings.Join(parts, " · ")
}

// freshnessPair measures freshness on e at rate twice, live event times
// first, then the data set's, and logs both under design.
func (bd *benchData) freshnessPair(b *testing.B, e *env, rate float64, seconds int, design string, logf func(string, ...any)) [2]freshness {
	var out [2]freshness
	for i, times := range freshnessTimes {
		out[i] = bd.runFreshness(b, e, rate, seconds, times)
		logf("freshness, %s, %s event times, at %.0f events/s: p50 %s p99 %s", design, times, out[i].rate, out[i].p50, out[i].p99)
	}
	return out
}

// runFreshness produces `seconds` worth of new events at `rate` per second
// to e's topic with one worker running, and measures each event's delay from
// its Produce call to the first poll of ingest_acks that covers its offset.
// The events are the data set generator's (entities, types, measures as the
// workload draws them), with occurred_at as times says.
func (bd *benchData) runFreshness(b *testing.B, e *env, rate float64, seconds int, times eventTimes) freshness {
	addr := freeAddr(b)
	e.vars = append(e.vars, "CANOPY_HTTP_ADDR="+addr)
	w := e.startWorker(9)
	waitReady(b, addr)
	defer w.stop(b)
	ctx := context.Background()
	// Warm up: a first batch per partition, which under partitioned
	// deduplication also rebuilds the new worker's event-id state (measured
	// on its own by measureRestore), so the figures are of the steady state.
	warm, err := e.ackedRecords(ctx)
	if err != nil {
		b.Fatal(err)
	}
	const probes = 64 // spread over every partition by their keys' hashes
	keys, values := make([][]byte, probes), make([][]byte, probes)
	for i := range probes {
		keys[i] = []byte(strconv.Itoa(i))
		values[i] = synth.Event{ID: fmt.Sprintf("fresh-probe-%s-%d", times, i), EntityID: 1, OccurredAt: time.Now().UTC(), Type: "probe", Amount: 1}.JSON()
	}
	e.produce(keys, values)
	e.waitAcked(warm+probes, 10*time.Minute)
	before, err := e.ackedRecords(ctx)
	if err != nil {
		b.Fatal(err)
	}
	const poll = 100 * time.Millisecond
	type seen struct {
		at   time.Time
		ends map[int32]int64
	}
	var (
		mu   sync.Mutex
		obs  []seen
		stop = make(chan struct{})
		done = make(chan struct{})
	)
	go func() {
		defer close(done)
		tick := time.NewTicker(poll)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			rows, err := e.ch.Query(ctx, fmt.Sprintf(
				"SELECT partition, max(last_offset) + 1 FROM %s.ingest_acks WHERE topic = ? GROUP BY partition", e.chDB), cmp.Or(e.ackTopic, e.topic))
			if err != nil {
				continue
			}
			s := seen{at: time.Now(), ends: map[int32]int64{}}
			for rows.Next() {
				var p int32
				var end int64
				if rows.Scan(&p, &end) == nil {
					s.ends[p] = end
				}
			}
			_ = rows.Close()
			mu.Lock()
			obs = append(obs, s)
			mu.Unlock()
		}
	}()

	var byidFrom map[int32]int64 // under partitioned deduplication: where this run's routed records start
	if e.ackTopic != "" {
		byidFrom = e.endOffsets(e.ackTopic)
	}
	g := bd.gen
	// Each kind of window its own ids (seed), so a second window on the
	// same environment is new events, not duplicates of the first.
	g.Seed, g.Count = 3, int(rate*float64(seconds))
	if times == liveTimes {
		g.Seed = 4
	}
	type sentRec struct {
		partition int32
		offset    int64
		at        time.Time
	}
	sent := make([]sentRec, 0, g.Count)
	cpu, workerBefore := startCPU(), procCPU(w.cmd.Process.Pid, false)
	start := time.Now()
	err = g.Each(func(i int, ev synth.Event) error {
		due := start.Add(time.Duration(float64(i) / rate * float64(time.Second)))
		if d := time.Until(due); d > 0 {
			time.Sleep(d)
		}
		at := time.Now()
		if times == liveTimes {
			ev.OccurredAt = at.UTC()
		}
		e.kafka.Produce(ctx, &kgo.Record{Topic: e.topic, Key: strconv.AppendInt(nil, ev.EntityID, 10), Value: ev.JSON()},
			func(r *kgo.Record, err error) {
				if err == nil {
					mu.Lock()
					sent = append(sent, sentRec{r.Partition, r.Offset, at})
					mu.Unlock()
				}
			})
		return nil
	})
	if err == nil {
		err = e.kafka.Flush(ctx)
	}
	if err != nil {
		b.Fatal(err)
	}
	e.waitAcked(before+uint64(g.Count), 10*time.Minute)
	used := cpu.stop()
	used["worker"] = procCPU(w.cmd.Process.Pid, false) - workerBefore
	time.Sleep(2 * poll)
	close(stop)
	<-done
	if len(sent) != g.Count {
		b.Fatalf("freshness: %d of %d records acknowledged by Kafka", len(sent), g.Count)
	}
	if byidFrom != nil {
		// Batches are ranges of the by-id topic: find each record's copy
		// there by the source headers the router added.
		at := e.routedCopies(b, e.ackTopic, byidFrom)
		for i, s := range sent {
			c, ok := at[[2]int64{int64(s.partition), s.offset}]
			if !ok {
				b.Fatalf("freshness: events record %d/%d not found in %s", s.partition, s.offset, e.ackTopic)
			}
			sent[i].partition, sent[i].offset = int32(c[0]), c[1]
		}
	}
	var lat []float64
	for _, s := range sent {
		// The first poll that covers the offset: acks only grow.
		i, _ := slices.BinarySearchFunc(obs, s, func(o seen, s sentRec) int {
			if o.ends[s.partition] > s.offset {
				return 1
			}
			return -1
		})
		if i == len(obs) {
			b.Fatalf("freshness: offset %d of partition %d never seen acknowledged", s.offset, s.partition)
		}
		lat = append(lat, obs[i].at.Sub(s.at).Seconds())
	}
	slices.Sort(lat)
	q := func(p float64) time.Duration {
		return time.Duration(lat[min(len(lat)-1, int(p*float64(len(lat))))] * float64(time.Second))
	}
	return freshness{times: times, rate: rate, events: g.Count, p50: q(0.50), p99: q(0.99), poll: poll, cpu: used}
}

// routedCopies reads topic (the by-id topic) from the offsets from to its
// end and maps each record's source partition and offset, from the headers
// the router added, to its own.
func (e *env) routedCopies(b *testing.B, topic string, from map[int32]int64) map[[2]int64][2]int64 {
	offs := map[string]map[int32]kgo.Offset{topic: {}}
	for p, o := range from {
		offs[topic][p] = kgo.NewOffset().At(o)
	}
	ends := e.endOffsets(topic)
	cl, err := kgo.NewClient(kgo.SeedBrokers(e.svc.brokers...), kgo.ConsumePartitions(offs))
	if err != nil {
		b.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out := map[[2]int64][2]int64{}
	want := 0
	for p, end := range ends {
		want += int(end - from[p])
	}
	for n := 0; n < want; {
		fs := cl.PollFetches(ctx)
		if ctx.Err() != nil {
			b.Fatalf("read %s: %d of %d records", topic, n, want)
		}
		fs.EachRecord(func(r *kgo.Record) {
			n++
			var sp, so int64 = -1, -1
			if o := ingest.DecodeOrigin(r.Headers); o.Known {
				sp, so = int64(o.Source.Partition), o.Source.First
			}
			if _, seen := out[[2]int64{sp, so}]; !seen { // a router's second copy is acked later
				out[[2]int64{sp, so}] = [2]int64{int64(r.Partition), r.Offset}
			}
		})
	}
	return out
}
