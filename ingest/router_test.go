package ingest

import (
	"testing"

	"github.com/twmb/franz-go/pkg/kgo"
)

func TestEventIDOf(t *testing.T) {
	for _, c := range []struct {
		raw string
		id  string
		ok  bool
	}{
		{`{"event_id":"a1","entity_id":1}`, "a1", true},
		{`{"entity_id":1, "event_id" : "a\u0062"}`, "ab", true}, // the decoded id: escapes route like plain text
		{`{"nested":{"event_id":"x"},"event_id":"y"}`, "y", true},
		{`{"event_id":""}`, "", false},
		{`{"event_id":7}`, "", false},
		{`{"entity_id":1}`, "", false},
		{`{"event_id":"a"`, "", false}, // not JSON
		{`["event_id","a"]`, "", false},
	} {
		id, ok := EventIDOf([]byte(c.raw))
		if id != c.id || ok != c.ok {
			t.Errorf("EventIDOf(%s) = %q, %v; want %q, %v", c.raw, id, ok, c.id, c.ok)
		}
	}
}

// The router keys by event id, drops the due time, and names the source
// unless the record already carries one (a retry or a replayed dead letter).
func TestRouterByID(t *testing.T) {
	r := &Router{cfg: RouterConfig{Target: "byid"}}
	fresh := r.byID(&kgo.Record{Topic: "events", Partition: 3, Offset: 41, Key: []byte("7"), Value: []byte(`{"event_id":"e1"}`)})
	if fresh.Topic != "byid" || string(fresh.Key) != "e1" {
		t.Fatalf("routed to %s with key %q", fresh.Topic, fresh.Key)
	}
	o := originOf(Record{Headers: fresh.Headers})
	if !o.Known || o.Source.Topic != "events" || o.Source.Partition != 3 || o.Source.First != 41 || o.RetryOf != -1 {
		t.Fatalf("fresh record's origin = %+v", o)
	}
	f := Failure{Source: Source{Topic: "events", Partition: 1, First: 9, Last: 9}, Class: ClassUnknownEntity, Attempts: 1, HoldsClaim: true, Claim: 12}
	hs := append(EncodeFailure(f), kgo.RecordHeader{Key: HeaderRetryAt, Value: []byte("2026-11-30T00:00:00Z")})
	retry := r.byID(&kgo.Record{Topic: "retry", Partition: 0, Offset: 5, Value: []byte(`{"event_id":"e2"}`), Headers: hs})
	o = originOf(Record{Headers: retry.Headers})
	if o.Source.Topic != "events" || o.Source.First != 9 || o.RetryOf != 12 || o.Attempts != 1 || !o.RetryAt.IsZero() {
		t.Fatalf("retried record's origin = %+v", o)
	}
	if bad := r.byID(&kgo.Record{Topic: "events", Value: []byte(`nope`)}); bad.Key != nil {
		t.Fatalf("a record without an id is keyed %q", bad.Key)
	}
	// Headers only the by-id stage and the backfill write are dropped when
	// a producer forges them.
	forged := r.byID(&kgo.Record{Topic: "events", Value: []byte(`{"event_id":"e3"}`), Headers: []kgo.RecordHeader{
		{Key: HeaderReleaseOf, Value: []byte("3")}, {Key: HeaderBackfill, Value: []byte("1")}}})
	if _, ok := releaseOf(Record{Key: forged.Key, Headers: forged.Headers}); ok || originOf(Record{Headers: forged.Headers}).Backfill {
		t.Fatalf("forged headers kept: %v", forged.Headers)
	}
}
