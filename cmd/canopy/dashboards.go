package main

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/canopyhq/canopy/dashboards"
	"github.com/canopyhq/canopy/schema"
)

func newDashboards(cfg *config) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "dashboards",
		Short: "Grafana dashboards generated from canopy.yaml",
	}
	var dir, passwordFile string
	gen := &cobra.Command{
		Use:   "generate",
		Short: "Write the Grafana dashboards and provisioning files from the declared measures",
		Long: `generate writes dashboards/*.json (Entity overview, Leaderboards, Pipeline
health) and the Grafana provisioning files under deploy/grafana/provisioning/,
from the measures in canopy.yaml, clickhouse.database and the read-only user
(clickhouse.reader_user). The datasource reads the reader's password from a
file mounted into Grafana (--reader-password-file, docker compose's secret
clickhouse_reader_password), so no generated file holds it. Run it from the
repository root (or give --dir) after changing the measures.`,
		Args: args(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			// The database is written into every query.
			for _, k := range []string{"clickhouse.database", "clickhouse.reader_user"} {
				if err := schema.CheckIdentifier(k, cfg.get(k)); err != nil {
					return usageError{err}
				}
			}
			files, err := dashboards.Files(dashboards.Options{
				Database: cfg.get("clickhouse.database"), Measures: cfg.measures,
				Reader: cfg.get("clickhouse.reader_user"), PasswordFile: passwordFile, Grains: cfg.grains,
			})
			if err != nil {
				return err
			}
			for _, name := range dashboards.Names(files) {
				path := filepath.Join(dir, filepath.FromSlash(name))
				if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
					return err
				}
				if err := os.WriteFile(path, files[name], 0o644); err != nil { //nolint:gosec // served by Grafana
					return err
				}
				fmt.Println("wrote", path)
			}
			return nil
		},
	}
	gen.Flags().StringVar(&dir, "dir", ".", "repository root to write under")
	gen.Flags().StringVar(&passwordFile, "reader-password-file", dashboards.DefaultPasswordFile,
		"path, inside the Grafana container, of the file holding the reader's password")
	cmd.AddCommand(gen)
	return cmd
}
