package e2e

import (
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
)

// scripts/test runs the suite on ClickHouse 18.16 and a subset on 26.9 at
// the same time, two go test processes sharing one Kafka and one
// PostgreSQL. A test that stops or restarts one of those shared services
// (outages, faults, the relay's Kafka stop) must not do it under a test of
// the other process. So every test holds a shared flock on
// run/e2e-services.lock in scripts/services' data directory from newEnv to
// its end, and a test that disrupts a shared service trades it for an
// exclusive one until its end. Within one process tests run one at a time
// (none is parallel), so one descriptor serves them all. flock does not
// prefer a waiting exclusive locker, and the other process takes its shared
// lock again right after each of its tests, so a second lock, the gate, is
// a turnstile: shared lockers pass through it, and a disrupting test holds
// it while it waits, which lets the other process's running test finish
// and holds its next one back. Without the data directory (services not run
// by scripts/services) nothing is locked.
var serviceLock struct {
	mu        sync.Mutex
	f, gate   *os.File
	holders   int  // tests holding the shared lock
	exclusive bool // a test of this process holds it exclusively
}

// sharedServices are those both processes use; each ClickHouse belongs to
// one of them.
var sharedServices = map[string]bool{"kafka": true, "postgres": true, "zookeeper": true}

func serviceLockFile() *os.File {
	if serviceLock.f == nil {
		dir := filepath.Join(servicesDir(), "run")
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

// holdServicesShared takes the shared lock for t's duration.
func holdServicesShared(t testing.TB) {
	serviceLock.mu.Lock()
	defer serviceLock.mu.Unlock()
	f := serviceLockFile()
	if f == nil {
		return
	}
	if serviceLock.holders == 0 && !serviceLock.exclusive {
		gate := int(serviceLock.gate.Fd())
		if err := syscall.Flock(gate, syscall.LOCK_EX); err != nil {
			t.Fatalf("flock %s: %v", serviceLock.gate.Name(), err)
		}
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_SH)
		_ = syscall.Flock(gate, syscall.LOCK_UN)
		if err != nil {
			t.Fatalf("flock %s: %v", f.Name(), err)
		}
	}
	serviceLock.holders++
	t.Cleanup(releaseServices)
}

func releaseServices() {
	serviceLock.mu.Lock()
	defer serviceLock.mu.Unlock()
	serviceLock.holders--
	if serviceLock.holders == 0 && serviceLock.f != nil {
		_ = syscall.Flock(int(serviceLock.f.Fd()), syscall.LOCK_UN)
		serviceLock.exclusive = false
	}
}

// holdServicesExclusive makes t's lock exclusive before it disrupts a
// shared service; it stays so until t ends. The shared lock is dropped
// first (two processes converting at once would wait for each other), then
// the gate is held while waiting for the exclusive lock.
func holdServicesExclusive(t testing.TB, service string) {
	if !sharedServices[service] {
		return
	}
	serviceLock.mu.Lock()
	defer serviceLock.mu.Unlock()
	f := serviceLockFile()
	if f == nil || serviceLock.exclusive {
		return
	}
	if serviceLock.holders == 0 {
		// A disruption outside newEnv's tests: hold it until t ends.
		serviceLock.holders++
		t.Cleanup(releaseServices)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		t.Logf("waiting for the test of the other go test process to end before stopping %s", service)
		_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		gate := int(serviceLock.gate.Fd())
		if err := syscall.Flock(gate, syscall.LOCK_EX); err != nil {
			t.Fatalf("flock %s: %v", serviceLock.gate.Name(), err)
		}
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX)
		_ = syscall.Flock(gate, syscall.LOCK_UN)
		if err != nil {
			t.Fatalf("flock %s: %v", f.Name(), err)
		}
	}
	serviceLock.exclusive = true
}
