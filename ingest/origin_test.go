package ingest

import (
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
)

// TestOriginOfReadsEveryHeaderFirstValueWins writes the headers by hand,
// each canopy header twice (a producer's copy after Canopy's), and checks
// that originOf reads the first of each.
func TestOriginOfReadsEveryHeaderFirstValueWins(t *testing.T) {
	h := func(k, v string) kgo.RecordHeader { return kgo.RecordHeader{Key: k, Value: []byte(v)} }
	first := []kgo.RecordHeader{
		h("user.header", "x"),
		h(HeaderSourceTopic, "events"),
		h(HeaderSourcePartition, "7"),
		h(HeaderSourceOffset, "123456789012"),
		h(HeaderAttempts, "3"),
		h(HeaderFirstFailure, "2026-11-01T10:00:00Z"),
		h(HeaderRetryAt, "2026-11-01T10:00:05.25Z"),
		h(HeaderErrorClass, "unknown_entity"),
		h(HeaderErrorMessage, "entity 9 is not in the hierarchy"),
		h(HeaderReplay, ""),
		h(HeaderRetryOf, "42"),
	}
	second := []kgo.RecordHeader{
		h(HeaderSourceTopic, "other"),
		h(HeaderSourcePartition, "1"),
		h(HeaderSourceOffset, "5"),
		h(HeaderAttempts, "9"),
		h(HeaderFirstFailure, "2020-01-01T00:00:00Z"),
		h(HeaderRetryAt, "2020-01-01T00:00:00Z"),
		h(HeaderErrorClass, "malformed"),
		h(HeaderErrorMessage, "later"),
		h(HeaderRetryOf, "7"),
	}
	o := originOf(Record{Headers: append(first, second...)})
	want := Origin{
		Known:    true,
		Source:   Source{Topic: "events", Partition: 7, First: 123456789012, Last: 123456789012},
		Attempts: 3,
		First:    time.Date(2026, 11, 1, 10, 0, 0, 0, time.UTC),
		RetryAt:  time.Date(2026, 11, 1, 10, 0, 5, 250_000_000, time.UTC),
		Replay:   true,
		RetryOf:  42,
		Class:    "unknown_entity",
		Message:  "entity 9 is not in the hierarchy",
	}
	if !o.First.Equal(want.First) || !o.RetryAt.Equal(want.RetryAt) {
		t.Fatalf("times: got first %v retryAt %v, want %v %v", o.First, o.RetryAt, want.First, want.RetryAt)
	}
	o.First, o.RetryAt, want.First, want.RetryAt = time.Time{}, time.Time{}, time.Time{}, time.Time{}
	if o != want {
		t.Fatalf("originOf:\n got %+v\nwant %+v", o, want)
	}
	if at := retryAtOf(Record{Headers: append(first, second...)}); !at.Equal(time.Date(2026, 11, 1, 10, 0, 5, 250_000_000, time.UTC)) {
		t.Fatalf("retryAtOf = %v", at)
	}

	// A source missing one of its three headers, or with a malformed
	// number, is no source; nothing else depends on it.
	for _, drop := range []string{HeaderSourceTopic, HeaderSourcePartition, HeaderSourceOffset} {
		var hs []kgo.RecordHeader
		for _, x := range first {
			if x.Key != drop {
				hs = append(hs, x)
			}
		}
		if o := originOf(Record{Headers: hs}); o.Known || o.Attempts != 3 || o.RetryOf != 42 {
			t.Errorf("without %s: %+v", drop, o)
		}
	}
	bad := []kgo.RecordHeader{h(HeaderSourceTopic, "t"), h(HeaderSourcePartition, "x"), h(HeaderSourceOffset, "1"), h(HeaderRetryOf, "-3")}
	if o := originOf(Record{Headers: bad}); o.Known || o.RetryOf != -1 {
		t.Errorf("malformed: %+v", o)
	}
	// The by-id topic's folded source: the topic is what precedes the last
	// two slashes; the three headers win over it where both are whole.
	for v, want := range map[string]Source{
		"canopy.events/3/42":     {Topic: "canopy.events", Partition: 3, First: 42, Last: 42},
		"inputs/day 1.jsonl/0/7": {Topic: "inputs/day 1.jsonl", Partition: 0, First: 7, Last: 7},
		"t/x/1":                  {}, "/1/2": {}, "t/1": {}, "t/-1/5": {}, "t/1/-5": {}, "t/1/": {}, "": {},
	} {
		o := originOf(Record{Headers: []kgo.RecordHeader{h(HeaderSource, v), h(HeaderAttempts, "2")}})
		if o.Known != (want != Source{}) || o.Source != want || o.Attempts != 2 {
			t.Errorf("folded source %q: %+v, want %+v", v, o, want)
		}
		if !sourceOnly([]kgo.RecordHeader{h(HeaderSource, v)}) {
			t.Errorf("sourceOnly(folded %q) = false", v)
		}
	}
	both := append([]kgo.RecordHeader{h(HeaderSource, "folded/1/2")}, first[1:4]...)
	if o := originOf(Record{Headers: both}); o.Source.Topic != "events" || o.Source.First != 123456789012 {
		t.Errorf("three headers and a folded one: %+v", o.Source)
	}
	if o := originOf(Record{}); o != (Origin{RetryOf: -1}) {
		t.Errorf("no headers: %+v", o)
	}
}
