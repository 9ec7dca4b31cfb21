package hierarchy

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"io"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/canopyhq/canopy/internal/testenv"
)

// testTopic makes a one-partition topic on the CANOPY_KAFKA_BROKERS
// cluster, deleted when the test ends, and a plain producer to it. Without
// the cluster the test skips, except under CI=true.
func testTopic(t testing.TB) ([]string, string, *kgo.Client) {
	t.Helper()
	brokers := strings.Split(testenv.Get(t, "CANOPY_KAFKA_BROKERS"), ",")
	var b [6]byte
	_, _ = rand.Read(b[:])
	topic := "canopy_test_hierarchy_" + hex.EncodeToString(b[:])
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.DefaultProduceTopic(topic))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	adm := kadm.NewClient(cl)
	if _, err := adm.CreateTopic(ctx, 1, 1, nil, topic); err != nil {
		t.Fatalf("create topic %s: %v", topic, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_, _ = adm.DeleteTopics(ctx, topic)
		cl.Close()
	})
	return brokers, topic, cl
}

// BenchmarkFollowerCatchUp measures how long a follower takes to apply a
// topic's worth of changes: CANOPY_BENCH_CHANGES (default 100,000)
// entities are imported (one history row and one message each) and
// relayed; each iteration, a new follower reads the topic from its start
// into an empty tree until it holds PostgreSQL's latest seq.
//
//	go test -run '^$' -bench FollowerCatchUp -benchtime 3x ./hierarchy
func BenchmarkFollowerCatchUp(b *testing.B) {
	n := 100_000
	if v, err := strconv.Atoi(os.Getenv("CANOPY_BENCH_CHANGES")); err == nil && v > 0 {
		n = v
	}
	pool := testDB(b, false)
	brokers, topic, _ := testTopic(b)
	s := NewStore(pool)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	var csv bytes.Buffer
	if err := WriteCSV(&csv, Synthesize(n, 1)); err != nil {
		b.Fatal(err)
	}
	if _, err := Import(ctx, pool, &csv, ImportOptions{}); err != nil {
		b.Fatal(err)
	}
	var lastOutbox int64
	if err := pool.QueryRow(ctx, "select max(seq) from canopy.outbox").Scan(&lastOutbox); err != nil {
		b.Fatal(err)
	}
	latest, err := s.LatestSeq(ctx)
	if err != nil {
		b.Fatal(err)
	}
	rctx, stopRelay := context.WithCancel(ctx)
	relay := &Relay{Pool: pool, Brokers: brokers, Topic: topic, Name: "bench", Log: log}
	go func() { _ = relay.Run(rctx) }()
	for deadline := time.Now().Add(5 * time.Minute); ; {
		if last, err := LastRelayed(ctx, brokers, topic); err == nil && last >= lastOutbox {
			break
		}
		if time.Now().After(deadline) {
			b.Fatal("the relay did not publish the import within 5 minutes")
		}
		time.Sleep(500 * time.Millisecond)
	}
	stopRelay()

	resetLookups()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		tr := NewTree()
		f := &Follower{Brokers: brokers, Topic: topic, Tree: tr, Log: log}
		verifyWith(f, s)
		fctx, stop := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() { _ = f.Run(fctx, nil); close(done) }()
		deadline := time.Now().Add(5 * time.Minute)
		for tr.Version() < latest {
			if time.Now().After(deadline) {
				b.Fatalf("follower at %d of %d after 5 minutes", tr.Version(), latest)
			}
			time.Sleep(time.Millisecond)
		}
		stop()
		<-done
	}
	b.ReportMetric(float64(b.Elapsed().Milliseconds())/float64(b.N), "ms/catch-up")
	b.ReportMetric(float64(n)*float64(b.N)/b.Elapsed().Seconds(), "changes/s")
	reportLookups(b)
}
