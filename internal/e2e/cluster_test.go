package e2e

import (
	"context"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
)

// clusterShards are the shards of CANOPY_CLICKHOUSE_SHARDS, each its
// replicas' addresses; the test skips without a cluster (scripts/services
// env --clickhouse=cluster).
func clusterShards(t *testing.T) [][]string {
	t.Helper()
	v := os.Getenv("CANOPY_CLICKHOUSE_SHARDS")
	if v == "" || os.Getenv("CANOPY_CLICKHOUSE_CLUSTER") == "" {
		t.Skip("no ClickHouse cluster configured; run with scripts/services env --clickhouse=cluster")
	}
	var out [][]string
	for _, sh := range strings.Split(v, ";") {
		out = append(out, strings.Split(sh, ","))
	}
	return out
}

// node connects to one ClickHouse server of the cluster as the DSN's user.
func (e *env) node(addr string) driver.Conn {
	e.t.Helper()
	opts, err := clickhouse.ParseDSN(e.svc.chDSN)
	if err != nil {
		e.t.Fatal(err)
	}
	opts.Addr, opts.Auth.Database = []string{addr}, "default"
	conn, err := clickhouse.Open(opts)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { _ = conn.Close() })
	return conn
}

// syncReplicas waits until every replica of every shard has fetched what
// its shard holds, so reads through the Distributed tables, which may pick
// any replica, see every row.
func (e *env) syncReplicas(shards [][]string) {
	e.t.Helper()
	for _, replicas := range shards {
		for _, addr := range replicas {
			conn := e.node(addr)
			for _, table := range []string{"events_local", "rollup_hourly_local", "rollup_daily_local", "rollup_daily_current_local", "ingest_acks"} {
				ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
				err := conn.Exec(ctx, "SYSTEM SYNC REPLICA "+e.chDB+"."+table)
				cancel()
				if err != nil {
					e.t.Fatalf("sync replica %s of %s: %v", table, addr, err)
				}
			}
		}
	}
}

// checkShardPlacement checks that each replica of each shard holds only
// the events of its shard's entities (entity_id modulo the shards), and
// that the shards together hold want rows, each once.
func (e *env) checkShardPlacement(shards [][]string, want uint64) {
	e.t.Helper()
	var total uint64
	for i, replicas := range shards {
		var first uint64
		for r, addr := range replicas {
			var n, misplaced uint64
			if err := e.node(addr).QueryRow(context.Background(),
				"SELECT count(), countIf(entity_id % ? != ?) FROM "+e.chDB+".events_local", uint64(len(shards)), uint64(i)).Scan(&n, &misplaced); err != nil {
				e.t.Fatalf("shard %d replica %s: %v", i+1, addr, err)
			}
			if misplaced > 0 {
				e.t.Errorf("shard %d replica %s holds %d events of other shards' entities", i+1, addr, misplaced)
			}
			if r == 0 {
				first = n
			} else if n != first {
				e.t.Errorf("shard %d: replica %s holds %d events, replica %s %d", i+1, addr, n, replicas[0], first)
			}
			e.t.Logf("shard %d replica %s: %d events", i+1, addr, n)
		}
		total += first
	}
	if total != want {
		e.t.Errorf("the shards hold %d events, want %d", total, want)
	}
}

// TestClusterPipelineMatchesOracle streams events through two workers into
// a 2-shard cluster while ClickHouse fails under it: a replica of shard 1
// (the first its writers try, and the node clickhouse.dsn names) is
// SIGKILLed and restarted, the whole of shard 2 is stopped for 20 s and
// restarted, and a worker is SIGKILLed and restarted, its batches
// replayed. Read through the Distributed tables, every rollup row and
// every stored event must equal the oracle; each shard must hold only its
// entities' rows, once; nothing may be dead-lettered.
func TestClusterPipelineMatchesOracle(t *testing.T) {
	if testing.Short() {
		t.Skip("fault test is long")
	}
	shards := clusterShards(t)
	if len(shards) < 2 || len(shards[0]) < 2 {
		t.Skip("needs 2 shards and 2 replicas of the first (scripts/services' canopy_cluster)")
	}
	nodes := strings.Fields(os.Getenv("CANOPY_TEST_CLICKHOUSE_NODES")) // s1r1 s1r2 s2r1
	if len(nodes) < 3 {
		t.Skip("CANOPY_TEST_CLICKHOUSE_NODES must name the cluster's services (scripts/services env --clickhouse=cluster)")
	}
	seed := seedFromEnv(t)
	t.Logf("seed %d (set CANOPY_TEST_SEED to replay)", seed)
	e := newEnv(t, 4)
	sc := e.setUp(seed, 5000, 60000)
	keys, values := sc.records()

	var mu sync.Mutex
	var oldLogs []string
	ws := []*worker{e.startWorker(0), e.startWorker(1)}
	const span = 50 * time.Second
	start := time.Now()
	produced := e.produceEvenly(keys, values, start, span, 40)
	at := func(d time.Duration, what string) {
		time.Sleep(time.Until(start.Add(d)))
		t.Logf("%6.1fs: %s", time.Since(start).Seconds(), what)
	}
	at(8*time.Second, "SIGKILL "+nodes[0])
	servicesScript(t, "kill", nodes[0])
	at(13*time.Second, "start "+nodes[0])
	servicesScript(t, "start", nodes[0])
	at(18*time.Second, "stop "+nodes[2]+" (all of shard 2)")
	servicesScript(t, "stop", nodes[2])
	at(26*time.Second, "SIGKILL worker 0")
	mu.Lock()
	_ = ws[0].cmd.Process.Signal(syscall.SIGKILL)
	<-ws[0].done
	oldLogs = append(oldLogs, ws[0].log)
	ws[0] = e.startWorker(0)
	mu.Unlock()
	at(38*time.Second, "start "+nodes[2])
	servicesScript(t, "start", nodes[2])
	<-produced
	e.waitAcked(uint64(len(values)), 10*time.Minute)
	for _, w := range ws {
		w.stop(t)
	}
	// The outage must have been met, not slipped between batches.
	met := false
	for _, w := range ws {
		b, _ := os.ReadFile(w.log)
		met = met || strings.Contains(string(b), "shard 2: ")
	}
	for _, f := range oldLogs {
		b, _ := os.ReadFile(f)
		met = met || strings.Contains(string(b), "shard 2: ")
	}
	if !met {
		t.Errorf("no worker logged a failed write to shard 2 while it was stopped")
	}
	e.syncReplicas(shards)
	if n := e.countTopic(e.dlq); n != 0 {
		t.Errorf("%d records dead-lettered; the faults must only delay", n)
	}
	o := buildOracle(sc.history, sc.events)
	e.checkShardPlacement(shards, uint64(len(o.events)))
	e.verify(sc)
}
