// Package testenv gives integration tests the real services that
// scripts/services runs, found through the environment that
// `scripts/services env` exports.
//
// A test whose service is not configured is skipped on a developer's
// machine and fails under CI=true, where every integration test must run:
// a CI run never passes by skipping.
package testenv

import (
	"fmt"
	"os"
	"testing"
)

// Get returns the environment variable name, or ends the test (Unavailable)
// when it is empty. For a variable naming a service another test process
// may stop or restart, the test holds that service's shared lock until it
// ends (HoldShared).
func Get(t testing.TB, name string) string {
	t.Helper()
	v := os.Getenv(name)
	if v == "" {
		Unavailable(t, "%s is not set", name)
	}
	if serviceVars[name] {
		HoldShared(t)
	}
	return v
}

// Unavailable ends the test because a service it needs is missing: a skip,
// or under CI=true a failure, with the reason and how to start the services.
func Unavailable(t testing.TB, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...) + `; run scripts/services up and eval "$(scripts/services env)"`
	if os.Getenv("CI") == "true" {
		t.Fatal(msg + " (CI runs every integration test)")
	}
	t.Skip(msg)
}
