// Command canopy ingests business events into rollups over a changing
// hierarchy. See README.md and ../shared/SPEC.md for the contract.
//
// It owns configuration (config.go, the one table of settings), the client
// builders (clients.go, secure.go) and one file per command; it is the only
// package that may import every other one.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"runtime/pprof"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	// CANOPY_CPU_PROFILE=FILE writes a CPU profile of any command (the
	// worker also serves /debug/pprof/ when http.pprof is true).
	if path := os.Getenv("CANOPY_CPU_PROFILE"); path != "" {
		if f, err := os.Create(path); err == nil { //nolint:gosec // the operator's path
			if pprof.StartCPUProfile(f) == nil {
				defer func() { _ = f.Close() }()
				defer pprof.StopCPUProfile()
			}
		}
	}
	err := newRoot().ExecuteContext(ctx)
	stop()
	code := exitCode(err)
	pprof.StopCPUProfile()
	os.Exit(code)
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
