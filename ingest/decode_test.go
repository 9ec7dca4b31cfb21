package ingest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

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

// decodeByEncodingJSON is Decode's oracle: the same field rules
// (Decoder.field) over fields that encoding/json finds, in order, in a
// record json.Valid accepts.
func decodeByEncodingJSON(d *Decoder, raw []byte, ev *Event) error {
	switch i := skipSpace(raw, 0); {
	case len(raw) > d.maxBytes:
		return poison(ClassOversize, "record of %d bytes exceeds the limit of %d", len(raw), d.maxBytes)
	case !utf8.Valid(raw):
		return poison(ClassInvalidUTF8, "record is not valid UTF-8")
	case !json.Valid(raw):
		return poison(ClassInvalidJSON, "record is not valid JSON")
	case raw[i] != '{':
		return poison(ClassNotObject, "record is JSON but not an object")
	}
	d.reset(ev)
	dec := json.NewDecoder(bytes.NewReader(raw))
	if _, err := dec.Token(); err != nil {
		return fmt.Errorf("oracle: %w", err)
	}
	var st fieldsRead
	for dec.More() {
		key, err := dec.Token()
		if err != nil {
			return fmt.Errorf("oracle: %w", err)
		}
		var val json.RawMessage
		if err := dec.Decode(&val); err != nil {
			return fmt.Errorf("oracle: %w", err)
		}
		if err := d.field(&st, []byte(key.(string)), val, ev); err != nil {
			return err
		}
	}
	return st.missing()
}

// sameDecode fails t unless Decode and its oracle agree on raw: the same
// poison (class and message), or the same event.
func sameDecode(t *testing.T, d *Decoder, raw []byte) {
	t.Helper()
	var got, want Event
	gotErr, wantErr := d.Decode(raw, &got), decodeByEncodingJSON(d, raw, &want)
	if wantErr != nil {
		if _, ok := IsPoison(wantErr); !ok {
			t.Fatalf("oracle on %q: %v", raw, wantErr)
		}
	}
	switch {
	case (gotErr == nil) != (wantErr == nil), gotErr != nil && gotErr.Error() != wantErr.Error():
		t.Fatalf("Decode(%.200q) = %v, want %v", raw, gotErr, wantErr)
	case gotErr == nil && (got.ID != want.ID || got.EntityID != want.EntityID || !got.OccurredAt.Equal(want.OccurredAt) ||
		got.Type != want.Type || !slices.Equal(got.Measures, want.Measures)):
		t.Fatalf("Decode(%.200q) = %+v, want %+v", raw, got, want)
	}
}

var decodeCases = []string{
	`{"event_id":"9f3c2a","entity_id":4711,"occurred_at":"2026-11-26T10:15:00Z","type":"sale","amount":"129.90","quantity":3}`,
	`{"a":[{"b":"\"}"}],"event_id":"x"}`, `[`, `{}`, ` { } `, `{"event_id":"a"} x`, `{"event_id":"a",}`, `{"event_id":"a" "type":"t"}`,
	`{"event_id":5,"x":[}`, `{"type":"t","type":"u","x":}`, `{"type":"t","type":"u"}`, `{"a\u0062":1,"ab":2}`,
	`{"event_id":"a\"b","entity_id":3,"occurred_at":"2026-01-01T00:00:00Z","type":"s\u00e4le"}`, `{"event_id":"a"}}`,
	`{"amount":1e400,"event_id":"a","entity_id":1,"occurred_at":"2026-01-01T00:00:00Z","type":"t"}`, `{"event_id"}`,
	`{"event_id":"a","entity_id":1,"occurred_at":"2026-01-01T00:00:00Z","type":"t","quantity":null}` + "\n\t ",
	"{\"event_id\":\"\x01\"}", `{"event_id":"a","entity_id":1,"occurred_at":"2026-01-01T00:00:00Z","type":"t","n":{"m":[1,2,{"o":null}]}}`,
	`{"event_id":"a","entity_id":01}`, `{"event_id":"a","entity_id":-}`, `{"event_id":tru}`, `{"event_id":"\ud800"}`, `{:1}`, `{"a":1,,"b":2}`,
}

// Decode finds what a decoder built on encoding/json finds: the same
// event, or the same poison, whatever is wrong with the record and where.
func TestDecodeMatchesEncodingJSON(t *testing.T) {
	d := NewDecoder(schema.DefaultMeasures(), 1<<16)
	cases := append([]string{}, decodeCases...)
	for _, depth := range []int{1, 9998, 9999, 10000} {
		// The record's object is one level: its fields may nest 9999 more.
		cases = append(cases, `{"x":`+strings.Repeat("[", depth)+strings.Repeat("]", depth)+`}`,
			`{"x":`+strings.Repeat(`{"a":`, depth)+"1"+strings.Repeat("}", depth)+`,"event_id":"a"}`)
	}
	for _, c := range cases {
		sameDecode(t, d, []byte(c))
		for n := range min(len(c), 300) { // and prefixes, which most often are not JSON
			sameDecode(t, d, []byte(c[:n]))
		}
	}
}

func FuzzDecode(f *testing.F) {
	for _, c := range decodeCases {
		f.Add([]byte(c))
	}
	d := NewDecoder(schema.DefaultMeasures(), 0)
	f.Fuzz(func(t *testing.T, raw []byte) {
		sameDecode(t, d, raw)
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
