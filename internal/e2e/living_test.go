package e2e

import (
	"bytes"
	"context"
	"fmt"
	"math/big"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/canopyhq/canopy/hierarchy"
	"github.com/canopyhq/canopy/internal/synth"
)

// living is the oracle's side of a hierarchy that changes while events
// flow: the full version history (as the test applied it, with back-dated
// corrections superseding later versions), from which both oracles derive.
type living struct {
	t       *testing.T
	e       *env
	rng     *rand.Rand
	h       history
	ids     []int64 // every entity, in creation order
	nextID  int64
	moved   [][2]int64 // (entity, parent it left), for moves back
	log     []string
	counter int
	refused int // moves refused for closing a cycle in the history
}

func (l *living) current(id int64) version { vs := l.h[id]; return vs[len(vs)-1] }

// isBelow reports whether a is b or below b in the current hierarchy.
func (l *living) isBelow(a, b int64) bool {
	for steps := 0; a != 0 && steps < 300; steps++ {
		if a == b {
			return true
		}
		a = l.current(a).parent
	}
	return false
}

func (l *living) subtreeSize(id int64) int {
	n := 0
	for _, x := range l.ids {
		if l.isBelow(x, id) {
			n++
		}
	}
	return n
}

// record applies a version to the oracle's history the way the database
// defines it: a version starting before the entity's latest one supersedes
// every version from its start on.
func (l *living) record(id int64, v version) {
	vs := l.h[id]
	if len(vs) > 0 && v.from.Before(vs[len(vs)-1].from) {
		keep := vs[:0]
		for _, old := range vs {
			if old.from.Before(v.from) {
				keep = append(keep, old)
			}
		}
		vs = keep
	}
	l.h[id] = append(vs, v)
}

// exec runs one change through plain SQL, as an application would, with an
// optional effective time.
func (l *living) exec(at *time.Time, sql string, args ...any) {
	l.t.Helper()
	if err := l.try(at, sql, args...); err != nil {
		l.t.Fatalf("%s %v: %v", sql, args, err)
	}
}

// try is exec returning the error.
func (l *living) try(at *time.Time, sql string, args ...any) error {
	ctx := context.Background()
	err := pgx.BeginFunc(ctx, l.e.pg, func(tx pgx.Tx) error {
		if at != nil {
			if _, err := tx.Exec(ctx, "select set_config('canopy.effective_at', $1, true)", at.Format(time.RFC3339Nano)); err != nil {
				return err
			}
		}
		_, err := tx.Exec(ctx, sql, args...)
		return err
	})
	if err != nil {
		return fmt.Errorf("%s %v: %w", sql, args, err)
	}
	return nil
}

// validParent picks a parent for id that is neither closed nor below id.
func (l *living) validParent(id int64) (int64, bool) {
	for try := 0; try < 50; try++ {
		p := l.ids[l.rng.IntN(len(l.ids))]
		if p != id && l.current(p).status != "closed" && !l.isBelow(p, id) && p != l.current(id).parent {
			return p, true
		}
	}
	return 0, false
}

// change makes one random hierarchy change at effective time `at` (nil =
// now) and records it in the oracle.
func (l *living) change(at *time.Time, spanEnd time.Time) {
	l.t.Helper()
	l.counter++
	from := time.Now().UTC()
	if at != nil {
		from = *at
	}
	when := "now"
	if at != nil {
		when = at.Format(time.RFC3339)
	}
	pick := l.rng.IntN(100)
	switch {
	case pick < 35: // move a random entity (mostly leaves)
		id := l.ids[1+l.rng.IntN(len(l.ids)-1)]
		p, ok := l.validParent(id)
		if !ok {
			return
		}
		l.move(id, p, at, from, when)
	case pick < 45: // move a large subtree
		var big []int64
		for _, id := range l.ids[:min(len(l.ids), 400)] {
			if l.current(id).parent != 0 && l.subtreeSize(id) >= len(l.ids)/50 {
				big = append(big, id)
			}
		}
		if len(big) == 0 {
			return
		}
		id := big[l.rng.IntN(len(big))]
		p, ok := l.validParent(id)
		if !ok {
			return
		}
		l.log = append(l.log, fmt.Sprintf("(subtree of %d holds %d entities)", id, l.subtreeSize(id)))
		l.move(id, p, at, from, when)
	case pick < 55: // move something back where it came from
		if len(l.moved) == 0 {
			return
		}
		i := l.rng.IntN(len(l.moved))
		m := l.moved[i]
		l.moved = append(l.moved[:i], l.moved[i+1:]...)
		if (m[1] != 0 && (l.current(m[1]).status == "closed" || l.isBelow(m[1], m[0]))) || l.current(m[0]).parent == m[1] {
			return
		}
		l.move(m[0], m[1], at, from, when)
	case pick < 72: // suspend or reactivate
		id := l.ids[l.rng.IntN(len(l.ids))]
		cur := l.current(id)
		if cur.status == "closed" {
			return
		}
		next := map[string]string{"active": "suspended", "suspended": "active"}[cur.status]
		if l.counter%5 == 0 {
			verb := map[string]string{"suspended": "suspend", "active": "activate"}[next]
			args := []string{"hierarchy", verb, strconv.FormatInt(id, 10)}
			if at != nil {
				args = append(args, "--effective-at", at.Format(time.RFC3339))
			}
			l.e.run(args...)
		} else {
			l.exec(at, "update canopy.entities set status = $1 where id = $2", next, id)
		}
		l.record(id, version{from: from, parent: cur.parent, status: next})
		l.log = append(l.log, fmt.Sprintf("%s %s %d", when, next, id))
	case pick < 85: // create
		p := l.ids[l.rng.IntN(len(l.ids))]
		if l.current(p).status == "closed" {
			return
		}
		id := l.nextID
		l.nextID++
		l.exec(at, "insert into canopy.entities (id, parent_id, name) values ($1, $2, $3)", id, p, fmt.Sprintf("new-%d", id))
		l.h[id] = nil
		l.record(id, version{from: from, parent: p, status: "active"})
		l.ids = append(l.ids, id)
		l.log = append(l.log, fmt.Sprintf("%s create %d under %d", when, id, p))
	case pick < 92: // rename: no structural change, but entities must follow
		id := l.ids[l.rng.IntN(len(l.ids))]
		l.exec(nil, "update canopy.entities set name = $1 where id = $2", fmt.Sprintf("renamed-%d", l.counter), id)
		cur := l.current(id)
		l.record(id, version{from: time.Now().UTC(), parent: cur.parent, status: cur.status})
		l.log = append(l.log, fmt.Sprintf("now rename %d", id))
	default: // back-dated correction of an entity that already changed
		var changed []int64
		for _, id := range l.ids {
			if vs := l.h[id]; len(vs) >= 2 && !vs[len(vs)-1].from.After(spanEnd) {
				changed = append(changed, id)
			}
		}
		if len(changed) == 0 {
			return
		}
		id := changed[l.rng.IntN(len(changed))]
		vs := l.h[id]
		last := vs[len(vs)-1].from
		lo := vs[len(vs)-2].from
		if lo.IsZero() {
			lo = last.Add(-48 * time.Hour)
		}
		if !lo.Before(last) {
			return
		}
		back := lo.Add(time.Duration(l.rng.Int64N(int64(last.Sub(lo))))).Truncate(time.Second)
		if !back.Before(last) {
			return
		}
		p, ok := l.validParent(id)
		if !ok {
			return
		}
		l.log = append(l.log, "(back-dated)")
		l.move(id, p, &back, back, back.Format(time.RFC3339))
	}
}

func (l *living) move(id, parent int64, at *time.Time, from time.Time, when string) {
	l.t.Helper()
	cur := l.current(id)
	// A move that takes effect in the past may close a cycle at some moment
	// of the history although the current hierarchy has none: the database
	// refuses it, and so the oracle skips it.
	var err error
	if l.counter%7 == 0 {
		args := []string{"hierarchy", "move", strconv.FormatInt(id, 10), strconv.FormatInt(parent, 10)}
		if at != nil {
			args = append(args, "--effective-at", at.Format(time.RFC3339))
		}
		var out string
		if out, err = l.e.runErr(args...); err != nil {
			err = fmt.Errorf("%w: %s", err, out)
		}
	} else {
		var p any
		if parent != 0 {
			p = parent
		}
		err = l.try(at, "update canopy.entities set parent_id = $1 where id = $2", p, id)
	}
	if err != nil {
		if !strings.Contains(err.Error(), "own ancestor in the history") {
			l.t.Fatalf("move %d under %d at %s: %v", id, parent, when, err)
		}
		l.refused++
		l.log = append(l.log, fmt.Sprintf("%s move %d under %d refused: cycle in the history", when, id, parent))
		return
	}
	l.record(id, version{from: from, parent: parent, status: cur.status})
	l.moved = append(l.moved, [2]int64{id, cur.parent})
	l.log = append(l.log, fmt.Sprintf("%s move %d from %d under %d", when, id, cur.parent, parent))
}

// attribute sums every event under its entity's chain: as it was at the
// event's time (asIs false), or as it is now. With skip, an ancestor that
// was not active at that time (now, for as-is) receives nothing; depths stay
// distances.
func attribute(h history, events map[string]synth.Event, asIs, skip bool) (hourly, daily map[rollupKey]sums) {
	hourly, daily = map[rollupKey]sums{}, map[rollupKey]sums{}
	far := time.Date(9999, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, e := range events {
		at := e.OccurredAt
		if asIs {
			at = far
		}
		hour := e.OccurredAt.Truncate(time.Hour).Unix()
		day := time.Date(e.OccurredAt.Year(), e.OccurredAt.Month(), e.OccurredAt.Day(), 0, 0, 0, 0, time.UTC).Unix()
		for depth, anc := range h.chain(e.EntityID, at) {
			if v, _ := h.at(anc, at); skip && depth > 0 && v.status != "active" {
				continue
			}
			for _, m := range []struct {
				tab    map[rollupKey]sums
				bucket int64
			}{{hourly, hour}, {daily, day}} {
				k := rollupKey{anc, m.bucket, depth, e.Type}
				s := m.tab[k]
				if s.amount == nil {
					s.amount = new(big.Int)
				}
				s.events++
				s.amount.Add(s.amount, big.NewInt(e.Amount))
				s.quantity += e.Quantity
				m.tab[k] = s
			}
		}
	}
	return hourly, daily
}

// TestLivingHierarchyMatchesOracles interleaves 60,000 events with 200
// random hierarchy changes — moves of leaves and of large subtrees,
// moves back, suspensions, creations, renames and back-dated corrections,
// made with plain SQL and the CLI — while three workers and a relay run.
// After the streams drain, rollup_hourly and rollup_daily must equal the
// as-was oracle, rollup_daily_current the as-is oracle, and entities must
// match PostgreSQL, exactly.
func TestLivingHierarchyMatchesOracles(t *testing.T) {
	runLiving(t, 5000, 60000, 200, false)
}

// TestLivingHierarchySkipPolicy is the same with suspended ancestors
// skipped (ingest.suspended_ancestors = skip), smaller: both views must
// apply the policy, the as-was one with the status at the event's time and
// the as-is one with the current status.
func TestLivingHierarchySkipPolicy(t *testing.T) {
	runLiving(t, 2000, 20000, 100, true)
}

func runLiving(t *testing.T, nEntities, nEvents, nChanges int, skip bool) {
	runLivingGrains(t, nEntities, nEvents, nChanges, skip, false)
}

// runLivingGrains is runLiving, with the weekly grain added (canopy.yaml's
// rollup.grains, then canopy migrate) and compared if weekly.
func runLivingGrains(t *testing.T, nEntities, nEvents, nChanges int, skip, weekly bool) {
	seed := seedFromEnv(t)
	t.Logf("seed %d (set CANOPY_TEST_SEED to replay)", seed)
	nEntities, nEvents, nChanges = scaled(t, nEntities, 500), scaled(t, nEvents, 5000), scaled(t, nChanges, 60)
	e := newEnv(t, 4)
	e.vars = append(e.vars, "CANOPY_KAFKA_HIERARCHY_TOPIC="+e.name+".hierarchy")
	if skip {
		e.vars = append(e.vars, "CANOPY_INGEST_SUSPENDED_ANCESTORS=skip")
	}
	if weekly {
		e.addWeeklyGrain()
	}
	l := newLiving(t, e, nEntities, seed, 11)
	rng := l.rng

	_ = e.startRelay(0)
	for i := 1; i <= 3; i++ {
		e.startWorker(i)
	}

	start := time.Date(2026, 10, 27, 0, 0, 0, 0, time.UTC)
	span := 8 * 24 * time.Hour
	types := []string{"sale", "refund", "signup"}
	var (
		sent   []synth.Event
		nRecs  int
		perRnd = nEvents / nChanges
	)
	for round := 0; round < nChanges; round++ {
		keys, values := make([][]byte, 0, perRnd), make([][]byte, 0, perRnd)
		for i := 0; i < perRnd; i++ {
			var ev synth.Event
			if len(sent) > 0 && rng.IntN(100) == 0 {
				ev = sent[rng.IntN(len(sent))] // a repeat: counts once
			} else {
				ev = synth.Event{
					ID:         fmt.Sprintf("lv-%d-%d", round, i),
					EntityID:   l.ids[rng.IntN(len(l.ids))],
					OccurredAt: start.Add(time.Duration(rng.Int64N(int64(span)))).Truncate(time.Second),
					Type:       types[rng.IntN(len(types))],
					Amount:     rng.Int64N(20_000_000) - 2_000_000,
					Quantity:   rng.Int64N(10),
				}
				sent = append(sent, ev)
			}
			keys = append(keys, []byte(strconv.FormatInt(ev.EntityID, 10)))
			values = append(values, ev.JSON())
		}
		e.produce(keys, values)
		nRecs += len(values)
		// Most changes take effect at a time inside the events' span (the
		// as-was view must then move events already counted); some now.
		if rng.IntN(10) < 3 {
			l.change(nil, start.Add(span))
		} else {
			// Whole seconds: the CLI takes RFC 3339 without fractions.
			at := start.Add(span * time.Duration(round+1) / time.Duration(nChanges+1)).Add(time.Duration(rng.IntN(3600)) * time.Second).Truncate(time.Second)
			l.change(&at, start.Add(span))
		}
	}
	t.Logf("%d records, %d hierarchy changes sent (%d refused for a cycle in the history)", nRecs, l.counter, l.refused)
	e.waitAcked(uint64(nRecs), 10*time.Minute)
	e.waitRestated(10 * time.Minute)

	events := map[string]synth.Event{}
	for _, ev := range sent {
		events[ev.ID] = ev
	}
	hourly, daily := attribute(l.h, events, false, skip)
	_, current := attribute(l.h, events, true, skip)
	compareRollups(t, "rollup_hourly", hourly, e.readRollup("rollup_hourly", "toUInt32(bucket)"))
	compareRollups(t, "rollup_daily", daily, e.readRollup("rollup_daily", "toUInt32(toUInt32(bucket) * 86400)"))
	compareRollups(t, "rollup_daily_current", current, e.readRollup("rollup_daily_current", "toUInt32(toUInt32(bucket) * 86400)"))
	if weekly {
		e.compareWeekly(l.h, events, skip)
	}
	e.compareEvents(events)
	e.compareEntities(l)
}

// waitRestated waits until the restater has applied every committed change.
func (e *env) waitRestated(timeout time.Duration) {
	e.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		var done, latest int64
		err := e.pg.QueryRow(context.Background(), `select restated_through,
			(select coalesce(max(seq), 0) from canopy.entity_history) from canopy.restate_state`).Scan(&done, &latest)
		if err != nil {
			e.t.Fatal(err)
		}
		if done >= latest {
			return
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("restater reached change %d of %d within %s", done, latest, timeout)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// compareEntities checks the ClickHouse entities table against PostgreSQL,
// with levels and paths computed here by walking parents, and checks that
// PostgreSQL's current hierarchy is the one the oracle applied.
func (e *env) compareEntities(l *living) {
	e.t.Helper()
	ctx := context.Background()
	type ent struct {
		parent       int64
		name, status string
	}
	pg := map[int64]ent{}
	rows, err := e.pg.Query(ctx, "select id, coalesce(parent_id, 0), coalesce(name, ''), status from canopy.entities")
	if err != nil {
		e.t.Fatal(err)
	}
	for rows.Next() {
		var id int64
		var x ent
		if err := rows.Scan(&id, &x.parent, &x.name, &x.status); err != nil {
			e.t.Fatal(err)
		}
		pg[id] = x
	}
	rows.Close()
	var bad []string
	for id, x := range pg {
		if cur := l.current(id); cur.parent != x.parent || cur.status != x.status {
			bad = append(bad, fmt.Sprintf("postgres has %d under %d (%s), the test applied %d (%s)", id, x.parent, x.status, cur.parent, cur.status))
		}
	}
	path := func(id int64) []uint64 {
		var p []uint64
		for id != 0 && len(p) < 300 {
			p = append(p, uint64(id))
			id = pg[id].parent
		}
		slices.Reverse(p)
		return p
	}
	// entities_by_parent holds the same rows under another key: its newest
	// version of each id must be the same.
	for _, table := range []string{"entities", "entities_by_parent"} {
		chRows, err := e.ch.Query(ctx, fmt.Sprintf(`SELECT id, argMax(parent_id, version), argMax(name, version),
			argMax(status, version), argMax(level, version), argMax(path, version)
			FROM %s.%s GROUP BY id`, e.chDB, table))
		if err != nil {
			e.t.Fatal(err)
		}
		seen := 0
		for chRows.Next() {
			var (
				id, parent   uint64
				name, status string
				level        uint8
				p            []uint64
			)
			if err := chRows.Scan(&id, &parent, &name, &status, &level, &p); err != nil {
				e.t.Fatal(err)
			}
			seen++
			x, ok := pg[int64(id)]
			want := path(int64(id))
			switch {
			case !ok:
				bad = append(bad, fmt.Sprintf("%s has %d, postgres does not", table, id))
			case int64(parent) != x.parent || name != x.name || status != x.status:
				bad = append(bad, fmt.Sprintf("%s %d: clickhouse (%d, %q, %s), postgres (%d, %q, %s)", table, id, parent, name, status, x.parent, x.name, x.status))
			case int(level) != len(want)-1 || !slices.Equal(p, want):
				bad = append(bad, fmt.Sprintf("%s %d: level %d path %v, want %d %v", table, id, level, p, len(want)-1, want))
			}
		}
		chRows.Close()
		if seen != len(pg) {
			bad = append(bad, fmt.Sprintf("%s holds %d ids, postgres %d", table, seen, len(pg)))
		}
	}
	if len(bad) > 0 {
		sort.Strings(bad)
		e.t.Errorf("entities differ (%d problems):\n%s", len(bad), strings.Join(bad[:min(len(bad), 20)], "\n"))
	}
}

// newLiving imports a synthesized hierarchy of nEntities (seed) into e and
// returns the model of its history that the test's changes update; stream
// separates the random sequences of tests sharing a seed.
func newLiving(t *testing.T, e *env, nEntities int, seed int64, stream uint64) *living {
	t.Helper()
	rng := rand.New(rand.NewPCG(uint64(seed), stream))
	forest := hierarchy.Synthesize(nEntities, seed)
	var csv bytes.Buffer
	if err := hierarchy.WriteCSV(&csv, forest); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "hierarchy.csv")
	if err := os.WriteFile(file, csv.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	e.run("hierarchy", "import", file)
	l := &living{t: t, e: e, rng: rng, h: history{}, nextID: int64(nEntities) + 1}
	for _, f := range forest {
		l.h[f.ID] = []version{{parent: f.ParentID, status: f.Status.String()}}
		l.ids = append(l.ids, f.ID)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("seed %d; hierarchy changes:\n%s", seed, strings.Join(l.log, "\n"))
		}
	})
	return l
}
