package ingest

import (
	"strings"
	"testing"
	"time"

	"github.com/canopyhq/canopy/schema"
)

func TestDecodeValid(t *testing.T) {
	d := NewDecoder(schema.DefaultMeasures(), 0)
	tests := []struct {
		name string
		in   string
		want Event
	}{
		{"spec example", `{"event_id":"9f3c2a","entity_id":4711,"occurred_at":"2026-11-26T10:15:00Z","type":"sale","amount":"129.90","quantity":3}`,
			Event{ID: "9f3c2a", EntityID: 4711, OccurredAt: time.Date(2026, 11, 26, 10, 15, 0, 0, time.UTC), Type: "sale", Measures: []int64{1299000, 3}}},
		{"number amount, offset zone", `{"event_id":"a","entity_id":1,"occurred_at":"2026-11-26T12:15:00+02:00","type":"refund","amount":-5.5}`,
			Event{ID: "a", EntityID: 1, OccurredAt: time.Date(2026, 11, 26, 10, 15, 0, 0, time.UTC), Type: "refund", Measures: []int64{-55000, 0}}},
		{"unknown fields and nesting ignored", `{"x":{"y":[1,{"z":"}"}]},"event_id":"b","entity_id":2,"occurred_at":"2026-01-01T00:00:00Z","type":"t","quantity":null}`,
			Event{ID: "b", EntityID: 2, OccurredAt: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC), Type: "t", Measures: []int64{0, 0}}},
		{"escaped strings", `{"event_id":"a\"b","entity_id":3,"occurred_at":"2026-01-01T00:00:00Z","type":"s\u00e4le"}`,
			Event{ID: `a"b`, EntityID: 3, OccurredAt: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC), Type: "säle", Measures: []int64{0, 0}}},
		{"whitespace", " {\n \"event_id\" : \"c\" , \"entity_id\" : 9223372036854775807 , \"occurred_at\":\"2026-01-01T00:00:00.5Z\",\"type\":\"t\"}\n",
			Event{ID: "c", EntityID: 9223372036854775807, OccurredAt: time.Date(2026, 1, 1, 0, 0, 0, 5e8, time.UTC), Type: "t", Measures: []int64{0, 0}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var ev Event
			if err := d.Decode([]byte(tt.in), &ev); err != nil {
				t.Fatalf("Decode: %v", err)
			}
			if ev.ID != tt.want.ID || ev.EntityID != tt.want.EntityID || !ev.OccurredAt.Equal(tt.want.OccurredAt) ||
				ev.Type != tt.want.Type || ev.Measures[0] != tt.want.Measures[0] || ev.Measures[1] != tt.want.Measures[1] {
				t.Fatalf("Decode = %+v, want %+v", ev, tt.want)
			}
		})
	}
}

func TestDecodePoison(t *testing.T) {
	const ok = `"event_id":"a","entity_id":1,"occurred_at":"2026-01-01T00:00:00Z","type":"t"`
	d := NewDecoder(schema.DefaultMeasures(), 1<<16)
	tests := []struct {
		name string
		in   string
		want Class
	}{
		{"truncated", `{"event_id":"a","entity_id":1`, ClassInvalidJSON},
		{"empty", ``, ClassInvalidJSON},
		{"garbage", `hello`, ClassInvalidJSON},
		{"array", `[1,2]`, ClassNotObject},
		{"string", `"x"`, ClassNotObject},
		{"null", `null`, ClassNotObject},
		{"invalid utf8", "{\"event_id\":\"\xff\"}", ClassInvalidUTF8},
		{"oversize", `{"pad":"` + strings.Repeat("x", 1<<16) + `",` + ok + `}`, ClassOversize},
		{"duplicate key", `{` + ok + `,"type":"u"}`, ClassDuplicateKey},
		{"duplicate unknown key", `{` + ok + `,"x":1,"x":2}`, ClassDuplicateKey},
		{"missing event_id", `{"entity_id":1,"occurred_at":"2026-01-01T00:00:00Z","type":"t"}`, ClassMissingField},
		{"null event_id", `{"event_id":null,"entity_id":1,"occurred_at":"2026-01-01T00:00:00Z","type":"t"}`, ClassMissingField},
		{"empty event_id", `{"event_id":"","entity_id":1,"occurred_at":"2026-01-01T00:00:00Z","type":"t"}`, ClassInvalidField},
		{"long event_id", `{"event_id":"` + strings.Repeat("a", 129) + `","entity_id":1,"occurred_at":"2026-01-01T00:00:00Z","type":"t"}`, ClassInvalidField},
		{"numeric event_id", `{"event_id":5,"entity_id":1,"occurred_at":"2026-01-01T00:00:00Z","type":"t"}`, ClassWrongType},
		{"missing entity", `{"event_id":"a","occurred_at":"2026-01-01T00:00:00Z","type":"t"}`, ClassMissingField},
		{"entity zero", `{"event_id":"a","entity_id":0,"occurred_at":"2026-01-01T00:00:00Z","type":"t"}`, ClassInvalidField},
		{"entity negative", `{"event_id":"a","entity_id":-3,"occurred_at":"2026-01-01T00:00:00Z","type":"t"}`, ClassInvalidField},
		{"entity past int64", `{"event_id":"a","entity_id":9223372036854775808,"occurred_at":"2026-01-01T00:00:00Z","type":"t"}`, ClassOverflow},
		{"entity string", `{"event_id":"a","entity_id":"1","occurred_at":"2026-01-01T00:00:00Z","type":"t"}`, ClassWrongType},
		{"entity fraction", `{"event_id":"a","entity_id":1.5,"occurred_at":"2026-01-01T00:00:00Z","type":"t"}`, ClassInvalidField},
		{"entity bool", `{"event_id":"a","entity_id":true,"occurred_at":"2026-01-01T00:00:00Z","type":"t"}`, ClassWrongType},
		{"no zone", `{"event_id":"a","entity_id":1,"occurred_at":"2026-01-01T00:00:00","type":"t"}`, ClassBadTimestamp},
		{"absurd year", `{"event_id":"a","entity_id":1,"occurred_at":"9999-01-01T00:00:00Z","type":"t"}`, ClassBadTimestamp},
		{"before 1970", `{"event_id":"a","entity_id":1,"occurred_at":"1969-12-31T23:59:59Z","type":"t"}`, ClassBadTimestamp},
		{"numeric time", `{"event_id":"a","entity_id":1,"occurred_at":1700000000,"type":"t"}`, ClassWrongType},
		{"missing type", `{"event_id":"a","entity_id":1,"occurred_at":"2026-01-01T00:00:00Z"}`, ClassMissingField},
		{"long type", `{"event_id":"a","entity_id":1,"occurred_at":"2026-01-01T00:00:00Z","type":"` + strings.Repeat("t", 65) + `"}`, ClassInvalidField},
		{"object type", `{"event_id":"a","entity_id":1,"occurred_at":"2026-01-01T00:00:00Z","type":{}}`, ClassWrongType},
		{"amount too precise", `{` + ok + `,"amount":"1.00001"}`, ClassBadDecimal},
		{"amount NaN", `{` + ok + `,"amount":"NaN"}`, ClassBadDecimal},
		{"amount huge exponent", `{` + ok + `,"amount":1e400}`, ClassOverflow},
		{"amount overflow", `{` + ok + `,"amount":"123456789012345678"}`, ClassOverflow},
		{"amount bool", `{` + ok + `,"amount":true}`, ClassWrongType},
		{"quantity string", `{` + ok + `,"quantity":"3"}`, ClassWrongType},
		{"quantity fraction", `{` + ok + `,"quantity":3.5}`, ClassInvalidField},
		{"quantity overflow", `{` + ok + `,"quantity":99999999999999999999}`, ClassOverflow},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var ev Event
			err := d.Decode([]byte(tt.in), &ev)
			p, ok := IsPoison(err)
			if !ok {
				t.Fatalf("Decode(%.80q) = %v, want a %s poison error", tt.in, err, tt.want)
			}
			if p.Class != tt.want {
				t.Fatalf("Decode(%.80q) class = %s (%s), want %s", tt.in, p.Class, p.Msg, tt.want)
			}
		})
	}
}

func FuzzDecode(f *testing.F) {
	f.Add([]byte(`{"event_id":"9f3c2a","entity_id":4711,"occurred_at":"2026-11-26T10:15:00Z","type":"sale","amount":"129.90","quantity":3}`))
	f.Add([]byte(`{"a":[{"b":"\"}"}],"event_id":"x"}`))
	f.Add([]byte(`[`))
	d := NewDecoder(schema.DefaultMeasures(), 0)
	f.Fuzz(func(t *testing.T, raw []byte) {
		var ev Event
		err := d.Decode(raw, &ev)
		if err != nil {
			if _, ok := IsPoison(err); !ok {
				t.Fatalf("non-poison error %v", err)
			}
			return
		}
		if ev.ID == "" || len(ev.ID) > maxEventIDBytes || ev.EntityID < 1 || ev.Type == "" || len(ev.Type) > maxTypeBytes {
			t.Fatalf("accepted an invalid event %+v from %q", ev, raw)
		}
	})
}
