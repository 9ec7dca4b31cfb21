package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/canopyhq/canopy/hierarchy"
)

// TestRelayExactlyOnceInCommitOrder commits hierarchy changes while the relay
// runs, while Kafka is stopped (1,000 of them), across a SIGKILL of the
// active relay and with a second relay waiting to take over; afterwards the
// hierarchy topic must hold every outbox row exactly once, in commit order,
// with the outbox's content.
func TestRelayExactlyOnceInCommitOrder(t *testing.T) {
	if testing.Short() {
		t.Skip("relay fault test is long")
	}
	e := newEnv(t, 1)
	topic := e.name + ".hierarchy"
	e.vars = append(e.vars, "CANOPY_KAFKA_HIERARCHY_TOPIC="+topic)
	csv := filepath.Join(t.TempDir(), "h.csv")
	var rows []byte
	rows = append(rows, "id,parent_id,status,name\n"...)
	for id := 1; id <= 200; id++ {
		parent := ""
		if id > 1 {
			parent = fmt.Sprint(1 + rand.IntN(id-1))
		}
		rows = fmt.Appendf(rows, "%d,%s,active,e%d\n", id, parent, id)
	}
	if err := os.WriteFile(csv, rows, 0o600); err != nil {
		t.Fatal(err)
	}
	e.run("hierarchy", "import", csv)

	relays := []*exec.Cmd{e.startRelay(0)}
	change := func(n int) {
		ctx := context.Background()
		for i := 0; i < n; i++ {
			id := 2 + rand.IntN(199)
			if _, err := e.pg.Exec(ctx, `update canopy.entities
				set status = case status when 'active' then 'suspended' else 'active' end where id = $1`, id); err != nil {
				t.Fatalf("change %d: %v", i, err)
			}
		}
	}
	change(200)
	e.waitRelayed(topic, e.maxOutboxSeq())
	servicesScript(t, "stop", "kafka")
	kafkaUp := false
	defer func() {
		if !kafkaUp {
			servicesScript(t, "start", "kafka")
		}
	}()
	change(1000)
	_ = relays[0].Process.Signal(syscall.SIGKILL)
	relays = append(relays, e.startRelay(1), e.startRelay(2))
	servicesScript(t, "start", "kafka")
	kafkaUp = true
	change(100)

	e.waitRelayed(topic, e.maxOutboxSeq()-300)
	_ = relays[1].Process.Signal(syscall.SIGKILL) // the active one or its stand-by

	var want []hierarchy.Message
	q, err := e.pg.Query(context.Background(), `select seq, entity_id, status from canopy.outbox order by seq`)
	if err != nil {
		t.Fatal(err)
	}
	for q.Next() {
		var m hierarchy.Message
		if err := q.Scan(&m.OutboxSeq, &m.EntityID, &m.Status); err != nil {
			t.Fatal(err)
		}
		want = append(want, m)
	}
	q.Close()
	e.waitRelayed(topic, want[len(want)-1].OutboxSeq)
	for _, r := range relays[2:] {
		_ = r.Process.Signal(syscall.SIGTERM)
	}

	got := e.readHierarchy(topic)

	if len(got) != len(want) {
		t.Fatalf("topic holds %d changes, outbox %d", len(got), len(want))
	}
	for i := range want {
		g, w := got[i], want[i]
		if g.OutboxSeq != w.OutboxSeq || g.EntityID != w.EntityID || g.Status != w.Status {
			t.Fatalf("change %d: topic has %+v, outbox %+v", i, g, w)
		}
	}
}

func (e *env) maxOutboxSeq() int64 {
	e.t.Helper()
	var seq int64
	if err := e.pg.QueryRow(context.Background(), "select coalesce(max(seq), 0) from canopy.outbox").Scan(&seq); err != nil {
		e.t.Fatal(err)
	}
	return seq
}

// waitRelayed waits until the topic holds outbox seq `seq`.
func (e *env) waitRelayed(topic string, seq int64) {
	e.t.Helper()
	deadline := time.Now().Add(3 * time.Minute)
	for {
		got, err := hierarchy.LastRelayed(context.Background(), e.svc.brokers, topic)
		if err == nil && got >= seq {
			return
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("the topic reached outbox seq %d (%v), waiting for %d", got, err, seq)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func (e *env) startRelay(i int) *exec.Cmd {
	e.t.Helper()
	log, err := os.Create(filepath.Join(e.logDir, fmt.Sprintf("relay-%d.log", i)))
	if err != nil {
		e.t.Fatal(err)
	}
	cmd := exec.Command(binary, "relay")
	cmd.Env = e.vars
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		e.t.Fatal(err)
	}
	go func() { _ = cmd.Wait(); _ = log.Close() }()
	e.t.Cleanup(func() { _ = cmd.Process.Kill() })
	return cmd
}

// readHierarchy reads the whole hierarchy topic read_committed: until a poll
// brings nothing for a few seconds (nothing is being produced by then).
func (e *env) readHierarchy(topic string) []hierarchy.Message {
	e.t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(e.svc.brokers...), kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		kgo.FetchMaxWait(500*time.Millisecond),
		kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{topic: {0: kgo.NewOffset().AtStart()}}))
	if err != nil {
		e.t.Fatal(err)
	}
	defer cl.Close()
	var out []hierarchy.Message
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		fs := cl.PollFetches(ctx)
		cancel()
		if fs.NumRecords() == 0 {
			return out
		}
		fs.EachRecord(func(r *kgo.Record) {
			var m hierarchy.Message
			if err := json.Unmarshal(r.Value, &m); err != nil {
				e.t.Fatalf("record %d: %v", r.Offset, err)
			}
			out = append(out, m)
		})
	}
}
