package e2e

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestKilledOwnerDuplicatesRefused: two workers share the topic; one is
// SIGKILLed mid-stream. After the survivor has taken its partitions over,
// every event is sent again twice — keyless, and keyed by event id, so the
// copies land on other partitions than the originals — and a backfill file
// repeats them all once more. Every copy is refused as a duplicate: the
// rollups equal the oracle of the events counted once, and ingest_acks
// counts every repeated record as a duplicate.
func TestKilledOwnerDuplicatesRefused(t *testing.T) {
	seed := seedFromEnv(t)
	t.Logf("seed %d (set CANOPY_TEST_SEED to replay)", seed)
	e := newEnv(t, 4)
	// The PostgreSQL claims; TestPartitionedKilledOwnerDuplicatesRefused is
	// this test under the default, where a killed router may copy records
	// twice and the duplicates counted are therefore not exactly 2n.
	e.postgres()
	sc := e.setUp(seed, 1500, 20000)
	ctx := context.Background()
	n := uint64(len(sc.events))

	victim := e.startWorker(1)
	e.startWorker(2)
	keys, values := sc.records()
	e.produce(keys, values)
	e.waitFor("half of the events acknowledged", 3*time.Minute, func() bool {
		got, err := e.ackedRecords(ctx)
		return err == nil && got >= n/2
	})
	_ = victim.cmd.Process.Signal(syscall.SIGKILL)
	<-victim.done
	e.waitAcked(n, 3*time.Minute)

	before := e.duplicatesAcked()
	ids := make([][]byte, len(sc.events))
	for i, ev := range sc.events {
		ids[i] = []byte(ev.ID)
	}
	e.produce(make([][]byte, len(values)), values) // keyless
	e.produce(ids, values)                         // keyed by event id
	e.waitAcked(3*n, 3*time.Minute)
	if got := e.duplicatesAcked() - before; got != 2*n {
		t.Fatalf("the two re-sends were acknowledged with %d duplicates, want %d", got, 2*n)
	}

	file := filepath.Join(t.TempDir(), "again.ndjson")
	writeNDJSON(t, file, sc.events)
	out := e.run("backfill", file)
	if !strings.Contains(out, fmt.Sprintf(" 0 accepted, %d duplicates, ", n)) {
		t.Fatalf("backfill of the same events: %s", out[strings.LastIndex(out, "backfill:"):])
	}
	e.verify(sc)
}

// duplicatesAcked is how many records ingest_acks counts as duplicates for
// the test topic.
func (e *env) duplicatesAcked() uint64 {
	e.t.Helper()
	var d uint64
	err := e.ch.QueryRow(context.Background(), fmt.Sprintf(`SELECT sum(duplicates) FROM (
		SELECT partition, first_offset, any(duplicates) AS duplicates FROM %s.ingest_acks
		WHERE topic = ? GROUP BY partition, first_offset)`, e.chDB), e.topic).Scan(&d)
	if err != nil {
		e.t.Fatal(err)
	}
	return d
}
