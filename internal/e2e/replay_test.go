package e2e

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/canopyhq/canopy/schema"
)

// acksAway makes ClickHouse refuse every acknowledgement (the table is
// renamed away) until the returned function puts it back: the transient
// failure that meets a batch after its rows were written.
func (e *env) acksAway() (back func()) {
	e.t.Helper()
	ctx := context.Background()
	if err := e.ch.Exec(ctx, fmt.Sprintf("RENAME TABLE %[1]s.ingest_acks TO %[1]s.ingest_acks_away", e.chDB)); err != nil {
		e.t.Fatalf("rename ingest_acks away: %v", err)
	}
	done := false
	back = func() {
		if done {
			return
		}
		done = true
		if err := e.ch.Exec(ctx, fmt.Sprintf("RENAME TABLE %[1]s.ingest_acks_away TO %[1]s.ingest_acks", e.chDB)); err != nil {
			e.t.Fatalf("rename ingest_acks back: %v", err)
		}
	}
	e.t.Cleanup(back)
	return back
}

// startCanopy starts a canopy command in the background with extra
// environment; wait returns its output and error.
func (e *env) startCanopy(extraEnv []string, args ...string) (cmd *exec.Cmd, wait func() (string, error)) {
	e.t.Helper()
	log := filepath.Join(e.logDir, fmt.Sprintf("%s-%d.log", args[0], time.Now().UnixNano()))
	f, err := os.Create(log)
	if err != nil {
		e.t.Fatal(err)
	}
	cmd = exec.Command(binary, args...)
	cmd.Env = append(append([]string{}, e.vars...), extraEnv...)
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { _ = cmd.Process.Kill() })
	return cmd, func() (string, error) {
		err := cmd.Wait()
		_ = f.Close()
		b, _ := os.ReadFile(log)
		return string(b), err
	}
}

// waitFor polls ok until it holds, failing the test after timeout.
func (e *env) waitFor(what string, timeout time.Duration, ok func() bool) {
	e.t.Helper()
	deadline := time.Now().Add(timeout)
	for !ok() {
		if time.Now().After(deadline) {
			e.t.Fatalf("after %s: still waiting for %s", timeout, what)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// openIntents is how many batches PostgreSQL holds as begun and not done.
func (e *env) openIntents() int {
	var n int
	if err := e.pg.QueryRow(context.Background(),
		"select count(*) from canopy.ingest_intents where done_at is null").Scan(&n); err != nil {
		e.t.Fatal(err)
	}
	return n
}

// TestRereadAfterPurgeCountsNothingTwice reads a topic range a second time
// after the intents of its first reading were purged (as the daily purge
// does), and fails the second reading's first writes with a transient
// ClickHouse error: its replays must count nothing, though the event-id
// claims in its offsets exist (they are the first reading's).
func TestRereadAfterPurgeCountsNothingTwice(t *testing.T) {
	seed := seedFromEnv(t)
	t.Logf("seed %d (set CANOPY_TEST_SEED to replay)", seed)
	e := newEnv(t, 2)
	e.postgres() // the hole was in the PostgreSQL claims and intents; by-id decisions are positional
	sc := e.setUp(seed, 1000, 20000)
	e.produce(sc.records())

	out := e.run("backfill", "--topic", e.topic, "--batch", "3000")
	t.Log(strings.TrimSpace(out[strings.LastIndex(out, "backfill:"):]))
	e.verify(sc)

	if _, err := e.pg.Exec(context.Background(), "delete from canopy.ingest_intents"); err != nil {
		t.Fatal(err)
	}
	back := e.acksAway()
	_, wait := e.startCanopy(nil, "backfill", "--topic", e.topic, "--batch", "3000")
	// Every new batch has begun (recorded its intent), found nothing to
	// count, and failed on its acknowledgement at least once.
	e.waitFor("the re-read's batches to begin", 2*time.Minute, func() bool { return e.openIntents() > 0 })
	time.Sleep(3 * time.Second)
	back()
	out, err := wait()
	if err != nil {
		t.Fatalf("re-read: %v\n%s", err, out)
	}
	if !strings.Contains(out, " 0 accepted, ") {
		t.Fatalf("re-read accepted events: %s", out[strings.LastIndex(out, "backfill:"):])
	}
	e.verify(sc)
}

// unfinishedBackfill sets up a scenario and leaves every batch of its
// backfill begun and unfinished with rows written: the backfill is killed
// while ClickHouse refuses its acknowledgements. It returns the scenario and
// the backfill's arguments, whose strides all begin at once (3 of them, 4 at
// a time), so a resume has no new batch to begin.
func (e *env) unfinishedBackfill(seed int64) (*scenario, []string) {
	e.t.Helper()
	sc := e.setUp(seed, 1000, 10000) // events span a month boundary
	file := filepath.Join(e.t.TempDir(), "history.ndjson")
	writeNDJSON(e.t, file, sc.events)
	back := e.acksAway()
	args := []string{"backfill", "--batch", "4000", "--parallel", "4", file}
	cmd, wait := e.startCanopy(nil, args...)
	e.waitFor("every batch to begin", 2*time.Minute, func() bool { return e.openIntents() >= 3 })
	time.Sleep(2 * time.Second)
	_ = cmd.Process.Signal(syscall.SIGKILL)
	_, _ = wait()
	back()
	return sc, args
}

// TestReplayUnderOtherConfigurationRefused leaves batches begun and
// unfinished (the backfill is killed while ClickHouse refuses its
// acknowledgements, after some of their rows were written), then resumes
// under another suspended-ancestors policy: that is refused with a clear
// error and writes nothing. Resumed with the configuration the batches were
// begun with, the rollups equal the oracle.
func TestReplayUnderOtherConfigurationRefused(t *testing.T) {
	seed := seedFromEnv(t)
	t.Logf("seed %d (set CANOPY_TEST_SEED to replay)", seed)
	e := newEnv(t, 1)
	e.postgres() // a backfill that writes its own batches
	sc, args := e.unfinishedBackfill(seed)
	open := e.openIntents()
	t.Logf("%d batches left unfinished", open)

	out, err := e.runWith([]string{"CANOPY_INGEST_SUSPENDED_ANCESTORS=skip"}, args...)
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 1 || !strings.Contains(out, "begun under another configuration") {
		t.Fatalf("resume under another policy: %v, want exit 1 naming the configuration\n%s", err, out)
	}
	if n := e.openIntents(); n != open {
		t.Fatalf("refused resume changed the unfinished batches: %d, was %d", n, open)
	}

	out = e.run(args...)
	t.Log(strings.TrimSpace(out[strings.LastIndex(out, "backfill:"):]))
	e.verify(sc)
}

// runWith is runErr with extra environment.
func (e *env) runWith(extraEnv []string, args ...string) (string, error) {
	saved := e.vars
	e.vars = append(append([]string{}, saved...), extraEnv...)
	defer func() { e.vars = saved }()
	return e.runErr(args...)
}

// forgetBlocks moves the test database's event and rollup tables, rows
// and all, to plain engines, which deduplicate nothing: ClickHouse as it is
// once the hashes of the blocks written so far have left its
// deduplication window.
func (e *env) forgetBlocks() {
	e.t.Helper()
	ctx := context.Background()
	s := schema.ClickHouse{Database: e.chDB, Engine: schema.EnginePlain, Measures: schema.DefaultMeasures()}
	for _, t := range s.Tables() {
		switch t.Name {
		case schema.TableEvents, schema.TableRollupHourly, schema.TableRollupDaily, schema.TableRollupAsIs:
		default:
			continue
		}
		plain := t
		plain.Name = t.Name + "_plain"
		for _, q := range []string{
			s.Create(plain),
			fmt.Sprintf("INSERT INTO %[1]s.%[2]s_plain SELECT * FROM %[1]s.%[2]s", e.chDB, t.Name),
			fmt.Sprintf("DROP TABLE %s.%s", e.chDB, t.Name),
			fmt.Sprintf("RENAME TABLE %[1]s.%[2]s_plain TO %[1]s.%[2]s", e.chDB, t.Name),
		} {
			if err := e.ch.Exec(ctx, q); err != nil {
				e.t.Fatalf("%s: %v", q, err)
			}
		}
	}
}

// TestOldReplayWritesOnlyMissingParts leaves batches begun and unfinished
// with their rows written (the backfill is killed while ClickHouse refuses
// its acknowledgements), then moves the rows to tables that deduplicate
// nothing, as if their block hashes had aged out of ClickHouse's window. Resumed past the replay
// verification age, each replay asks ClickHouse which parts it holds and
// writes only the rest: the rollups equal the oracle.
func TestOldReplayWritesOnlyMissingParts(t *testing.T) {
	seed := seedFromEnv(t)
	t.Logf("seed %d (set CANOPY_TEST_SEED to replay)", seed)
	e := newEnv(t, 1)
	e.postgres() // a backfill that writes its own batches
	sc, args := e.unfinishedBackfill(seed)
	var written uint64
	if err := e.ch.QueryRow(context.Background(), fmt.Sprintf("SELECT count() FROM %s.events", e.chDB)).Scan(&written); err != nil {
		t.Fatal(err)
	}
	if written == 0 {
		t.Fatal("the killed backfill wrote no events: nothing for a replay to skip")
	}
	t.Logf("%d unfinished batches, %d events rows written before the kill", e.openIntents(), written)
	e.forgetBlocks()

	time.Sleep(time.Second)
	out, err := e.runWith([]string{"CANOPY_INGEST_REPLAY_VERIFY_AFTER=1s"}, args...)
	if err != nil {
		t.Fatalf("resume: %v\n%s", err, out)
	}
	t.Log(strings.TrimSpace(out[strings.LastIndex(out, "backfill:"):]))
	e.verify(sc)
}
