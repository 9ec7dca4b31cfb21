package dashboards

import (
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"sort"
	"strings"
	"sync"
	"testing"

	"github.com/grafana/grafana-foundation-sdk/go/cog"
	"github.com/grafana/grafana-foundation-sdk/go/cog/plugins"
	"github.com/grafana/grafana-foundation-sdk/go/cog/variants"
	grafana "github.com/grafana/grafana-foundation-sdk/go/dashboard"
	promquery "github.com/grafana/grafana-foundation-sdk/go/prometheus"
	"github.com/grafana/grafana-foundation-sdk/go/stat"
	"github.com/grafana/grafana-foundation-sdk/go/table"
	"github.com/grafana/grafana-foundation-sdk/go/timeseries"

	"github.com/canopyhq/canopy/schema"
)

// Grafana cannot run here, so the dashboards are held to Grafana's own
// definition of a dashboard instead: the typed model of
// grafana-foundation-sdk v0.0.22 (generated from the schemas Grafana
// ships), with its panel options and Prometheus queries registered. A
// generated dashboard must decode strictly (no unknown field, no wrong
// type, no required field missing), pass the model's validation, and encode
// back to the same JSON: a field the model does not know, or reads as
// something else, shows up as a lost or changed value.
//
// The model's strict decoders return an empty list of errors as a non-nil
// error when all went well, and the code around them then drops what they
// decoded: a panel, a panel's options, a Prometheus query. The decoders of
// the plugins the dashboards use are registered again here, wrapped so
// that an empty list is no error, and panels are decoded one by one (see
// checkAgainstModel).

var (
	setUpModel sync.Once
	// modelPanelTypes are the panel types the dashboards may use, with the
	// model's strict decoders of their options and field config.
	modelPanelTypes = map[string][2]func([]byte) (any, error){
		"table":      {strictly[table.Options](), strictly[table.FieldConfig]()},
		"stat":       {strictly[stat.Options](), nil},
		"timeseries": {strictly[timeseries.Options](), strictly[timeseries.FieldConfig]()},
	}
	// modelQueryTypes are the datasource types the dashboards' queries may
	// use, true where the model decodes the query strictly. The model has
	// no ClickHouse query: ClickHouse targets are kept as a bag of fields
	// and only compared on the way back (their SQL is checked by the other
	// dashboard tests).
	modelQueryTypes = map[string]bool{PrometheusType: true, ClickHouseType: false}
)

func registerModel() {
	plugins.RegisterDefaultPlugins()
	rt := cog.NewRuntime()
	for typ, dec := range modelPanelTypes {
		cfg, ok := rt.ConfigForPanelcfgVariant(typ)
		if !ok || (cfg.StrictFieldConfigUnmarshaler == nil) != (dec[1] == nil) {
			panic("the model's panel type " + typ + " is not as expected")
		}
		cfg.StrictOptionsUnmarshaler, cfg.StrictFieldConfigUnmarshaler = dec[0], dec[1]
		rt.RegisterPanelcfgVariant(cfg)
	}
	q := promquery.VariantConfig()
	q.StrictDataqueryUnmarshaler = func(raw []byte) (variants.Dataquery, error) {
		v := &promquery.Dataquery{}
		if err := modelError(v.UnmarshalJSONStrict(raw)); err != nil {
			return nil, err
		}
		return v, nil
	}
	rt.RegisterDataqueryVariant(q)
}

// strictly is the model's strict decoder of a T, returning a *T.
func strictly[T any, PT interface {
	*T
	UnmarshalJSONStrict([]byte) error
}]() func([]byte) (any, error) {
	return func(raw []byte) (any, error) {
		v := PT(new(T))
		if err := modelError(v.UnmarshalJSONStrict(raw)); err != nil {
			return nil, err
		}
		return v, nil
	}
}

// modelError is err, or nil for the empty list of errors that the model's
// generated code returns (as a non-nil error) when all went well.
func modelError(err error) error {
	var list cog.BuildErrors
	if errors.As(err, &list) && len(list) == 0 {
		return nil
	}
	return err
}

// modelDefaults are the only values the model may add on the way back, by
// path (numbers of list items written as *). Each would be a field the
// model always writes and that Grafana reads as the same value when it is
// absent. None is needed today: the generator writes every field the model
// writes back. An entry here needs its reason beside it.
var modelDefaults = map[string]any{}

// checkAgainstModel returns every way raw (one dashboard's JSON) departs
// from Grafana's dashboard model.
func checkAgainstModel(raw []byte) []string {
	setUpModel.Do(registerModel)
	var problems []string
	refused := func(prefix string, err error) {
		for _, line := range strings.Split(err.Error(), "\n") {
			problems = append(problems, "model refuses: "+prefix+strings.TrimSpace(line))
		}
	}
	var d grafana.Dashboard
	if err := modelError(d.UnmarshalJSONStrict(raw)); err != nil {
		refused("", err)
	}
	// Each panel is decoded as the model's panel-or-row decoder would, by
	// its type, had it not dropped them.
	var doc struct {
		Panels []json.RawMessage `json:"panels"`
	}
	if err := json.Unmarshal(raw, &doc); err != nil {
		return append(problems, err.Error())
	}
	d.Panels = make([]grafana.PanelOrRowPanel, len(doc.Panels))
	for i, rp := range doc.Panels {
		var kind struct {
			Type    string `json:"type"`
			Targets []struct {
				Datasource struct {
					Type string `json:"type"`
				} `json:"datasource"`
			} `json:"targets"`
		}
		if err := json.Unmarshal(rp, &kind); err != nil || kind.Type == "" {
			problems = append(problems, fmt.Sprintf("panels[%d]: no type", i))
			continue
		}
		if kind.Type == "row" {
			row := &grafana.RowPanel{}
			if err := modelError(row.UnmarshalJSONStrict(rp)); err != nil {
				refused(fmt.Sprintf("panels[%d].", i), err)
			}
			d.Panels[i] = grafana.PanelOrRowPanel{RowPanel: row}
			continue
		}
		if _, ok := modelPanelTypes[kind.Type]; !ok {
			problems = append(problems, fmt.Sprintf("panels[%d]: panel type %q is not in modelPanelTypes", i, kind.Type))
		}
		for j, t := range kind.Targets {
			if _, ok := modelQueryTypes[t.Datasource.Type]; !ok {
				problems = append(problems, fmt.Sprintf("panels[%d].targets[%d]: datasource type %q is not in modelQueryTypes", i, j, t.Datasource.Type))
			}
		}
		p := &grafana.Panel{}
		if err := modelError(p.UnmarshalJSONStrict(rp)); err != nil {
			refused(fmt.Sprintf("panels[%d].", i), err)
		}
		d.Panels[i] = grafana.PanelOrRowPanel{Panel: p}
	}
	if len(problems) > 0 {
		return problems
	}
	if err := modelError(d.Validate()); err != nil {
		problems = append(problems, "model validation: "+err.Error())
	}
	back, err := json.Marshal(d)
	if err != nil {
		return append(problems, "model cannot encode it back: "+err.Error())
	}
	var want, got any
	if err := json.Unmarshal(raw, &want); err != nil {
		return append(problems, err.Error())
	}
	if err := json.Unmarshal(back, &got); err != nil {
		return append(problems, err.Error())
	}
	return append(problems, diffJSON("", want, got)...)
}

// diffJSON lists where got (the model's encoding) differs from want (the
// generated JSON), allowing only modelDefaults.
func diffJSON(path string, want, got any) []string {
	switch w := want.(type) {
	case map[string]any:
		g, ok := got.(map[string]any)
		if !ok {
			return []string{fmt.Sprintf("%s: generated %s, model gives %s", path, show(want), show(got))}
		}
		keys := map[string]bool{}
		for k := range w {
			keys[k] = true
		}
		for k := range g {
			keys[k] = true
		}
		var out []string
		for _, k := range sortedKeys(keys) {
			p := path + "." + k
			wv, inWant := w[k]
			gv, inGot := g[k]
			switch {
			case !inGot:
				out = append(out, fmt.Sprintf("%s: lost by the model (generated %s)", p, show(wv)))
			case !inWant:
				if def, ok := modelDefaults[pattern(p)]; !ok || !reflect.DeepEqual(def, gv) {
					out = append(out, fmt.Sprintf("%s: added by the model (%s), not a listed default", p, show(gv)))
				}
			default:
				out = append(out, diffJSON(p, wv, gv)...)
			}
		}
		return out
	case []any:
		g, ok := got.([]any)
		if !ok || len(g) != len(w) {
			return []string{fmt.Sprintf("%s: generated %s, model gives %s", path, show(want), show(got))}
		}
		var out []string
		for i := range w {
			out = append(out, diffJSON(fmt.Sprintf("%s[%d]", path, i), w[i], g[i])...)
		}
		return out
	default:
		if !reflect.DeepEqual(want, got) {
			return []string{fmt.Sprintf("%s: generated %s, model gives %s", path, show(want), show(got))}
		}
		return nil
	}
}

func sortedKeys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// pattern is path with list indexes replaced by *.
func pattern(path string) string {
	var b strings.Builder
	for i := 0; i < len(path); i++ {
		if path[i] == '[' {
			j := strings.IndexByte(path[i:], ']')
			b.WriteString("[*]")
			i += j
			continue
		}
		b.WriteByte(path[i])
	}
	return b.String()
}

func show(v any) string {
	if v == nil {
		return "null"
	}
	raw, _ := json.Marshal(v)
	s := string(raw)
	if len(s) > 120 {
		s = s[:120] + "…"
	}
	return s
}

// TestDashboardsMatchGrafanaModel checks every generated dashboard against
// Grafana's model, for the repository's canopy.yaml and for other measure
// declarations (none, one integer, several kinds), so that no branch of the
// generator escapes the check.
func TestDashboardsMatchGrafanaModel(t *testing.T) {
	one := schema.Measures{{Name: "clicks", Kind: schema.KindInt64}}
	several := schema.Measures{{Name: "clicks", Kind: schema.KindInt64}, {Name: "revenue", Kind: schema.KindDecimal, Scale: 2},
		{Name: "refunds", Kind: schema.KindDecimal, Scale: 2}, {Name: "seconds", Kind: schema.KindInt64}}
	cases := map[string]Options{
		"canopy.yaml":      repoOptions(t),
		"default measures": {Database: "canopy", Measures: schema.DefaultMeasures()},
		"no measures":      {Database: "canopy", Measures: schema.Measures{}},
		"one measure":      {Database: "analytics", Measures: one},
		"several measures": {Database: "canopy", Measures: several},
	}
	for name, o := range cases {
		files, err := Files(o)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		n := 0
		for _, f := range Names(files) {
			if !strings.HasSuffix(f, ".json") {
				continue
			}
			n++
			for _, p := range checkAgainstModel(files[f]) {
				t.Errorf("%s: %s: %s", name, f, p)
			}
		}
		if n != 3 {
			t.Errorf("%s: %d dashboards generated, want 3", name, n)
		}
	}
}

// TestModelCheckCatches proves the check fails on what it must catch: each
// change made to a generated dashboard is reported.
func TestModelCheckCatches(t *testing.T) {
	files, err := Files(repoOptions(t))
	if err != nil {
		t.Fatal(err)
	}
	raw := files[DashboardDir+"/"+leaderboardsFile]
	if p := checkAgainstModel(raw); len(p) != 0 {
		t.Fatalf("the unchanged dashboard already fails: %v", p)
	}
	for _, c := range []struct {
		name   string
		change func(d map[string]any)
		want   string
	}{
		{"unknown dashboard field", func(d map[string]any) { d["sharedCrosshair"] = true }, "unexpected field 'sharedCrosshair'"},
		{"unknown panel field", func(d map[string]any) { panel(d, 0)["isNew"] = true }, "unexpected field 'isNew'"},
		{"wrong type", func(d map[string]any) { variable(d, 1)["refresh"] = false }, "templating.list[1].refresh"},
		{"legacy variable field", func(d map[string]any) { variable(d, 0)["allFormat"] = "" }, "unexpected field 'allFormat'"},
		{"required link field missing", func(d map[string]any) { delete(d["links"].([]any)[0].(map[string]any), "targetBlank") }, "links[0].targetBlank"},
		{"unknown field where the model reads leniently", func(d map[string]any) {
			panel(d, 0)["fieldConfig"].(map[string]any)["defaults"].(map[string]any)["colour"] = "red"
		}, ".panels[0].fieldConfig.defaults.colour: lost by the model"},
		{"unknown table option", func(d map[string]any) {
			panel(d, 0)["options"] = map[string]any{"frameIndex": 0, "showHeader": true, "pageSize": 5}
		}, "unexpected field 'pageSize'"},
		{"missing stat option", func(d map[string]any) {
			panel(d, 0)["type"] = "stat"
			panel(d, 0)["options"] = map[string]any{"graphMode": "none"}
		}, "options.justifyMode: required field is missing"},
	} {
		var d map[string]any
		if err := json.Unmarshal(raw, &d); err != nil {
			t.Fatal(err)
		}
		c.change(d)
		changed, err := json.Marshal(d)
		if err != nil {
			t.Fatal(err)
		}
		problems := checkAgainstModel(changed)
		if !strings.Contains(strings.Join(problems, "\n"), c.want) {
			t.Errorf("%s: want a problem containing %q, got %q", c.name, c.want, problems)
		}
	}
}

func panel(d map[string]any, i int) map[string]any {
	return d["panels"].([]any)[i].(map[string]any)
}

func variable(d map[string]any, i int) map[string]any {
	return d["templating"].(map[string]any)["list"].([]any)[i].(map[string]any)
}

func TestDiffJSON(t *testing.T) {
	want := map[string]any{"a": 1.0, "b": []any{"x", map[string]any{"c": true}}, "d": nil}
	got := map[string]any{"a": 2.0, "b": []any{"x", map[string]any{}}, "e": "new"}
	problems := strings.Join(diffJSON("", want, got), "\n")
	for _, w := range []string{
		".a: generated 1, model gives 2",
		".b[1].c: lost by the model (generated true)",
		".d: lost by the model (generated null)",
		`.e: added by the model ("new"), not a listed default`,
	} {
		if !strings.Contains(problems, w) {
			t.Errorf("diff lacks %q:\n%s", w, problems)
		}
	}
	if p := diffJSON("", want, want); len(p) != 0 {
		t.Errorf("equal documents differ: %v", p)
	}
	if got := pattern(".panels[12].targets[0].expr"); got != ".panels[*].targets[*].expr" {
		t.Errorf("pattern = %q", got)
	}
}
