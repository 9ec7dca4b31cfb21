package ingest

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
)

// refusingDLQ refuses for good every failure whose payload is larger than
// limit, as a topic with a small max.message.bytes does.
type refusingDLQ struct {
	limit int
	got   []Failure
}

func (d *refusingDLQ) Publish(_ context.Context, fs []Failure) error {
	refused := map[int]error{}
	for i, f := range fs {
		if len(f.Raw) > d.limit {
			refused[i] = kerr.MessageTooLarge
			continue
		}
		d.got = append(d.got, f)
	}
	if len(refused) > 0 {
		return &RefusedError{Topic: "dlq", Refused: refused}
	}
	return nil
}

// A dead letter the DLQ topic refuses for good ends in ingest_failures as
// unpublishable, naming its original class, and the batch completes.
func TestDeadLetterRefusedForGoodEndsInFailures(t *testing.T) {
	p, l, s := newTestProcessor()
	dlq := &refusingDLQ{limit: 100}
	p.DLQ = dlq
	epoch, _ := l.Acquire(context.Background(), Source{Topic: "t"}, "me")
	long := `{"pad":"` + strings.Repeat("x", 200) + `"}` // missing fields, 200 bytes
	recs := []Record{record(0, ev("a", 1, "1")), record(1, `{x`), record(2, long)}
	n, err := p.Process(context.Background(), epoch, recs)
	if err != nil || n != 3 {
		t.Fatalf("Process = %d, %v", n, err)
	}
	if len(dlq.got) != 1 || dlq.got[0].Class != ClassInvalidJSON {
		t.Fatalf("dead letters published = %+v", dlq.got)
	}
	if len(s.failures) != 2 {
		t.Fatalf("ingest_failures rows = %d, want 2", len(s.failures))
	}
	f := s.failures[1]
	if f.Class != ClassUnpublishable || !strings.HasPrefix(f.Message, string(ClassMissingField)+": ") || f.Source.First != 2 {
		t.Fatalf("refused failure = %+v", f)
	}
	if c := s.batches[0].Counts; c.Accepted != 1 || c.DeadLettered != 2 {
		t.Fatalf("counts = %+v", c)
	}
}

// A failure payload past DeadLetterMaxBytes is dead-lettered truncated,
// naming the original's size and hash.
func TestDeadLetterTruncatesLargePayloads(t *testing.T) {
	p, l, s := newTestProcessor()
	dlq := &refusingDLQ{limit: 1 << 30}
	p.DLQ = dlq
	epoch, _ := l.Acquire(context.Background(), Source{Topic: "t"}, "me")
	big := []byte(`{"pad":"` + strings.Repeat("x", 2<<20) + `"}`)
	if _, err := p.Process(context.Background(), epoch, []Record{{Topic: "t", Offset: 0, Value: big}}); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(big)
	f := dlq.got[0]
	if f.Class != ClassOversize || len(f.Raw) != TruncatedBytes || f.RawBytes != len(big) || f.RawSHA256 != hex.EncodeToString(sum[:]) {
		t.Fatalf("dead letter: class %s, %d bytes, original %d %s", f.Class, len(f.Raw), f.RawBytes, f.RawSHA256)
	}
	if string(s.failures[0].Raw) != string(big[:TruncatedBytes]) {
		t.Fatal("ingest_failures does not hold the same prefix")
	}
	hs := EncodeFailure(f)
	if v, _ := header(hs, HeaderRawBytes); v != fmt.Sprint(len(big)) {
		t.Fatalf("%s = %q", HeaderRawBytes, v)
	}
}

// A record the router truncated is dead-lettered as oversize without being
// decoded.
func TestTruncatedRecordIsOversize(t *testing.T) {
	p, l, _ := newTestProcessor()
	dlq := &refusingDLQ{limit: 1 << 30}
	p.DLQ = dlq
	epoch, _ := l.Acquire(context.Background(), Source{Topic: "t"}, "me")
	value, hs := truncated([]byte(ev("a", 1, "1") + strings.Repeat(" ", 100)))
	r := record(0, string(value))
	r.Headers = hs
	if _, err := p.Process(context.Background(), epoch, []Record{r}); err != nil {
		t.Fatal(err)
	}
	if len(dlq.got) != 1 || dlq.got[0].Class != ClassOversize || dlq.got[0].RawBytes == 0 {
		t.Fatalf("dead letters = %+v", dlq.got)
	}
}

type refusingRetries struct{}

func (refusingRetries) PublishRetries(_ context.Context, fs []Failure) error {
	refused := map[int]error{}
	for i := range fs {
		refused[i] = kerr.MessageTooLarge
	}
	return &RefusedError{Topic: "retry", Refused: refused}
}

// A retry the retry topic refuses for good is dead-lettered at once.
func TestRetryRefusedForGoodIsDeadLettered(t *testing.T) {
	p, l, s := newTestProcessor()
	dlq := &refusingDLQ{limit: 1 << 30}
	p.DLQ, p.Retry.Publisher = dlq, refusingRetries{}
	epoch, _ := l.Acquire(context.Background(), Source{Topic: "t"}, "me")
	if _, err := p.Process(context.Background(), epoch, []Record{record(0, ev("a", 99, "1"))}); err != nil {
		t.Fatal(err)
	}
	if len(dlq.got) != 1 || dlq.got[0].Class != ClassUnknownEntity || !strings.Contains(dlq.got[0].Message, "retry topic refused") {
		t.Fatalf("dead letters = %+v", dlq.got)
	}
	if c := s.batches[0].Counts; c.Retried != 0 || c.DeadLettered != 1 {
		t.Fatalf("counts = %+v", c)
	}
}

func TestBatchLen(t *testing.T) {
	p, _, _ := newTestProcessor()
	now := p.Now()
	recs := make([]Record, 10)
	for i := range recs {
		recs[i] = record(int64(i), strings.Repeat("x", 100))
	}
	if n := p.batchLen(recs, 0); n != 10 {
		t.Fatalf("uncapped = %d", n)
	}
	p.MaxBatchRecords = 4
	if n := p.batchLen(recs, 0); n != 4 {
		t.Fatalf("4 records = %d", n)
	}
	p.MaxBatchRecords, p.MaxBatchBytes = 0, 250
	if n := p.batchLen(recs, 0); n != 2 {
		t.Fatalf("250 bytes = %d", n)
	}
	// A per-call cap applies when it is the smaller one, either way round.
	if n := p.batchLen(recs, 350); n != 2 {
		t.Fatalf("250 bytes, call's cap 350 = %d", n)
	}
	if n := p.batchLen(recs, 150); n != 1 {
		t.Fatalf("250 bytes, call's cap 150 = %d", n)
	}
	p.MaxBatchBytes = 1
	if n := p.batchLen(recs, 0); n != 1 {
		t.Fatalf("one record always = %d", n)
	}
	p.MaxBatchBytes = 0
	if n := p.batchLen(recs, 350); n != 3 {
		t.Fatalf("call's cap 350 alone = %d", n)
	}
	// A retry not due stops the batch; one due further off than the policy
	// allows after its publication is due then.
	later := func(at time.Time) []byte { return []byte(at.Format(time.RFC3339Nano)) }
	recs[3].Headers = []kgo.RecordHeader{{Key: HeaderRetryAt, Value: later(now.Add(time.Minute))}}
	if n := p.batchLen(recs, 0); n != 3 {
		t.Fatalf("retry not due = %d", n)
	}
	recs[3].Headers[0].Value = later(now.Add(1000 * time.Hour))
	recs[3].Time = now.Add(-2 * time.Minute) // published 2 min ago; MaxBackoff 1m
	if n := p.batchLen(recs, 0); n != 10 {
		t.Fatalf("forged far-off retry = %d", n)
	}
}

func TestWithoutCanopyHeaders(t *testing.T) {
	hs := []kgo.RecordHeader{{Key: "trace"}, {Key: HeaderReplay}, {Key: HeaderRetryAt}, {Key: "canopyx"}}
	got := withoutCanopyHeaders(hs)
	if len(got) != 2 || got[0].Key != "trace" || got[1].Key != "canopyx" {
		t.Fatalf("kept %v", got)
	}
}

func TestPermanentProduceError(t *testing.T) {
	for _, c := range []struct {
		err  error
		want bool
	}{
		{kerr.MessageTooLarge, true},
		{fmt.Errorf("x: %w", kerr.RecordListTooLarge), true},
		{kerr.InvalidRecord, true},
		{kerr.NotLeaderForPartition, false},
		{kerr.TopicAuthorizationFailed, false},
		{context.DeadlineExceeded, false},
		{errors.New("dial tcp: refused"), false},
	} {
		if got := PermanentProduceError(c.err); got != c.want {
			t.Errorf("%v: %v, want %v", c.err, got, c.want)
		}
	}
}

// On the events topic, a record with forged replay, retry and source
// headers is an ordinary event: processed at once, resolving nothing.
func TestWorkerIgnoresCanopyHeadersOnEventsTopic(t *testing.T) {
	const topic = "events"
	cluster, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(1, topic))
	if err != nil {
		t.Fatal(err)
	}
	defer cluster.Close()
	cl, err := kgo.NewClient(kgo.SeedBrokers(cluster.ListenAddrs()...), kgo.DefaultProduceTopic(topic))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	forged := []kgo.RecordHeader{
		{Key: HeaderRetryAt, Value: []byte("2999-01-01T00:00:00Z")},
		{Key: HeaderReplay, Value: []byte("x")},
		{Key: HeaderSourceTopic, Value: []byte("other")},
		{Key: HeaderSourcePartition, Value: []byte("3")},
		{Key: HeaderSourceOffset, Value: []byte("42")},
	}
	if err := cl.ProduceSync(context.Background(), &kgo.Record{Value: []byte(ev("f", 1, "1")), Headers: forged}).FirstErr(); err != nil {
		t.Fatal(err)
	}
	p, _, s := newTestProcessor()
	w, err := NewWorker(WorkerConfig{Brokers: cluster.ListenAddrs(), Topic: topic, Group: "g", FetchMaxWait: 20 * time.Millisecond},
		p, slog.New(slog.NewTextHandler(io.Discard, nil)), kgo.FetchMinBytes(1))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	go func() { _ = w.Run(ctx) }()
	for ctx.Err() == nil {
		s.mu.Lock()
		n := len(s.batches)
		s.mu.Unlock()
		if n > 0 {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	cancel()
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.batches) != 1 || s.batches[0].Counts.Accepted != 1 {
		t.Fatalf("batches = %d", len(s.batches))
	}
	if len(s.failures) != 0 {
		t.Fatalf("a forged replay resolved failures: %+v", s.failures)
	}
}

// Past MaxTypes distinct types in a batch, events of further types are
// dead-lettered; types seen already still count.
func TestBatchTypeCap(t *testing.T) {
	p, l, s := newTestProcessor()
	dlq := &refusingDLQ{limit: 1 << 30}
	p.DLQ, p.MaxTypes = dlq, 2
	epoch, _ := l.Acquire(context.Background(), Source{Topic: "t"}, "me")
	typed := func(off int64, id, typ string) Record {
		return record(off, fmt.Sprintf(`{"event_id":%q,"entity_id":1,"occurred_at":"2026-11-26T10:15:00Z","type":%q}`, id, typ))
	}
	recs := []Record{typed(0, "a", "x"), typed(1, "b", "y"), typed(2, "c", "z"), typed(3, "d", "x"), typed(4, "e", "w")}
	if _, err := p.Process(context.Background(), epoch, recs); err != nil {
		t.Fatal(err)
	}
	if c := s.batches[0].Counts; c.Accepted != 3 || c.DeadLettered != 2 {
		t.Fatalf("counts = %+v", c)
	}
	for _, f := range dlq.got {
		if f.Class != ClassTooManyTypes || (f.EventID != "c" && f.EventID != "e") {
			t.Fatalf("dead letter %s of class %s", f.EventID, f.Class)
		}
	}
	if !strings.Contains(p.Fingerprint(), "types=2") {
		t.Fatalf("fingerprint %q does not name the cap", p.Fingerprint())
	}
	p.MaxTypes = 0
	if strings.Contains(p.Fingerprint(), "types=") {
		t.Fatalf("default fingerprint %q changed", p.Fingerprint())
	}
}
