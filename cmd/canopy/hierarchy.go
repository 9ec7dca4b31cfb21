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
		pool, err := openPostgres(ctx, cfg)
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

	var chunkSize int
	imp := &cobra.Command{
		Use:   "import FILE",
		Short: "Import a CSV of id,parent_id,status,name (- for standard input); all or nothing unless --chunk-size",
		Long: `import loads a CSV snapshot of entities (id,parent_id,status,name; an optional
header row may name the columns in any order) into canopy.entities: new ids
are inserted, changed ones updated, history and outbox written as triggers
would. The file is refused, with its first offending lines, for duplicate ids,
unknown parents, cycles, ancestor chains longer than 255 entities, names
longer than 256 characters, or new children of a closed entity.

By default the import is one transaction, all or nothing. It holds the
hierarchy lock from its checks against canopy.entities until it commits, so
every other hierarchy change (CLI, SQL, another import) waits meanwhile:
minutes for millions of rows. Reading the file does not hold the lock.

--chunk-size N writes the file in transactions of N rows, parents before
children, each holding the lock only while it writes; other changes wait for
one chunk at most. The whole file is still checked before anything is
written, but it is no longer all or nothing: a chunk that a concurrent change
makes invalid (a parent closed meanwhile, a chain made too long) stops the
import with the earlier chunks committed. Run the same file again to finish:
an import writes only what differs.`,
		Args: args(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, a []string) error {
			if chunkSize < 0 {
				return usageError{fmt.Errorf("--chunk-size must be >= 0, not %d", chunkSize)}
			}
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
			pool, err := openPostgres(cmd.Context(), cfg)
			if err != nil {
				return err
			}
			defer pool.Close()
			stats, err := hierarchy.Import(cmd.Context(), pool, r, hierarchy.ImportOptions{
				Progress:  func(phase string, rows int64) { log.Info("import", "phase", phase, "rows", rows) },
				ChunkSize: chunkSize,
			})
			if err != nil {
				return err
			}
			fmt.Printf("imported %d rows: %d new, %d changed, %d unchanged in %s\n",
				stats.Rows, stats.Inserted, stats.Updated, stats.Unchanged, stats.Elapsed.Round(time.Millisecond))
			return nil
		},
	}
	imp.Flags().IntVar(&chunkSize, "chunk-size", 0, "rows per transaction, holding the hierarchy lock one chunk at a time; 0 = one all-or-nothing transaction (try 20000 for large files)")
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
