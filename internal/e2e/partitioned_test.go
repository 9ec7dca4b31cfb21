package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"

	"github.com/canopyhq/canopy/internal/synth"
)

// postgres switches e's commands to ingest.dedup=postgres, where event ids
// are claimed in PostgreSQL and batches are ranges of the events topic.
func (e *env) postgres() {
	e.vars = append(e.vars, "CANOPY_INGEST_DEDUP=postgres")
	e.ackTopic = ""
}

// partitioned switches e's commands to ingest.dedup=partitioned (newEnv
// does) and returns the by-id topic.
func (e *env) partitioned() string {
	byid := e.name + ".byid"
	e.vars = append(e.vars, "CANOPY_INGEST_DEDUP=partitioned", "CANOPY_KAFKA_BYID_TOPIC="+byid)
	e.ackTopic = byid
	e.t.Cleanup(func() {
		if !e.t.Failed() {
			_, _ = e.admin.DeleteTopics(context.Background(), byid, e.name+".retry")
		}
	})
	return byid
}

// topicRecords is how many records topic holds (the sum of its end offsets).
func (e *env) topicRecords(topic string) uint64 {
	e.t.Helper()
	ends, err := e.admin.ListEndOffsets(context.Background(), topic)
	if err != nil {
		e.t.Fatalf("end offsets of %s: %v", topic, err)
	}
	var n uint64
	ends.Each(func(o kadm.ListedOffset) { n += uint64(max(o.Offset, 0)) })
	return n
}

// outcomes sums ingest_acks' accepted and duplicate counts for topic, one
// row per batch.
func (e *env) outcomes(topic string) (records, accepted, duplicates uint64) {
	e.t.Helper()
	err := e.ch.QueryRow(context.Background(), fmt.Sprintf(`SELECT sum(r), sum(a), sum(d) FROM (
		SELECT any(records) AS r, any(accepted) AS a, any(duplicates) AS d FROM %s.ingest_acks
		WHERE topic = ? GROUP BY partition, first_offset)`, e.chDB), topic).Scan(&records, &accepted, &duplicates)
	if err != nil {
		e.t.Fatal(err)
	}
	return records, accepted, duplicates
}

// settled waits until the routers have copied at least n records into the
// by-id topic and the workers have acknowledged every record it holds.
func (e *env) settled(byid string, n uint64, timeout time.Duration) {
	e.t.Helper()
	e.waitFor(fmt.Sprintf("%d records routed and acknowledged", n), timeout, func() bool {
		total := e.topicRecords(byid)
		acked, _, _ := e.outcomes(byid)
		return total >= n && acked == total && e.routedAndAcked(acked)
	})
}

// TestPartitionedKilledOwnerDuplicatesRefused is TestKilledOwnerDuplicatesRefused
// under ingest.dedup=partitioned, where no event id is written to
// PostgreSQL: two workers share the topic; one is SIGKILLed mid-stream, its
// router and its local state with it. The survivor rebuilds the state of the
// partitions it takes over from the by-id topic; then every event is sent
// again twice, keyless and keyed by event id (so the copies arrive on other
// partitions of the events topic than the originals). Every copy is refused
// (as are the 2% repeats the scenario holds): each distinct event counts
// once, the rollups equal the oracle, and
// PostgreSQL holds no row per event.
func TestPartitionedKilledOwnerDuplicatesRefused(t *testing.T) {
	seed := seedFromEnv(t)
	t.Logf("seed %d (set CANOPY_TEST_SEED to replay)", seed)
	e := newEnv(t, 4)
	byid := e.partitioned()
	sc := e.setUp(seed, 1500, 20000)
	n := uint64(len(sc.events))

	victim := e.startWorker(1)
	survivor := e.startWorker(2)
	keys, values := sc.records()
	e.produce(keys, values)
	e.waitFor("half of the events accepted", 3*time.Minute, func() bool {
		_, accepted, _ := e.outcomes(byid)
		return accepted >= n/2
	})
	_ = victim.cmd.Process.Signal(syscall.SIGKILL)
	<-victim.done
	e.settled(byid, n, 3*time.Minute)

	ids := make([][]byte, len(sc.events))
	for i, ev := range sc.events {
		ids[i] = []byte(ev.ID)
	}
	e.produce(make([][]byte, len(values)), values) // keyless
	e.produce(ids, values)                         // keyed by event id
	e.settled(byid, 3*n, 3*time.Minute)
	distinct := map[string]bool{}
	for _, ev := range sc.events {
		distinct[ev.ID] = true
	}
	records, accepted, duplicates := e.outcomes(byid)
	if accepted != uint64(len(distinct)) || accepted+duplicates != records {
		t.Fatalf("by-id acks: %d records, %d accepted, %d duplicates; want %d accepted (the distinct ids) and the rest duplicates",
			records, accepted, duplicates, len(distinct))
	}
	e.verify(sc)

	var claims int
	if err := e.pg.QueryRow(context.Background(), `select count(*) from canopy.event_claims`).Scan(&claims); err != nil {
		t.Fatal(err)
	}
	var intents int
	if err := e.pg.QueryRow(context.Background(), `select count(*) from canopy.ingest_intents`).Scan(&intents); err != nil {
		t.Fatal(err)
	}
	if claims != 0 {
		t.Fatalf("PostgreSQL holds %d event-id claims, want none", claims)
	}
	t.Logf("%d records through the by-id topic, %d accepted, %d duplicates; PostgreSQL: %d intents (%.5f per record)",
		records, accepted, duplicates, intents, float64(intents)/float64(records))
	if b, err := os.ReadFile(survivor.log); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if strings.Contains(line, "event-id state restored") {
				t.Log(line)
			}
		}
	}

	// A backfill file repeating every event, plus a line without an event
	// id, is forwarded to the by-id topic: every event is a duplicate of
	// the copy the workers accepted, only the broken line is dead-lettered,
	// and a second run skips every stride.
	file := filepath.Join(t.TempDir(), "again.ndjson")
	writeNDJSON(t, file, sc.events, `{"event_id":"broken"`)
	dlq := e.countTopic(e.dlq)
	out := e.run("backfill", file, "--batch", "5000")
	want := fmt.Sprintf(" 0 accepted, %d duplicates, 0 already done, 1 dead-lettered (invalid_json 1)", len(sc.events))
	if !strings.Contains(out, want) {
		t.Fatalf("backfill repeating the events: want %q in\n%s", want, out)
	}
	out = e.run("backfill", file, "--batch", "5000")
	want = fmt.Sprintf(" 0 accepted, 0 duplicates, %d already done, 0 dead-lettered", len(sc.events)+1)
	if !strings.Contains(out, want) {
		t.Fatalf("second backfill: want %q in\n%s", want, out)
	}
	// The admin client may answer from metadata cached while the topic did
	// not exist yet, so the count is polled.
	e.waitFor("the broken line in the dead-letter topic", 30*time.Second, func() bool { return e.countTopic(e.dlq) >= dlq+1 })
	if got := e.countTopic(e.dlq); got != dlq+1 {
		t.Fatalf("the dead-letter topic grew by %d records, want 1 (the broken line, once)", got-dlq)
	}
	e.verify(sc)
}

// restoreResult is what a new owner's rebuild of partitioned state cost.
type restoreResult struct {
	partitions int
	records    float64
	seconds    float64 // summed over partitions
	slowest    float64
}

// measureRestore starts a worker with an empty state directory on e, which
// ran under partitioned deduplication and whose workers have stopped, and
// sends one new event per partition so that it begins a batch, and so
// rebuilds the state, on every partition. It reads the cost from the
// worker's metrics and log.
func (bd *benchData) measureRestore(b *testing.B, e *env) restoreResult {
	addr := freeAddr(b)
	e.vars = append(e.vars, "CANOPY_HTTP_ADDR="+addr)
	w := e.startWorker(8)
	waitReady(b, addr)
	defer w.stop(b)
	before, err := e.ackedRecords(context.Background())
	if err != nil {
		b.Fatal(err)
	}
	const extra = 64 // spread over every partition by their ids' hashes
	keys, values := make([][]byte, extra), make([][]byte, extra)
	for i := range extra {
		values[i] = synth.Event{ID: fmt.Sprintf("restore-probe-%d", i), EntityID: 1, OccurredAt: time.Now().UTC(), Type: "probe", Amount: 1}.JSON()
	}
	e.produce(keys, values)
	e.waitAcked(before+extra, 10*time.Minute)
	m := scrape(b, addr)
	r := restoreResult{
		partitions: int(m["canopy_dedup_restore_seconds_count"]),
		records:    m["canopy_dedup_restored_records_total"],
		seconds:    m["canopy_dedup_restore_seconds_sum"],
	}
	if log, err := os.ReadFile(w.log); err == nil {
		for _, line := range strings.Split(string(log), "\n") {
			if i := strings.Index(line, " took="); i >= 0 && strings.Contains(line, "event-id state restored") {
				if d, err := time.ParseDuration(strings.Fields(line[i+len(" took="):] + " ")[0]); err == nil {
					r.slowest = max(r.slowest, d.Seconds())
				}
			}
		}
	}
	return r
}

// TestWorkerExitsWhenByIDTopicDeleted: deleting the by-id topic under a
// running worker is not an outage to wait out (the worker's offsets and
// local event-id state belong to the topic that went), so the worker exits
// 1 naming the topic instead of retrying for as long as it runs. What it
// had not routed stays uncommitted in the events topic: a restarted worker
// creates the topic again and ingests it, and the rollups equal the oracle.
// The events sent after the deletion carry only ids not seen before it,
// since the state that would have refused repeats went with the topic
// (docs/failures.md, "The by-id topic deleted").
func TestWorkerExitsWhenByIDTopicDeleted(t *testing.T) {
	seed := seedFromEnv(t)
	t.Logf("seed %d (set CANOPY_TEST_SEED to replay)", seed)
	e := newEnv(t, 2)
	byid := e.partitioned()
	sc := e.setUp(seed, 200, 2000)
	before, after := halves(sc.events)
	send := e.sendEvents

	w := e.startWorker(1)
	send(before)
	e.settled(byid, uint64(len(before)), 3*time.Minute)

	ctx := context.Background()
	if _, err := e.admin.DeleteTopics(ctx, byid); err != nil {
		t.Fatal(err)
	}
	e.waitFor("the by-id topic deleted", time.Minute, func() bool {
		d, err := e.admin.ListTopics(ctx, byid)
		return err == nil && d[byid].Err != nil
	})
	deleted := time.Now()
	send(after)
	select {
	case <-w.done:
	case <-time.After(3 * time.Minute):
		t.Fatal("the worker still runs 3 minutes after its by-id topic was deleted")
	}
	if code := w.cmd.ProcessState.ExitCode(); code != 1 {
		t.Fatalf("worker exited %d, want 1", code)
	}
	b, err := os.ReadFile(w.log)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), "by-id topic was deleted or created again") || !strings.Contains(string(b), byid) {
		t.Fatalf("the worker's log does not name the deleted by-id topic %s:\n%s", byid, tail(b, 3000))
	}
	t.Logf("worker exited %s after the deletion", time.Since(deleted).Round(time.Second))

	// Acks of the new topic are told from the old one's by time: the old
	// topic's were all written before it was deleted.
	since := deleted.Add(time.Second).UTC().Truncate(time.Second)
	newAcks := func() uint64 {
		var n uint64
		err := e.ch.QueryRow(ctx, fmt.Sprintf(`SELECT sum(r) FROM (
			SELECT any(records) AS r FROM %s.ingest_acks
			WHERE topic = ? AND processed_at >= toDateTime(?) GROUP BY partition, first_offset)`, e.chDB),
			byid, since.Unix()).Scan(&n)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	w2 := e.startWorker(2)
	e.waitFor(fmt.Sprintf("the %d events sent after the deletion acknowledged", len(after)), 3*time.Minute, func() bool {
		return newAcks() >= uint64(len(after))
	})
	if got := newAcks(); got != uint64(len(after)) {
		t.Fatalf("the new by-id topic's acks count %d records, want %d", got, len(after))
	}
	w2.stop(t)
	e.verify(sc)
}

// halves splits events in two at the middle, every copy of an id going
// with its first occurrence: before when that is in the first half.
func halves(events []synth.Event) (before, after []synth.Event) {
	first := map[string]bool{}
	for i, ev := range events {
		if i < len(events)/2 {
			first[ev.ID] = true
		}
		if first[ev.ID] {
			before = append(before, ev)
		} else {
			after = append(after, ev)
		}
	}
	return before, after
}

// sendEvents produces evs to the events topic, keyed by entity.
func (e *env) sendEvents(evs []synth.Event) {
	e.t.Helper()
	keys, values := make([][]byte, len(evs)), make([][]byte, len(evs))
	for i, ev := range evs {
		keys[i], values[i] = []byte(strconv.FormatInt(ev.EntityID, 10)), ev.JSON()
	}
	e.produce(keys, values)
}

// TestWorkerFollowsARecreatedEventsTopic deletes the events topic while a
// worker runs (partitioned deduplication, the default) and creates it again
// with as many partitions. The same worker process reads the new topic: it
// neither exits nor spins on the old topic's id (franz-go fails every fetch
// of a recreated topic with UNKNOWN_TOPIC_ID until it is purged and added
// back). Copies of events ingested from the old topic, sent to the new one,
// are refused by the by-id state, which the events topic's recreation does
// not touch; the rollups equal the oracle.
func TestWorkerFollowsARecreatedEventsTopic(t *testing.T) {
	seed := seedFromEnv(t)
	t.Logf("seed %d (set CANOPY_TEST_SEED to replay)", seed)
	e := newEnv(t, 2)
	byid := e.partitioned()
	sc := e.setUp(seed, 200, 2000)
	before, after := halves(sc.events)
	copies := before[:len(before)/10]

	w := e.startWorker(1)
	e.sendEvents(before)
	e.settled(byid, uint64(len(before)), 3*time.Minute)

	ctx := context.Background()
	if _, err := e.admin.DeleteTopics(ctx, e.topic); err != nil {
		t.Fatal(err)
	}
	e.waitFor("the events topic deleted", time.Minute, func() bool {
		d, err := e.admin.ListTopics(ctx, e.topic)
		return err == nil && d[e.topic].Err != nil
	})
	if _, err := e.admin.CreateTopic(ctx, 2, 1, nil, e.topic); err != nil {
		t.Fatal(err)
	}
	e.kafka.PurgeTopicsFromProducing(e.topic)
	created := time.Now()
	e.sendEvents(append(append([]synth.Event(nil), after...), copies...))
	e.settled(byid, uint64(len(before)+len(after)+len(copies)), 3*time.Minute)
	t.Logf("the new topic's %d records acknowledged %s after it was created", len(after)+len(copies), time.Since(created).Round(time.Second))

	select {
	case <-w.done:
		t.Fatalf("the worker exited (%v) after the events topic was created again", w.cmd.ProcessState)
	default:
	}
	b, err := os.ReadFile(w.log)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), "topic deleted and created again") {
		t.Errorf("the worker's log does not say it followed the events topic:\n%s", tail(b, 3000))
	}
	// One line when the failures start, not one per poll.
	n := strings.Count(string(b), "UNKNOWN_TOPIC_ID")
	if n > 20 {
		t.Errorf("the worker logged UNKNOWN_TOPIC_ID %d times", n)
	}
	t.Logf("the worker logged UNKNOWN_TOPIC_ID %d times", n)
	w.stop(t)
	e.verify(sc)
}

// tail is the last n bytes of b.
func tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}

// TestStaticMemberRestartKeepsItsPartitions: two workers with their own
// kafka.instance_id share the topic's four partitions; one is stopped
// (SIGTERM) mid-stream, events keep coming, and it is started again within
// ingest.session_timeout. As static members, nothing moves while it is
// away: the other worker rebuilds no partition's event-id state from the
// by-id topic, which it would as a dynamic member (the stopped worker's
// leave hands it that worker's partitions, whose records it has never
// seen, and their new events make it begin batches there). The rollups
// equal the oracle.
func TestStaticMemberRestartKeepsItsPartitions(t *testing.T) {
	seed := seedFromEnv(t)
	t.Logf("seed %d (set CANOPY_TEST_SEED to replay)", seed)
	e := newEnv(t, 4)
	byid := e.partitioned()
	e.vars = append(e.vars, "CANOPY_INGEST_SESSION_TIMEOUT=60s")
	sc := e.setUp(seed, 1500, 20000)
	first, second := halves(sc.events)

	addrs := []string{freeAddr(t), freeAddr(t), freeAddr(t)}
	// start runs worker i, with its own state directory and address, as
	// the group member whose instance ID is the id-th.
	start := func(i, id int) *worker {
		e.vars = append(e.vars, "CANOPY_HTTP_ADDR="+addrs[i], fmt.Sprintf("CANOPY_KAFKA_INSTANCE_ID=%s-w%d", e.name, id))
		w := e.startWorker(i)
		waitReady(t, addrs[i])
		return w
	}
	restarted, other := start(0, 0), start(1, 1)
	e.sendEvents(first)
	e.settled(byid, uint64(len(first)), 3*time.Minute)
	restarted.stop(t)
	// While it is away the other worker goes on with its own partitions
	// (and would take the stopped one's over, were they dynamic members).
	_, accepted, _ := e.outcomes(byid)
	e.sendEvents(second)
	e.waitFor("the other worker accepting events of the second half", 2*time.Minute, func() bool {
		_, a, _ := e.outcomes(byid)
		return a > accepted
	})
	time.Sleep(5 * time.Second)
	restarted = start(0, 0)
	e.settled(byid, uint64(len(sc.events)), 3*time.Minute)
	e.verify(sc)

	if got := scrape(t, addrs[1])["canopy_dedup_restored_records_total"]; got != 0 {
		t.Errorf("the worker that stayed rebuilt event-id state from %v records of the by-id topic, want none: it took partitions over", got)
	}
	t.Logf("the restarted worker read %v records of the by-id topic to catch its own state up",
		scrape(t, addrs[0])["canopy_dedup_restored_records_total"])

	// A second worker given the same instance ID pushes the first out of
	// the group; the first exits 1 saying so, rather than rejoin and push
	// the second out in turn for as long as both run.
	start(2, 1)
	select {
	case <-other.done:
	case <-time.After(time.Minute):
		t.Fatal("the worker whose instance ID another took still runs after a minute")
	}
	code := other.cmd.ProcessState.ExitCode()
	b, _ := os.ReadFile(other.log)
	if code != 1 || !strings.Contains(string(b), "joined with this member's instance ID") {
		t.Fatalf("the worker whose instance ID another took exited %d, want 1 naming the cause; its log ends:\n%s", code, tail(b, 2000))
	}
	restarted.stop(t)
}
