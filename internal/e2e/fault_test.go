package e2e

import (
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/canopyhq/canopy/internal/testenv"
)

// fault is one scheduled disruption.
type fault struct {
	at   time.Duration // after the start of the run
	kind string        // kill, freeze, restart-clickhouse, restart-kafka
	who  int           // worker index for kill and freeze
}

func (f fault) String() string {
	if f.who >= 0 {
		return fmt.Sprintf("%5.1fs %s worker %d", f.at.Seconds(), f.kind, f.who)
	}
	return fmt.Sprintf("%5.1fs %s", f.at.Seconds(), f.kind)
}

// schedule draws the faults of a run from the seed: three SIGKILLs, one
// SIGSTOP past the session timeout, one ClickHouse and one Kafka restart,
// at random moments while events flow.
func schedule(rng *rand.Rand, workers int, span time.Duration) []fault {
	slot := span / 7
	kinds := []string{"kill", "freeze", "restart-clickhouse", "kill", "restart-kafka", "kill"}
	rng.Shuffle(len(kinds), func(i, j int) { kinds[i], kinds[j] = kinds[j], kinds[i] })
	out := make([]fault, len(kinds))
	for i, k := range kinds {
		f := fault{at: time.Duration(i+1)*slot + time.Duration(rng.Int64N(int64(slot/2))), kind: k, who: -1}
		if k == "kill" || k == "freeze" {
			f.who = rng.IntN(workers)
		}
		out[i] = f
	}
	return out
}

// servicesScript runs scripts/services, e.g. "restart kafka". The name
// "clickhouse" means the ClickHouse the tests run on: the 18.16 service, or
// the one CANOPY_TEST_CLICKHOUSE_SERVICE names (scripts/services env
// --clickhouse=26 sets clickhouse26). Before it stops a service the other
// go test process of scripts/test uses too, the test waits for that
// process's running test to end (testenv.HoldExclusive).
func servicesScript(t *testing.T, args ...string) {
	t.Helper()
	if len(args) == 2 {
		if args[1] == "clickhouse" {
			if s := os.Getenv("CANOPY_TEST_CLICKHOUSE_SERVICE"); s != "" {
				args = []string{args[0], s}
			}
		}
		testenv.HoldExclusive(t, args[1])
	}
	script, _ := filepath.Abs("../../scripts/services")
	cmd := exec.Command(script, args...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("scripts/services %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// TestFaultsKeepRollupsExact runs three workers while events are produced,
// SIGKILLs workers at random moments and restarts them, freezes one with
// SIGSTOP past its session timeout (a zombie when it resumes), and restarts
// ClickHouse and Kafka once each. Afterwards every rollup row and every
// stored event must still equal the oracle exactly. The schedule is logged
// and derives from the seed (CANOPY_TEST_SEED replays it).
func TestFaultsKeepRollupsExact(t *testing.T) {
	if testing.Short() {
		t.Skip("fault test is long")
	}
	seed := seedFromEnv(t)
	t.Logf("seed %d (set CANOPY_TEST_SEED to replay)", seed)
	e := newEnv(t, 6)
	sc := e.setUp(seed, 10000, 150000)
	keys, values := sc.records()

	const workers = 3
	const span = 70 * time.Second
	rng := rand.New(rand.NewPCG(uint64(seed), 99))
	faults := schedule(rng, workers, span)
	var log []string
	for _, f := range faults {
		log = append(log, f.String())
	}
	t.Logf("fault schedule:\n%s", strings.Join(log, "\n"))

	var mu sync.Mutex
	ws := make([]*worker, workers)
	for i := range ws {
		ws[i] = e.startWorker(i)
	}
	current := func(i int) *worker {
		mu.Lock()
		defer mu.Unlock()
		return ws[i]
	}

	start := time.Now()
	// Produce evenly over most of the span, so faults hit live traffic.
	produced := e.produceEvenly(keys, values, start, span-10*time.Second, 60)

	var wg sync.WaitGroup
	for _, f := range faults {
		time.Sleep(time.Until(start.Add(f.at)))
		t.Logf("%6.1fs: %s", time.Since(start).Seconds(), f)
		switch f.kind {
		case "kill":
			w := current(f.who)
			_ = w.cmd.Process.Signal(syscall.SIGKILL)
			<-w.done
			time.Sleep(time.Duration(rng.Int64N(int64(2 * time.Second))))
			mu.Lock()
			ws[f.who] = e.startWorker(f.who)
			mu.Unlock()
		case "freeze":
			w := current(f.who)
			_ = w.cmd.Process.Signal(syscall.SIGSTOP)
			wg.Add(1)
			go func() {
				defer wg.Done()
				time.Sleep(14 * time.Second) // session timeout is 6s
				_ = w.cmd.Process.Signal(syscall.SIGCONT)
				t.Logf("%6.1fs: resumed worker %d", time.Since(start).Seconds(), f.who)
			}()
		case "restart-clickhouse":
			servicesScript(t, "restart", "clickhouse")
		case "restart-kafka":
			servicesScript(t, "restart", "kafka")
		}
	}
	wg.Wait()
	<-produced
	e.waitAcked(uint64(len(values)), 10*time.Minute)
	for i := range ws {
		current(i).stop(t)
	}
	if os.Getenv("CANOPY_E2E_KEEP") != "" {
		t.Logf("database %s", e.name)
	}
	e.verify(sc)
}
