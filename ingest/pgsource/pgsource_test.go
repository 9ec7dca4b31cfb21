package pgsource

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"
)

var fields = []string{"event_id", "entity_id", "occurred_at", "type", "amount"}

func TestParseMap(t *testing.T) {
	got, err := ParseMap(" event_id = id , amount=total_cents", fields)
	if err != nil || len(got) != 2 || got["event_id"] != "id" || got["amount"] != "total_cents" {
		t.Fatalf("ParseMap = %v, %v", got, err)
	}
	if got, err := ParseMap("  ", fields); err != nil || len(got) != 0 {
		t.Fatalf("empty map = %v, %v", got, err)
	}
	for in, want := range map[string]string{
		"event_id":        `"event_id" is not field=column`,
		"event_id=":       `"event_id=" is not field=column`,
		"=id":             `"=id" is not field=column`,
		"price=p":         "price is not an event field (fields: event_id, entity_id, occurred_at, type, amount)",
		"event_id=a,,x=y": `"" is not field=column`,
	} {
		if _, err := ParseMap(in, fields); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ParseMap(%q) error %v, want it to say %q", in, err, want)
		}
	}
}

// The label names the query, DSN and mapping, whatever the map's order,
// and nothing else.
func TestLabelIsStable(t *testing.T) {
	q := Query{DSN: "postgres://a/db", SQL: "select 1", Map: map[string]string{"event_id": "id", "type": "kind", "amount": "total"}}
	l := q.Label()
	if !strings.HasPrefix(l, "postgres:") || len(l) != len("postgres:")+16 {
		t.Fatalf("label %q", l)
	}
	for range 20 { // map iteration order varies between runs of the loop
		same := Query{DSN: q.DSN, SQL: q.SQL, Map: map[string]string{"amount": "total", "type": "kind", "event_id": "id"}}
		if same.Label() != l {
			t.Fatalf("the same query labelled %q and %q", l, same.Label())
		}
	}
	withFields := q
	withFields.Fields = fields
	if withFields.Label() != l {
		t.Fatal("Fields changed the label")
	}
	for _, other := range []Query{
		{DSN: "postgres://b/db", SQL: q.SQL, Map: q.Map},
		{DSN: q.DSN, SQL: "select 2", Map: q.Map},
		{DSN: q.DSN, SQL: q.SQL, Map: map[string]string{"event_id": "id", "type": "kind"}},
		{DSN: q.DSN, SQL: q.SQL, Map: map[string]string{"event_id": "id", "type": "kind", "amount": "cents"}},
		// the separators keep "a"+"bc" apart from "ab"+"c"
		{DSN: q.DSN + "s", SQL: "elect 1", Map: q.Map},
	} {
		if other.Label() == l {
			t.Errorf("%+v has the label of %+v", other, q)
		}
	}
}

func TestColumns(t *testing.T) {
	desc := func(names ...string) []pgconn.FieldDescription {
		out := make([]pgconn.FieldDescription, len(names))
		for i, n := range names {
			out[i] = pgconn.FieldDescription{Name: n}
		}
		return out
	}
	q := Query{Fields: fields, Map: map[string]string{"event_id": "id", "occurred_at": "at"}}
	index, err := q.columns(desc("type", "at", "entity_id", "id", "other"))
	if err != nil {
		t.Fatal(err)
	}
	if want := []int{3, 2, 1, 0, -1}; !equal(index, want) {
		t.Fatalf("index %v, want %v (amount has no column)", index, want)
	}
	_, err = q.columns(desc("type", "at", "id"))
	if err == nil || err.Error() != "postgres source query: no column for entity_id (it has type, at, id); name one entity_id or add --map entity_id=COLUMN" {
		t.Fatalf("missing required column: %v", err)
	}
	q.Map["amount"] = "cents"
	_, err = q.columns(desc("type", "at", "entity_id", "id"))
	if err == nil || err.Error() != "postgres source query: --map amount=cents: the query has no column cents (it has type, at, entity_id, id)" {
		t.Fatalf("mapped column missing: %v", err)
	}
}

func equal(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestText(t *testing.T) {
	var num pgtype.Numeric
	if err := num.Scan("12345.678900"); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		v    any
		want string
	}{
		{nil, ""},
		{"abc", "abc"},
		{time.Date(2026, 3, 4, 5, 6, 7, 80_000_000, time.FixedZone("X", 2*3600)), "2026-03-04T03:06:07.08Z"},
		{int64(-9007199254740993), "-9007199254740993"},
		{int32(7), "7"},
		{int16(-3), "-3"},
		{float64(0.1), "0.1"},
		{float32(2.5), "2.5"},
		{true, "true"},
		{[]byte("raw"), "raw"},
		{[16]byte{0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0, 0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef}, "12345678-9abc-def0-0123-456789abcdef"},
		{num, "12345.678900"},
		{pgtype.Numeric{}, ""}, // NULL numeric
		{uint8(9), "9"},
	} {
		if got := text(c.v); got != c.want {
			t.Errorf("text(%#v) = %q, want %q", c.v, got, c.want)
		}
	}
}

// A complete spool left by an interrupted run is reused without connecting
// (the DSN here reaches no server) and carries the query's label.
func TestSpoolReusesCompleteSpool(t *testing.T) {
	dir := t.TempDir()
	q := Query{DSN: "postgres://nobody@127.0.0.1:1/none?connect_timeout=1", SQL: "select 1", Fields: fields}
	line := `{"event_id":"e1","entity_id":"3","occurred_at":"2026-01-01T00:00:00Z","type":"sale"}` + "\n"
	if err := os.WriteFile(filepath.Join(dir, q.key()+".ndjson"), []byte(line), 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := Spool(context.Background(), q, dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	if f.Source() != q.Label() || f.Path != filepath.Join(dir, q.key()+".ndjson") {
		t.Fatalf("reused spool %+v, want label %s", f, q.Label())
	}
	// Without a spool, the same query must reach PostgreSQL: an error.
	if _, err := Spool(context.Background(), q, t.TempDir(), nil); err == nil || !strings.Contains(err.Error(), "postgres source") {
		t.Fatalf("spool without a server: %v", err)
	}
}
