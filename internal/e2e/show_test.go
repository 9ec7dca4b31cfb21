package e2e

import (
	"errors"
	"fmt"
	"math/big"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"
)

// showOut is canopy show --format tsv, parsed.
type showOut struct {
	entity   []string   // id, name, status, level, parent
	chain    [][]string // id, name
	view     []string   // table, from, to
	measures map[string][]string
	days     [][]string // date, events
	children [][]string // id, name, events, own, downline, total
}

func parseShow(t *testing.T, out string) showOut {
	t.Helper()
	s := showOut{measures: map[string][]string{}}
	for _, line := range strings.Split(strings.TrimSuffix(out, "\n"), "\n") {
		f := strings.Split(line, "\t")
		switch f[0] {
		case "entity":
			s.entity = f[1:]
		case "chain":
			s.chain = append(s.chain, f[1:])
		case "view":
			s.view = f[1:]
		case "measure":
			s.measures[f[1]] = f[2:]
		case "day":
			s.days = append(s.days, f[1:])
		case "child":
			s.children = append(s.children, f[1:])
		default:
			t.Fatalf("canopy show: unexpected line %q in\n%s", line, out)
		}
	}
	return s
}

// TestShowMatchesOracle runs canopy show (a subprocess, --format tsv) for
// the entity with the most children of an oracle scenario — a hierarchy
// with moves and suspensions in its past, 2% repeated event ids — as-was
// and, after one of its children moved to another tree, as-is, and compares
// every number with the naive oracle's attribution (as-was through the
// chain at each event's time, as-is through today's). Bad entity ids exit 1
// with a message naming the id.
func TestShowMatchesOracle(t *testing.T) {
	seed := seedFromEnv(t)
	t.Logf("seed %d (set CANOPY_TEST_SEED to replay)", seed)
	e := newEnv(t, 2)
	today := time.Now().UTC().Truncate(24 * time.Hour)
	sc := e.setUpAt(seed, 1500, 20000, today.AddDate(0, 0, -7), 7*24*time.Hour)
	e.startWorker(1)
	keys, values := sc.records()
	e.produce(keys, values)
	e.waitAcked(uint64(len(values)), 3*time.Minute)

	// The entity with the most children (fewest id on a tie), and a child
	// of it to move under the root of another tree.
	ents := e.pgEntities()
	children := map[int64][]int64{}
	for id, x := range ents {
		children[x.parent] = append(children[x.parent], id)
	}
	var entity int64
	for id := range ents {
		if n, m := len(children[id]), len(children[entity]); entity == 0 || n > m || n == m && id < entity {
			entity = id
		}
	}
	root := func(id int64) int64 {
		for ents[id].parent != 0 {
			id = ents[id].parent
		}
		return id
	}
	var moved, to int64
	for _, c := range children[entity] {
		if ents[c].status != "closed" && (moved == 0 || c < moved) {
			moved = c
		}
	}
	for id, x := range ents {
		if x.parent == 0 && x.status != "closed" && id != root(entity) && (to == 0 || id < to) {
			to = id
		}
	}
	if moved == 0 || to == 0 {
		t.Fatalf("no child of %d to move, or no other tree (seed %d)", entity, seed)
	}
	t.Logf("entity %d (%s) with %d children; moving its child %d under %d", entity, ents[entity].name, len(children[entity]), moved, to)
	e.run("hierarchy", "move", strconv.FormatInt(moved, 10), strconv.FormatInt(to, 10))
	now := time.Now().UTC()
	cur := sc.history[moved][len(sc.history[moved])-1]
	sc.history[moved] = append(sc.history[moved], version{from: now, parent: to, status: cur.status})
	e.waitRestated(2 * time.Minute)
	ents = e.pgEntities()

	or := buildOracle(sc.history, sc.events)
	_, current := attribute(sc.history, or.events, true, false)
	const days, top = 10, 5
	from := today.AddDate(0, 0, 1-days)

	for _, view := range []struct {
		table string
		tab   map[rollupKey]sums
		flags []string
	}{{"rollup_daily", or.daily, nil}, {"rollup_daily_current", current, []string{"--as-is"}}} {
		args := append([]string{"show", strconv.FormatInt(entity, 10), "--days", strconv.Itoa(days), "--top", strconv.Itoa(top), "--format", "tsv"}, view.flags...)
		out := e.run(args...)
		got := parseShow(t, out)
		where := fmt.Sprintf("canopy %s", strings.Join(args, " "))

		x := ents[entity]
		if w := []string{strconv.FormatInt(entity, 10), x.name, x.status, strconv.Itoa(level(ents, entity)), strconv.FormatInt(x.parent, 10)}; fmt.Sprint(got.entity) != fmt.Sprint(w) {
			t.Errorf("%s: entity %q, want %q", where, got.entity, w)
		}
		var chain [][]string
		for id := entity; id != 0; id = ents[id].parent {
			chain = append([][]string{{strconv.FormatInt(id, 10), ents[id].name}}, chain...)
		}
		if fmt.Sprint(got.chain) != fmt.Sprint(chain) {
			t.Errorf("%s: chain %q, want %q", where, got.chain, chain)
		}
		if w := []string{view.table, from.Format(time.DateOnly), today.Format(time.DateOnly)}; fmt.Sprint(got.view) != fmt.Sprint(w) {
			t.Errorf("%s: view %q, want %q", where, got.view, w)
		}

		// The oracle's sums in the window: the entity's own and downline,
		// its total events per day, and per current child.
		inWindow := func(k rollupKey) bool { return k.bucket >= from.Unix() && k.bucket <= today.Unix() }
		var own, down sums
		perDay := map[int64]int64{}
		perChild := map[int64][2]sums{}
		for k, s := range view.tab {
			if !inWindow(k) {
				continue
			}
			if k.entity == entity {
				if k.depth == 0 {
					own = own.add(s)
				} else {
					down = down.add(s)
				}
				perDay[k.bucket] += s.events
			}
			if ents[k.entity].parent == entity {
				p := perChild[k.entity]
				if k.depth == 0 {
					p[0] = p[0].add(s)
				} else {
					p[1] = p[1].add(s)
				}
				perChild[k.entity] = p
			}
		}
		for _, m := range measuresOf {
			w := []sums{own, down, own.add(down)}
			g := got.measures[m]
			if len(g) != 3 {
				t.Errorf("%s: measure %s: %q", where, m, g)
				continue
			}
			for i := range w {
				if !sameNumber(t, m, g[i], w[i].get(m)) {
					t.Errorf("%s: %s %s = %s, want %s", where, m, []string{"own", "downline", "total"}[i], g[i], w[i].get(m))
				}
			}
		}
		var wantDays [][]string
		for d := from; !d.After(today); d = d.AddDate(0, 0, 1) {
			wantDays = append(wantDays, []string{d.Format(time.DateOnly), strconv.FormatInt(perDay[d.Unix()], 10)})
		}
		if fmt.Sprint(got.days) != fmt.Sprint(wantDays) {
			t.Errorf("%s: events per day %q, want %q", where, got.days, wantDays)
		}
		var ids []int64
		for id, p := range perChild {
			if p[0].events+p[1].events > 0 {
				ids = append(ids, id)
			}
		}
		sort.Slice(ids, func(i, j int) bool {
			a, b := perChild[ids[i]], perChild[ids[j]]
			if ea, eb := a[0].events+a[1].events, b[0].events+b[1].events; ea != eb {
				return ea > eb
			}
			return ids[i] < ids[j]
		})
		var wantChildren [][]string
		for _, id := range ids[:min(len(ids), top)] {
			p := perChild[id]
			wantChildren = append(wantChildren, []string{strconv.FormatInt(id, 10), ents[id].name, p[0].add(p[1]).get("events"),
				p[0].get("amount"), p[1].get("amount"), p[0].add(p[1]).get("amount")})
		}
		if len(got.children) != len(wantChildren) {
			t.Errorf("%s: children %q, want %q", where, got.children, wantChildren)
		}
		for i := range min(len(got.children), len(wantChildren)) {
			g, w := got.children[i], wantChildren[i]
			ok := len(g) == 6 && g[0] == w[0] && g[1] == w[1] && g[2] == w[2]
			for j := 3; ok && j < 6; j++ {
				ok = sameNumber(t, "amount", g[j], w[j])
			}
			if !ok {
				t.Errorf("%s: child %d = %q, want %q", where, i+1, g, w)
			}
		}
		if view.table == "rollup_daily_current" && own.add(down).events == 0 {
			t.Errorf("%s: nothing in the window: the test checks nothing", where)
		}
	}
	// The move shows: as-is, the moved child's events no longer count under
	// the entity (they did as-was).
	if a, b := sumEvents(or.daily, entity, from, today), sumEvents(current, entity, from, today); a == b {
		t.Errorf("as-was and as-is agree for %d (%d events): the move changed nothing to compare", entity, a)
	}

	for _, bad := range [][]string{{"show", "0"}, {"show", "abc"}, {"show", "-3"}, {"show", "--", "-3"}, {"show", "99999999"}, {"show", "1.5"}} {
		msg, err := e.runErr(bad...)
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 1 || !strings.Contains(msg, "entity id") {
			t.Errorf("canopy %s: %v, want exit 1 and a message naming the entity id:\n%s", strings.Join(bad, " "), err, msg)
		}
	}
}

func sumEvents(tab map[rollupKey]sums, entity int64, from, to time.Time) int64 {
	var n int64
	for k, s := range tab {
		if k.entity == entity && k.bucket >= from.Unix() && k.bucket <= to.Unix() {
			n += s.events
		}
	}
	return n
}

// sameNumber compares a printed number with the oracle's: decimals by
// value (ClickHouse pads the scale), integers as text.
func sameNumber(t *testing.T, measure, got, want string) bool {
	t.Helper()
	if measure != "amount" {
		return got == want
	}
	w, ok := new(big.Rat).SetString(want)
	if !ok {
		t.Fatalf("oracle amount %q", want)
	}
	g, ok := new(big.Rat).SetString(got)
	return ok && g.Cmp(w) == 0
}
