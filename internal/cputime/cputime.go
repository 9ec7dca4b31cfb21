// Package cputime reads the CPU time of the running process, for the
// benchmarks that report CPU per unit of work beside wall time.
package cputime

import (
	"syscall"
	"time"
)

// Self is the user and system CPU time this process has used so far, its
// background goroutines' included; 0 if the kernel does not say.
func Self() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
