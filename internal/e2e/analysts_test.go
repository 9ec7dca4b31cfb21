package e2e

import (
	"context"
	"fmt"
	"math"
	"math/big"
	"os"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"
)

// analystQueries are the named queries of docs/analysts.md.
func analystQueries(t testing.TB) map[string]string {
	t.Helper()
	raw, err := os.ReadFile("../../docs/analysts.md")
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, m := range regexp.MustCompile("(?s)<!-- test: ([a-z-]+) -->\\s*```sql\\n(.*?)```").FindAllStringSubmatch(string(raw), -1) {
		if _, dup := out[m[1]]; dup {
			t.Fatalf("docs/analysts.md: two queries named %s", m[1])
		}
		out[m[1]] = m[2]
	}
	if n := strings.Count(string(raw), "```sql"); n != len(out) {
		t.Fatalf("docs/analysts.md has %d SQL blocks but %d named for the test: name every one (<!-- test: name -->)", n, len(out))
	}
	return out
}

// TestAnalystQueriesMatchOracle runs every query of docs/analysts.md on a
// data set of the last 45 days (so "today" and "this month" mean what they
// say) in which entity 42 lost a child to another team and gained another
// entity just now, and compares each result with the oracle.
func TestAnalystQueriesMatchOracle(t *testing.T) {
	seed := int64(42)
	if os.Getenv("CANOPY_TEST_SEED") != "" {
		seed = seedFromEnv(t)
	}
	t.Logf("seed %d (set CANOPY_TEST_SEED to replay)", seed)
	e := newEnv(t, 2)
	today := e.chToday()
	start := today.AddDate(0, 0, -45)
	sc := e.setUpAt(seed, 3000, 60000, start, time.Since(start)-2*time.Hour)

	// 42 loses its largest child to entity 1's team and gains an entity from
	// elsewhere, effective now: as-was and as-is differ over the whole window.
	ents := e.pgEntities()
	const team = 42
	var kids []int64
	for id, x := range ents {
		if x.parent == team {
			kids = append(kids, id)
		}
	}
	if len(kids) < 2 {
		t.Fatalf("seed %d: entity %d has %d children; pick a seed where it has a team", seed, team, len(kids))
	}
	sort.Slice(kids, func(i, j int) bool { return kids[i] < kids[j] })
	var gained int64
	for id := int64(team + 1); id < int64(len(ents)); id++ {
		if !inTeam(ents, id, team) && level(ents, id) >= 2 {
			gained = id
			break
		}
	}
	at := time.Now().UTC().Add(-time.Minute).Truncate(time.Second)
	for _, mv := range [][2]int64{{kids[0], 1}, {gained, team}} {
		e.run("hierarchy", "move", strconv.FormatInt(mv[0], 10), strconv.FormatInt(mv[1], 10), "--effective-at", at.Format(time.RFC3339))
		cur := sc.history[mv[0]][len(sc.history[mv[0]])-1]
		sc.history[mv[0]] = append(sc.history[mv[0]], version{from: at, parent: mv[1], status: cur.status})
	}
	t.Logf("moved %d from under %d to under 1 and %d under %d at %s", kids[0], team, gained, team, at.Format(time.RFC3339))

	e.startWorker(1)
	keys, values := sc.records()
	e.produce(keys, values)
	e.waitAcked(uint64(len(values)), 3*time.Minute)
	e.waitRestated(time.Minute)
	if e.chToday() != today {
		t.Skip("the UTC day changed during the test; run it again")
	}

	o := buildOracle(sc.history, sc.events)
	_, daily := attribute(sc.history, o.events, false, false)
	_, current := attribute(sc.history, o.events, true, false)
	ents = e.pgEntities()
	since := today.AddDate(0, 0, -30).Unix()
	sum := func(tab map[rollupKey]sums, keep func(rollupKey) bool) sums {
		var s sums
		for k, v := range tab {
			if keep(k) {
				s = s.add(v)
			}
		}
		return s
	}
	recent := func(k rollupKey) bool { return k.entity == team && k.bucket >= since }

	want := map[string][][]string{}
	own, down := sum(daily, func(k rollupKey) bool { return recent(k) && k.depth == 0 }), sum(daily, func(k rollupKey) bool { return recent(k) && k.depth > 0 })
	want["team-totals"] = [][]string{{own.get("events"), down.get("events"), own.get("amount"), down.get("amount")}}

	for d := 0; d < 64; d++ {
		if s := sum(daily, func(k rollupKey) bool { return recent(k) && k.depth == d }); s.events > 0 {
			want["per-level"] = append(want["per-level"], []string{strconv.Itoa(d), s.get("events"), s.get("amount")})
		}
	}

	kidSums := map[string][2]sums{}
	for k, v := range daily {
		if ents[k.entity].parent == team && k.bucket >= since {
			id := strconv.FormatInt(k.entity, 10)
			p := kidSums[id]
			p[1] = p[1].add(v)
			kidSums[id] = p
		}
	}
	want["top-children"] = ranked(kidSums, "amount", 10, func(id string, p [2]sums) []string {
		n, _ := strconv.ParseInt(id, 10, 64)
		return []string{id, ents[n].name, p[1].get("amount")}
	})

	want["daily-series"] = series(daily, recent, "amount")

	month := time.Date(today.Year(), today.Month(), 1, 0, 0, 0, 0, time.UTC)
	prev := month.AddDate(0, -1, 0)
	this := sum(daily, func(k rollupKey) bool { return k.entity == team && k.depth > 0 && k.bucket >= month.Unix() })
	last := sum(daily, func(k rollupKey) bool {
		return k.entity == team && k.depth > 0 && k.bucket >= prev.Unix() && k.bucket < month.Unix()
	})
	ratio, _ := new(big.Rat).SetFrac(orZero(this.amount), orZero(last.amount)).Float64()
	want["month-over-month"] = [][]string{{this.get("amount"), last.get("amount"), fmt.Sprint(math.Round(100*(ratio-1)*10) / 10)}}

	was := sum(daily, func(k rollupKey) bool { return recent(k) && k.depth > 0 })
	is := sum(current, func(k rollupKey) bool { return recent(k) && k.depth > 0 })
	if was.cmp(is, "amount") == 0 {
		t.Fatalf("as-was and as-is downline amounts of %d are equal (%s): the moves did not change the team", team, was.get("amount"))
	}
	want["as-was-vs-as-is"] = [][]string{{"as-was", was.get("amount")}, {"as-is", is.get("amount")}}

	var teamEv sums
	week := today.AddDate(0, 0, -7)
	for _, ev := range o.events {
		if inTeam(ents, ev.EntityID, team) && !dayOf(ev.OccurredAt).Before(week) {
			teamEv = teamEv.add(sums{events: 1, amount: big.NewInt(ev.Amount)})
		}
	}
	want["team-events"] = [][]string{{teamEv.get("events"), teamEv.get("amount")}}

	queries := analystQueries(t)
	for name, q := range queries {
		w, ok := want[name]
		if !ok {
			t.Errorf("docs/analysts.md query %s has no oracle in this test: add one", name)
			continue
		}
		sql := strings.ReplaceAll(q, "canopy.", e.chDB+".")
		_, got, err := e.queryText(sql)
		if err != nil {
			t.Errorf("query %s: %v\n%s", name, err, sql)
			continue
		}
		compareRows(t, panelQuery{board: "docs/analysts.md", title: name}, dashCase{}, w, got, name != "as-was-vs-as-is")
	}
	for name := range want {
		if _, ok := queries[name]; !ok {
			t.Errorf("oracle for %s but no such query in docs/analysts.md", name)
		}
	}
}

// inTeam reports whether id is anc or below it in the current hierarchy.
func inTeam(ents map[int64]pgEntity, id, anc int64) bool {
	for ; id != 0; id = ents[id].parent {
		if id == anc {
			return true
		}
	}
	return false
}

// chToday is ClickHouse's today() as a UTC midnight.
func (e *env) chToday() time.Time {
	e.t.Helper()
	var d time.Time
	if err := e.ch.QueryRow(context.Background(), "SELECT today()").Scan(&d); err != nil {
		e.t.Fatal(err)
	}
	return time.Date(d.Year(), d.Month(), d.Day(), 0, 0, 0, 0, time.UTC)
}
