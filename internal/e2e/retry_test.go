package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/canopyhq/canopy/internal/synth"
)

// TestUnknownEntityRetried sends events for two entities that do not exist
// yet. The first is created within the retry window: its events are counted
// once and never dead-lettered. The second is not: its events are
// dead-lettered after the configured attempts; once it is created,
// `canopy dlq replay` (through the retry topic) counts them once, marks them
// resolved, and a second replay changes nothing.
func TestUnknownEntityRetried(t *testing.T) {
	e := newEnv(t, 2)
	e.vars = append(e.vars, "CANOPY_INGEST_RETRY_ATTEMPTS=6", "CANOPY_INGEST_RETRY_BACKOFF=1s", "CANOPY_INGEST_RETRY_MAX_BACKOFF=2s")
	var csv strings.Builder
	csv.WriteString("id,parent_id\n1,\n")
	h := history{1: {{parent: 0, status: "active"}}}
	for id := int64(2); id <= 50; id++ {
		fmt.Fprintf(&csv, "%d,%d\n", id, (id+1)/2)
		h[id] = []version{{parent: (id + 1) / 2, status: "active"}}
	}
	file := filepath.Join(t.TempDir(), "h.csv")
	if err := os.WriteFile(file, []byte(csv.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	e.run("hierarchy", "import", file)

	const soon, late = 500, 600 // created within the retry window / after it
	start := time.Date(2026, 11, 2, 0, 0, 0, 0, time.UTC)
	var (
		sent         []synth.Event
		keys, values [][]byte
	)
	add := func(n int, entity func(i int) int64, tag string) {
		for i := 0; i < n; i++ {
			ev := synth.Event{ID: fmt.Sprintf("%s-%d", tag, i), EntityID: entity(i),
				OccurredAt: start.Add(time.Duration(i) * time.Minute), Type: "sale", Amount: int64(1000 + i), Quantity: 1}
			sent = append(sent, ev)
			keys = append(keys, []byte(strconv.FormatInt(ev.EntityID, 10)))
			values = append(values, ev.JSON())
		}
	}
	add(100, func(i int) int64 { return int64(1 + i%50) }, "known")
	add(40, func(int) int64 { return soon }, "soon")
	add(30, func(int) int64 { return late }, "late")

	w := e.startWorker(1)
	e.produce(keys, values)
	time.Sleep(3 * time.Second)
	if _, err := e.pg.Exec(context.Background(), "insert into canopy.entities (id, parent_id) values ($1, 7)", soon); err != nil {
		t.Fatal(err)
	}
	h[soon] = []version{{parent: 7, status: "active"}}

	// The late entity's events exhaust their six attempts (about 9 s).
	deadline := time.Now().Add(2 * time.Minute)
	for e.countTopic(e.dlq) < 30 {
		if time.Now().After(deadline) {
			t.Fatalf("dead-letter topic holds %d records after 2 min, want 30", e.countTopic(e.dlq))
		}
		time.Sleep(500 * time.Millisecond)
	}
	e.waitEvents(140, time.Minute)
	listed := lines(e.run("dlq", "list", "--class", "unknown_entity"))
	if len(listed) != 31 { // the header and 30 dead letters
		t.Fatalf("dlq list shows %d lines, want a header and 30:\n%s", len(listed), strings.Join(listed, "\n"))
	}
	for _, l := range listed {
		if !strings.HasPrefix(l, "PARTITION") && (!strings.Contains(l, " 600 ") || !strings.Contains(l, " 6 ")) {
			t.Fatalf("dead letter not of entity 600 after 6 attempts: %s", l)
		}
	}
	if n := e.countTopic(e.dlq); n != 30 {
		t.Fatalf("dead-letter topic holds %d records, want exactly the 30 of entity %d", n, late)
	}

	if got := lines(e.run("reconcile", "--dry-run")); strings.Join(got, "|") != "failures unknown_entity 30" {
		t.Fatalf("reconcile --dry-run = %q, want the 30 unresolved failures and no gap", got)
	}
	if _, err := e.pg.Exec(context.Background(), "insert into canopy.entities (id, parent_id) values ($1, 9)", late); err != nil {
		t.Fatal(err)
	}
	h[late] = []version{{parent: 9, status: "active"}}
	retryTopic := e.name + ".retry"
	retried := e.topicRecords(retryTopic)
	if out := e.run("dlq", "replay", "--class", "unknown_entity", "--entity", strconv.Itoa(late)); !strings.Contains(out, "replayed 30") {
		t.Fatalf("dlq replay: %s", out)
	}
	// Replays go to the retry topic: Canopy's headers are trusted only on
	// its own topics, never on the events topic anyone can produce to.
	if n := e.topicRecords(retryTopic); n != retried+30 {
		t.Fatalf("retry topic grew by %d records with the replay, want 30", n-retried)
	}
	if n := e.topicRecords(e.topic); n != uint64(len(values)) {
		t.Fatalf("events topic holds %d records after the replay, want the %d sent", n, len(values))
	}
	e.waitEvents(170, time.Minute)
	deadline = time.Now().Add(time.Minute)
	for len(lines(e.run("dlq", "list", "--unresolved"))) != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("replayed dead letters not marked resolved:\n%s", e.run("dlq", "list"))
		}
		time.Sleep(time.Second)
	}
	e.run("dlq", "replay", "--entity", strconv.Itoa(late)) // a second replay: nothing more counts
	if got := lines(e.run("reconcile", "--dry-run")); len(got) != 0 {
		t.Fatalf("reconcile --dry-run after the replay = %q, want nothing", got)
	}
	e.waitAcked(uint64(len(values)+60), time.Minute)
	w.stop(t)

	events := map[string]synth.Event{}
	for _, ev := range sent {
		events[ev.ID] = ev
	}
	hourly, daily := attribute(h, events, false, false)
	compareRollups(t, "rollup_hourly", hourly, e.readRollup("rollup_hourly", "toUInt32(bucket)"))
	compareRollups(t, "rollup_daily", daily, e.readRollup("rollup_daily", "toUInt32(toUInt32(bucket) * 86400)"))
	e.compareEvents(events)
	if n := e.countTopic(e.dlq); n != 30 {
		t.Fatalf("dead-letter topic holds %d records after the replays, want 30", n)
	}
}

// waitEvents waits until the events table holds n rows.
func (e *env) waitEvents(n uint64, timeout time.Duration) {
	e.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		var got uint64
		if err := e.ch.QueryRow(context.Background(), fmt.Sprintf("SELECT count() FROM %s.events", e.chDB)).Scan(&got); err != nil {
			e.t.Fatal(err)
		}
		if got == n {
			return
		}
		if got > n || time.Now().After(deadline) {
			e.t.Fatalf("events table holds %d rows, want %d", got, n)
		}
		time.Sleep(300 * time.Millisecond)
	}
}
