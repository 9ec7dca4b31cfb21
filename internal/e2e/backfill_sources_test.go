package e2e

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/canopyhq/canopy/internal/synth"
)

// subset is sc with only some of its events, for an oracle over them.
func (sc *scenario) subset(evs []synth.Event) *scenario {
	c := *sc
	c.events = evs
	return &c
}

// wantExit runs a canopy command that must fail with code and print msg.
func (e *env) wantExit(code int, msg string, args ...string) {
	e.t.Helper()
	out, err := e.runErr(args...)
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != code || !strings.Contains(out, msg) {
		e.t.Fatalf("canopy %s: %v, want exit %d mentioning %q\n%s", strings.Join(args, " "), err, code, msg, out)
	}
}

// TestBackfillKafkaRangeMatchesOracle loads a time range of an archive
// topic, then the whole topic: after each run the rollups equal the oracle
// of exactly the events loaded so far (the second run skips the batches of
// the first and counts nothing twice), a third run changes nothing, and bad
// ranges and topics are clear errors.
func TestBackfillKafkaRangeMatchesOracle(t *testing.T) {
	seed := seedFromEnv(t)
	t.Logf("seed %d (set CANOPY_TEST_SEED to replay)", seed)
	e := newEnv(t, 1)
	sc := e.setUp(seed, 1500, 30000)
	ctx := context.Background()
	archive := e.name + ".archive"
	// The records carry timestamps of early 2026: under the broker's
	// default 7-day retention, its next retention check (every 5 minutes)
	// deletes all of them, so the archive keeps its records forever, as an
	// archive topic does.
	forever := "-1"
	if _, err := e.admin.CreateTopic(ctx, 3, 1, map[string]*string{"retention.ms": &forever}, archive); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = e.admin.DeleteTopics(context.Background(), archive) })

	// Three months of records by Kafka timestamp; a bad one in February.
	a, b := len(sc.events)/3, len(sc.events)*2/3
	months := []struct {
		evs []synth.Event
		at  time.Time
	}{
		{sc.events[:a], time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)},
		{sc.events[a:b], time.Date(2026, 2, 1, 0, 0, 0, 0, time.UTC)},
		{sc.events[b:], time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)},
	}
	for i, m := range months {
		var recs []*kgo.Record
		for j, ev := range m.evs {
			recs = append(recs, &kgo.Record{Topic: archive, Key: []byte(strconv.FormatInt(ev.EntityID, 10)),
				Value: ev.JSON(), Timestamp: m.at.Add(time.Duration(j) * time.Second)})
		}
		if i == 1 {
			recs = append(recs, &kgo.Record{Topic: archive, Value: []byte(`{"event_id":`), Timestamp: m.at.Add(time.Hour)})
		}
		if err := e.kafka.ProduceSync(ctx, recs...).FirstErr(); err != nil {
			t.Fatal(err)
		}
	}

	e.wantExit(2, "--from", "backfill", "--topic", archive, "--from", "last tuesday")
	e.wantExit(2, "exactly one source", "backfill")
	e.wantExit(2, "exactly one source", "backfill", "--topic", archive, "some.ndjson")
	e.wantExit(1, "no such topic", "backfill", "--topic", e.name+".missing")
	if n, _ := e.ackedRecordsOf(ctx, "kafka:%"); n != 0 {
		t.Fatalf("failed backfills acknowledged %d records", n)
	}

	out := e.run("backfill", "--topic", archive, "--from", "2026-01-15", "--to", "2026-02-15T00:00:00Z", "--batch", "700")
	if !strings.Contains(out, "1 dead-lettered (invalid_json 1)") {
		t.Fatalf("February backfill: %s\nthe broker's offsets now: %s", out, offsetsByTime(ctx, e.admin, archive,
			time.Date(2026, 1, 15, 0, 0, 0, 0, time.UTC), time.Date(2026, 2, 15, 0, 0, 0, 0, time.UTC)))
	}
	e.verify(sc.subset(months[1].evs))

	out = e.run("backfill", "--topic", archive, "--batch", "700")
	if !strings.Contains(out, " 0 dead-lettered") {
		t.Fatalf("whole-topic backfill dead-lettered again: %s", out)
	}
	e.verify(sc)

	out = e.run("backfill", "--topic", archive, "--from", "0", "--batch", "700")
	if !strings.Contains(out, " 0 accepted, 0 duplicates, ") {
		t.Fatalf("third backfill changed something: %s", out)
	}
	e.verify(sc)
	if n := e.countTopic(e.dlq); n != 1 {
		t.Fatalf("dead-letter topic holds %d records, want 1", n)
	}
}

// TestBackfillPostgresQueryMatchesOracle loads events from a table of an
// operational database through a query whose columns are mapped to the
// event fields: the rollups equal the oracle, a row without an entity is
// dead-lettered, a second run changes nothing, the spool is removed, and a
// bad query, mapping or DSN fails with exit code 1 before writing anything.
func TestBackfillPostgresQueryMatchesOracle(t *testing.T) {
	seed := seedFromEnv(t)
	t.Logf("seed %d (set CANOPY_TEST_SEED to replay)", seed)
	e := newEnv(t, 1)
	sc := e.setUp(seed, 1500, 30000)
	ctx := context.Background()
	if _, err := e.pg.Exec(ctx, `create schema shop;
		create table shop.sales (id text, user_id bigint, created_at timestamptz, kind text, units bigint, qty integer, note text)`); err != nil {
		t.Fatal(err)
	}
	rows := make([][]any, 0, len(sc.events)+1)
	for _, ev := range sc.events {
		rows = append(rows, []any{ev.ID, ev.EntityID, ev.OccurredAt, ev.Type, ev.Amount, ev.Quantity, "x"})
	}
	rows = append(rows, []any{"orphan-row", nil, time.Date(2026, 10, 28, 0, 0, 0, 0, time.UTC), "sale", int64(10000), int64(1), nil})
	if _, err := e.pg.CopyFrom(ctx, pgx.Identifier{"shop", "sales"}, []string{"id", "user_id", "created_at", "kind", "units", "qty", "note"},
		pgx.CopyFromRows(rows)); err != nil {
		t.Fatal(err)
	}
	spool := t.TempDir()
	query := `SELECT id, user_id, created_at, kind, (units::numeric / 10000)::numeric(20,4) AS total, qty FROM shop.sales ORDER BY id, created_at`
	args := []string{"backfill", "--query", query, "--query-dsn", e.pgDSN, "--spool-dir", spool,
		"--map", "event_id=id,entity_id=user_id,occurred_at=created_at,type=kind,amount=total,quantity=qty"}

	e.wantExit(1, "does not exist", "backfill", "--query", "SELECT * FROM shop.nothing", "--query-dsn", e.pgDSN, "--spool-dir", spool)
	e.wantExit(1, "no column for event_id", "backfill", "--query", "SELECT user_id FROM shop.sales", "--query-dsn", e.pgDSN, "--spool-dir", spool)
	e.wantExit(1, "postgres source", "backfill", "--query", "SELECT 1", "--query-dsn", "postgres://nobody@127.0.0.1:1/none?connect_timeout=2", "--spool-dir", spool)
	e.wantExit(2, "not an event field", "backfill", "--query", query, "--map", "colour=kind")
	if n, _ := e.ackedRecordsOf(ctx, "postgres:%"); n != 0 {
		t.Fatalf("failed backfills acknowledged %d records", n)
	}

	out := e.run(args...)
	if !strings.Contains(out, "1 dead-lettered (missing_field 1)") {
		t.Fatalf("query backfill: %s", out)
	}
	e.verify(sc)
	out = e.run(args...)
	if !strings.Contains(out, " 0 accepted, ") || !strings.Contains(out, " 0 dead-lettered") {
		t.Fatalf("second query backfill changed something: %s", out)
	}
	e.verify(sc)
	if left, _ := filepath.Glob(filepath.Join(spool, "*")); len(left) != 0 {
		t.Fatalf("spool left behind: %v", left)
	}
}

// TestBackfillOverlapsLiveIngest sends the same events through the live
// topic (to a running worker) and through a backfill file at the same time:
// every event_id counts once.
func TestBackfillOverlapsLiveIngest(t *testing.T) {
	for _, mode := range []string{"postgres", "partitioned"} {
		t.Run(mode, func(t *testing.T) {
			seed := seedFromEnv(t)
			t.Logf("seed %d (set CANOPY_TEST_SEED to replay)", seed)
			e := newEnv(t, 2)
			copies := uint64(1) // acknowledged records per event
			if mode == "partitioned" {
				copies = 2 // the live copy and the backfill's, both through the by-id topic
			} else {
				e.postgres()
			}
			sc := e.setUp(seed, 2000, 40000)
			file := filepath.Join(t.TempDir(), "same.ndjson")
			writeNDJSON(t, file, sc.events)
			e.startWorker(1)

			var wg sync.WaitGroup
			wg.Add(1)
			go func() {
				defer wg.Done()
				keys, values := sc.records()
				e.produce(keys, values)
			}()
			out := e.run("backfill", file, "--batch", "1000")
			wg.Wait()
			e.waitAcked(copies*uint64(len(sc.events)), 3*time.Minute)
			t.Log(strings.TrimSpace(out[strings.LastIndex(out, "backfill:"):]))
			e.verify(sc)
			if _, err := os.Stat(file); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// offsetsByTime describes, for a failure message, each partition of topic:
// its start and end offsets and the first offset at or after each of times.
func offsetsByTime(ctx context.Context, adm *kadm.Client, topic string, times ...time.Time) string {
	var b strings.Builder
	show := func(what string, l kadm.ListedOffsets, err error) {
		if err == nil {
			err = l.Error()
		}
		if err != nil {
			fmt.Fprintf(&b, "%s: %v; ", what, err)
			return
		}
		fmt.Fprintf(&b, "%s:", what)
		for p := int32(0); ; p++ {
			o, ok := l.Lookup(topic, p)
			if !ok {
				break
			}
			fmt.Fprintf(&b, " p%d=%d", p, o.Offset)
		}
		b.WriteString("; ")
	}
	l, err := adm.ListStartOffsets(ctx, topic)
	show("start", l, err)
	l, err = adm.ListEndOffsets(ctx, topic)
	show("end", l, err)
	for _, at := range times {
		l, err = adm.ListOffsetsAfterMilli(ctx, at.UnixMilli(), topic)
		show(at.Format(time.RFC3339), l, err)
	}
	return b.String()
}
