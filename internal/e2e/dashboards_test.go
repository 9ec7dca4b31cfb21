package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"

	"github.com/canopyhq/canopy/internal/synth"
)

// panelQuery is one ClickHouse query of a committed dashboard.
type panelQuery struct {
	board, title, sql string
	variable          bool // a template variable's query
}

type promQuery struct{ board, title, expr string }

// loadDashboards reads the committed dashboards as Grafana loads them.
func loadDashboards(t testing.TB) ([]panelQuery, []promQuery) {
	t.Helper()
	files, err := filepath.Glob("../../dashboards/*.json")
	if err != nil || len(files) == 0 {
		t.Fatalf("no dashboards: %v", err)
	}
	var sqls []panelQuery
	var proms []promQuery
	for _, f := range files {
		raw, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var d struct {
			UID    string `json:"uid"`
			Panels []struct {
				Title   string `json:"title"`
				Targets []struct {
					RawSQL string `json:"rawSql"`
					Expr   string `json:"expr"`
				} `json:"targets"`
			} `json:"panels"`
			Templating struct {
				List []struct {
					Name  string          `json:"name"`
					Type  string          `json:"type"`
					Query json.RawMessage `json:"query"`
				} `json:"list"`
			} `json:"templating"`
		}
		if err := json.Unmarshal(raw, &d); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		for _, p := range d.Panels {
			for _, tg := range p.Targets {
				switch {
				case tg.RawSQL != "":
					sqls = append(sqls, panelQuery{board: d.UID, title: p.Title, sql: tg.RawSQL})
				case tg.Expr != "":
					proms = append(proms, promQuery{board: d.UID, title: p.Title, expr: tg.Expr})
				default:
					t.Fatalf("%s: panel %q has a target with no query", d.UID, p.Title)
				}
			}
		}
		for _, v := range d.Templating.List {
			if v.Type != "query" {
				continue
			}
			var q struct {
				RawSQL string `json:"rawSql"`
			}
			if err := json.Unmarshal(v.Query, &q); err != nil || q.RawSQL == "" {
				t.Fatalf("%s: variable %s: query %s", d.UID, v.Name, v.Query)
			}
			sqls = append(sqls, panelQuery{board: d.UID, title: "$" + v.Name, sql: q.RawSQL, variable: true})
		}
	}
	return sqls, proms
}

// pgEntity is an entity as PostgreSQL holds it now.
type pgEntity struct {
	parent       int64
	name, status string
}

func (e *env) pgEntities() map[int64]pgEntity {
	e.t.Helper()
	rows, err := e.pg.Query(context.Background(), "select id, coalesce(parent_id, 0), coalesce(name, ''), status from canopy.entities")
	if err != nil {
		e.t.Fatal(err)
	}
	defer rows.Close()
	out := map[int64]pgEntity{}
	for rows.Next() {
		var id int64
		var x pgEntity
		if err := rows.Scan(&id, &x.parent, &x.name, &x.status); err != nil {
			e.t.Fatal(err)
		}
		out[id] = x
	}
	return out
}

// level counts id's ancestors in ents.
func level(ents map[int64]pgEntity, id int64) int {
	n := 0
	for p := ents[id].parent; p != 0; p = ents[p].parent {
		n++
	}
	return n
}

// dashOracle computes what each dashboard query must return, from the
// naive attribution of the generated events and PostgreSQL's hierarchy.
type dashOracle struct {
	hourly, daily, current map[rollupKey]sums
	ents                   map[int64]pgEntity
	events                 map[string]synth.Event
	dupes, bad             int
	badClasses             map[string]int
}

type dashCase struct {
	vars     map[string]string
	from, to time.Time
}

var measuresOf = []string{"events", "amount", "quantity"}

func (s sums) get(m string) string {
	switch m {
	case "events":
		return strconv.FormatInt(s.events, 10)
	case "amount":
		return units(s.amount)
	}
	return strconv.FormatInt(s.quantity, 10)
}

func (s sums) add(o sums) sums {
	if s.amount == nil {
		s.amount = new(big.Int)
	}
	s.events += o.events
	s.amount = new(big.Int).Add(s.amount, orZero(o.amount))
	s.quantity += o.quantity
	return s
}

func orZero(a *big.Int) *big.Int {
	if a == nil {
		return new(big.Int)
	}
	return a
}

// cmp orders sums by one measure.
func (s sums) cmp(o sums, m string) int {
	switch m {
	case "events":
		return cmpInt(s.events, o.events)
	case "amount":
		return orZero(s.amount).Cmp(orZero(o.amount))
	}
	return cmpInt(s.quantity, o.quantity)
}

func cmpInt(a, b int64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func dayOf(t time.Time) time.Time {
	t = t.UTC()
	return time.Date(t.Year(), t.Month(), t.Day(), 0, 0, 0, 0, time.UTC)
}

// table picks the rollup the case's view reads, and whether the time series
// are hourly.
func (o *dashOracle) table(c dashCase) (map[rollupKey]sums, bool) {
	if c.vars["view"] == "rollup_daily_current" {
		return o.current, false
	}
	return o.daily, c.to.Unix()-c.from.Unix() <= 259200
}

// rows sums the daily rows of the case's view in its days that match keep,
// grouped by group.
func (o *dashOracle) rows(c dashCase, keep func(rollupKey) bool, group func(rollupKey) string) map[string][2]sums {
	tab, _ := o.table(c)
	lo, hi := dayOf(c.from).Unix(), dayOf(c.to).Unix()
	out := map[string][2]sums{}
	for k, s := range tab {
		if k.bucket < lo || k.bucket > hi || !keep(k) {
			continue
		}
		g := group(k)
		pair := out[g]
		if k.depth == 0 {
			pair[0] = pair[0].add(s)
		} else {
			pair[1] = pair[1].add(s)
		}
		out[g] = pair
	}
	return out
}

var (
	ownDownline = regexp.MustCompile(`^(\w+): own vs downline$`)
	overTime    = regexp.MustCompile(`^(\w+) over time: own and downline$`)
	childrenBy  = regexp.MustCompile(`^Direct children by downline (\w+)`)
)

// want returns the rows q must return in case c, in order when the query
// orders them fully (ordered), else as a set.
func (o *dashOracle) want(t testing.TB, q panelQuery, c dashCase) (rows [][]string, ordered bool) {
	t.Helper()
	entity, _ := strconv.ParseInt(c.vars["entity"], 10, 64)
	self := func(k rollupKey) bool { return k.entity == entity }
	all := func(rollupKey) string { return "" }
	switch m := q.title; {
	case m == "$entity":
		search := strings.ToLower(c.vars["__searchFilter"])
		var ids []int64
		for id, x := range o.ents {
			if strings.Contains(strings.ToLower(strconv.FormatInt(id, 10)+" "+x.name), search) {
				ids = append(ids, id)
			}
		}
		sort.Slice(ids, func(i, j int) bool {
			li, lj := level(o.ents, ids[i]), level(o.ents, ids[j])
			return li < lj || li == lj && ids[i] < ids[j]
		})
		for _, id := range ids[:min(len(ids), 200)] {
			rows = append(rows, []string{o.ents[id].name + " · " + strconv.FormatInt(id, 10), strconv.FormatInt(id, 10)})
		}
		return rows, true
	case m == "$level":
		seen := map[int]bool{}
		for id := range o.ents {
			seen[level(o.ents, id)] = true
		}
		for l := 0; l < 64; l++ {
			if seen[l] {
				rows = append(rows, []string{strconv.Itoa(l)})
			}
		}
		return rows, true
	case m == "Entity":
		x := o.ents[entity]
		var path []string
		for id := entity; id != 0; id = o.ents[id].parent {
			path = append([]string{strconv.FormatInt(id, 10)}, path...)
		}
		return [][]string{{c.vars["entity"], x.name, x.status, strconv.Itoa(level(o.ents, entity)),
			strconv.FormatInt(x.parent, 10), strings.Join(path, " › ")}}, true
	case ownDownline.MatchString(m):
		meas := strings.ToLower(ownDownline.FindStringSubmatch(m)[1])
		p := o.rows(c, self, all)[""]
		return [][]string{{p[0].get(meas), p[1].get(meas)}}, true
	case overTime.MatchString(m):
		meas := strings.ToLower(overTime.FindStringSubmatch(m)[1])
		tab, hourly := o.table(c)
		if hourly {
			tab = o.hourly
		}
		lo, hi := dayOf(c.from).Unix(), dayOf(c.to).Unix()
		if hourly {
			lo, hi = c.from.Unix(), c.to.Unix()
		}
		return series(tab, func(k rollupKey) bool { return k.entity == entity && k.bucket >= lo && k.bucket <= hi }, meas), true
	case strings.HasPrefix(m, "By level below the entity"), m == "By type":
		byDepth := strings.HasPrefix(m, "By level")
		g := o.rows(c, self, func(k rollupKey) string {
			if byDepth {
				return fmt.Sprintf("%03d", k.depth)
			}
			return k.typ
		})
		var keys []string
		for k := range g {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			s := g[k][0].add(g[k][1])
			label := k
			if byDepth {
				n, _ := strconv.Atoi(k)
				label = strconv.Itoa(n)
			}
			rows = append(rows, []string{label, s.get("events"), s.get("amount"), s.get("quantity")})
		}
		return rows, true
	case childrenBy.MatchString(m):
		meas := childrenBy.FindStringSubmatch(m)[1]
		g := o.rows(c, func(k rollupKey) bool { return o.ents[k.entity].parent == entity },
			func(k rollupKey) string { return strconv.FormatInt(k.entity, 10) })
		return ranked(g, meas, 100, func(id string, p [2]sums) []string {
			n, _ := strconv.ParseInt(id, 10, 64)
			return []string{id, o.ents[n].name, p[0].get(meas), p[1].get(meas), p[0].add(p[1]).get(meas), p[0].add(p[1]).get("events")}
		}), true
	case strings.HasPrefix(m, "Top entities at level"):
		meas := c.vars["measure"]
		lvl, _ := strconv.Atoi(c.vars["level"])
		limit, _ := strconv.Atoi(c.vars["limit"])
		g := o.rows(c, func(k rollupKey) bool { return level(o.ents, k.entity) == lvl },
			func(k rollupKey) string { return strconv.FormatInt(k.entity, 10) })
		return ranked(g, meas, limit, func(id string, p [2]sums) []string {
			n, _ := strconv.ParseInt(id, 10, 64)
			return []string{id, o.ents[n].name, p[1].get(meas), p[0].get(meas), p[0].add(p[1]).get(meas)}
		}), true
	case m == "Volume by level":
		meas := c.vars["measure"]
		g := o.rows(c, func(k rollupKey) bool { return k.depth == 0 },
			func(k rollupKey) string { return strconv.FormatInt(k.entity, 10) })
		byLevel := map[int]struct {
			n   int
			own sums
		}{}
		for id := range g {
			n, _ := strconv.ParseInt(id, 10, 64)
			l := byLevel[level(o.ents, n)]
			l.n++
			l.own = l.own.add(g[id][0])
			byLevel[level(o.ents, n)] = l
		}
		for l := 0; l < 64; l++ {
			if v, ok := byLevel[l]; ok {
				rows = append(rows, []string{strconv.Itoa(l), strconv.Itoa(v.n), v.own.get(meas)})
			}
		}
		return rows, true
	case strings.HasPrefix(m, "Acknowledged records per minute"):
		// Per-minute counts depend on timing; their totals do not.
		return [][]string{{"", strconv.Itoa(len(o.events)), strconv.Itoa(o.dupes), strconv.Itoa(o.bad), "0"}}, false
	case strings.HasPrefix(m, "Failures by class"):
		var classes []string
		for cl := range o.badClasses {
			classes = append(classes, cl)
		}
		sort.Slice(classes, func(i, j int) bool {
			a, b := o.badClasses[classes[i]], o.badClasses[classes[j]]
			return a > b || a == b && classes[i] < classes[j]
		})
		for _, cl := range classes {
			rows = append(rows, []string{cl, "", strconv.Itoa(o.badClasses[cl]), ""})
		}
		return rows, true
	case strings.HasPrefix(m, "Most recent unresolved failures"):
		return nil, false // checked by count below
	}
	t.Fatalf("%s: no oracle for panel %q: add one", q.board, q.title)
	return nil, false
}

// series sums the rows of tab that keep accepts by bucket, own (depth 0)
// and downline apart, as rows (bucket, own, downline) of measure meas in
// time order.
func series(tab map[rollupKey]sums, keep func(rollupKey) bool, meas string) [][]string {
	by := map[int64][2]sums{}
	for k, s := range tab {
		if !keep(k) {
			continue
		}
		p := by[k.bucket]
		if k.depth == 0 {
			p[0] = p[0].add(s)
		} else {
			p[1] = p[1].add(s)
		}
		by[k.bucket] = p
	}
	var times []int64
	for b := range by {
		times = append(times, b)
	}
	sort.Slice(times, func(i, j int) bool { return times[i] < times[j] })
	var rows [][]string
	for _, b := range times {
		rows = append(rows, []string{strconv.FormatInt(b, 10), by[b][0].get(meas), by[b][1].get(meas)})
	}
	return rows
}

// ranked orders groups by their downline measure (descending, then id) and
// renders the first limit.
func ranked(g map[string][2]sums, meas string, limit int, render func(string, [2]sums) []string) [][]string {
	var ids []string
	for id := range g {
		ids = append(ids, id)
	}
	sort.Slice(ids, func(i, j int) bool {
		if c := g[ids[i]][1].cmp(g[ids[j]][1], meas); c != 0 {
			return c > 0
		}
		a, _ := strconv.ParseInt(ids[i], 10, 64)
		b, _ := strconv.ParseInt(ids[j], 10, 64)
		return a < b
	})
	var rows [][]string
	for _, id := range ids[:min(len(ids), limit)] {
		rows = append(rows, render(id, g[id]))
	}
	return rows
}

// TestDashboardQueriesMatchOracle runs every ClickHouse query of every
// committed dashboard, template variables and macros expanded as Grafana and
// the plugin expand them, for a chosen entity, level and ranges (daily and
// hourly grain, as-was and as-is), and compares what it returns with the
// oracle. Every Prometheus expression must name metrics the worker or
// reconcile --watch export.
func TestDashboardQueriesMatchOracle(t *testing.T) {
	seed := seedFromEnv(t)
	t.Logf("seed %d (set CANOPY_TEST_SEED to replay)", seed)
	e := newEnv(t, 2)
	sc := e.setUp(seed, 3000, 60000)
	metricsAddr := freeAddr(t)
	e.vars = append(e.vars, "CANOPY_HTTP_ADDR="+metricsAddr)
	e.startWorker(1)
	keys, values := sc.records()
	bad := map[string][]string{
		"invalid_json":   {`{"event_id":`, `not json at all`},
		"missing_field":  {`{"event_id":"m1","entity_id":1,"type":"sale"}`},
		"unknown_entity": {`{"event_id":"u1","entity_id":99999999,"occurred_at":"2026-10-28T00:00:00Z","type":"sale"}`},
	}
	o := &dashOracle{badClasses: map[string]int{}}
	for cl, recs := range bad {
		for _, r := range recs {
			keys, values = append(keys, nil), append(values, []byte(r))
			o.badClasses[cl]++
			o.bad++
		}
	}
	e.produce(keys, values)
	e.waitAcked(uint64(len(values)), 3*time.Minute)
	e.waitRestated(time.Minute)

	or := buildOracle(sc.history, sc.events)
	o.events = or.events
	o.dupes = len(sc.events) - len(or.events)
	o.hourly, o.daily = attribute(sc.history, or.events, false, false)
	_, o.current = attribute(sc.history, or.events, true, false)
	o.ents = e.pgEntities()

	// The entity: the one with the most direct children among those at
	// level 1 or 2; the level: 2.
	children := map[int64]int{}
	for _, x := range o.ents {
		children[x.parent]++
	}
	var entity int64
	for id := range o.ents {
		if l := level(o.ents, id); (l == 1 || l == 2) && (children[id] > children[entity] || children[id] == children[entity] && id < entity) {
			entity = id
		}
	}
	t.Logf("entity %d (%s) with %d children", entity, o.ents[entity].name, children[entity])

	day := func(d int, h int) time.Time { return time.Date(2026, 10, d, h, 0, 0, 0, time.UTC) }
	now := time.Now().UTC()
	var cases []dashCase
	for _, view := range []string{"rollup_daily", "rollup_daily_current"} {
		for _, r := range [][2]time.Time{
			{day(28, 0), day(31, 23).Add(59*time.Minute + 59*time.Second)}, // 4 days: daily
			{day(29, 6), day(30, 18)},                                      // 36 hours: hourly (as-was)
		} {
			cases = append(cases, dashCase{vars: map[string]string{
				"entity": strconv.FormatInt(entity, 10), "view": view, "level": "2", "measure": "amount", "limit": "10",
				"__searchFilter": strconv.FormatInt(entity, 10),
			}, from: r[0], to: r[1]})
		}
	}
	health := dashCase{vars: map[string]string{}, from: now.Add(-time.Hour), to: now.Add(time.Minute)}

	sqls, proms := loadDashboards(t)
	checked := 0
	for _, q := range sqls {
		cs := cases
		if q.board == "canopy-pipeline-health" {
			cs = []dashCase{health}
		}
		for _, c := range cs {
			sql := expandGrafana(strings.ReplaceAll(q.sql, "canopy.", e.chDB+"."), c.vars, c.from, c.to, time.Minute)
			if strings.Contains(sql, "$") {
				t.Fatalf("%s %q: unexpanded variable or macro in\n%s", q.board, q.title, sql)
			}
			_, got, err := e.queryText(sql)
			if err != nil {
				t.Fatalf("%s %q: %v\n%s", q.board, q.title, err, sql)
			}
			want, ordered := o.want(t, q, c)
			switch {
			case strings.HasPrefix(q.title, "Most recent unresolved failures"):
				if len(got) != o.bad {
					t.Errorf("%s %q: %d rows, want %d unresolved failures", q.board, q.title, len(got), o.bad)
				}
			case strings.HasPrefix(q.title, "Acknowledged records per minute"):
				tot, err := ackTotals(got)
				if err != nil {
					t.Fatalf("%s %q: %v", q.board, q.title, err)
				}
				g := []string{"", strconv.FormatInt(tot[0], 10), strconv.FormatInt(tot[1], 10), strconv.FormatInt(tot[2], 10), strconv.FormatInt(tot[3], 10)}
				if strings.Join(g, ",") != strings.Join(want[0], ",") {
					t.Errorf("%s %q: totals %v, want %v", q.board, q.title, g, want[0])
				}
			case strings.HasPrefix(q.title, "Failures by class"):
				for _, r := range got {
					r[3] = "" // last_seen: a time
				}
				compareRows(t, q, c, want, got, ordered)
			default:
				if len(want) == 0 {
					t.Errorf("%s %q: the oracle expects no rows for %v; choose a better case", q.board, q.title, c.vars)
				}
				compareRows(t, q, c, want, got, ordered)
			}
			checked++
		}
	}
	t.Logf("%d dashboard queries checked against the oracle", checked)

	// Prometheus expressions name metrics that exist.
	reconcileAddr := freeAddr(t)
	rc := exec.Command(binary, "reconcile", "--watch", "1h")
	rc.Env = append(append([]string(nil), e.vars...), "CANOPY_HTTP_ADDR="+reconcileAddr)
	if err := rc.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = rc.Process.Kill(); _ = rc.Wait() }()
	exported := map[string]bool{}
	for _, addr := range []string{metricsAddr, reconcileAddr} {
		var m map[string]float64
		for i := 0; i < 50 && len(m) == 0; i++ {
			m, _ = scrapeErr(addr)
			time.Sleep(200 * time.Millisecond)
		}
		for k := range m {
			exported[strings.SplitN(k, "{", 2)[0]] = true
		}
	}
	metric := regexp.MustCompile(`canopy_[a-z_]+`)
	for _, p := range proms {
		for _, name := range metric.FindAllString(p.expr, -1) {
			if !exported[name] {
				t.Errorf("%s %q: metric %s is not exported by the worker or reconcile", p.board, p.title, name)
			}
		}
	}
}

func compareRows(t testing.TB, q panelQuery, c dashCase, want, got [][]string, ordered bool) {
	t.Helper()
	norm := func(rows [][]string) []string {
		out := make([]string, len(rows))
		for i, r := range rows {
			out[i] = strings.Join(r, " | ")
		}
		if !ordered {
			sort.Strings(out)
		}
		return out
	}
	w, g := norm(want), norm(got)
	if strings.Join(w, "\n") != strings.Join(g, "\n") {
		n := max(len(w), len(g))
		var diff []string
		for i := 0; i < n && len(diff) < 10; i++ {
			var a, b string
			if i < len(w) {
				a = w[i]
			}
			if i < len(g) {
				b = g[i]
			}
			if a != b {
				diff = append(diff, fmt.Sprintf("row %d: want %q\n        got  %q", i, a, b))
			}
		}
		t.Errorf("%s %q (%v, %s … %s): %d rows, want %d:\n%s", q.board, q.title, c.vars, c.from.Format(time.RFC3339), c.to.Format(time.RFC3339),
			len(g), len(w), strings.Join(diff, "\n"))
	}
}

// TestReadOnlyUser logs in as the read-only user that migrate provides for
// Grafana and analysts: it reads, and is refused writes and DDL.
func TestReadOnlyUser(t *testing.T) {
	e, u, _ := newConfinedEnv(t, 1) // migrate provides the reader; privilege_test.go
	opts, err := clickhouse.ParseDSN(e.svc.chDSN)
	if err != nil {
		t.Fatal(err)
	}
	opts.Auth = clickhouse.Auth{Database: e.chDB, Username: "canopy_reader", Password: u.readerPassword}
	reader, err := clickhouse.Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = reader.Close() }()
	ctx := context.Background()
	var n uint64
	if err := reader.QueryRow(ctx, "SELECT count() FROM "+e.chDB+".rollup_daily").Scan(&n); err != nil {
		t.Fatalf("the reader cannot read: %v", err)
	}
	for _, q := range []string{
		"INSERT INTO " + e.chDB + ".rollup_daily (entity_id, bucket, depth, type, events, ingest_unit) SELECT toUInt64(1), today(), toUInt8(0), 'x', toInt64(1), 'reader'",
		"DROP TABLE " + e.chDB + ".rollup_daily",
		"CREATE TABLE " + e.chDB + ".reader_table (a UInt8) ENGINE = Memory",
		"ALTER TABLE " + e.chDB + ".rollup_daily DELETE WHERE 1 = 1",
	} {
		if err := reader.Exec(ctx, q); !refusedAsReader(err) {
			t.Errorf("the reader ran %q: %v", q, err)
		}
	}
	if err := e.ch.QueryRow(ctx, "SELECT count() FROM "+e.chDB+".rollup_daily").Scan(&n); err != nil || n != 0 {
		t.Fatalf("rollup_daily after the reader's attempts: %d rows, %v", n, err)
	}
}

// refusedAsReader reports whether err is ClickHouse refusing a write for
// want of the right: READONLY (164) where the user is readonly in its
// profile (18.16), ACCESS_DENIED (497) where grants decide first (current
// releases check them before the profile).
func refusedAsReader(err error) bool {
	var ex *clickhouse.Exception
	if errors.As(err, &ex) {
		return ex.Code == 164 || ex.Code == 497
	}
	return err != nil && strings.Contains(strings.ToLower(err.Error()), "readonly")
}

// hostileValues are what a viewer can put in a dashboard URL
// (var-name=value) to try to leave the query's template: quotes of every
// kind, the backslash ClickHouse reads as an escape (Grafana's sqlstring
// format doubles ' but keeps \, so \' would close its literal), statement
// separators, comment markers, a UNION with another database's table,
// another table's name and a long value.
var hostileValues = []string{
	`'`, `\`, `\'`, `\' OR 1 = 1 -- `, `"`, "`", `''`,
	`1) UNION ALL SELECT name, 1, 1, 1, 1 FROM system.users --`,
	`1 UNION ALL SELECT * FROM system.one`,
	`0 OR 1 = 1`,
	`events_x; DROP TABLE rollup_daily`,
	`rollup_daily' OR '1' = '1`,
	`rollup_daily_current; SELECT 1`,
	`*/ SELECT 1 /*`, `-- comment`, `/* comment`, "amount` FROM system.users --",
	`system.users`, "`system`.`users`", `canopy.entities`,
	`%27%20OR%201%3D1`, "a\nb\x00c",
	strings.Repeat(`a'\`, 1000),
}

// TestDashboardVariablesHostile feeds hostileValues through every template
// variable of every ClickHouse query of the committed dashboards, expanded
// as Grafana expands them (expandGrafana: ${v:percentencode} as Grafana's
// percentencode format), and proves that none leaves its template:
//   - lexically, the expanded query is the same sequence of tokens as with
//     a harmless value outside the allowed set ("zz"), the value only
//     changing the text inside string literals and quoted identifiers: no
//     new statement, comment, keyword, table or column;
//   - every FROM and JOIN names a table of Canopy's database;
//   - ClickHouse runs it with the same outcome as with "zz": the same rows,
//     or the same error code (an unknown column for a measure that is not
//     one), never a syntax error.
func TestDashboardVariablesHostile(t *testing.T) {
	e := newEnv(t, 1)
	e.run("migrate")
	sqls, _ := loadDashboards(t)
	valid := map[string]string{"entity": "1", "view": "rollup_daily", "level": "1", "measure": "amount", "limit": "10", "__searchFilter": "1%"}
	from, to := time.Date(2026, 10, 28, 0, 0, 0, 0, time.UTC), time.Date(2026, 10, 31, 0, 0, 0, 0, time.UTC)
	tables := map[string]bool{}
	for _, tb := range []string{"rollup_hourly", "rollup_daily", "rollup_daily_current", "entities", "entities_by_parent", "ingest_acks", "ingest_failures"} {
		tables[e.chDB+"."+tb] = true
	}
	expand := func(q panelQuery, name, value string) string {
		vars := map[string]string{}
		for k, v := range valid {
			vars[k] = v
		}
		vars[name] = value
		return expandGrafana(strings.ReplaceAll(q.sql, "canopy.", e.chDB+"."), vars, from, to, time.Minute)
	}
	outcome := func(sql string) string {
		_, rows, err := e.queryText(sql)
		if err != nil {
			var ex *clickhouse.Exception
			if errors.As(err, &ex) {
				return fmt.Sprintf("error %d", ex.Code)
			}
			return "error " + err.Error()
		}
		return fmt.Sprint(rows)
	}
	checked := 0
	for _, q := range sqls {
		for name := range valid {
			if !strings.Contains(q.sql, "${"+name+":") {
				continue
			}
			base := expand(q, name, "zz")
			baseTokens := chTokens(base)
			for _, tok := range baseTokens {
				if tok.kind == tokComment || tok.text == ";" {
					t.Fatalf("%s %q: the template itself has %q", q.board, q.title, tok.text)
				}
			}
			for i, tok := range baseTokens {
				if (strings.EqualFold(tok.text, "FROM") || strings.EqualFold(tok.text, "JOIN")) && i+3 < len(baseTokens) &&
					baseTokens[i+1].kind == tokWord && baseTokens[i+2].text == "." {
					if tbl := baseTokens[i+1].text + "." + baseTokens[i+3].text; !tables[tbl] {
						t.Errorf("%s %q: reads %s, not a Canopy table", q.board, q.title, tbl)
					}
				}
			}
			want := outcome(base)
			if strings.HasPrefix(want, "error 62") {
				t.Fatalf("%s %q: syntax error with $%s=zz: %s\n%s", q.board, q.title, name, want, base)
			}
			for _, hv := range hostileValues {
				sql := expand(q, name, hv)
				if strings.Contains(sql, "$") {
					t.Fatalf("%s %q: unexpanded variable in\n%s", q.board, q.title, sql)
				}
				if err := sameShape(baseTokens, chTokens(sql)); err != nil {
					t.Errorf("%s %q: $%s=%.40q changes the query: %v", q.board, q.title, name, hv, err)
					continue
				}
				if got := outcome(sql); got != want {
					t.Errorf("%s %q: $%s=%.40q: %.200s, want %.200s as with any value outside the allowed set", q.board, q.title, name, hv, got, want)
				}
				checked++
			}
		}
	}
	if checked == 0 {
		t.Fatal("no query uses a template variable")
	}
	t.Logf("%d hostile expansions checked", checked)
}

type tokKind int

const (
	tokWord tokKind = iota
	tokString
	tokQuotedIdent
	tokComment
	tokPunct
)

type chToken struct {
	kind tokKind
	text string
}

// chTokens splits ClickHouse SQL as its lexer does, as far as a template
// needs: whitespace, -- and /* */ comments, '…' strings and `…` or "…"
// identifiers (a backslash escapes the next character, a doubled quote is
// one), runs of word characters, and any other byte alone. An unterminated
// literal runs to the end.
func chTokens(sql string) []chToken {
	var out []chToken
	for i := 0; i < len(sql); {
		c := sql[i]
		switch {
		case c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v':
			i++
		case strings.HasPrefix(sql[i:], "--"):
			j := strings.IndexByte(sql[i:], '\n')
			if j < 0 {
				j = len(sql) - i
			}
			out, i = append(out, chToken{tokComment, sql[i : i+j]}), i+j
		case strings.HasPrefix(sql[i:], "/*"):
			j := strings.Index(sql[i+2:], "*/")
			end := len(sql)
			if j >= 0 {
				end = i + 2 + j + 2
			}
			out, i = append(out, chToken{tokComment, sql[i:end]}), end
		case c == '\'' || c == '`' || c == '"':
			j := i + 1
			for j < len(sql) {
				if sql[j] == '\\' {
					j += 2
					continue
				}
				if sql[j] == c {
					if j+1 < len(sql) && sql[j+1] == c {
						j += 2
						continue
					}
					j++
					break
				}
				j++
			}
			j = min(j, len(sql))
			k := tokString
			if c != '\'' {
				k = tokQuotedIdent
			}
			out, i = append(out, chToken{k, sql[i:j]}), j
		case c == '_' || c >= '0' && c <= '9' || c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= 0x80:
			j := i
			for j < len(sql) && (sql[j] == '_' || sql[j] >= '0' && sql[j] <= '9' || sql[j] >= 'A' && sql[j] <= 'Z' || sql[j] >= 'a' && sql[j] <= 'z' || sql[j] >= 0x80) {
				j++
			}
			out, i = append(out, chToken{tokWord, sql[i:j]}), j
		default:
			out, i = append(out, chToken{tokPunct, sql[i : i+1]}), i+1
		}
	}
	return out
}

// sameShape reports how got differs from want other than in the text of
// string literals and quoted identifiers.
func sameShape(want, got []chToken) error {
	if len(want) != len(got) {
		return fmt.Errorf("%d tokens, want %d", len(got), len(want))
	}
	for i := range want {
		if want[i].kind != got[i].kind {
			return fmt.Errorf("token %d is %q, want one like %q", i, got[i].text, want[i].text)
		}
		if want[i].kind != tokString && want[i].kind != tokQuotedIdent && want[i].text != got[i].text {
			return fmt.Errorf("token %d is %q, want %q", i, got[i].text, want[i].text)
		}
	}
	return nil
}

// TestAcksPanelSeparatesTopicIncarnations checks the pipeline-health panel
// of ingest_acks against acks written as a worker writes them: a range
// acknowledged twice (a late replay) counts once, and a topic deleted and
// created again, whose ranges reuse the name and the offsets under another
// topic_id, counts as ranges of its own.
func TestAcksPanelSeparatesTopicIncarnations(t *testing.T) {
	e := newEnv(t, 1)
	ctx := context.Background()
	now := time.Now().UTC().Truncate(time.Second)
	type ack struct {
		topicID          string
		last             int64
		accepted, dupes  uint32
		dead, retried    uint32
		minutesBeforeNow int
	}
	acks := []ack{
		{"incarnation-1", 9, 8, 1, 1, 0, 20},
		{"incarnation-1", 9, 8, 1, 1, 0, 10}, // the same range again: a late replay
		{"incarnation-2", 4, 3, 1, 0, 1, 5},  // the topic created again: offsets from 0
	}
	for _, a := range acks {
		b, err := e.ch.PrepareBatch(ctx, "INSERT INTO "+e.chDB+`.ingest_acks (topic, topic_id, partition, first_offset, last_offset,
			records, accepted, duplicates, dead_lettered, retried, hierarchy_version, processed_at)`)
		if err != nil {
			t.Fatal(err)
		}
		records := a.accepted + a.dupes + a.dead + a.retried
		if err := b.Append("events", a.topicID, int32(0), int64(0), a.last, records, a.accepted, a.dupes, a.dead, a.retried,
			int64(1), now.Add(-time.Duration(a.minutesBeforeNow)*time.Minute)); err != nil {
			t.Fatal(err)
		}
		if err := b.Send(); err != nil {
			t.Fatal(err)
		}
	}
	// The oracle: each (topic id, partition, first offset) once.
	var want [4]int64
	seen := map[string]bool{}
	for _, a := range acks {
		k := fmt.Sprintf("%s/0/0", a.topicID)
		if seen[k] {
			continue
		}
		seen[k] = true
		for i, n := range []uint32{a.accepted, a.dupes, a.dead, a.retried} {
			want[i] += int64(n)
		}
	}

	sqls, _ := loadDashboards(t)
	found := false
	for _, q := range sqls {
		if !strings.HasPrefix(q.title, "Acknowledged records per minute") {
			continue
		}
		found = true
		sql := expandGrafana(strings.ReplaceAll(q.sql, "canopy.", e.chDB+"."), nil, now.Add(-time.Hour), now.Add(time.Minute), time.Minute)
		_, rows, err := e.queryText(sql)
		if err != nil {
			t.Fatalf("%q: %v\n%s", q.title, err, sql)
		}
		got, err := ackTotals(rows)
		if err != nil {
			t.Fatalf("%q: %v", q.title, err)
		}
		if got != want {
			t.Errorf("%q: accepted, duplicates, dead-lettered, retried = %v, want %v", q.title, got, want)
		}
	}
	if !found {
		t.Fatal("no panel of ingest_acks in the committed dashboards")
	}
}

// ackTotals sums the acks panel's rows (time, accepted, duplicates,
// dead-lettered, retried) over its minutes.
func ackTotals(rows [][]string) ([4]int64, error) {
	var tot [4]int64
	for _, r := range rows {
		for i := range tot {
			n, err := strconv.ParseInt(r[i+1], 10, 64)
			if err != nil {
				return tot, fmt.Errorf("row %v: %w", r, err)
			}
			tot[i] += n
		}
	}
	return tot, nil
}
