package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/canopyhq/canopy/ingest"
)

// TestReconcileFillsGaps loses ranges of records on purpose: the consumer
// group's committed offsets are moved past records no worker has seen.
// reconcile --dry-run must list exactly those ranges; reconcile must process
// them so that the rollups equal the oracle; a second reconcile finds and
// changes nothing. Under ingest.dedup=partitioned the records are lost in the
// by-id topic, where the workers' batches are: they are written there as the
// router writes them while no worker runs, and skipped.
func TestReconcileFillsGaps(t *testing.T) {
	for _, mode := range []string{"postgres", "partitioned"} {
		t.Run(mode, func(t *testing.T) {
			seed := seedFromEnv(t)
			t.Logf("seed %d (set CANOPY_TEST_SEED to replay)", seed)
			e := newEnv(t, 3)
			gapTopic := e.topic
			if mode == "partitioned" {
				gapTopic = e.partitioned()
			} else {
				e.postgres()
			}
			sc := e.setUp(seed, 2000, 30000)
			keys, values := sc.records()
			a, b := len(values)*4/10, len(values)*7/10
			ctx := context.Background()

			e.produce(keys[:a], values[:a])
			w := e.startWorker(1)
			e.waitAcked(uint64(a), 5*time.Minute)
			w.stop(t)

			before := e.endOffsets(gapTopic)
			if mode == "partitioned" {
				e.produceByID(gapTopic, values[a:b]) // the records that get lost
			} else {
				e.produce(keys[a:b], values[a:b])
			}
			after := e.endOffsets(gapTopic)
			lost := kadm.Offsets{}
			var want []string
			for p, end := range after {
				lost.AddOffset(gapTopic, p, end, -1)
				if end > before[p] {
					want = append(want, fmt.Sprintf("%s %d %d %d %d", gapTopic, p, before[p], end-1, end-before[p]))
				}
			}
			sort.Strings(want)
			resp, err := e.admin.CommitOffsets(ctx, e.name, lost)
			if err == nil {
				err = resp.Error()
			}
			if err != nil {
				t.Fatalf("move committed offsets: %v", err)
			}

			e.produce(keys[b:], values[b:])
			w = e.startWorker(2)
			e.waitAckedLoose(uint64(a+len(values)-b), 5*time.Minute) // the lost ranges stay unacknowledged

			got := lines(e.run("reconcile", "--dry-run"))
			if strings.Join(got, "\n") != strings.Join(want, "\n") {
				t.Fatalf("reconcile --dry-run listed\n%s\nwant the lost ranges\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
			}
			if got := lines(e.run("reconcile")); strings.Join(got, "\n") != strings.Join(want, "\n") {
				t.Fatalf("reconcile reprocessed\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
			}
			if mode == "partitioned" {
				// Its temporary state was a slot of ingest.state_dir, emptied
				// when it ended (a killed run's is emptied by the next).
				slot := filepath.Join(e.logDir, "state", "reconcile", "0")
				left, err := os.ReadDir(slot)
				if err != nil {
					t.Fatalf("reconcile's state slot: %v", err)
				}
				if len(left) != 1 || left[0].Name() != "LOCK" {
					t.Fatalf("after reconcile its state slot %s holds %d entries (%v), want only LOCK", slot, len(left), left)
				}
			}
			e.waitAcked(uint64(len(values)), time.Minute)
			w.stop(t)
			e.waitRestated(5 * time.Minute)
			e.verify(sc)

			if got := lines(e.run("reconcile")); len(got) != 0 {
				t.Fatalf("second reconcile reprocessed %v, want nothing", got)
			}
			e.verify(sc)
		})
	}
}

// produceByID writes values to the by-id topic keyed by their event ids, as
// the router does.
func (e *env) produceByID(topic string, values [][]byte) {
	e.t.Helper()
	recs := make([]*kgo.Record, len(values))
	for i, v := range values {
		recs[i] = &kgo.Record{Topic: topic, Value: v}
		if id, ok := ingest.EventIDOf(v); ok {
			recs[i].Key = []byte(id)
		}
	}
	if err := e.kafka.ProduceSync(context.Background(), recs...).FirstErr(); err != nil {
		e.t.Fatalf("produce to %s: %v", topic, err)
	}
}

func (e *env) endOffsets(topic string) map[int32]int64 {
	e.t.Helper()
	offs, err := e.admin.ListEndOffsets(context.Background(), topic)
	if err == nil {
		err = offs.Error()
	}
	if err != nil {
		e.t.Fatal(err)
	}
	out := map[int32]int64{}
	offs.Each(func(o kadm.ListedOffset) { out[o.Partition] = o.Offset })
	return out
}

// lines splits command output into its non-empty lines, sorted.
func lines(out string) []string {
	var ls []string
	for _, l := range strings.Split(out, "\n") {
		if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "time=") {
			ls = append(ls, l)
		}
	}
	sort.Strings(ls)
	return ls
}
