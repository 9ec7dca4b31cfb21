package main

import (
	"fmt"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/canopyhq/canopy/restate"
)

func newRestate(cfg *config) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "restate",
		Short: "Inspect the restater, which applies hierarchy changes to the as-is rollups and the entities table",
	}
	var all bool
	status := &cobra.Command{
		Use:   "status",
		Short: "Show the restater's progress and the hierarchy changes it parked",
		Long: `status prints how far the restater has applied the hierarchy's changes
(restated_through, the latest change, how many are pending) and the changes it
parked: a change it could not restate (its entity has no ancestor chain at the
change's version, e.g. a chain longer than 255 entities in legacy data) and
every later change whose as-is correction would build on it. Parked changes
leave the as-is rollups (rollup_daily_current) of their reach as they were;
everything else goes on. Resolve them by fixing the hierarchy if needed (move
the entity under a chain within the limit) and running canopy rebuild over
every day with events. Reads PostgreSQL only; exit 0 whatever it shows.

Output: "restated_through N", "latest_seq N", "pending N", "paused_until T"
while canopy rebuild pauses writers, "parked N", then one line per parked
change: SEQ ENTITY PARKED_AT ATTEMPTS DEPENDS_ON REACH ERROR (with --all,
resolved ones too, with RESOLVED_AT).`,
		Args: args(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			pool, err := openPostgres(ctx, cfg)
			if err != nil {
				return err
			}
			defer pool.Close()
			st, err := restate.ReadStatus(ctx, pool, all)
			if err != nil {
				return err
			}
			fmt.Printf("restated_through %d\nlatest_seq %d\npending %d\n", st.RestatedThrough, st.Latest, st.Pending())
			if !st.PausedUntil.IsZero() {
				fmt.Printf("paused_until %s (canopy rebuild)\n", st.PausedUntil.UTC().Format(time.RFC3339))
			}
			unresolved := 0
			for _, p := range st.Parked {
				if p.Resolved.IsZero() {
					unresolved++
				}
			}
			fmt.Printf("parked %d\n", unresolved)
			if len(st.Parked) == 0 {
				return nil
			}
			tw := tabwriter.NewWriter(os.Stdout, 2, 4, 2, ' ', 0)
			head := "SEQ\tENTITY\tPARKED_AT\tATTEMPTS\tDEPENDS_ON\tREACH\tERROR"
			if all {
				head += "\tRESOLVED_AT"
			}
			fmt.Fprintln(tw, head)
			for _, p := range st.Parked {
				dep := "-"
				if p.DependsOn > 0 {
					dep = fmt.Sprint(p.DependsOn)
				}
				line := fmt.Sprintf("%d\t%d\t%s\t%d\t%s\t%d\t%s", p.Seq, p.Entity, p.ParkedAt.UTC().Format(time.RFC3339),
					p.Attempts, dep, p.Reach, strings.ReplaceAll(p.Error, "\n", " "))
				if all {
					res := "-"
					if !p.Resolved.IsZero() {
						res = p.Resolved.UTC().Format(time.RFC3339)
					}
					line += "\t" + res
				}
				fmt.Fprintln(tw, line)
			}
			if err := tw.Flush(); err != nil {
				return err
			}
			if unresolved > 0 {
				fmt.Println("run canopy rebuild to resolve (over every day with events; first move any entity whose chain is too long under a shorter one)")
			}
			return nil
		},
	}
	status.Flags().BoolVar(&all, "all", false, "list resolved parked changes too")
	cmd.AddCommand(status)
	return cmd
}
