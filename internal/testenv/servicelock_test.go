package testenv

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// A test that reads a service's variable holds the shared lock until it
// ends, so another process's exclusive lock (a test about to restart that
// service) waits for it; a variable that names no such service takes no
// lock.
func TestGetHoldsTheServiceLock(t *testing.T) {
	dir := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, "run"), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("CANOPY_DATA_DIR", dir)
	t.Setenv("CANOPY_KAFKA_BROKERS", "127.0.0.1:1")
	t.Setenv("CANOPY_SOMETHING_ELSE", "x")
	// Another open file description of the lock: flock treats it as
	// another process would.
	other, err := os.OpenFile(filepath.Join(dir, "run", "e2e-services.lock"), os.O_CREATE|os.O_RDWR, 0o666)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	exclusive := func() bool {
		if err := syscall.Flock(int(other.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
			return false
		}
		_ = syscall.Flock(int(other.Fd()), syscall.LOCK_UN)
		return true
	}
	t.Run("other variable", func(t *testing.T) {
		Get(t, "CANOPY_SOMETHING_ELSE")
		if !exclusive() {
			t.Error("a variable that names no service took the lock")
		}
	})
	t.Run("service", func(t *testing.T) {
		Get(t, "CANOPY_KAFKA_BROKERS")
		if exclusive() {
			t.Error("another process could lock exclusively while the test uses Kafka")
		}
	})
	if !exclusive() {
		t.Error("the lock outlived the test that read the variable")
	}
}

func TestServicesDirFindsTheModuleRoot(t *testing.T) {
	t.Setenv("CANOPY_DATA_DIR", "")
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	want := filepath.Join(wd, "..", "..", ".data", "services") // internal/testenv
	if got := ServicesDir(); filepath.Clean(got) != filepath.Clean(want) {
		t.Fatalf("ServicesDir() = %s, want %s", got, want)
	}
}
