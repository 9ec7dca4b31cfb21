package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"strconv"
	"time"

	"github.com/spf13/cobra"

	"github.com/canopyhq/canopy/hierarchy"
)

func newHierarchy(cfg *config) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "hierarchy",
		Short: "Import and change the hierarchy in PostgreSQL (the same as plain SQL on canopy.entities)",
	}
	var effective string
	parseEffective := func() (*time.Time, error) {
		if effective == "" {
			return nil, nil
		}
		t, err := time.Parse(time.RFC3339Nano, effective)
		if err != nil {
			return nil, usageError{fmt.Errorf("--effective-at: %w", err)}
		}
		return &t, nil
	}
	withStore := func(ctx context.Context, fn func(*hierarchy.Store) error) error {
		pool, err := openPostgres(ctx, cfg.get("postgres.dsn"))
		if err != nil {
			return err
		}
		defer pool.Close()
		return fn(hierarchy.NewStore(pool))
	}
	ids := func(a []string) ([]int64, error) {
		out := make([]int64, len(a))
		for i, s := range a {
			v, err := strconv.ParseInt(s, 10, 64)
			if err != nil || v < 1 {
				return nil, usageError{fmt.Errorf("%q is not an entity id (an integer >= 1)", s)}
			}
			out[i] = v
		}
		return out, nil
	}

	imp := &cobra.Command{
		Use:   "import FILE",
		Short: "Import a CSV of id,parent_id,status,name (- for standard input); all or nothing",
		Args:  args(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, a []string) error {
			log := cfg.logger()
			var r io.Reader = os.Stdin
			if a[0] != "-" {
				f, err := os.Open(a[0])
				if err != nil {
					return err
				}
				defer func() { _ = f.Close() }()
				r = f
			}
			pool, err := openPostgres(cmd.Context(), cfg.get("postgres.dsn"))
			if err != nil {
				return err
			}
			defer pool.Close()
			stats, err := hierarchy.Import(cmd.Context(), pool, r, hierarchy.ImportOptions{
				Progress: func(phase string, rows int64) { log.Info("import", "phase", phase, "rows", rows) },
			})
			if err != nil {
				return err
			}
			fmt.Printf("imported %d rows: %d new, %d changed, %d unchanged in %s\n",
				stats.Rows, stats.Inserted, stats.Updated, stats.Unchanged, stats.Elapsed.Round(time.Millisecond))
			return nil
		},
	}
	move := &cobra.Command{
		Use:   "move ID NEW_PARENT_ID",
		Short: "Move an entity (and its subtree) under a new parent (0 makes it a root)",
		Args:  args(cobra.ExactArgs(2)),
		RunE: func(cmd *cobra.Command, a []string) error {
			v, err := ids(a[:1])
			if err != nil {
				return err
			}
			newParent := int64(0) // a root
			if a[1] != "0" {
				p, err := ids(a[1:])
				if err != nil {
					return err
				}
				newParent = p[0]
			}
			v = append(v, newParent)
			at, err := parseEffective()
			if err != nil {
				return err
			}
			return withStore(cmd.Context(), func(s *hierarchy.Store) error { return s.Move(cmd.Context(), v[0], v[1], at) })
		},
	}
	move.Flags().StringVar(&effective, "effective-at", "", "RFC 3339 time the change takes effect (default now)")
	cmd.AddCommand(imp, move)
	for _, st := range []struct {
		use    string
		status hierarchy.Status
	}{{"suspend", hierarchy.StatusSuspended}, {"activate", hierarchy.StatusActive}, {"close", hierarchy.StatusClosed}} {
		c := &cobra.Command{
			Use:   st.use + " ID",
			Short: "Set an entity's status to " + st.status.String(),
			Args:  args(cobra.ExactArgs(1)),
			RunE: func(cmd *cobra.Command, a []string) error {
				v, err := ids(a)
				if err != nil {
					return err
				}
				at, err := parseEffective()
				if err != nil {
					return err
				}
				return withStore(cmd.Context(), func(s *hierarchy.Store) error { return s.SetStatus(cmd.Context(), v[0], st.status, at) })
			},
		}
		c.Flags().StringVar(&effective, "effective-at", "", "RFC 3339 time the change takes effect (default now)")
		cmd.AddCommand(c)
	}
	return cmd
}
