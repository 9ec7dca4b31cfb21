package e2e

import (
	"bytes"
	"context"
	"fmt"
	"math/big"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/canopyhq/canopy/hierarchy"
	"github.com/canopyhq/canopy/internal/synth"
)

// The oracle is deliberately naive: it keeps every entity's versions as a
// list, walks parents one by one for every event, and sums with math/big.
// It shares nothing with the pipeline but the generated input.

type version struct {
	from   time.Time // zero = always
	parent int64
	status string
}

type history map[int64][]version // versions sorted by from

// at returns the version of id valid at t.
func (h history) at(id int64, t time.Time) (version, bool) {
	vs, ok := h[id]
	if !ok {
		return version{}, false
	}
	cur := vs[0]
	for _, v := range vs[1:] {
		if !v.from.After(t) {
			cur = v
		}
	}
	return cur, true
}

// chain returns id, its parent, … root as they were at t.
func (h history) chain(id int64, t time.Time) []int64 {
	var out []int64
	for id != 0 && len(out) < 300 {
		v, ok := h.at(id, t)
		if !ok {
			return nil
		}
		out = append(out, id)
		id = v.parent
	}
	return out
}

type rollupKey struct {
	entity int64
	bucket int64
	depth  int
	typ    string
}

type sums struct {
	events   int64
	amount   *big.Int // 10^-4 units
	quantity int64
}

func (s sums) String() string {
	return fmt.Sprintf("events=%d amount=%s quantity=%d", s.events, s.amount, s.quantity)
}

type oracle struct {
	hourly, daily map[rollupKey]sums
	events        map[string]synth.Event
}

func buildOracle(h history, events []synth.Event) *oracle {
	o := &oracle{events: map[string]synth.Event{}}
	for _, e := range events {
		if _, dup := o.events[e.ID]; !dup {
			o.events[e.ID] = e
		}
	}
	o.hourly, o.daily = attribute(h, o.events, false, false)
	return o
}

// parseUnits parses a ClickHouse decimal rendering ("-12.3400") into 10^-4
// units without going through the code under test.
func parseUnits(t testing.TB, s string) *big.Int {
	r, ok := new(big.Rat).SetString(s)
	if !ok {
		t.Fatalf("not a decimal: %q", s)
	}
	r.Mul(r, big.NewRat(10000, 1))
	if !r.IsInt() {
		t.Fatalf("decimal %q has more than 4 places", s)
	}
	return r.Num()
}

func (e *env) readRollup(table string, bucketExpr string) map[rollupKey]sums {
	e.t.Helper()
	rows, err := e.ch.Query(context.Background(), fmt.Sprintf(`
		SELECT entity_id, %s, depth, type, sum(events), toString(sum(amount)), sum(quantity)
		FROM %s.%s GROUP BY entity_id, bucket, depth, type`, bucketExpr, e.chDB, table))
	if err != nil {
		e.t.Fatalf("read %s: %v", table, err)
	}
	defer rows.Close()
	out := map[rollupKey]sums{}
	for rows.Next() {
		var (
			entity      uint64
			events      int64
			bucket      uint32
			depth       uint8
			typ, amount string
			quantity    int64
		)
		if err := rows.Scan(&entity, &bucket, &depth, &typ, &events, &amount, &quantity); err != nil {
			e.t.Fatalf("scan %s: %v", table, err)
		}
		out[rollupKey{int64(entity), int64(bucket), int(depth), typ}] = sums{events, parseUnits(e.t, amount), quantity}
	}
	if err := rows.Err(); err != nil {
		e.t.Fatal(err)
	}
	return out
}

// compareRollups reports every difference, up to a limit, with its key.
func compareRollups(t testing.TB, table string, want, got map[rollupKey]sums) {
	t.Helper()
	var diffs []string
	for k, w := range want {
		g, ok := got[k]
		switch {
		case !ok:
			diffs = append(diffs, fmt.Sprintf("missing %+v: want %s", k, w))
		case g.events != w.events || g.amount.Cmp(w.amount) != 0 || g.quantity != w.quantity:
			diffs = append(diffs, fmt.Sprintf("wrong %+v: want %s, got %s", k, w, g))
		}
	}
	for k, g := range got {
		if _, ok := want[k]; !ok && (g.events != 0 || g.amount.Sign() != 0 || g.quantity != 0) {
			diffs = append(diffs, fmt.Sprintf("unexpected %+v: got %s", k, g))
		}
	}
	if n := len(diffs); n > 0 {
		sort.Strings(diffs)
		if n > 20 {
			diffs = append(diffs[:20], fmt.Sprintf("… and %d more", n-20))
		}
		t.Errorf("%s differs from the oracle in %d rows (oracle has %d rows, table %d):\n%s",
			table, n, len(want), len(got), strings.Join(diffs, "\n"))
	}
}

func (e *env) compareEvents(want map[string]synth.Event) {
	e.t.Helper()
	rows, err := e.ch.Query(context.Background(), fmt.Sprintf(`
		SELECT event_id, entity_id, toUInt32(occurred_at), type, toString(amount), quantity, count()
		FROM %s.events GROUP BY event_id, entity_id, occurred_at, type, amount, quantity`, e.chDB))
	if err != nil {
		e.t.Fatalf("read events: %v", err)
	}
	defer rows.Close()
	seen := 0
	var bad []string
	for rows.Next() {
		var (
			id, typ, amount string
			entity, n       uint64
			at              uint32
			quantity        int64
		)
		if err := rows.Scan(&id, &entity, &at, &typ, &amount, &quantity, &n); err != nil {
			e.t.Fatal(err)
		}
		seen++
		w, ok := want[id]
		switch {
		case !ok:
			bad = append(bad, "unexpected event "+id)
		case n != 1:
			bad = append(bad, fmt.Sprintf("event %s stored %d times", id, n))
		case int64(entity) != w.EntityID || int64(at) != w.OccurredAt.Unix() || typ != w.Type ||
			parseUnits(e.t, amount).Cmp(big.NewInt(w.Amount)) != 0 || quantity != w.Quantity:
			bad = append(bad, fmt.Sprintf("event %s differs: got %d %d %s %s %d, want %+v", id, entity, at, typ, amount, quantity, w))
		}
	}
	if seen != len(want) {
		bad = append(bad, fmt.Sprintf("events holds %d distinct events, oracle %d", seen, len(want)))
	}
	if len(bad) > 0 {
		if len(bad) > 20 {
			bad = bad[:20]
		}
		e.t.Errorf("events table differs from the oracle:\n%s", strings.Join(bad, "\n"))
	}
}

// scenario is a generated hierarchy with history and a stream of events.
type scenario struct {
	seed    int64
	history history
	changes []string // human-readable change log, printed on failure
	events  []synth.Event
}

// setUp imports a synthesized hierarchy, applies moves and suspensions at
// known past times through the CLI, and generates events over the same span.
func (e *env) setUp(seed int64, entities, events int) *scenario {
	e.t.Helper()
	// Events span 8 days across a month boundary.
	return e.setUpAt(seed, entities, events, time.Date(2026, 10, 27, 0, 0, 0, 0, time.UTC), 8*24*time.Hour)
}

// setUpAt is setUp with events (and changes) from start over span.
func (e *env) setUpAt(seed int64, entities, events int, start time.Time, span time.Duration) *scenario {
	e.t.Helper()
	entities, events = scaled(e.t, entities, 200), scaled(e.t, events, 2000)
	rng := rand.New(rand.NewPCG(uint64(seed), 7))
	forest := hierarchy.Synthesize(entities, seed)
	var csv bytes.Buffer
	if err := hierarchy.WriteCSV(&csv, forest); err != nil {
		e.t.Fatal(err)
	}
	file := filepath.Join(e.t.TempDir(), "hierarchy.csv")
	if err := os.WriteFile(file, csv.Bytes(), 0o600); err != nil {
		e.t.Fatal(err)
	}
	e.run("hierarchy", "import", file)

	sc := &scenario{seed: seed, history: history{}}
	status := map[int64]string{}
	for _, f := range forest {
		sc.history[f.ID] = []version{{parent: f.ParentID, status: f.Status.String()}}
		status[f.ID] = f.Status.String()
	}
	// Changes at increasing times inside the span. A moved entity always
	// goes under a smaller id, so no change can form a cycle.
	n := max(entities/150, 10)
	at := start.Add(2 * time.Hour)
	step := span / time.Duration(n+2)
	for i := 0; i < n; i++ {
		at = at.Add(step).Truncate(time.Second)
		id := int64(2 + rng.IntN(entities-1))
		cur := sc.history[id][len(sc.history[id])-1]
		if i%4 == 3 {
			next := "suspended"
			if cur.status == "suspended" {
				next = "active"
			}
			if cur.status == "closed" {
				continue
			}
			verb := map[string]string{"suspended": "suspend", "active": "activate"}[next]
			e.run("hierarchy", verb, strconv.FormatInt(id, 10), "--effective-at", at.Format(time.RFC3339))
			sc.history[id] = append(sc.history[id], version{from: at, parent: cur.parent, status: next})
			sc.changes = append(sc.changes, fmt.Sprintf("%s %s %d", at.Format(time.RFC3339), verb, id))
			continue
		}
		parent := int64(1 + rng.IntN(int(id-1)))
		pv := sc.history[parent][len(sc.history[parent])-1]
		if pv.status == "closed" || parent == cur.parent {
			continue
		}
		e.run("hierarchy", "move", strconv.FormatInt(id, 10), strconv.FormatInt(parent, 10), "--effective-at", at.Format(time.RFC3339))
		sc.history[id] = append(sc.history[id], version{from: at, parent: parent, status: cur.status})
		sc.changes = append(sc.changes, fmt.Sprintf("%s move %d under %d", at.Format(time.RFC3339), id, parent))
	}
	gen := synth.Events{Seed: seed, Count: events, Entities: int64(entities), Start: start, Span: span, Duplicates: 0.02}
	_ = gen.Each(func(_ int, ev synth.Event) error {
		sc.events = append(sc.events, ev)
		return nil
	})
	e.t.Cleanup(func() {
		if e.t.Failed() {
			e.t.Logf("seed %d; hierarchy changes:\n%s", seed, strings.Join(sc.changes, "\n"))
		}
	})
	return sc
}

func (sc *scenario) records() (keys, values [][]byte) {
	for _, ev := range sc.events {
		keys = append(keys, []byte(strconv.FormatInt(ev.EntityID, 10)))
		values = append(values, ev.JSON())
	}
	return keys, values
}

// verify compares every table with the oracle.
func (e *env) verify(sc *scenario) {
	e.t.Helper()
	o := buildOracle(sc.history, sc.events)
	compareRollups(e.t, "rollup_hourly", o.hourly, e.readRollup("rollup_hourly", "toUInt32(bucket)"))
	compareRollups(e.t, "rollup_daily", o.daily, e.readRollup("rollup_daily", "toUInt32(toUInt32(bucket) * 86400)"))
	e.compareEvents(o.events)
}

func seedFromEnv(t testing.TB) int64 {
	if s := os.Getenv("CANOPY_TEST_SEED"); s != "" {
		v, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			t.Fatalf("CANOPY_TEST_SEED: %v", err)
		}
		return v
	}
	return time.Now().UnixNano() % 1000000
}

// TestPipelineMatchesOracle sends a hierarchy with history and 120,000
// events (2% repeated ids, random order, across a month boundary) through
// real Kafka and two workers, and checks every rollup row and every stored
// event against the oracle, exactly.
func TestPipelineMatchesOracle(t *testing.T) {
	seed := seedFromEnv(t)
	t.Logf("seed %d (set CANOPY_TEST_SEED to replay)", seed)
	e := newEnv(t, 4)
	sc := e.setUp(seed, 10000, 120000)
	keys, values := sc.records()
	// Poison records mixed in at random places must each reach the dead
	// letters with the class written here by hand, and stall nothing.
	bad := []struct{ raw, class string }{
		{`{"event_id":"x"`, "invalid_json"},
		{`[1,2]`, "not_object"},
		{`{"event_id":"bad-zero","entity_id":0,"occurred_at":"2026-10-28T00:00:00Z","type":"sale"}`, "invalid_field"},
		{`{"event_id":"bad-type","entity_id":5,"occurred_at":"2026-10-28T00:00:00Z"}`, "missing_field"},
		{`{"event_id":"bad-zone","entity_id":5,"occurred_at":"2026-10-28T00:00:00","type":"sale"}`, "bad_timestamp"},
		{`{"event_id":"bad-dec","entity_id":5,"occurred_at":"2026-10-28T00:00:00Z","type":"sale","amount":"1.00001"}`, "bad_decimal"},
		{`{"event_id":"bad-unknown","entity_id":999999999,"occurred_at":"2026-10-28T00:00:00Z","type":"sale"}`, "unknown_entity"},
		{"{\"event_id\":\"\xff\"}", "invalid_utf8"},
	}
	rng := rand.New(rand.NewPCG(uint64(seed), 3))
	wantClasses := map[string]int{}
	for round := 0; round < 5; round++ {
		for _, b := range bad {
			i := rng.IntN(len(values) + 1)
			// Each round's unknown-entity record is its own event: repeats
			// of one id would be duplicates of the first (partitioned
			// deduplication claims ids whose entity is unknown too).
			raw := strings.ReplaceAll(b.raw, `"bad-unknown"`, fmt.Sprintf(`"bad-unknown-%d"`, round))
			keys = append(keys[:i], append([][]byte{[]byte("bad")}, keys[i:]...)...)
			values = append(values[:i], append([][]byte{[]byte(raw)}, values[i:]...)...)
			wantClasses[b.class]++
		}
	}
	e.produce(keys, values)
	w1, w2 := e.startWorker(1), e.startWorker(2)
	e.waitAcked(uint64(len(values)), 10*time.Minute)
	w1.stop(t)
	w2.stop(t)
	e.verify(sc)

	rows, err := e.ch.Query(context.Background(), fmt.Sprintf(`SELECT error_class, count() FROM
		(SELECT source_partition, source_offset, any(error_class) AS error_class FROM %s.ingest_failures
		 WHERE source_topic = ? GROUP BY source_partition, source_offset) GROUP BY error_class`, e.chDB), e.topic)
	if err != nil {
		t.Fatal(err)
	}
	gotClasses := map[string]int{}
	for rows.Next() {
		var class string
		var n uint64
		if err := rows.Scan(&class, &n); err != nil {
			t.Fatal(err)
		}
		gotClasses[class] = int(n)
	}
	rows.Close()
	if fmt.Sprint(gotClasses) != fmt.Sprint(wantClasses) {
		t.Errorf("ingest_failures by class = %v, want %v", gotClasses, wantClasses)
	}
	if n := e.countTopic(e.dlq); n != 5*len(bad) {
		t.Errorf("dead-letter topic holds %d records, want %d", n, 5*len(bad))
	}
}
