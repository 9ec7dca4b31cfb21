package e2e

import (
	"bytes"
	"cmp"
	"context"
	"flag"
	"fmt"
	"math/rand/v2"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/jackc/pgx/v5"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/canopyhq/canopy/internal/testenv"
)

// binary is the canopy command built once for all tests.
var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "canopy-e2e-")
	if err != nil {
		panic(err)
	}
	binary = filepath.Join(dir, "canopy")
	// Tests run the binary with the race detector; benchmarks without it.
	flag.Parse()
	args := []string{"build", "-race", "-o", binary, "../../cmd/canopy"}
	if f := flag.Lookup("test.bench"); f != nil && f.Value.String() != "" {
		args = []string{"build", "-o", binary, "../../cmd/canopy"}
	}
	build := exec.Command("go", args...)
	build.Stdout, build.Stderr = os.Stdout, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build canopy:", err)
		os.Exit(1)
	}
	code := m.Run()
	_ = os.RemoveAll(dir)
	os.Exit(code)
}

// services are the real Kafka, PostgreSQL and ClickHouse of scripts/services.
type services struct {
	brokers []string
	pgDSN   string
	chDSN   string
}

// needServices returns the services from the environment. Locally a test
// skips without them; under CI=true a missing service is a failure.
func needServices(t testing.TB) services {
	t.Helper()
	s := services{
		brokers: strings.Split(os.Getenv("CANOPY_KAFKA_BROKERS"), ","),
		pgDSN:   os.Getenv("CANOPY_POSTGRES_DSN"),
		chDSN:   os.Getenv("CANOPY_CLICKHOUSE_DSN"),
	}
	if s.brokers[0] == "" || s.pgDSN == "" || s.chDSN == "" {
		testenv.Unavailable(t, "CANOPY_KAFKA_BROKERS, CANOPY_POSTGRES_DSN and CANOPY_CLICKHOUSE_DSN are not all set")
	}
	return s
}

// env is one test's isolated world: its own PostgreSQL database, ClickHouse
// database, topics and consumer group on the shared servers.
type env struct {
	t      testing.TB
	svc    services
	name   string
	pgDSN  string
	chDB   string
	topic  string
	dlq    string
	vars   []string
	ch     driver.Conn
	pg     *pgx.Conn
	kafka  *kgo.Client
	admin  *kadm.Client
	logDir string
	// ackTopic is the topic whose batches ingest_acks records: the by-id
	// topic under ingest.dedup=partitioned (the default), "" for topic under
	// postgres.
	ackTopic string
	// engine is what canopy migrate chose for the rollups, in benchmarks
	// only, which refuse one that does not deduplicate (dedupEngine).
	engine string
}

func newEnv(t testing.TB, partitions int32) *env {
	t.Helper()
	svc := needServices(t)
	testenv.HoldShared(t) // until the test ends: see internal/testenv/servicelock.go
	ctx := context.Background()
	name := fmt.Sprintf("canopy_e2e_%d_%d", time.Now().Unix()%100000, rand.IntN(100000))
	e := &env{t: t, svc: svc, name: name, chDB: name, topic: name + ".events", dlq: name + ".dlq", logDir: t.TempDir()}

	admin, err := pgx.Connect(ctx, svc.pgDSN)
	if err != nil {
		t.Fatalf("postgres: %v", err)
	}
	if _, err := admin.Exec(ctx, "create database "+name); err != nil {
		t.Fatalf("create database: %v", err)
	}
	u, _ := url.Parse(svc.pgDSN)
	u.Path = "/" + name
	e.pgDSN = u.String()
	e.pg, err = pgx.Connect(ctx, e.pgDSN)
	if err != nil {
		t.Fatalf("postgres %s: %v", name, err)
	}

	opts, err := clickhouse.ParseDSN(svc.chDSN)
	if err != nil {
		t.Fatalf("clickhouse dsn: %v", err)
	}
	opts.Auth.Database = "default"
	e.ch, err = clickhouse.Open(opts)
	if err != nil {
		t.Fatalf("clickhouse: %v", err)
	}

	// The fault tests restart the broker under this producer; a connection
	// it closes before answering is that restart, not a missing login.
	e.kafka, err = kgo.NewClient(kgo.SeedBrokers(svc.brokers...), kgo.ProducerLinger(5*time.Millisecond),
		kgo.ProducerBatchMaxBytes(16<<20), kgo.AlwaysRetryEOF())
	if err != nil {
		t.Fatalf("kafka: %v", err)
	}
	e.admin = kadm.NewClient(e.kafka)
	if _, err := e.admin.CreateTopic(ctx, partitions, 1, nil, e.topic); err != nil {
		t.Fatalf("create topic: %v", err)
	}

	e.vars = append(os.Environ(),
		"CANOPY_POSTGRES_DSN="+e.pgDSN,
		"CANOPY_CLICKHOUSE_DATABASE="+e.chDB,
		"CANOPY_KAFKA_EVENTS_TOPIC="+e.topic,
		"CANOPY_KAFKA_DLQ_TOPIC="+e.dlq,
		"CANOPY_KAFKA_RETRY_TOPIC="+name+".retry",
		// Tests that are not about retries see an unknown entity dead-lettered
		// at once; TestUnknownEntityRetried sets its own policy.
		"CANOPY_INGEST_RETRY_ATTEMPTS=1",
		"CANOPY_KAFKA_GROUP="+name,
		"CANOPY_HTTP_ADDR=127.0.0.1:0",
		"CANOPY_INGEST_SESSION_TIMEOUT=6s",
		// Workers a backfill runs take slots here; startWorker gives each
		// worker its own directory.
		"CANOPY_INGEST_STATE_DIR="+filepath.Join(e.logDir, "state"),
	)
	t.Cleanup(e.close)
	e.partitioned() // the default; e.postgres() pins the other mode
	e.run("migrate")
	if b, ok := t.(*testing.B); ok {
		e.engine = dedupEngine(b, e)
	}
	return e
}

func (e *env) close() {
	ctx := context.Background()
	if e.t.Failed() {
		e.t.Logf("kept PostgreSQL database and ClickHouse database %s for inspection", e.name)
	} else {
		_ = e.ch.Exec(ctx, "DROP DATABASE IF EXISTS "+e.chDB)
		dropOnEveryNode(e.svc.chDSN, e.chDB)
		_, _ = e.admin.DeleteTopics(ctx, e.topic, e.dlq)
	}
	_ = e.pg.Close(ctx)
	_ = e.ch.Close()
	e.kafka.Close()
	if !e.t.Failed() {
		if admin, err := pgx.Connect(ctx, e.svc.pgDSN); err == nil {
			_, _ = admin.Exec(ctx, "drop database if exists "+e.name+" with (force)")
			_ = admin.Close(ctx)
		}
	}
}

// run runs a canopy command to completion and fails the test on error.
func (e *env) run(args ...string) string {
	e.t.Helper()
	out, err := e.runErr(args...)
	if err != nil {
		e.t.Fatalf("canopy %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

func (e *env) runErr(args ...string) (string, error) {
	cmd := exec.Command(binary, args...)
	cmd.Env = e.vars
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

// worker is a running `canopy worker` process.
type worker struct {
	cmd  *exec.Cmd
	log  string
	done chan struct{} // closed when the process has exited
	hwm  int64         // peak resident bytes, read by stop before the signal
}

func (e *env) startWorker(i int) *worker {
	e.t.Helper()
	log := filepath.Join(e.logDir, fmt.Sprintf("worker-%d-%d.log", i, time.Now().UnixNano()))
	f, err := os.Create(log)
	if err != nil {
		e.t.Fatal(err)
	}
	cmd := exec.Command(binary, "worker")
	// Each worker keeps its own local event-id state (ingest.dedup=partitioned).
	cmd.Env = append(e.vars[:len(e.vars):len(e.vars)], "CANOPY_INGEST_STATE_DIR="+filepath.Join(e.logDir, fmt.Sprintf("state-%d", i)))
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		e.t.Fatal(err)
	}
	w := &worker{cmd: cmd, log: log, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); _ = f.Close(); close(w.done) }()
	e.t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGCONT)
		_ = cmd.Process.Kill()
		if e.t.Failed() {
			b, _ := os.ReadFile(log)
			e.t.Logf("tail of %s:\n%s", log, tail(b, 4000))
		}
	})
	return w
}

// stop stops a worker gracefully and waits for it.
func (w *worker) stop(t testing.TB) {
	w.hwm = peakRSS(w.cmd.Process.Pid)
	_ = w.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-w.done:
	case <-time.After(30 * time.Second):
		// SIGQUIT makes the Go runtime write every goroutine's stack to
		// the worker's log, which the test prints when it fails.
		t.Errorf("worker %d did not stop within 30s of SIGTERM; its goroutines are in %s", w.cmd.Process.Pid, w.log)
		_ = w.cmd.Process.Signal(syscall.SIGQUIT)
		select {
		case <-w.done:
		case <-time.After(5 * time.Second):
			_ = w.cmd.Process.Kill()
			<-w.done
		}
	}
}

// produce sends values to the test topic with the given keys and waits for
// every ack.
func (e *env) produce(keys, values [][]byte) {
	e.t.Helper()
	if err := e.send(keys, values); err != nil {
		e.t.Fatalf("produce: %v", err)
	}
}

// send is produce for any goroutine: it returns the error.
func (e *env) send(keys, values [][]byte) error {
	recs := make([]*kgo.Record, len(values))
	for i := range values {
		recs[i] = &kgo.Record{Topic: e.topic, Key: keys[i], Value: values[i]}
	}
	const chunk = 10000
	for start := 0; start < len(recs); start += chunk {
		end := min(start+chunk, len(recs))
		if err := e.kafka.ProduceSync(context.Background(), recs[start:end]...).FirstErr(); err != nil {
			return err
		}
	}
	return nil
}

// produceEvenly sends values in chunks spread evenly over [start,
// start+over), so faults meet live traffic; the channel closes when all
// are acknowledged, or when one fails (the test is then failed).
func (e *env) produceEvenly(keys, values [][]byte, start time.Time, over time.Duration, chunks int) <-chan struct{} {
	done := make(chan struct{})
	go func() {
		defer close(done)
		per := (len(values) + chunks - 1) / chunks
		for c := 0; c < chunks; c++ {
			lo, hi := c*per, min((c+1)*per, len(values))
			if lo >= hi {
				break
			}
			if err := e.send(keys[lo:hi], values[lo:hi]); err != nil {
				e.t.Errorf("produce records %d..%d: %v", lo, hi, err)
				return
			}
			time.Sleep(time.Until(start.Add(time.Duration(c+1) * over / time.Duration(chunks))))
		}
	}()
	return done
}

// ackedRecords is how many source records ingest_acks covers for the topic.
func (e *env) ackedRecords(ctx context.Context) (uint64, error) {
	var n uint64
	err := e.ch.QueryRow(ctx, fmt.Sprintf(`SELECT sum(records) FROM (
		SELECT partition, first_offset, any(records) AS records FROM %s.ingest_acks
		WHERE topic = ? GROUP BY partition, first_offset)`, e.chDB), cmp.Or(e.ackTopic, e.topic)).Scan(&n)
	return n, err
}

// waitAcked waits until ingest_acks covers n records. Under partitioned
// deduplication it also waits until the routers have copied the whole
// events topic and every record of the by-id topic is acknowledged: a
// router killed mid-stream copies some records twice, so n alone could be
// reached while records are still on their way.
func (e *env) waitAcked(n uint64, timeout time.Duration) {
	e.t.Helper()
	e.waitAckedOf(n, timeout, e.ackTopic != "")
}

// waitAckedLoose waits until ingest_acks covers n records, whatever else is
// pending (ranges left unacknowledged on purpose).
func (e *env) waitAckedLoose(n uint64, timeout time.Duration) {
	e.t.Helper()
	e.waitAckedOf(n, timeout, false)
}

func (e *env) waitAckedOf(n uint64, timeout time.Duration, whole bool) {
	e.t.Helper()
	deadline := time.Now().Add(timeout)
	var got uint64
	for time.Now().Before(deadline) {
		var err error
		got, err = e.ackedRecords(context.Background())
		if err == nil && got >= n && (!whole || e.routedAndAcked(got)) {
			return
		}
		if e.t.Failed() { // e.g. produceEvenly could not send: n will not come
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	e.t.Fatalf("after %s ingest_acks covers %d of %d records", time.Since(deadline.Add(-timeout)).Round(time.Second), got, n)
}

// routedAndAcked reports whether the routers' committed offsets have
// reached the events topic's end and acked covers the by-id topic.
func (e *env) routedAndAcked(acked uint64) bool {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	lag, err := e.groupLag(ctx, e.topic, e.name+".router")
	return err == nil && lag == 0 && acked >= e.topicRecords(e.ackTopic)
}

// groupLag is how many records of topic lie past group's committed
// offsets, summed over its partitions (a partition without a commit counts
// whole). A partition the broker could not list or fetch is an error: kadm
// reports it inside the results, with offset -1, which would count as
// caught up.
func (e *env) groupLag(ctx context.Context, topic, group string) (int64, error) {
	ends, err := e.admin.ListEndOffsets(ctx, topic)
	if err == nil {
		err = ends.Error()
	}
	if err != nil {
		return 0, err
	}
	committed, err := e.admin.FetchOffsets(ctx, group)
	if err == nil {
		err = committed.Error()
	}
	if err != nil {
		return 0, err
	}
	var n int64
	ends.Each(func(o kadm.ListedOffset) {
		if c, ok := committed.Lookup(topic, o.Partition); ok {
			n += max(o.Offset-c.At, 0)
		} else {
			n += max(o.Offset, 0)
		}
	})
	return n, nil
}

// countTopic reads a topic from the start to its end and counts records.
func (e *env) countTopic(topic string) int {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ends, err := e.admin.ListEndOffsets(ctx, topic)
	if err != nil {
		e.t.Fatalf("end offsets of %s: %v", topic, err)
	}
	var want int64
	ends.Each(func(o kadm.ListedOffset) { want += o.Offset })
	if want == 0 {
		return 0
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(e.svc.brokers...), kgo.ConsumeTopics(topic), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		e.t.Fatal(err)
	}
	defer cl.Close()
	n := 0
	for int64(n) < want {
		f := cl.PollFetches(ctx)
		if ctx.Err() != nil {
			e.t.Fatalf("read %s: %d of %d records", topic, n, want)
		}
		n += f.NumRecords()
	}
	return n
}

// dropOnEveryNode drops db on every node of CANOPY_CLICKHOUSE_SHARDS, when
// the tests run on a cluster: a database is local to each server.
func dropOnEveryNode(dsn, db string) {
	shards := os.Getenv("CANOPY_CLICKHOUSE_SHARDS")
	if shards == "" {
		return
	}
	for _, node := range strings.FieldsFunc(shards, func(r rune) bool { return r == ';' || r == ',' }) {
		opts, err := clickhouse.ParseDSN(dsn)
		if err != nil {
			return
		}
		opts.Addr, opts.Auth.Database = []string{strings.TrimSpace(node)}, "default"
		conn, err := clickhouse.Open(opts)
		if err != nil {
			continue
		}
		_ = conn.Exec(context.Background(), "DROP DATABASE IF EXISTS "+db)
		_ = conn.Close()
	}
}
