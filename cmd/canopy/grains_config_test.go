package main

import (
	"testing"

	"github.com/spf13/cobra"

	"github.com/canopyhq/canopy/schema"
)

// rollup.grains: hourly and daily by default; weekly added from canopy.yaml
// (a YAML list) or the environment, in any order, reaches the ClickHouse
// schema finest first.
func TestRollupGrainsSetting(t *testing.T) {
	for _, tt := range []struct {
		name, yaml string
		env        map[string]string
		want       string
	}{
		{"default", "", nil, "hourly,daily"},
		{"file", "rollup:\n  grains: [weekly, hourly, daily]\n", nil, "hourly,daily,weekly"},
		{"env", "", map[string]string{"CANOPY_ROLLUP_GRAINS": "hourly, daily, weekly"}, "hourly,daily,weekly"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			clearEnv(t)
			for k, v := range tt.env {
				t.Setenv(k, v)
			}
			root := &cobra.Command{Use: "canopy"}
			cfg := newConfig()
			cfg.register(root.PersistentFlags())
			if err := root.ParseFlags([]string{"--config", writeConfig(t, tt.yaml)}); err != nil {
				t.Fatal(err)
			}
			if err := cfg.resolve(root); err != nil {
				t.Fatal(err)
			}
			chs, err := cfg.chSchema()
			if err != nil {
				t.Fatal(err)
			}
			if got := schema.GrainNames(chs.Grains); got != tt.want {
				t.Fatalf("grains %s, want %s", got, tt.want)
			}
		})
	}
}
