package main

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/spf13/cobra"

	"github.com/canopyhq/canopy/schema"
)

// clearEnv hides the caller's CANOPY_* settings from a test.
func clearEnv(t *testing.T) {
	for _, s := range newConfig().settings {
		t.Setenv(s.env(), "")
	}
	t.Setenv("CANOPY_CONFIG", "")
}

func TestConfigPrecedence(t *testing.T) {
	clearEnv(t)
	dir := t.TempDir()
	file := filepath.Join(dir, "canopy.yaml")
	if err := os.WriteFile(file, []byte(`
kafka:
  brokers: [a:1, b:2]
  group: from-file
clickhouse:
  database: from_file
measures:
  - {name: amount, type: decimal, scale: 2}
  - {name: units, type: int64}
`), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("CANOPY_KAFKA_GROUP", "from-env")
	t.Setenv("CANOPY_CLICKHOUSE_DATABASE", "from_env")

	root := &cobra.Command{Use: "canopy"}
	cfg := newConfig()
	cfg.register(root.PersistentFlags())
	if err := root.ParseFlags([]string{"--config", file, "--clickhouse-database", "from_flag"}); err != nil {
		t.Fatal(err)
	}
	if err := cfg.resolve(root); err != nil {
		t.Fatal(err)
	}
	tests := []struct{ key, want string }{
		{"kafka.brokers", "a:1,b:2"},            // file
		{"kafka.group", "from-env"},             // env over file
		{"clickhouse.database", "from_flag"},    // flag over env
		{"kafka.events_topic", "canopy.events"}, // default
	}
	for _, tt := range tests {
		if got := cfg.get(tt.key); got != tt.want {
			t.Errorf("%s = %q, want %q", tt.key, got, tt.want)
		}
	}
	want := schema.Measures{{Name: "amount", Kind: schema.KindDecimal, Scale: 2}, {Name: "units", Kind: schema.KindInt64}}
	if len(cfg.measures) != 2 || cfg.measures[0] != want[0] || cfg.measures[1] != want[1] {
		t.Errorf("measures = %+v, want %+v", cfg.measures, want)
	}
}

func TestConfigErrorsAreUsageErrors(t *testing.T) {
	clearEnv(t)
	dir := t.TempDir()
	tests := []struct {
		name string
		yaml string
		args []string
	}{
		{"missing explicit file", "", []string{"--config", filepath.Join(dir, "nope.yaml")}},
		{"bad yaml", "kafka: [", nil},
		{"bad measure", "measures: [{name: events, type: int64}]", nil},
		{"bad duration", "", []string{"--ingest-dedup-horizon", "soon"}},
		{"bad policy", "", []string{"--ingest-suspended-ancestors", "maybe"}},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			args := tt.args
			if tt.yaml != "" {
				file := filepath.Join(dir, "c"+string(rune('a'+i))+".yaml")
				if err := os.WriteFile(file, []byte(tt.yaml), 0o600); err != nil {
					t.Fatal(err)
				}
				args = append(args, "--config", file)
			}
			root := &cobra.Command{Use: "canopy"}
			cfg := newConfig()
			cfg.register(root.PersistentFlags())
			if err := root.ParseFlags(args); err != nil {
				t.Fatal(err)
			}
			err := cfg.resolve(root)
			var u usageError
			if !errors.As(err, &u) || exitCode(err) != 2 {
				t.Fatalf("resolve = %v, want a usage error (exit 2)", err)
			}
		})
	}
}
