package ingest

import (
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
)

// A failure encoded for the retry topic, dead-lettered, replayed by canopy
// dlq: each step's headers decode to what the failure said, compared with
// literal values.
func TestFailureHeadersRoundTrip(t *testing.T) {
	at := time.Date(2026, 12, 1, 9, 30, 15, 0, time.FixedZone("CET", 3600))
	f := Failure{
		Source:    Source{Topic: "canopy.events", Partition: 4, First: 9_000_000_001, Last: 9_000_000_001},
		Class:     ClassUnknownEntity,
		Message:   "entity 77 is not in the hierarchy (version 12)",
		Attempts:  3,
		At:        at,
		First:     time.Date(2026, 12, 1, 8, 0, 0, 0, time.UTC),
		RetryAt:   time.Date(2026, 12, 1, 8, 31, 15, 125_000_000, time.UTC),
		RawBytes:  2_000_000,
		RawSHA256: "ab12",
		// by-id offset of the claim its record holds
		HoldsClaim: true,
		Claim:      321,
	}
	hs := EncodeFailure(f)
	want := map[string]string{
		"canopy.error.class":      "unknown_entity",
		"canopy.error.message":    "entity 77 is not in the hierarchy (version 12)",
		"canopy.attempts":         "3",
		"canopy.source.topic":     "canopy.events",
		"canopy.source.partition": "4",
		"canopy.source.offset":    "9000000001",
		"canopy.failed.at":        "2026-12-01T08:30:15Z",
		"canopy.first.failure":    "2026-12-01T08:00:00Z",
		"canopy.raw.bytes":        "2000000",
		"canopy.raw.sha256":       "ab12",
		"canopy.retry.of":         "321",
		"canopy.retry.at":         "2026-12-01T08:31:15.125Z",
	}
	if len(hs) != len(want) {
		t.Fatalf("%d headers, want %d: %v", len(hs), len(want), hs)
	}
	for _, h := range hs {
		if w, ok := want[h.Key]; !ok || string(h.Value) != w {
			t.Errorf("header %s = %q, want %q", h.Key, h.Value, w)
		}
	}

	o := DecodeOrigin(hs)
	if !o.Known || o.Source != (Source{Topic: "canopy.events", Partition: 4, First: 9_000_000_001, Last: 9_000_000_001}) ||
		o.Class != "unknown_entity" || o.Message != "entity 77 is not in the hierarchy (version 12)" || o.Attempts != 3 ||
		!o.FailedAt.Equal(time.Date(2026, 12, 1, 8, 30, 15, 0, time.UTC)) || !o.First.Equal(time.Date(2026, 12, 1, 8, 0, 0, 0, time.UTC)) ||
		!o.RetryAt.Equal(time.Date(2026, 12, 1, 8, 31, 15, 125_000_000, time.UTC)) || o.RetryOf != 321 ||
		o.RawBytes != 2_000_000 || o.RawSHA256 != "ab12" || o.Replay || o.Backfill || o.Release {
		t.Fatalf("decoded %+v", o)
	}

	// A dead letter (no due time, no claim) replayed by canopy dlq: due at
	// once, marked as a replay of the dead letter.
	f.RetryAt, f.HoldsClaim, f.RawBytes, f.RawSHA256 = time.Time{}, false, 0, ""
	dead := &kgo.Record{Topic: "canopy.events.dlq", Partition: 2, Offset: 17, Headers: append(EncodeFailure(f),
		kgo.RecordHeader{Key: "trace", Value: []byte("t1")}, kgo.RecordHeader{Key: HeaderRetryAt, Value: []byte("2999-01-01T00:00:00Z")})}
	rhs := ReplayHeaders(dead)
	if v, ok := header(rhs, HeaderReplay); !ok || v != "canopy.events.dlq/2/17" {
		t.Fatalf("replay header %q, %v", v, ok)
	}
	if v, _ := header(rhs, "trace"); v != "t1" {
		t.Fatalf("a producer's header was dropped: %v", rhs)
	}
	o = DecodeOrigin(rhs)
	if !o.Replay || !o.RetryAt.IsZero() || o.RetryOf != -1 || o.RawBytes != 0 || !o.Known || o.Source.First != 9_000_000_001 || o.Attempts != 3 {
		t.Fatalf("replayed dead letter decoded %+v", o)
	}
	if len(dead.Headers) != len(EncodeFailure(f))+2 {
		t.Fatal("ReplayHeaders changed the dead letter's headers")
	}

	// A release marker and a truncated payload alone.
	o = DecodeOrigin(append(releaseHeaders(55), kgo.RecordHeader{Key: HeaderRawBytes, Value: []byte("10")}))
	if !o.Release || o.ReleaseOf != 55 || o.RawBytes != 0 || o.Known {
		t.Fatalf("release marker with half a truncation decoded %+v", o)
	}
	if c, ok := releaseOf(Record{Key: []byte("e1"), Offset: 9, Headers: releaseHeaders(55)}); !ok || c != (Claim{EventID: "e1", Offset: 9, RetryOf: 55, Release: true}) {
		t.Fatalf("releaseOf = %+v, %v", c, ok)
	}
	if _, ok := releaseOf(Record{Offset: 9, Headers: releaseHeaders(55)}); ok {
		t.Fatal("a release marker without a key was read as one")
	}
}

// The source topic of the by-id records is made a string once, not once per
// record, and a record naming another topic still gets its own name.
func TestDecodeOriginInternsTopic(t *testing.T) {
	hs := SourceHeaders(Source{Topic: "canopy.events", Partition: 3, First: 42, Last: 42})
	if got := DecodeOrigin(hs).Source.Topic; got != "canopy.events" {
		t.Fatalf("topic %q", got)
	}
	if n := testing.AllocsPerRun(100, func() { _ = DecodeOrigin(hs) }); n != 0 {
		t.Errorf("DecodeOrigin of the same topic again: %v allocations, want 0", n)
	}
	other := SourceHeaders(Source{Topic: "backfill", Partition: 0, First: 7, Last: 7})
	for range 3 {
		if got := DecodeOrigin(other).Source.Topic; got != "backfill" {
			t.Fatalf("topic %q, want backfill", got)
		}
		if got := DecodeOrigin(hs).Source.Topic; got != "canopy.events" {
			t.Fatalf("topic %q, want canopy.events", got)
		}
	}
}
