package ingest

import (
	"fmt"
	"reflect"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/canopyhq/canopy/schema"
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

// routeKey runs over any bytes: it must not read past them, and for every
// record the decoder accepts it must give the id the decoder reads, or two
// copies of one event could land in two partitions and both count.
func FuzzRouteKey(f *testing.F) {
	for _, seed := range []string{
		`{"event_id":"9f3c2a","entity_id":4711,"occurred_at":"2026-11-26T10:15:00Z","type":"sale","amount":"129.90","quantity":3}`,
		`{"entity_id":1, "event_id" : "a\u0062","occurred_at":"2026-11-26T10:15:00Z","type":"t"}`,
		`{"nested":{"event_id":"x"},"event_id":"y","entity_id":1,"occurred_at":"2026-11-26T10:15:00Z","type":"t"}`,
		`{"a":[{"b":"\"}"}],"event_id":"x"}`,
		`{"event_id":"a\"`, `{"event_id":"a\`, `{"event_id":`, `{"event_id"`, `{,,}`, `{"a":{"b":[`, `{"a":"\`, `[`, ``,
	} {
		f.Add([]byte(seed))
	}
	d := NewDecoder(schema.DefaultMeasures(), 0)
	f.Fuzz(func(t *testing.T, raw []byte) {
		key := routeKey(raw)
		var ev Event
		if d.Decode(raw, &ev) == nil && string(key) != ev.ID {
			t.Fatalf("routeKey(%q) = %q, but the decoder reads the id %q", raw, key, ev.ID)
		}
	})
}

// Every prefix of an event is a record the router may meet (a producer's
// truncated write); routeKey reads none past its end.
func TestRouteKeyOnEveryPrefix(t *testing.T) {
	for _, raw := range []string{
		`{"a":[{"b":"\"}"}, {"c":[1,2,{"d":"e"}]}], "x": "\\", "event_id" : "y\u0062\"z", "entity_id": 1}`,
		`{"event_id":"9f3c2a","entity_id":4711,"occurred_at":"2026-11-26T10:15:00Z","type":"sale","amount":"129.90"}`,
	} {
		for n := range len(raw) + 1 {
			routeKey([]byte(raw[:n])) // a panic fails the test
		}
		if got := string(routeKey([]byte(raw))); got != "9f3c2a" && got != `yb"z` {
			t.Errorf("routeKey(%s) = %q", raw, got)
		}
	}
}

// The by-id records of one poll share arrays; each record's headers must
// still be its own: the source they name, and an append to them (produce
// adds the truncation headers to a refused record) must leave the next
// record's alone.
func TestByIDRecordsKeepTheirOwnHeaders(t *testing.T) {
	made := newByIDRecords("byid", 1) // grows as it goes
	var out []*kgo.Record
	for i := range 200 {
		src := Source{Topic: "events", Partition: int32(i % 3), First: int64(1000 + i)}
		out = append(out, made.add([]byte(fmt.Sprintf(`{"event_id":"e%d"}`, i)), nil, src))
	}
	out[0].Headers = append(out[0].Headers, kgo.RecordHeader{Key: HeaderRawBytes, Value: []byte("9")})
	for i, rec := range out {
		if want := fmt.Sprintf("e%d", i); string(rec.Key) != want {
			t.Fatalf("record %d keyed %q, want %q", i, rec.Key, want)
		}
		hs := rec.Headers
		if i == 0 {
			hs = hs[:len(hs)-1]
		}
		want := []kgo.RecordHeader{{Key: "canopy.source", Value: []byte(fmt.Sprintf("events/%d/%d", i%3, 1000+i))}}
		if !reflect.DeepEqual(hs, want) {
			t.Fatalf("record %d's headers %v, want %v", i, rec.Headers, want)
		}
	}
}

// The router keys by event id, drops the due time, and names the source
// unless the record already carries one (a retry or a replayed dead letter).
func TestRouterByID(t *testing.T) {
	r := &Router{cfg: RouterConfig{Target: "byid"}}
	fresh := r.byID(newByIDRecords(r.cfg.Target, 1), &kgo.Record{Topic: "events", Partition: 3, Offset: 41, Key: []byte("7"), Value: []byte(`{"event_id":"e1"}`)})
	if fresh.Topic != "byid" || string(fresh.Key) != "e1" {
		t.Fatalf("routed to %s with key %q", fresh.Topic, fresh.Key)
	}
	o := originOf(Record{Headers: fresh.Headers})
	if !o.Known || o.Source.Topic != "events" || o.Source.Partition != 3 || o.Source.First != 41 || o.RetryOf != -1 {
		t.Fatalf("fresh record's origin = %+v", o)
	}
	f := Failure{Source: Source{Topic: "events", Partition: 1, First: 9, Last: 9}, Class: ClassUnknownEntity, Attempts: 1, HoldsClaim: true, Claim: 12}
	hs := append(EncodeFailure(f), kgo.RecordHeader{Key: HeaderRetryAt, Value: []byte("2026-11-30T00:00:00Z")})
	retry := r.byID(newByIDRecords(r.cfg.Target, 1), &kgo.Record{Topic: "retry", Partition: 0, Offset: 5, Value: []byte(`{"event_id":"e2"}`), Headers: hs})
	o = originOf(Record{Headers: retry.Headers})
	if o.Source.Topic != "events" || o.Source.First != 9 || o.RetryOf != 12 || o.Attempts != 1 || !o.RetryAt.IsZero() {
		t.Fatalf("retried record's origin = %+v", o)
	}
	if bad := r.byID(newByIDRecords(r.cfg.Target, 1), &kgo.Record{Topic: "events", Value: []byte(`nope`)}); bad.Key != nil {
		t.Fatalf("a record without an id is keyed %q", bad.Key)
	}
	// Headers only the by-id stage and the backfill write are dropped when
	// a producer forges them.
	forged := r.byID(newByIDRecords(r.cfg.Target, 1), &kgo.Record{Topic: "events", Value: []byte(`{"event_id":"e3"}`), Headers: []kgo.RecordHeader{
		{Key: HeaderReleaseOf, Value: []byte("3")}, {Key: HeaderBackfill, Value: []byte("1")}}})
	if _, ok := releaseOf(Record{Key: forged.Key, Headers: forged.Headers}); ok || originOf(Record{Headers: forged.Headers}).Backfill {
		t.Fatalf("forged headers kept: %v", forged.Headers)
	}
}

// BenchmarkRouterDue is the router's work on one poll of synth records
// from four partitions of the events topic: each made a by-id record.
func BenchmarkRouterDue(b *testing.B) {
	const n, parts = 100_000, 4
	recs := benchRecords(b, n, 1_000_000)
	r := &Router{cfg: RouterConfig{Topic: "events", Target: "byid"}, buf: map[partitionKey][]*kgo.Record{}, paused: map[partitionKey]bool{}}
	in := make([]kgo.Record, n)
	for i, rec := range recs {
		in[i] = kgo.Record{Topic: rec.Topic, Partition: int32(i % parts), Offset: int64(i / parts), Key: []byte("7"), Value: rec.Value}
	}
	b.ReportAllocs()
	for b.Loop() {
		for i := range in {
			k := partitionKey{in[i].Topic, in[i].Partition}
			r.buf[k] = append(r.buf[k], &in[i])
		}
		if out, _ := r.due(time.Now()); len(out) != n {
			b.Fatalf("routed %d of %d", len(out), n)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/n, "ns/record")
}
