package e2e

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
)

// TestWorkerStopsWhileItsGroupRebalances stops a worker whose router is
// joining a group that cannot finish rebalancing: another member of the
// routers' group has polled and blocks its rebalance, so the broker holds
// the worker's join until that member's rebalance timeout (a minute). A
// leave waits for the join in flight, so a worker that left its groups
// unbounded on SIGTERM hung for that minute (found when a CI fault test
// restarted workers right after a Kafka restart). It must exit within the
// harness's 30 s, having left without waiting.
func TestWorkerStopsWhileItsGroupRebalances(t *testing.T) {
	e := newEnv(t, 2)
	sc := e.setUp(1, 200, 500)
	keys, values := sc.records()
	e.produce(keys, values)

	blocker, err := kgo.NewClient(kgo.SeedBrokers(e.svc.brokers...),
		kgo.ConsumerGroup(e.name+".router"), kgo.ConsumeTopics(e.topic),
		kgo.BlockRebalanceOnPoll(), kgo.RebalanceTimeout(time.Minute),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer blocker.CloseAllowingRebalance()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if f := blocker.PollRecords(ctx, 1); f.Err() != nil || f.NumRecords() == 0 {
		t.Fatalf("the blocking member read nothing: %v", f.Err())
	}
	// It holds its rebalance from now on: no AllowRebalance.

	w := e.startWorker(0)
	deadline := time.Now().Add(time.Minute)
	for {
		b, _ := os.ReadFile(w.log)
		if strings.Contains(string(b), "worker started") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the worker did not start within a minute:\n%s", b)
		}
		time.Sleep(100 * time.Millisecond)
	}
	time.Sleep(2 * time.Second) // its router's join is now held by the broker

	start := time.Now()
	w.stop(t)
	t.Logf("stopped in %v", time.Since(start).Round(time.Millisecond))
	b, _ := os.ReadFile(w.log)
	if !strings.Contains(string(b), "left without leaving the group") {
		t.Errorf("the worker did not say it left without leaving its group; log:\n%s", b)
	}
}
