package e2e

import (
	"compress/gzip"
	"context"
	"encoding/csv"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/canopyhq/canopy/internal/synth"
)

// writeNDJSON writes events (and extra raw lines) to path, gzipped when the
// name ends in .gz.
func writeNDJSON(t testing.TB, path string, evs []synth.Event, extra ...string) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	var w interface {
		Write([]byte) (int, error)
	} = f
	var gz *gzip.Writer
	if strings.HasSuffix(path, ".gz") {
		gz = gzip.NewWriter(f)
		w = gz
	}
	for _, ev := range evs {
		_, _ = w.Write(append(ev.JSON(), '\n'))
	}
	for _, l := range extra {
		_, _ = w.Write([]byte(l + "\n"))
	}
	if gz != nil {
		if err := gz.Close(); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestBackfillFilesMatchOracle loads a directory holding a gzipped NDJSON
// file, a plain NDJSON file and a CSV file (with a bad record in each of the
// last two): the rollups must equal the oracle, the bad records must be
// dead-lettered, and a second run must change nothing. A missing file is an
// error with exit code 1 that writes nothing.
func TestBackfillFilesMatchOracle(t *testing.T) {
	seed := seedFromEnv(t)
	t.Logf("seed %d (set CANOPY_TEST_SEED to replay)", seed)
	e := newEnv(t, 1)
	sc := e.setUp(seed, 2000, 60000)

	out, err := e.runErr("backfill", filepath.Join(t.TempDir(), "missing.ndjson"))
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 1 || !strings.Contains(out, "no such file") {
		t.Fatalf("backfill of a missing file: %v\n%s", err, out)
	}
	if n, _ := e.ackedRecordsOf(context.Background(), "file:%"); n != 0 {
		t.Fatalf("a failed backfill acknowledged %d records", n)
	}

	dir := t.TempDir()
	a, b := len(sc.events)*4/10, len(sc.events)*7/10
	writeNDJSON(t, filepath.Join(dir, "a.ndjson.gz"), sc.events[:a])
	writeNDJSON(t, filepath.Join(dir, "b.ndjson"), sc.events[a:b], `{"event_id":"broken"`)
	f, err := os.Create(filepath.Join(dir, "c.csv"))
	if err != nil {
		t.Fatal(err)
	}
	cw := csv.NewWriter(f)
	_ = cw.Write(synth.CSVHeader)
	for _, ev := range sc.events[b:] {
		_ = cw.Write(ev.CSVRow())
	}
	_ = cw.Write([]string{"bad-csv", "not-a-number", "2026-10-28T00:00:00Z", "sale", "1", "1"})
	cw.Flush()
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}

	first := e.run("backfill", dir)
	if !strings.Contains(first, "2 dead-lettered (invalid_json 1, wrong_type 1)") {
		t.Fatalf("first backfill summary: %s", first)
	}
	e.verify(sc)
	second := e.run("backfill", dir)
	if !strings.Contains(second, " 0 accepted, 0 duplicates, ") || !strings.Contains(second, "0 dead-lettered") {
		t.Fatalf("second backfill changed something: %s", second)
	}
	e.verify(sc)
	if n := e.countTopic(e.dlq); n != 2 {
		t.Fatalf("dead-letter topic holds %d records, want 2", n)
	}
}

// TestBackfillResumesAfterKill SIGKILLs a backfill of 500,000 events three
// times at random moments and starts it again each time with the same
// arguments; the final rollups must equal the oracle.
func TestBackfillResumesAfterKill(t *testing.T) {
	if testing.Short() {
		t.Skip("kill-and-resume test is long")
	}
	seed := seedFromEnv(t)
	t.Logf("seed %d (set CANOPY_TEST_SEED to replay)", seed)
	e := newEnv(t, 1)
	sc := e.setUp(seed, 5000, 150000)
	file := filepath.Join(t.TempDir(), "history.ndjson.gz")
	writeNDJSON(t, file, sc.events)
	rng := rand.New(rand.NewPCG(uint64(seed), 9))
	for kill := 1; kill <= 3; kill++ {
		cmd := exec.Command(binary, "backfill", file)
		cmd.Env = e.vars
		logf, err := os.Create(filepath.Join(e.logDir, fmt.Sprintf("backfill-%d.log", kill)))
		if err != nil {
			t.Fatal(err)
		}
		cmd.Stdout, cmd.Stderr = logf, logf
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		after := time.Duration(2000+rng.IntN(5000)) * time.Millisecond
		time.Sleep(after)
		_ = cmd.Process.Signal(syscall.SIGKILL)
		_ = cmd.Wait()
		_ = logf.Close()
		n, _ := e.ackedRecordsOf(context.Background(), "file:%")
		m, _ := e.ackedRecords(context.Background())
		t.Logf("kill %d after %s: %d records acknowledged (%d of the by-id topic)", kill, after, n, m)
	}
	out := e.run("backfill", file)
	t.Log(strings.TrimSpace(out[strings.LastIndex(out, "backfill:"):]))
	e.verify(sc)
}

// ackedRecordsOf is how many source records ingest_acks covers for the
// topics matching a LIKE pattern.
func (e *env) ackedRecordsOf(ctx context.Context, like string) (uint64, error) {
	var n uint64
	err := e.ch.QueryRow(ctx, fmt.Sprintf(`SELECT sum(records) FROM (
		SELECT topic, partition, first_offset, any(records) AS records FROM %s.ingest_acks
		WHERE topic LIKE ? GROUP BY topic, partition, first_offset)`, e.chDB), like).Scan(&n)
	return n, err
}
