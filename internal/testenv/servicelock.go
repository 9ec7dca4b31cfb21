package testenv

import (
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
)

// scripts/test runs every package's tests (go test ./..., a process per
// package) and, at the same time, a subset of the end-to-end tests on
// ClickHouse 26.9: many processes sharing one Kafka, one PostgreSQL, one
// ZooKeeper and the ClickHouse 18.16 server. A test that stops or restarts
// one of those (outages, faults, the relay's Kafka stop) must not do it
// under a test of another process. So a test holds a shared flock on
// run/e2e-services.lock in scripts/services' data directory while it uses
// them (Get takes it for the services' variables; the end-to-end harness
// for each test), and a test that disrupts a service trades it for an
// exclusive one until its end (HoldExclusive). flock does not prefer a
// waiting exclusive locker, and other processes take their shared lock
// again right after each of their tests, so a second lock, the gate, is a
// turnstile: a process's first shared holder passes through it, and a
// disrupting test holds it while it waits, which lets the running tests of
// the other processes finish and holds their next ones back. Without the
// data directory (services not run by scripts/services) nothing is locked.
var serviceLock struct {
	mu        sync.Mutex
	f, gate   *os.File
	holders   int  // tests of this process holding the lock
	exclusive bool // a test of this process holds it exclusively
}

// disrupted are the services a test may stop or restart while tests of
// other processes use them.
var disrupted = map[string]bool{"kafka": true, "postgres": true, "zookeeper": true, "clickhouse": true, "clickhouse26": true}

// serviceVars are the environment variables that name a disrupted
// service: Get holds the shared lock for the test that reads one.
var serviceVars = map[string]bool{
	"CANOPY_KAFKA_BROKERS": true, "CANOPY_POSTGRES_DSN": true, "CANOPY_ZOOKEEPER": true, "CANOPY_CLICKHOUSE_DSN": true,
}

// ServicesDir is scripts/services' data directory: CANOPY_DATA_DIR, or
// .data/services at the root of the module the test runs in.
func ServicesDir() string {
	if dir := os.Getenv("CANOPY_DATA_DIR"); dir != "" {
		return dir
	}
	dir, err := os.Getwd()
	if err != nil {
		return ""
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return filepath.Join(dir, ".data", "services")
		}
		up := filepath.Dir(dir)
		if up == dir {
			return ""
		}
		dir = up
	}
}

func serviceLockFile() *os.File {
	if serviceLock.f == nil {
		base := ServicesDir()
		if base == "" {
			return nil
		}
		dir := filepath.Join(base, "run")
		if _, err := os.Stat(dir); err != nil {
			return nil
		}
		f, err := os.OpenFile(filepath.Join(dir, "e2e-services.lock"), os.O_CREATE|os.O_RDWR, 0o666)
		if err != nil {
			return nil
		}
		gate, err := os.OpenFile(filepath.Join(dir, "e2e-services.gate"), os.O_CREATE|os.O_RDWR, 0o666)
		if err != nil {
			_ = f.Close()
			return nil
		}
		serviceLock.f, serviceLock.gate = f, gate
	}
	return serviceLock.f
}

// HoldShared takes the shared lock for t's duration.
func HoldShared(t testing.TB) {
	serviceLock.mu.Lock()
	defer serviceLock.mu.Unlock()
	f := serviceLockFile()
	if f == nil {
		return
	}
	if serviceLock.holders == 0 && !serviceLock.exclusive {
		throughGate(t, f, syscall.LOCK_SH)
	}
	serviceLock.holders++
	t.Cleanup(release)
}

func release() {
	serviceLock.mu.Lock()
	defer serviceLock.mu.Unlock()
	serviceLock.holders--
	if serviceLock.holders == 0 && serviceLock.f != nil {
		_ = syscall.Flock(int(serviceLock.f.Fd()), syscall.LOCK_UN)
		serviceLock.exclusive = false
	}
}

// HoldExclusive makes t's lock exclusive before it disrupts service; it
// stays so until t ends. The shared lock is dropped first (two processes
// converting at once would wait for each other), then the gate is held
// while waiting for the exclusive lock. A test calling it must be the only
// one of its process holding the lock (the end-to-end tests run one at a
// time).
func HoldExclusive(t testing.TB, service string) {
	if !disrupted[service] {
		return
	}
	serviceLock.mu.Lock()
	defer serviceLock.mu.Unlock()
	f := serviceLockFile()
	if f == nil || serviceLock.exclusive {
		return
	}
	if serviceLock.holders == 0 {
		// A disruption outside a test holding the lock: hold it until t ends.
		serviceLock.holders++
		t.Cleanup(release)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		t.Logf("waiting for the tests of the other go test processes to end before stopping %s", service)
		_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		throughGate(t, f, syscall.LOCK_EX)
	}
	serviceLock.exclusive = true
}

// throughGate locks f as how says (LOCK_SH or LOCK_EX) while holding the
// gate: a process waiting there for the exclusive lock holds back the
// other processes' next shared lockers.
func throughGate(t testing.TB, f *os.File, how int) {
	gate := int(serviceLock.gate.Fd())
	if err := syscall.Flock(gate, syscall.LOCK_EX); err != nil {
		t.Fatalf("flock %s: %v", serviceLock.gate.Name(), err)
	}
	err := syscall.Flock(int(f.Fd()), how)
	_ = syscall.Flock(gate, syscall.LOCK_UN)
	if err != nil {
		t.Fatalf("flock %s: %v", f.Name(), err)
	}
}
