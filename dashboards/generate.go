// Package dashboards generates Canopy's Grafana dashboards and their
// provisioning files from the measures declared in canopy.yaml, the same
// declarations that shape the ClickHouse tables. `canopy dashboards
// generate` writes them; a test fails when the committed files differ.
//
// Boards, panels, targets and variables are built with grafana-tools/sdk;
// what the SDK does not model (the ClickHouse plugin's query fields, field
// links, panel options of current Grafana) is set on the marshalled JSON.
//
// It imports schema only: the dashboards depend on the declarations, never
// on the code that writes the tables.
package dashboards

import (
	"bytes"
	"encoding/json"
	"fmt"
	"sort"
	"strings"

	"github.com/grafana-tools/sdk"

	"github.com/canopyhq/canopy/schema"
)

// Datasource and dashboard uids. They are stable: links between
// dashboards, and bookmarks, depend on them.
const (
	ClickHouseUID   = "canopy-clickhouse"
	PrometheusUID   = "canopy-prometheus"
	OverviewUID     = "canopy-entity-overview"
	LeaderboardsUID = "canopy-leaderboards"
	HealthUID       = "canopy-pipeline-health"

	ClickHouseType = "grafana-clickhouse-datasource"
	PrometheusType = "prometheus"
)

// Options are the inputs of the generator.
type Options struct {
	Database string          // ClickHouse database, as in the tables' names
	Measures schema.Measures // from canopy.yaml
	Reader   string          // ClickHouse read-only user of the datasource
	// Grains are the configured rollup grains (default hourly and daily);
	// with weekly, the overview's time series has a point a week over
	// ranges longer than 90 days.
	Grains []schema.Grain
	// PasswordFile is where Grafana reads the reader's password from when
	// it provisions the datasource ($__file{…}): a mounted secret, never
	// the password itself, so that no generated file holds it.
	PasswordFile string
}

// DefaultPasswordFile is the reader's password as docker-compose.yml mounts
// it into Grafana (secret clickhouse_reader_password).
const DefaultPasswordFile = "/run/secrets/clickhouse_reader_password"

// Paths of the generated files, relative to the repository root.
const (
	DashboardDir       = "dashboards"
	ProviderFile       = "deploy/grafana/provisioning/dashboards/canopy.yaml"
	DatasourceFile     = "deploy/grafana/provisioning/datasources/clickhouse.yaml"
	overviewFile       = "entity-overview.json"
	leaderboardsFile   = "leaderboards.json"
	pipelineHealthFile = "pipeline-health.json"
)

// Files returns every generated file by path relative to the repository
// root.
func Files(o Options) (map[string][]byte, error) {
	if o.Database == "" {
		o.Database = "canopy"
	}
	if o.Reader == "" {
		o.Reader = "canopy_reader"
	}
	if o.PasswordFile == "" {
		o.PasswordFile = DefaultPasswordFile
	}
	if strings.ContainsAny(o.PasswordFile, "{}\n") {
		return nil, fmt.Errorf("reader password file %q: braces and newlines cannot go into $__file{…}", o.PasswordFile)
	}
	out := map[string][]byte{}
	for name, b := range map[string]*board{
		overviewFile:       overview(o),
		leaderboardsFile:   leaderboards(o),
		pipelineHealthFile: pipelineHealth(o),
	} {
		data, err := b.json()
		if err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		out[DashboardDir+"/"+name] = data
	}
	out[ProviderFile] = []byte(providerYAML)
	out[DatasourceFile] = []byte(fmt.Sprintf(datasourceYAML, o.Database, o.Reader, o.PasswordFile))
	return out, nil
}

// board is a dashboard being built: the SDK board plus, per panel id, what
// the SDK cannot express.
type board struct {
	b      *sdk.Board
	extra  map[uint]panelExtra
	nextID uint
	x, y   int
	rowH   int
}

type panelExtra struct {
	queryType string         // ClickHouse: "table" or "timeseries"
	format    int            // ClickHouse: 1 table, 0 time series
	fieldLink *fieldLink     // a data link on one field
	unit      string         // fieldConfig.defaults.unit
	options   map[string]any // panel options
}

type fieldLink struct {
	field, title, url string
}

func newBoard(uid, title string, tags ...string) *board {
	b := sdk.NewBoard(title)
	b.ID = 0
	b.UID = uid
	b.Slug = ""
	b.Tags = append([]string{"canopy"}, tags...)
	b.Timezone = "utc"
	b.Editable = false
	b.SchemaVersion = 39
	b.Rows = nil
	b.Time = sdk.Time{From: "now-7d", To: "now"}
	b.Timepicker = sdk.Timepicker{RefreshIntervals: []string{"30s", "1m", "5m", "15m"}, TimeOptions: []string{}}
	b.Links = []sdk.Link{}
	for _, other := range []struct{ uid, title string }{
		{OverviewUID, "Entity overview"}, {LeaderboardsUID, "Leaderboards"}, {HealthUID, "Pipeline health"},
	} {
		if other.uid == uid {
			continue
		}
		url := "/d/" + other.uid
		b.Links = append(b.Links, sdk.Link{Title: other.title, Type: "link", URL: &url, KeepTime: boolp(true), IncludeVars: false})
	}
	return &board{b: b, extra: map[uint]panelExtra{}}
}

func boolp(b bool) *bool { return &b }

// place puts the next panel of width w and height h left to right, wrapping
// at the dashboard's 24 columns.
func (bd *board) place(p *sdk.Panel, w, h int) {
	if bd.x+w > 24 {
		bd.x, bd.y, bd.rowH = 0, bd.y+bd.rowH, 0
	}
	x, y := bd.x, bd.y
	p.GridPos.X, p.GridPos.Y, p.GridPos.W, p.GridPos.H = &x, &y, &w, &h
	bd.x += w
	bd.rowH = max(bd.rowH, h)
	bd.nextID++
	p.ID = bd.nextID
	bd.b.Panels = append(bd.b.Panels, p)
}

var clickHouse = map[string]string{"type": ClickHouseType, "uid": ClickHouseUID}
var prometheus = map[string]string{"type": PrometheusType, "uid": PrometheusUID}

// sql adds a ClickHouse panel.
func (bd *board) sql(p *sdk.Panel, w, h int, query string, timeSeries bool, ex panelExtra) {
	p.Datasource = clickHouse
	p.AddTarget(&sdk.Target{RefID: "A", Datasource: clickHouse, RawSql: strings.TrimSpace(query)})
	ex.queryType, ex.format = "table", 1
	if timeSeries {
		ex.queryType, ex.format = "timeseries", 0
	}
	bd.place(p, w, h)
	bd.extra[p.ID] = ex
}

// prom adds a Prometheus panel with one target per expression.
func (bd *board) prom(p *sdk.Panel, w, h int, unit string, exprs ...[2]string) {
	p.Datasource = prometheus
	for i, e := range exprs {
		p.AddTarget(&sdk.Target{RefID: string(rune('A' + i)), Datasource: prometheus, Expr: e[0], LegendFormat: e[1]})
	}
	bd.place(p, w, h)
	bd.extra[p.ID] = panelExtra{unit: unit}
}

func (bd *board) variable(v sdk.TemplateVar) {
	bd.b.Templating.List = append(bd.b.Templating.List, v)
}

// json marshals the board and completes it with what the SDK lacks.
func (bd *board) json() ([]byte, error) {
	raw, err := json.Marshal(bd.b)
	if err != nil {
		return nil, err
	}
	var m map[string]any
	if err := json.Unmarshal(raw, &m); err != nil {
		return nil, err
	}
	delete(m, "rows")
	delete(m, "slug")
	delete(m, "originalTitle")
	delete(m, "style")
	delete(m, "hideControls")
	delete(m, "sharedCrosshair")
	// Grafana's dashboard model (grafana-foundation-sdk, checked by
	// grafana_model_test.go) has no time_options in the time picker, no
	// allFormat or multiFormat in a variable, a number for refresh (0 never,
	// 1 on load), requires every field of a link, and leaves an empty list
	// out (Grafana reads a missing annotation, variable or option list as
	// empty).
	m["annotations"] = map[string]any{}
	if tp, ok := m["timepicker"].(map[string]any); ok {
		delete(tp, "time_options")
	}
	links, _ := m["links"].([]any)
	for _, lv := range links {
		l := lv.(map[string]any)
		for k, v := range map[string]any{"icon": "external link", "tooltip": "", "tags": []any{},
			"asDropdown": false, "targetBlank": false, "includeVars": false, "keepTime": false} {
			if _, ok := l[k]; !ok {
				l[k] = v
			}
		}
	}
	templating, _ := m["templating"].(map[string]any)
	vars, _ := templating["list"].([]any)
	if len(vars) == 0 {
		delete(templating, "list")
	}
	for _, vv := range vars {
		v := vv.(map[string]any)
		delete(v, "allFormat")
		delete(v, "multiFormat")
		if opts, _ := v["options"].([]any); len(opts) == 0 {
			delete(v, "options") // a query variable's come from its query
		}
		if v["datasource"] == nil {
			delete(v, "datasource") // a custom variable has none
		}
		if r, isBool := v["refresh"].(bool); isBool {
			v["refresh"] = 0
			if r {
				v["refresh"] = 1
			}
		}
		// A query variable has no current value until its query ran:
		// Grafana selects the first value it returns.
		if cur, _ := v["current"].(map[string]any); cur["text"] == nil && cur["value"] == nil {
			delete(v, "current")
		}
	}
	panels, _ := m["panels"].([]any)
	for _, pv := range panels {
		p := pv.(map[string]any)
		id := uint(p["id"].(float64))
		ex := bd.extra[id]
		for _, k := range []string{"isNew", "error", "span", "editable", "transparent", "renderer", "links", "decimals", "scroll"} {
			delete(p, k)
		}
		// Options of current Grafana panels replace the SDK's legacy ones.
		for _, k := range []string{"styles", "columns", "transform", "sort", "colors", "thresholds", "valueName",
			"prefix", "postfix", "nullPointMode", "sparkline", "gauge", "format", "mappingType", "valueMaps", "rangeMaps",
			"colorBackground", "colorValue", "valueFontSize", "prefixFontSize", "postfixFontSize", "tableColumn", "options"} {
			delete(p, k)
		}
		targets, _ := p["targets"].([]any)
		for _, tv := range targets {
			t := tv.(map[string]any)
			if _, isSQL := t["rawSql"]; isSQL {
				t["editorType"] = "sql"
				t["queryType"] = ex.queryType
				t["format"] = ex.format
			}
		}
		fc := map[string]any{"defaults": map[string]any{}, "overrides": []any{}}
		if ex.unit != "" {
			fc["defaults"].(map[string]any)["unit"] = ex.unit
		}
		if l := ex.fieldLink; l != nil {
			fc["overrides"] = []any{map[string]any{
				"matcher": map[string]any{"id": "byName", "options": l.field},
				"properties": []any{map[string]any{"id": "links", "value": []any{
					map[string]any{"title": l.title, "url": l.url},
				}}},
			}}
		}
		p["fieldConfig"] = fc
		if ex.options != nil {
			p["options"] = ex.options
		}
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	// encoding/json writes map keys sorted: the output is stable.
	if err := enc.Encode(m); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// measureNames lists events and the declared measures: the columns every
// rollup sums.
func measureNames(ms schema.Measures) []string {
	out := []string{"events"}
	for _, m := range ms {
		out = append(out, m.Name)
	}
	return out
}

// rankMeasure is the measure children and leaders are ranked by: the first
// decimal measure (money), else the first measure, else the event count.
func rankMeasure(ms schema.Measures) string {
	for _, m := range ms {
		if m.Kind == schema.KindDecimal {
			return m.Name
		}
	}
	if len(ms) > 0 {
		return ms[0].Name
	}
	return "events"
}

// unitOf is the Grafana unit of a measure's panels.
func unitOf(name string) string {
	if name == "events" {
		return "short"
	}
	return "none"
}

func customVar(name, label string, opts [][2]string) sdk.TemplateVar {
	var q []string
	v := sdk.TemplateVar{Name: name, Label: label, Type: "custom", Options: []sdk.Option{}}
	for i, o := range opts {
		q = append(q, o[0]+" : "+o[1])
		v.Options = append(v.Options, sdk.Option{Text: o[0], Value: o[1], Selected: i == 0})
	}
	v.Query = strings.Join(q, ", ")
	text := sdk.StringSliceString{Value: []string{opts[0][0]}, Valid: true}
	v.Current = sdk.Current{Text: &text, Value: opts[0][1]}
	return v
}

// queryVar is a ClickHouse query variable, refreshed when the dashboard
// loads.
func queryVar(name, label, query string) sdk.TemplateVar {
	return sdk.TemplateVar{
		Name: name, Label: label, Type: "query", Datasource: clickHouse,
		Query:   map[string]any{"rawSql": strings.TrimSpace(query), "editorType": "sql", "format": 1, "queryType": "table", "refId": "variable"},
		Refresh: sdk.BoolInt{Flag: true, Value: int64p(1)},
		Options: []sdk.Option{},
	}
}

func int64p(v int64) *int64 { return &v }

// Variables every query of the dashboards uses. viewOptions map the as-was
// and as-is views to their daily tables.
var viewOptions = [][2]string{{"as-was", "rollup_daily"}, {"as-is", "rollup_daily_current"}}

// limitOptions are the row counts of the leaderboard.
var limitOptions = [][2]string{{"10", "10"}, {"25", "25"}, {"100", "100"}}

// Template variables reach the SQL only as Grafana's percentencode format
// inside a ClickHouse string literal ('${v:percentencode}') or a backquoted
// identifier (`${v:percentencode}`). percentencode (encodeURIComponent with
// !'()* also encoded) emits nothing but A-Z a-z 0-9 - _ . ~ and %XX, so the
// text can close neither the literal nor the identifier, whatever a viewer
// puts in the URL: no quote, backquote, backslash, semicolon, comment
// marker or space survives. The sqlstring format is not safe here: it
// doubles ' but leaves \ alone, and ClickHouse reads \' as an escaped quote,
// so a value ending in a backslash closes the literal early.
//
// Each variable is then held to its allowed values by the SQL around it:
// ids and levels go through toUInt64OrZero (anything else is 0, which no
// entity has; level 0 is the roots), the view and the row limit only
// switch on branches whose WHERE compares them with one of the fixed
// values (any other value selects nothing), and the measure is a column of
// the fixed rollup columns that viewRows exposes (any other name is an
// unknown-column error).

// lit is variable name as a ClickHouse string literal.
func lit(name string) string { return "'${" + name + ":percentencode}'" }

// num is variable name as a UInt64: its value if that is a decimal number,
// else 0.
func num(name string) string { return "toUInt64OrZero(" + lit(name) + ")" }

// column is variable name as a column of the query's FROM.
func column(name string) string { return "`${" + name + ":percentencode}`" }

// viewRows is a subquery with the columns entity_id, bucket, depth, type
// and every measure of the daily table the view variable names, restricted
// by where: one branch per allowed view, each reading its own table only
// when the view is that one, so no other value reaches a table name.
func viewRows(db string, ms []string, where string) string {
	cols := "entity_id, bucket, depth, type, " + strings.Join(ms, ", ")
	var b strings.Builder
	b.WriteString("(\n")
	for i, v := range viewOptions {
		if i > 0 {
			b.WriteString("    UNION ALL\n")
		}
		fmt.Fprintf(&b, "    SELECT %s FROM %s.%s\n    WHERE %s = '%s' AND %s\n", cols, db, v[1], lit("view"), v[1], where)
	}
	b.WriteString(")")
	return b.String()
}

func overview(o Options) *board {
	db := o.Database
	bd := newBoard(OverviewUID, "Canopy · Entity overview", "entity")
	// $__searchFilter is what the viewer typed followed by the wildcard %.
	entity := queryVar("entity", "Entity", fmt.Sprintf(`
SELECT concat(name, ' · ', toString(id)) AS __text, id AS __value
FROM %s.entities FINAL
WHERE positionCaseInsensitive(concat(toString(id), ' ', name), replaceAll(decodeURLComponent(%s), '%%', '')) > 0
ORDER BY level, id
LIMIT 200`, db, lit("__searchFilter")))
	bd.variable(entity)
	bd.variable(customVar("view", "View", viewOptions))
	ms := measureNames(o.Measures)

	// Who the entity is. The queries are OverviewSQL's, shared with
	// `canopy show`, filled with the dashboard's variables and macros.
	q := OverviewSQL{Database: db, Measures: o.Measures, EntityID: num("entity"), View: lit("view"),
		DateFilter: "$__dateFilter(bucket)", TimeFilter: "$__timeFilter(bucket)",
		Hourly: "toUInt32($__toTime) - toUInt32($__fromTime) <= 259200"}
	for _, g := range o.Grains {
		if g.Name == schema.Weekly.Name {
			q.Weekly = "toUInt32($__toTime) - toUInt32($__fromTime) > 7776000" // 90 days
		}
	}
	bd.sql(sdk.NewTable("Entity"), 24, 4, q.Entity(), false, panelExtra{})

	// Own vs downline, one stat per measure.
	for _, m := range ms {
		bd.sql(sdk.NewStat(fmt.Sprintf("%s: own vs downline", title(m))), 24/len(ms), 5, q.OwnDownline(m),
			false, panelExtra{unit: unitOf(m), options: statOptions()})
	}

	// Time series per measure: hourly for as-was ranges of up to 3 days,
	// daily otherwise (the as-is view is daily only).
	for _, m := range ms {
		bd.sql(sdk.NewTimeseries(fmt.Sprintf("%s over time: own and downline", title(m))), 12, 8, q.Series(m),
			true, panelExtra{unit: unitOf(m)})
	}

	entityRows := viewRows(db, ms, "entity_id = "+num("entity")+" AND $__dateFilter(bucket)")
	sums := make([]string, len(ms))
	for i, m := range ms {
		sums[i] = fmt.Sprintf("sum(%[1]s) AS %[1]s", m)
	}
	bd.sql(sdk.NewTable("By level below the entity (0 = its own events)"), 12, 8, fmt.Sprintf(`
SELECT depth AS level, %s
FROM %s
GROUP BY depth
ORDER BY level`, strings.Join(sums, ", "), entityRows), false, panelExtra{})
	// The 50 types with the most events: type is a free-form dimension, so
	// the table stays readable whatever producers send.
	bd.sql(sdk.NewTable("By type"), 12, 8, fmt.Sprintf(`
SELECT * FROM (
  SELECT type, %s
  FROM %s
  GROUP BY type
  ORDER BY events DESC, type
  LIMIT 50
)
ORDER BY type`, strings.Join(sums, ", "), entityRows), false, panelExtra{})

	// Children through entities_by_parent (a key lookup, not a scan of the
	// hierarchy), kept only if their newest version still has this parent.
	bd.sql(sdk.NewTable(fmt.Sprintf("Direct children by downline %s (click to drill down)", q.RankMeasure())), 24, 10,
		q.Children("downline DESC, id", 100), false, panelExtra{fieldLink: drill("id"), options: map[string]any{"showHeader": true, "frameIndex": 0}})
	return bd
}

// drill links field to the entity overview of its value, keeping the time
// range and view.
func drill(field string) *fieldLink {
	return &fieldLink{field: field, title: "Open overview",
		url: "/d/" + OverviewUID + "?var-entity=${__value.raw}&var-view=${view:percentencode}&${__url_time_range}"}
}

// statOptions are a stat panel's options, every field Grafana's model of
// them requires (the ones not chosen here at Grafana's defaults).
func statOptions() map[string]any {
	return map[string]any{
		"reduceOptions": map[string]any{"calcs": []any{"lastNotNull"}, "fields": "", "values": false},
		"colorMode":     "none", "graphMode": "none", "textMode": "value_and_name", "orientation": "horizontal",
		"justifyMode": "auto", "wideLayout": true, "showPercentChange": false, "percentChangeColorMode": "standard",
	}
}

func title(m string) string {
	if m == "" {
		return m
	}
	return strings.ToUpper(m[:1]) + m[1:]
}

func leaderboards(o Options) *board {
	db := o.Database
	bd := newBoard(LeaderboardsUID, "Canopy · Leaderboards", "leaderboard")
	bd.variable(queryVar("level", "Level", fmt.Sprintf(`SELECT DISTINCT level FROM %s.entities FINAL ORDER BY level`, db)))
	bd.variable(customVar("view", "View", viewOptions))
	var measures [][2]string
	rank := rankMeasure(o.Measures)
	measures = append(measures, [2]string{rank, rank})
	for _, m := range measureNames(o.Measures) {
		if m != rank {
			measures = append(measures, [2]string{m, m})
		}
	}
	bd.variable(customVar("measure", "Measure", measures))
	bd.variable(customVar("limit", "Top", limitOptions))
	ms := measureNames(o.Measures)
	// LIMIT takes a literal on ClickHouse 18.16: one branch per allowed
	// limit, each reading rows only when the limit variable is its value.
	var top []string
	for _, l := range limitOptions {
		top = append(top, fmt.Sprintf(`    SELECT * FROM (
        SELECT entity_id AS id, sumIf(%[1]s, depth > 0) AS downline, sumIf(%[1]s, depth = 0) AS own
        FROM %[2]s
        GROUP BY entity_id
        ORDER BY downline DESC, id
        LIMIT %[3]s
    )
`, column("measure"), viewRows(db, ms, fmt.Sprintf("%s = '%s' AND entity_id IN (SELECT id FROM %s.entities FINAL WHERE level = %s) AND $__dateFilter(bucket)",
			lit("limit"), l[1], db, num("level"))), l[1]))
	}
	bd.sql(sdk.NewTable("Top entities at level ${level} by downline ${measure}"), 24, 14, fmt.Sprintf(`
SELECT id, name, downline, own, own + downline AS total
FROM (
%[2]s) AS r
ANY LEFT JOIN (SELECT id, name FROM %[1]s.entities FINAL) AS e USING id
ORDER BY downline DESC, id`, db, strings.Join(top, "    UNION ALL\n")), false, panelExtra{fieldLink: drill("id")})
	bd.sql(sdk.NewTable("Volume by level"), 24, 8, fmt.Sprintf(`
SELECT e.level AS level, count() AS entities_with_events, sum(r.own) AS own
FROM (
    SELECT entity_id AS id, sumIf(%[2]s, depth = 0) AS own
    FROM %[3]s
    GROUP BY entity_id
) AS r
ANY LEFT JOIN (SELECT id, level FROM %[1]s.entities FINAL) AS e USING id
GROUP BY level
ORDER BY level`, db, column("measure"), viewRows(db, ms, "depth = 0 AND $__dateFilter(bucket)")), false, panelExtra{})
	return bd
}

func pipelineHealth(o Options) *board {
	db := o.Database
	bd := newBoard(HealthUID, "Canopy · Pipeline health", "operations")
	bd.b.Time = sdk.Time{From: "now-6h", To: "now"}
	rate := "$__rate_interval"
	bd.prom(sdk.NewTimeseries("Records per second by outcome"), 12, 8, "short",
		[2]string{`sum by (outcome) (rate(canopy_records_total[` + rate + `]))`, "{{outcome}}"})
	bd.prom(sdk.NewTimeseries("Consumer lag per partition"), 12, 8, "short",
		[2]string{`max by (topic, partition) (canopy_consumer_lag)`, "{{topic}}/{{partition}}"})
	bd.prom(sdk.NewTimeseries("Batch write latency"), 12, 8, "s",
		[2]string{`histogram_quantile(0.5, sum by (le) (rate(canopy_batch_write_seconds_bucket[` + rate + `])))`, "p50"},
		[2]string{`histogram_quantile(0.99, sum by (le) (rate(canopy_batch_write_seconds_bucket[` + rate + `])))`, "p99"})
	bd.prom(sdk.NewTimeseries("Rollup rows written per accepted event"), 12, 8, "short",
		[2]string{`sum(rate(canopy_rows_written_total{table=~"rollup_.*"}[` + rate + `])) / sum(rate(canopy_records_total{outcome="accepted"}[` + rate + `]))`, "rows/event"})
	bd.prom(sdk.NewTimeseries("Retries, dead letters and failed batch attempts"), 12, 8, "short",
		[2]string{`sum by (outcome) (rate(canopy_records_total{outcome=~"retried|dead_lettered"}[` + rate + `]))`, "{{outcome}}"},
		[2]string{`sum by (kind) (rate(canopy_batch_errors_total[` + rate + `]))`, "batch {{kind}}"})
	bd.prom(sdk.NewTimeseries("Hierarchy propagation delay and restatement backlog"), 12, 8, "s",
		[2]string{`histogram_quantile(0.99, sum by (le) (rate(canopy_hierarchy_propagation_seconds_bucket[` + rate + `])))`, "propagation p99"},
		[2]string{`max(canopy_restate_pending_changes)`, "changes waiting for restatement"})
	bd.prom(sdk.NewTimeseries("Unacknowledged records (canopy reconcile --watch)"), 12, 8, "short",
		[2]string{`max(canopy_ack_gap_records)`, "records in unacknowledged ranges"},
		[2]string{`sum(rate(canopy_reprocessed_records_total[` + rate + `]))`, "reprocessed/s"})
	// A new owner of a by-id partition reads its event-id state back from
	// the topic before the partition's first batch: hours at scale.
	bd.prom(sdk.NewTimeseries("Event-id state restores (new partition owners)"), 12, 8, "short",
		[2]string{`sum by (instance) (canopy_dedup_restore_remaining_records)`, "{{instance}}: offsets left"},
		[2]string{`sum(rate(canopy_dedup_restored_records_total[` + rate + `]))`, "records restored/s"})
	// A replayed range writes its ack row again: one row per range. A topic
	// deleted and created again reuses its name and offsets, so its ranges
	// are told apart by topic_id, or the new incarnation's first ranges
	// would hide the old one's.
	bd.sql(sdk.NewTimeseries("Acknowledged records per minute (ingest_acks)"), 12, 8, fmt.Sprintf(`
SELECT toStartOfMinute(at) AS time, sum(accepted) AS accepted, sum(duplicates) AS duplicates, sum(dead_lettered) AS dead_lettered, sum(retried) AS retried
FROM (
    SELECT topic, topic_id, partition, first_offset, any(processed_at) AS at, any(accepted) AS accepted,
           any(duplicates) AS duplicates, any(dead_lettered) AS dead_lettered, any(retried) AS retried
    FROM %s.ingest_acks
    WHERE $__timeFilter(processed_at)
    GROUP BY topic, topic_id, partition, first_offset
)
GROUP BY time
ORDER BY time`, db), true, panelExtra{unit: "short"})
	bd.sql(sdk.NewTable("Failures by class (ingest_failures)"), 12, 8, fmt.Sprintf(`
SELECT error_class AS class, resolution, count() AS failures, max(last_failure) AS last_seen
FROM %s.ingest_failures FINAL
WHERE $__timeFilter(last_failure)
GROUP BY class, resolution
ORDER BY failures DESC, class, resolution`, db), false, panelExtra{})
	bd.sql(sdk.NewTable("Most recent unresolved failures"), 12, 8, fmt.Sprintf(`
SELECT last_failure, error_class, error_message, event_id, entity_id, source_topic, source_partition, source_offset, attempts
FROM %s.ingest_failures FINAL
WHERE resolution = '' AND $__timeFilter(last_failure)
ORDER BY last_failure DESC, source_topic, source_partition, source_offset
LIMIT 50`, db), false, panelExtra{})
	return bd
}

// Files that are not dashboards, kept here so one command writes them all.
const providerYAML = `# Generated by canopy dashboards generate; do not edit.
#
# Grafana dashboard provider for the docker compose stack. The repository's
# dashboards/ folder is mounted read-only at /var/lib/grafana/dashboards;
# every *.json file in it appears in the "Canopy" folder. Edit the generator
# (dashboards/generate.go), not the dashboards in the UI.
apiVersion: 1

providers:
  - name: canopy
    orgId: 1
    folder: Canopy
    type: file
    disableDeletion: true
    allowUiUpdates: false
    updateIntervalSeconds: 30
    options:
      path: /var/lib/grafana/dashboards
      foldersFromFilesStructure: false
`

const datasourceYAML = `# Generated by canopy dashboards generate; do not edit.
#
# Grafana data sources for the docker compose stack.
apiVersion: 1

datasources:
  # ClickHouse through the grafana-clickhouse-datasource plugin (installed by
  # docker-compose.yml), native protocol, as the read-only user that
  # canopy migrate creates (SELECT only: no writes, no DDL). Its password is
  # read from the mounted secret when Grafana starts, never written here.
  # queryTimeout stays within the reader's max_execution_time (60 s).
  - name: ClickHouse
    uid: ` + ClickHouseUID + `
    type: ` + ClickHouseType + `
    access: proxy
    isDefault: true
    editable: false
    jsonData:
      host: clickhouse
      port: 9000
      protocol: native
      secure: false
      defaultDatabase: %s
      username: %s
      queryTimeout: "60"
    secureJsonData:
      password: $__file{%s}

  # The workers' metrics (ingest rate, lag, batch latency, failures).
  - name: Prometheus
    uid: ` + PrometheusUID + `
    type: ` + PrometheusType + `
    access: proxy
    url: http://prometheus:9090
    editable: false
    jsonData:
      timeInterval: 15s
`

// Names lists the generated files in a stable order.
func Names(files map[string][]byte) []string {
	out := make([]string, 0, len(files))
	for k := range files {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
