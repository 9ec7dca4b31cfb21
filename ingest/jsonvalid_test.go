package ingest

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
)

var validJSONCases = []string{
	``, ` `, `{}`, `[]`, `{ }`, `[ ]`, ` {"a":1} `, "\t\n\r{\"a\":1}\n", `{"a":1}x`, `{"a":1} {}`, `{"a":1`, `{"a"}`, `{"a":}`,
	`{"a":1,}`, `{,}`, `[1,]`, `[,1]`, `[1 2]`, `{"a":1 "b":2}`, `{"a" : [1, {"b": null}], "c": true, "d": false}`,
	`{1:2}`, `{"a":1}}`, `[[]`, `[]]`, `{]`, `[}`, `"x"`, `"`, `"\"`, `"\\"`, `"\/\b\f\n\r\t"`, `"\u00e4"`, `"\u00G4"`,
	`"\u12"`, `"\x"`, "\"a\x01b\"", "\"a\x7fb\"", "\"\xff\xfe\"", "\"é\"", `0`, `-0`, `-`, `01`, `-01`, `1.`, `1.5`, `.5`,
	`1e5`, `1E+5`, `1e-5`, `1e`, `1e+`, `1.5e3`, `1.e3`, `123456789012345678901234567890`, `0x10`, `+1`, `1.5.2`, `--1`,
	`true`, `false`, `null`, `tru`, `nul`, `truex`, `nulll`, `True`, `[true,false,null]`, `{"a":tru}`, "[1,\n2]",
	`{"event_id":"9f3c2a","entity_id":4711,"occurred_at":"2026-11-26T10:15:00Z","type":"sale","amount":"129.90","quantity":3}`,
	`{"x":{"y":[1,{"z":"}"}]},"event_id":"b"}`, `{"a":"\""}`, `{"a\"b":1}`, `{"a":[}`, "\x00", `[1,[2,[3,{"a":[4]}]]]`,
}

// validJSON accepts exactly what json.Valid accepts.
func TestValidJSONMatchesEncodingJSON(t *testing.T) {
	cases := append([]string{}, validJSONCases...)
	for _, depth := range []int{1, 63, 64, 65, 9999, 10000, 10001, 20000} {
		cases = append(cases, strings.Repeat("[", depth)+strings.Repeat("]", depth),
			strings.Repeat(`{"a":`, depth)+"1"+strings.Repeat("}", depth),
			strings.Repeat("[", depth)+strings.Repeat("]", depth-1))
	}
	for _, c := range cases {
		if got, want := validJSON([]byte(c)), json.Valid([]byte(c)); got != want {
			t.Errorf("validJSON(%.60q) = %v, json.Valid %v", c, got, want)
		}
	}
	// The limit is on nesting, not on how many containers a value holds.
	wide := "[" + strings.Repeat("[],", 20000) + "[]]"
	if !validJSON([]byte(wide)) || !json.Valid([]byte(wide)) {
		t.Error("20000 sibling arrays refused")
	}
}

func FuzzValidJSON(f *testing.F) {
	for _, c := range validJSONCases {
		f.Add([]byte(c))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		if got, want := validJSON(b), json.Valid(b); got != want {
			t.Fatalf("validJSON(%q) = %v, json.Valid %v", b, got, want)
		}
	})
}

// parseTime decides as time.Parse(time.RFC3339Nano) does, to the instant.
func FuzzParseTime(f *testing.F) {
	for _, s := range []string{"2026-11-26T10:15:00Z", "2026-11-26T12:15:00+02:00", "2026-01-01T00:00:00.5Z",
		"2026-01-01T00:00:00,5Z", "2026-01-01T00:00:00", "2026-01-01T0:00:00Z", "2026-01-01T24:00:00Z",
		"2026-01-01T00:00:00+24:00", "2026-01-01t00:00:00z", "2026-02-30T00:00:00Z", "1969-12-31T23:59:59.999999999-00:30",
		"2026-01-01T00:00:00.1234567891Z", "+2026-01-01T00:00:00Z", ""} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		got, gotErr := parseTime(b)
		want, wantErr := time.Parse(time.RFC3339Nano, string(b))
		if (gotErr != nil) != (wantErr != nil) || !got.Equal(want) {
			t.Fatalf("parseTime(%q) = %v, %v; time.Parse %v, %v", b, got, gotErr, want, wantErr)
		}
	})
}
