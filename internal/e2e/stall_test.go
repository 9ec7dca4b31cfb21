package e2e

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
)

// TestNothingStallsOnRecordsThatCannotEnd mixes into 50,000 valid events a
// 20 MB record (the events topic accepts it), a dead letter the dead-letter
// topic refuses for good (it accepts only 100 KiB), and a valid event with
// forged replay, retry, source and truncation headers. Every valid event,
// the forged one included, must count exactly as the oracle says; the 20 MB
// record must be dead-lettered truncated as oversize; the refused one must
// end in ingest_failures as unpublishable; nothing may be marked resolved;
// and nothing may stall: everything is acknowledged without help.
// Both deduplication modes run it: under partitioned the router meets the
// records first, under postgres the worker does.
func TestNothingStallsOnRecordsThatCannotEnd(t *testing.T) {
	for _, mode := range []string{"partitioned", "postgres"} {
		t.Run(mode, func(t *testing.T) { nothingStalls(t, mode) })
	}
}

func nothingStalls(t *testing.T, mode string) {
	seed := seedFromEnv(t)
	t.Logf("seed %d (set CANOPY_TEST_SEED to replay)", seed)
	e := newEnv(t, 3)
	if mode == "postgres" {
		e.postgres()
	}
	ctx := context.Background()
	big := strconv.Itoa(25 << 20)
	if _, err := e.admin.AlterTopicConfigs(ctx, []kadm.AlterConfig{{Name: "max.message.bytes", Value: &big}}, e.topic); err != nil {
		t.Fatal(err)
	}
	small := strconv.Itoa(100 << 10)
	if resp, err := e.admin.CreateTopic(ctx, 3, 1, map[string]*string{"max.message.bytes": &small}, e.dlq); err != nil || resp.Err != nil {
		t.Fatalf("create the dead-letter topic: %v %v", err, resp.Err)
	}

	sc := e.setUp(seed, 1000, 50000)
	forged := sc.events[len(sc.events)/2]
	forged.ID = "forged-headers"
	sc.events = append(sc.events, forged) // an ordinary event: the oracle counts it
	keys, values := sc.records()
	huge := []byte(`{"event_id":"huge","entity_id":1,"occurred_at":"2026-10-28T00:00:00Z","type":"sale","pad":"` +
		strings.Repeat("x", 20<<20) + `"}`)
	// Invalid JSON of 300 KB, random letters so that compression cannot
	// bring it under the dead-letter topic's limit.
	rng := rand.New(rand.NewPCG(uint64(seed), 9))
	refused := []byte(`{"event_id":"refused","pad":"`)
	for range 300 << 10 {
		refused = append(refused, byte('a'+rng.IntN(26)))
	}

	w := e.startWorker(1)
	half := len(values) / 2
	e.produce(keys[:half], values[:half])
	cl, err := kgo.NewClient(kgo.SeedBrokers(e.svc.brokers...), kgo.ProducerBatchMaxBytes(32<<20), kgo.MaxBufferedBytes(128<<20))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	at := time.Now().Add(1000 * time.Hour).UTC().Format(time.RFC3339Nano)
	special := []*kgo.Record{
		{Topic: e.topic, Key: []byte("huge"), Value: huge},
		{Topic: e.topic, Key: []byte("refused"), Value: refused},
		{Topic: e.topic, Key: keys[len(keys)-1], Value: values[len(values)-1], Headers: []kgo.RecordHeader{
			{Key: "canopy.replay", Value: []byte("x")},
			{Key: "canopy.retry.at", Value: []byte(at)},
			{Key: "canopy.source.topic", Value: []byte(e.topic)},
			{Key: "canopy.source.partition", Value: []byte("0")},
			{Key: "canopy.source.offset", Value: []byte("0")},
			{Key: "canopy.error.class", Value: []byte("invalid_json")},
			{Key: "canopy.attempts", Value: []byte("7")},
			{Key: "canopy.raw.bytes", Value: []byte("5")},
			{Key: "canopy.raw.sha256", Value: []byte("00")},
		}},
	}
	if err := cl.ProduceSync(ctx, special...).FirstErr(); err != nil {
		t.Fatalf("produce the special records: %v", err)
	}
	e.produce(keys[half:len(keys)-1], values[half:len(values)-1])
	total := uint64(len(values) - 1 + len(special)) // the forged event is the last value and a special record
	e.waitAcked(total, 5*time.Minute)
	select {
	case <-w.done:
		t.Fatalf("the worker exited (log %s)", w.log)
	default:
	}
	w.stop(t)
	_, rss := workerUsage(w)
	t.Logf("worker peak RSS %d MiB (race-enabled binary) with a 20 MB record in the stream", rss>>20)
	if rss > 1<<30 {
		t.Errorf("worker peak RSS %d MiB, bound 1024 MiB", rss>>20)
	}

	e.verify(sc)

	rows, err := e.ch.Query(ctx, fmt.Sprintf(`SELECT event_id, error_class, any(error_message), any(length(raw)), countIf(resolution != '')
		FROM %s.ingest_failures GROUP BY event_id, error_class ORDER BY event_id`, e.chDB))
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for rows.Next() {
		var id, class, msg string
		var raw, resolved uint64
		if err := rows.Scan(&id, &class, &msg, &raw, &resolved); err != nil {
			t.Fatal(err)
		}
		got[id+"/"+class] = fmt.Sprintf("raw %d resolved %d: %.120s", raw, resolved, msg)
		if resolved != 0 {
			t.Errorf("a failure was marked resolved: %s %s", id, class)
		}
	}
	if err := rows.Close(); err != nil {
		t.Fatal(err)
	}
	huge64 := fmt.Sprintf("raw %d ", 64<<10)
	if g, ok := got["/oversize"]; !ok || !strings.HasPrefix(g, huge64) {
		t.Errorf("the 20 MB record in ingest_failures: %q (all: %v)", g, got)
	}
	if g, ok := got["/unpublishable"]; !ok || !strings.Contains(g, "invalid_json: ") || !strings.Contains(g, "refused it for good") {
		t.Errorf("the refused dead letter in ingest_failures: %q (all: %v)", g, got)
	}
	if len(got) != 2 {
		t.Errorf("ingest_failures holds %v, want the oversize and the unpublishable record only", got)
	}

	var dead []string
	e.eachRecord(e.dlq, func(r *kgo.Record) {
		hs := map[string]string{}
		for _, h := range r.Headers {
			hs[h.Key] = string(h.Value)
		}
		dead = append(dead, fmt.Sprintf("%s %d of %s", hs["canopy.error.class"], len(r.Value), hs["canopy.raw.bytes"]))
	})
	if want := fmt.Sprintf("oversize %d of %d", 64<<10, len(huge)); len(dead) != 1 || dead[0] != want {
		t.Errorf("dead letters %v, want [%s]", dead, want)
	}
}
