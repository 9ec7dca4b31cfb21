package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/canopyhq/canopy/hierarchy"
)

// TestRelayResumesPastForgedRecords puts records no outbox row vouches for
// on the hierarchy topic's tail while no relay runs — a huge outbox seq, the
// seq of a rolled-back change, the next seq the outbox will hand out, and a
// real seq with another entity — then restarts the relay and commits new
// changes: every one of them must reach the topic, after the real ones it
// had already relayed, none skipped. (The relay used to resume after the
// highest seq header on the tail, so one forged record stopped it for good.)
func TestRelayResumesPastForgedRecords(t *testing.T) {
	e := newEnv(t, 1)
	topic := e.name + ".hierarchy"
	e.vars = append(e.vars, "CANOPY_KAFKA_HIERARCHY_TOPIC="+topic)
	csv := filepath.Join(t.TempDir(), "h.csv")
	rows := []byte("id,parent_id,status,name\n")
	for id := 1; id <= 50; id++ {
		parent := ""
		if id > 1 {
			parent = strconv.Itoa(1 + (id-2)/3)
		}
		rows = fmt.Appendf(rows, "%d,%s,active,e%d\n", id, parent, id)
	}
	if err := os.WriteFile(csv, rows, 0o600); err != nil {
		t.Fatal(err)
	}
	e.run("hierarchy", "import", csv)
	ctx := context.Background()
	suspend := func(id int) {
		t.Helper()
		if _, err := e.pg.Exec(ctx, `update canopy.entities
			set status = case status when 'active' then 'suspended' else 'active' end where id = $1`, id); err != nil {
			t.Fatal(err)
		}
	}

	relay := e.startRelay(0)
	for id := 2; id <= 6; id++ {
		suspend(id)
	}
	relayedBefore := e.maxOutboxSeq()
	e.waitRelayed(topic, relayedBefore)
	// startRelay's goroutine reaps it; wait for that (Wait here would race).
	_ = relay.Process.Kill()
	for relay.Process.Signal(syscall.Signal(0)) == nil {
		time.Sleep(20 * time.Millisecond)
	}

	// A rolled-back change consumes an outbox seq that no row will hold.
	tx, err := e.pg.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, `update canopy.entities set status = 'suspended' where id = 7`); err != nil {
		t.Fatal(err)
	}
	var gap int64
	if err := tx.QueryRow(ctx, `select max(seq) from canopy.outbox`).Scan(&gap); err != nil {
		t.Fatal(err)
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	if gap <= relayedBefore {
		t.Fatalf("the rolled-back change's outbox seq %d is not above the relayed %d", gap, relayedBefore)
	}
	var realEntity, realHistory int64
	if err := e.pg.QueryRow(ctx, `select entity_id, history_seq from canopy.outbox where seq = $1`, relayedBefore).
		Scan(&realEntity, &realHistory); err != nil {
		t.Fatal(err)
	}
	forge := func(seq, entity, history int64) *kgo.Record {
		v, err := json.Marshal(hierarchy.Message{OutboxSeq: seq, HistorySeq: history, EntityID: entity, Op: "update",
			Status: "suspended", RecordedAt: time.Now().UTC().Format(time.RFC3339Nano), Version: 1})
		if err != nil {
			t.Fatal(err)
		}
		return &kgo.Record{Topic: topic, Key: []byte(strconv.FormatInt(entity, 10)), Value: v,
			Headers: []kgo.RecordHeader{{Key: hierarchy.HeaderOutboxSeq, Value: []byte(strconv.FormatInt(seq, 10))}}}
	}
	forged := []*kgo.Record{
		forge(1<<60, realEntity, realHistory),           // far above anything handed out
		forge(gap, realEntity, realHistory),             // a seq no row holds
		forge(gap+1, 8, realHistory+1),                  // the next seq the outbox will hand out
		forge(relayedBefore, realEntity+1, realHistory), // a real seq, another entity
	}
	if err := e.kafka.ProduceSync(ctx, forged...).FirstErr(); err != nil {
		t.Fatal(err)
	}

	e.startRelay(1)
	for id := 8; id <= 15; id++ {
		suspend(id)
	}
	deadline := time.Now().Add(2 * time.Minute)
	for {
		// Published as the outbox has it (a forged record may carry the
		// same seq with other content).
		type change struct{ seq, entity, history int64 }
		got := map[change]bool{}
		for _, m := range e.readHierarchy(topic) {
			got[change{m.OutboxSeq, m.EntityID, m.HistorySeq}] = true
		}
		var missing []int64
		outbox, err := e.pg.Query(ctx, `select seq, entity_id, history_seq from canopy.outbox where seq > $1 order by seq`, relayedBefore)
		if err != nil {
			t.Fatal(err)
		}
		rowsSeen := 0
		for outbox.Next() {
			var c change
			if err := outbox.Scan(&c.seq, &c.entity, &c.history); err != nil {
				t.Fatal(err)
			}
			rowsSeen++
			if !got[c] {
				missing = append(missing, c.seq)
			}
		}
		outbox.Close()
		if rowsSeen != 8 {
			t.Fatalf("want the 8 new changes in the outbox after seq %d, found %d", relayedBefore, rowsSeen)
		}
		if len(missing) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after the forged records, the restarted relay never published outbox seqs %v (relay log in %s)", missing, e.logDir)
		}
		time.Sleep(time.Second)
	}
	if n := waitLogMatch(t, filepath.Join(e.logDir, "relay-1.log"), regexp.MustCompile(`not taken as relayed.* records=(\d+)`)); n != "3" {
		// The forged copy of the last real seq comes after the real record
		// on the topic, which vouches for that seq first; the other three
		// are passed over.
		t.Errorf("the relay reported %s records it did not resume from, want the 3 forged above the real tail", n)
	}
}
