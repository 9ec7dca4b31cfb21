// Command canopy ingests business events into rollups over a changing
// hierarchy. See README.md and ../shared/SPEC.md for the contract.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := newRoot().ExecuteContext(ctx)
	stop()
	os.Exit(exitCode(err))
}

// exitCode maps an error to the SPEC's exit codes: 0 ok, 1 runtime failure,
// 2 bad usage.
func exitCode(err error) int {
	if err == nil {
		return 0
	}
	fmt.Fprintln(os.Stderr, "canopy:", err)
	var u usageError
	if errors.As(err, &u) {
		return 2
	}
	return 1
}
