package e2e

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// TestOutagesPauseAndResume stops ClickHouse for 30 s and then PostgreSQL
// for 30 s while events stream in and two workers run. Consumption must
// pause and resume on its own, nothing may be dead-lettered for a transient
// cause, and afterwards every rollup must equal the oracle.
func TestOutagesPauseAndResume(t *testing.T) {
	if testing.Short() {
		t.Skip("outage test is long")
	}
	seed := seedFromEnv(t)
	t.Logf("seed %d (set CANOPY_TEST_SEED to replay)", seed)
	e := newEnv(t, 4)
	sc := e.setUp(seed, 2000, 60000)
	keys, values := sc.records()
	w1, w2 := e.startWorker(1), e.startWorker(2)

	// Produce in slices over about 80 s, so both outages fall mid-stream.
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		const slices = 80
		step := (len(values) + slices - 1) / slices
		for i := 0; i < len(values); i += step {
			end := min(i+step, len(values))
			e.produce(keys[i:end], values[i:end])
			time.Sleep(time.Second)
		}
	}()
	time.Sleep(8 * time.Second)
	for _, svc := range []string{"clickhouse", "postgres"} {
		t.Logf("stopping %s for 30 s", svc)
		servicesScript(t, "stop", svc)
		time.Sleep(30 * time.Second)
		servicesScript(t, "start", svc)
		t.Logf("%s started again", svc)
		if svc == "postgres" {
			e.reconnectPG()
		}
		time.Sleep(5 * time.Second)
	}
	wg.Wait()
	e.waitAcked(uint64(len(values)), 10*time.Minute)
	e.waitRestated(5 * time.Minute)
	w1.stop(t)
	w2.stop(t)
	e.verify(sc)
	if n := e.countTopic(e.dlq); n != 0 {
		t.Errorf("%d records dead-lettered during the outages, want none", n)
	}
	var failures uint64
	if err := e.ch.QueryRow(context.Background(), fmt.Sprintf("SELECT count() FROM %s.ingest_failures", e.chDB)).Scan(&failures); err != nil {
		t.Fatal(err)
	}
	if failures != 0 {
		t.Errorf("ingest_failures holds %d rows, want none", failures)
	}
}

// reconnectPG replaces the test's PostgreSQL connection after a restart.
func (e *env) reconnectPG() {
	e.t.Helper()
	_ = e.pg.Close(context.Background())
	var err error
	for i := 0; i < 30; i++ {
		if e.pg, err = pgx.Connect(context.Background(), e.pgDSN); err == nil {
			return
		}
		time.Sleep(time.Second)
	}
	e.t.Fatalf("reconnect to postgres: %v", err)
}
