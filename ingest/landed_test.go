package ingest

import (
	"context"
	"testing"
	"time"

	"github.com/canopyhq/canopy/schema"
)

// landedSink is a memSink that reports chosen parts as written.
type landedSink struct {
	*memSink
	landed Landed
	asked  int
}

func (s *landedSink) Landed(context.Context, *Batch) (Landed, error) {
	s.asked++
	return s.landed, nil
}

func evAt(id string, entity int, at string) string {
	return `{"event_id":"` + id + `","entity_id":` + string(rune('0'+entity)) + `,"occurred_at":"` + at + `","type":"sale","amount":"1"}`
}

// An old replay writes only the months ClickHouse lacks, each with exactly
// the rows it would have had; a young replay and a new batch ask nothing.
func TestOldReplayWritesMissingMonthsOnly(t *testing.T) {
	p, l, mem := newTestProcessor()
	s := &landedSink{memSink: mem}
	p.Sink = s
	ctx := context.Background()
	epoch, _ := l.Acquire(ctx, Source{Topic: "t"}, "me")
	recs := []Record{
		record(0, evAt("a", 3, "2026-10-31T23:00:00Z")),
		record(1, evAt("b", 2, "2026-11-01T01:00:00Z")),
		record(2, evAt("c", 3, "2026-11-02T01:00:00Z")),
	}
	failFirstWrite(t, p, mem, epoch, recs)
	if s.asked != 0 {
		t.Fatal("a new batch asked what landed")
	}
	// October's events and hourly parts landed before the failure.
	s.landed = Landed{Months: []map[string]map[int]bool{{
		schema.TableEvents:       {202610: true},
		schema.TableRollupHourly: {202610: true},
	}}}
	created := p.now()
	p.Now = func() time.Time { return created.Add(DefaultReplayVerifyAfter + time.Second) }
	if _, err := p.Process(ctx, epoch, recs); err != nil {
		t.Fatal(err)
	}
	if s.asked != 1 {
		t.Fatalf("old replay asked %d times what landed, want 1", s.asked)
	}
	b := mem.batches[0]
	if len(b.Events) != 2 || b.Events[0].ID != "b" || b.Events[1].ID != "c" {
		t.Fatalf("old replay wrote events %+v, want b and c", b.Events)
	}
	for _, k := range b.Hourly.Keys {
		if time.Unix(k.Bucket, 0).UTC().Month() != time.November {
			t.Fatalf("old replay wrote an hourly row of October: %+v", k)
		}
	}
	if b.Daily.Len() != 8 { // a: 3 links; b: 2; c: 3; no daily part landed
		t.Fatalf("old replay wrote %d daily rows, want all 8", b.Daily.Len())
	}
	// Fully acknowledged: nothing is written, the batch is done.
	s.landed = Landed{Acked: true}
	l.intents[lpOf(b.Intent.Source)][0] = Intent{Source: b.Intent.Source, HierarchyVersion: b.Intent.HierarchyVersion,
		CreatedAt: b.Intent.CreatedAt, Fingerprint: b.Intent.Fingerprint, Replay: true}
	if n, err := p.Process(ctx, epoch, recs); err != nil || n != 3 || len(mem.batches) != 1 {
		t.Fatalf("acked old replay: n=%d err=%v writes=%d", n, err, len(mem.batches))
	}
	if !l.intents[lpOf(b.Intent.Source)][0].Done {
		t.Fatal("acked old replay not marked done")
	}
}

// A batch begun before block format 2 (no fingerprint) keeps the unit it
// wrote its blocks with; a newer one names its intent's time.
func TestUnitKeepsTheFormatOfItsBatch(t *testing.T) {
	in := Intent{Source: Source{Topic: "t", Partition: 3, First: 42}, CreatedAt: time.Unix(1764000000, 0).UTC()}
	if u := (&Batch{Intent: in}).Unit(); u != "t/3/42" {
		t.Fatalf("pre-format-2 unit %q", u)
	}
	in.Fingerprint = "format=2 suspended=0 measures=amount:decimal:4"
	if u := (&Batch{Intent: in}).Unit(); u != "t/3/42@1764000000" {
		t.Fatalf("format-2 unit %q", u)
	}
}
