package dashboards

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	"github.com/canopyhq/canopy/schema"
)

// repoOptions are the generator's inputs as the repository's canopy.yaml
// declares them.
func repoOptions(t *testing.T) Options {
	t.Helper()
	raw, err := os.ReadFile("../canopy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Measures   schema.Measures `yaml:"measures"`
		ClickHouse struct {
			Database string `yaml:"database"`
		} `yaml:"clickhouse"`
	}
	if err := yaml.Unmarshal(raw, &doc); err != nil {
		t.Fatal(err)
	}
	if doc.Measures == nil {
		doc.Measures = schema.DefaultMeasures()
	}
	return Options{Database: doc.ClickHouse.Database, Measures: doc.Measures}
}

// TestCommittedFilesAreGenerated fails when a committed dashboard or
// provisioning file differs from what the generator writes: run
// `canopy dashboards generate` and commit.
func TestCommittedFilesAreGenerated(t *testing.T) {
	files, err := Files(repoOptions(t))
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range Names(files) {
		got, err := os.ReadFile(filepath.Join("..", filepath.FromSlash(name)))
		if err != nil {
			t.Errorf("%s: %v (run canopy dashboards generate)", name, err)
			continue
		}
		if !bytes.Equal(got, files[name]) {
			t.Errorf("%s differs from the generator's output: run canopy dashboards generate and commit", name)
		}
	}
	committed, _ := filepath.Glob("*.json")
	for _, c := range committed {
		if _, ok := files[DashboardDir+"/"+c]; !ok {
			t.Errorf("dashboards/%s is not generated any more: remove it", c)
		}
	}
}

type dashboard struct {
	UID        string           `json:"uid"`
	Title      string           `json:"title"`
	Panels     []map[string]any `json:"panels"`
	Templating struct {
		List []map[string]any `json:"list"`
	} `json:"templating"`
	Links []struct {
		URL string `json:"url"`
	} `json:"links"`
}

var (
	varRef     = regexp.MustCompile(`\$\{([A-Za-z0-9_]+)(?::[a-z]+)?\}|\[\[([A-Za-z0-9_]+)\]\]|\$([A-Za-z_][A-Za-z0-9_]*)`)
	dashLink   = regexp.MustCompile(`/d/([A-Za-z0-9_-]+)`)
	datasource = regexp.MustCompile(`(?m)^\s+uid: (\S+)$`)
)

// TestDashboardStructure checks the committed dashboards as Grafana would
// load them: unique and stable uids, panel ids unique per dashboard, every
// datasource reference provisioned, every variable used defined, and every
// link pointing at a dashboard that exists.
func TestDashboardStructure(t *testing.T) {
	dsYAML, err := os.ReadFile(filepath.Join("..", DatasourceFile))
	if err != nil {
		t.Fatal(err)
	}
	sources := map[string]bool{}
	for _, m := range datasource.FindAllStringSubmatch(string(dsYAML), -1) {
		sources[m[1]] = true
	}
	names, _ := filepath.Glob("*.json")
	sort.Strings(names)
	boards := map[string]dashboard{}
	for _, n := range names {
		raw, err := os.ReadFile(n)
		if err != nil {
			t.Fatal(err)
		}
		var d dashboard
		if err := json.Unmarshal(raw, &d); err != nil {
			t.Fatalf("%s: %v", n, err)
		}
		if d.UID == "" || len(d.UID) > 40 {
			t.Errorf("%s: uid %q", n, d.UID)
		}
		if _, dup := boards[d.UID]; dup {
			t.Errorf("%s: uid %s used twice", n, d.UID)
		}
		boards[d.UID] = d
	}
	for _, uid := range []string{OverviewUID, LeaderboardsUID, HealthUID} {
		if _, ok := boards[uid]; !ok {
			t.Errorf("no dashboard has the stable uid %s", uid)
		}
	}
	builtins := map[string]bool{"__value": true, "__url_time_range": true, "__data": true, "__searchFilter": true,
		"__timeFilter": true, "__dateFilter": true, "__fromTime": true, "__toTime": true, "__interval_s": true,
		"__rate_interval": true, "__interval": true, "__timeInterval": true}
	for uid, d := range boards {
		defined := map[string]bool{}
		for _, v := range d.Templating.List {
			defined[v["name"].(string)] = true
			checkDatasource(t, uid, "variable "+v["name"].(string), v["datasource"], sources)
		}
		ids := map[float64]bool{}
		var text []string
		for _, p := range d.Panels {
			title, _ := p["title"].(string)
			id, _ := p["id"].(float64)
			if ids[id] {
				t.Errorf("%s: panel id %v used twice", uid, id)
			}
			ids[id] = true
			checkDatasource(t, uid, title, p["datasource"], sources)
			targets, _ := p["targets"].([]any)
			if len(targets) == 0 {
				t.Errorf("%s: panel %q has no query", uid, title)
			}
			for _, tv := range targets {
				checkDatasource(t, uid, title, tv.(map[string]any)["datasource"], sources)
			}
			raw, _ := json.Marshal(p)
			text = append(text, string(raw))
		}
		for _, v := range d.Templating.List {
			raw, _ := json.Marshal(v["query"])
			text = append(text, string(raw))
		}
		for _, l := range d.Links {
			text = append(text, l.URL)
		}
		all := strings.Join(text, "\n")
		for _, m := range varRef.FindAllStringSubmatch(all, -1) {
			name := m[1] + m[2] + m[3]
			if strings.HasPrefix(name, "__") {
				base := strings.SplitN(name, ".", 2)[0]
				if !builtins[base] {
					t.Errorf("%s: unknown Grafana or plugin macro $%s", uid, name)
				}
				continue
			}
			if !defined[name] {
				t.Errorf("%s: variable $%s is used but not defined", uid, name)
			}
		}
		for _, m := range dashLink.FindAllStringSubmatch(all, -1) {
			if _, ok := boards[m[1]]; !ok {
				t.Errorf("%s: link to missing dashboard %s", uid, m[1])
			}
		}
	}
}

func checkDatasource(t *testing.T, board, where string, ds any, sources map[string]bool) {
	t.Helper()
	if ds == nil {
		return // a custom variable, or a panel using its targets' sources
	}
	m, ok := ds.(map[string]any)
	if !ok {
		t.Errorf("%s: %s: datasource %v is not a {type, uid} reference", board, where, ds)
		return
	}
	if uid, _ := m["uid"].(string); !sources[uid] {
		t.Errorf("%s: %s: datasource uid %q is not provisioned", board, where, uid)
	}
}

// TestVariablesOnlyPercentEncodedInQuotes checks every template variable in
// the committed dashboards' SQL is ${name:percentencode} directly inside a
// string literal ('…') or a backquoted identifier (`…`): percentencode
// emits only A-Z a-z 0-9 - _ . ~ %, which can close neither. The other
// $… are the ClickHouse plugin's macros. internal/e2e
// TestDashboardVariablesHostile runs hostile values through them.
func TestVariablesOnlyPercentEncodedInQuotes(t *testing.T) {
	files, err := filepath.Glob("*.json")
	if err != nil || len(files) == 0 {
		t.Fatalf("no dashboards: %v", err)
	}
	safe := regexp.MustCompile("'\\$\\{[A-Za-z0-9_]+:percentencode\\}'|`\\$\\{[A-Za-z0-9_]+:percentencode\\}`")
	macro := regexp.MustCompile(`\$__(timeFilter|dateFilter|fromTime|toTime)\b`)
	sqlField := regexp.MustCompile(`"rawSql":\s*"((?:[^"\\]|\\.)*)"`)
	n := 0
	for _, f := range files {
		raw, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range sqlField.FindAllStringSubmatch(string(raw), -1) {
			var sql string
			if err := json.Unmarshal([]byte(`"`+m[1]+`"`), &sql); err != nil {
				t.Fatal(err)
			}
			n += len(safe.FindAllString(sql, -1))
			rest := macro.ReplaceAllString(safe.ReplaceAllString(sql, ""), "")
			if strings.Contains(rest, "$") || strings.Contains(rest, "[[") {
				t.Errorf("%s: a variable outside '${name:percentencode}' or `${name:percentencode}`:\n%s", f, sql)
			}
		}
	}
	if n == 0 {
		t.Error("no variable found: the check checks nothing")
	}
}
