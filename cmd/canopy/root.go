package main

import (
	"github.com/spf13/cobra"
)

func newRoot() *cobra.Command {
	cfg := newConfig()
	root := &cobra.Command{
		Use:           "canopy",
		Short:         "Pre-aggregate business events over a changing hierarchy into ClickHouse rollups",
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			return cfg.resolve(cmd)
		},
	}
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	cfg.register(root.PersistentFlags())
	root.AddCommand(
		newMigrate(cfg),
		newWorker(cfg),
		newHierarchy(cfg),
		newGen(cfg),
		newDev(cfg),
		newRelay(cfg),
		newReconcile(cfg),
		newDLQ(cfg),
		newBackfill(cfg),
		newRebuild(cfg),
		newRestate(cfg),
		newDashboards(cfg),
		newShow(cfg),
		newConfigCmd(cfg),
	)
	return root
}

// args wraps a cobra positional-argument check so a violation exits with 2.
func args(check cobra.PositionalArgs) cobra.PositionalArgs {
	return func(cmd *cobra.Command, a []string) error {
		if err := check(cmd, a); err != nil {
			return usageError{err}
		}
		return nil
	}
}
