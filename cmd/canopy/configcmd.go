package main

import (
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"
)

func newConfigCmd(cfg *config) *cobra.Command {
	return &cobra.Command{
		Use:   "config",
		Short: "Print the effective configuration, secrets redacted",
		Long: `Print every setting as resolved (flags, then CANOPY_* environment
variables, then canopy.yaml, then defaults), one per line:

  key = value  (source)

where source is the flag, the environment variable, the file's key or
"default". Passwords are printed as xxxxx, and so is the password part of a
DSN or URL. An invalid setting makes this command, like every other, exit
with 2 and a message naming the setting, its source and the accepted form.`,
		Args: args(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			return printConfig(cmd.OutOrStdout(), cfg)
		},
	}
}

// printConfig writes the resolved settings and measures, secrets redacted.
func printConfig(w io.Writer, cfg *config) error {
	width := len("measures")
	for _, s := range cfg.settings {
		width = max(width, len(s.key))
	}
	for _, s := range cfg.settings {
		if _, err := fmt.Fprintf(w, "%-*s = %s  (%s)\n", width, s.key, s.display(), s.src); err != nil {
			return err
		}
	}
	ms := make([]string, len(cfg.measures))
	for i, m := range cfg.measures {
		ms[i] = m.Name + ":" + string(m.Kind)
		if m.Scale != 0 {
			ms[i] += fmt.Sprintf("(%d)", m.Scale)
		}
	}
	_, err := fmt.Fprintf(w, "%-*s = %s  (%s)\n", width, "measures", strings.Join(ms, ", "), cfg.measuresSrc)
	return err
}
