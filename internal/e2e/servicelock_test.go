package e2e

import (
	"testing"

	"github.com/canopyhq/canopy/internal/testenv"
)

// The end-to-end tests share Kafka, PostgreSQL, ZooKeeper and ClickHouse
// with the other go test processes of scripts/test (testenv.HoldShared
// says how). Within one process they run one at a time (none is
// parallel), so a test holds the shared lock from newEnv to its end, and
// one that disrupts a service makes it exclusive first.

// holdServicesShared takes the shared lock for t's duration.
func holdServicesShared(t testing.TB) { testenv.HoldShared(t) }

// holdServicesExclusive makes t's lock exclusive before it disrupts a
// service.
func holdServicesExclusive(t testing.TB, service string) { testenv.HoldExclusive(t, service) }
