package idstate

import (
	"bufio"
	"errors"
	"io"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// TestLockedByOtherProcess opens a directory in a child process (this test
// binary again) and checks that Open here fails with ErrLocked naming it.
func TestLockedByOtherProcess(t *testing.T) {
	if dir := os.Getenv("IDSTATE_TEST_HOLD"); dir != "" {
		s, err := Open(dir, Options{Horizon: time.Hour})
		if err != nil {
			os.Stdout.WriteString("error " + err.Error() + "\n")
			return
		}
		os.Stdout.WriteString("ready\n")
		io.Copy(io.Discard, os.Stdin) // hold the lock until the parent closes stdin
		s.Close()
		return
	}
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^TestLockedByOtherProcess$")
	cmd.Env = append(os.Environ(), "IDSTATE_TEST_HOLD="+dir)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Wait()
	defer stdin.Close()
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil || line != "ready\n" {
		t.Fatalf("child: %q, %v", line, err)
	}
	_, err = Open(dir, Options{Horizon: time.Hour})
	t.Log(err)
	if !errors.Is(err, ErrLocked) || !strings.Contains(err.Error(), dir) {
		t.Fatalf("Open of a directory held by another process: err = %v, want ErrLocked naming %s", err, dir)
	}
}
