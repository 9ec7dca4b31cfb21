package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/spf13/cobra"
	"github.com/twmb/franz-go/pkg/kfake"
	"golang.org/x/sync/errgroup"

	"github.com/canopyhq/canopy/internal/synth"
)

type devOptions struct {
	dataDir  string
	entities int
	events   int
	rate     float64
	exit     bool
}

func newDev(cfg *config) *cobra.Command {
	var o devOptions
	cmd := &cobra.Command{
		Use:   "dev",
		Short: "Everything in one process: embedded Kafka (kfake), migrate, a demo hierarchy, generated events and a worker",
		Long: `dev runs the whole pipeline on an embedded Kafka-protocol broker (franz-go's kfake,
persisted under --data-dir) against the PostgreSQL and ClickHouse of the configured
DSNs (scripts/services up starts both). It migrates, imports a demo hierarchy if
the database has none, produces events, runs a worker and prints a live summary.
Ctrl-C stops it; --exit-when-done stops once every event is in the rollups.`,
		Args: args(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runDev(cmd.Context(), cfg, o)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.dataDir, "data-dir", ".data/dev", "where the embedded broker keeps its log")
	f.IntVar(&o.entities, "entities", 10000, "size of the demo hierarchy (when the database has none)")
	f.IntVar(&o.events, "events", 200000, "events to produce")
	f.Float64Var(&o.rate, "rate", 20000, "events per second (0 = as fast as possible)")
	f.BoolVar(&o.exit, "exit-when-done", false, "stop once every produced event is counted")
	return cmd
}

func runDev(ctx context.Context, cfg *config, o devOptions) error {
	log := cfg.logger()
	if err := os.MkdirAll(filepath.Join(o.dataDir, "kafka"), 0o755); err != nil { //nolint:gosec // a data dir
		return err
	}
	broker, err := kfake.NewCluster(
		kfake.NumBrokers(1),
		kfake.DataDir(filepath.Join(o.dataDir, "kafka")),
		kfake.SeedTopics(4, cfg.get("kafka.events_topic")),
		kfake.AllowAutoTopicCreation(),
		kfake.DefaultNumPartitions(4),
	)
	if err != nil {
		return fmt.Errorf("embedded kafka: %w", err)
	}
	defer broker.Close()
	cfg.byKey["kafka.brokers"].val = strings.Join(broker.ListenAddrs(), ",")
	if st := cfg.byKey["ingest.state_dir"]; st.val == st.def {
		st.val = filepath.Join(o.dataDir, "state") // beside the broker's log it indexes
	}
	log.Info("embedded kafka started", "brokers", cfg.get("kafka.brokers"), "data", o.dataDir)

	if err := runMigrate(ctx, cfg); err != nil {
		return err
	}
	pool, err := openPostgres(ctx, cfg)
	if err != nil {
		return err
	}
	var entities int64
	if err := pool.QueryRow(ctx, "select count(*) from canopy.entities").Scan(&entities); err != nil {
		pool.Close()
		return err
	}
	pool.Close()
	if entities == 0 {
		if err := runGen(ctx, cfg, genOptions{entities: o.entities, seed: 1, days: 1}); err != nil {
			return err
		}
		entities = int64(o.entities)
	}
	ch, err := openClickHouse(ctx, cfg)
	if err != nil {
		return err
	}
	defer func() { _ = ch.Close() }()
	chs, _ := cfg.chSchema()
	before, err := countEvents(ctx, ch, chs.Database)
	if err != nil {
		return err
	}

	g, gctx := errgroup.WithContext(ctx)
	wctx, stopWorker := context.WithCancel(gctx)
	defer stopWorker()
	ready := make(chan string, 1)
	g.Go(func() error { return runWorker(wctx, cfg, ready) })
	select {
	case addr := <-ready:
		log.Info("worker up", "metrics", "http://"+addr+"/metrics")
	case <-gctx.Done():
		return g.Wait()
	}
	seed := time.Now().UnixNano()
	span := 24 * time.Hour
	gen := synth.Events{Seed: seed, Count: o.events, Entities: entities, Start: time.Now().UTC().Add(-span), Span: span}
	produced := make(chan struct{})
	var acked atomic.Int64
	g.Go(func() error {
		defer close(produced)
		return produceEvents(gctx, cfg, gen, o.rate, &acked, nil)
	})
	g.Go(func() error {
		defer stopWorker()
		return summarize(wctx, ch, chs.Database, before, &acked, int64(o.events), produced, o.exit)
	})
	err = g.Wait()
	if errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

func countEvents(ctx context.Context, ch driver.Conn, db string) (uint64, error) {
	var n uint64
	err := ch.QueryRow(ctx, "SELECT count() FROM "+db+".events").Scan(&n)
	return n, err
}

// summarize prints events/s, the lag (produced but not yet counted) and the
// top entities by downline amount every few seconds. With exit set it
// returns once all events are counted.
func summarize(ctx context.Context, ch driver.Conn, db string, before uint64, acked *atomic.Int64, want int64, produced <-chan struct{}, exit bool) error {
	tick := time.NewTicker(2 * time.Second)
	defer tick.Stop()
	last, lastAt := before, time.Now()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		n, err := countEvents(ctx, ch, db)
		if err != nil {
			fmt.Fprintln(os.Stderr, "summary:", err)
			continue
		}
		rate := float64(n-last) / time.Since(lastAt).Seconds()
		last, lastAt = n, time.Now()
		fmt.Printf("\n%s  events in ClickHouse: %d (+%d this run, %.0f/s), lag %d\n",
			time.Now().Format("15:04:05"), n, n-before, rate, max(acked.Load()-int64(n-before), 0)) //nolint:gosec // counts
		rows, err := ch.Query(ctx, `
			SELECT r.entity_id, any(e.name), toString(sum(r.amount)), sum(r.events)
			FROM `+db+`.rollup_daily AS r
			ANY LEFT JOIN (SELECT id AS entity_id, name FROM `+db+`.entities) AS e USING entity_id
			WHERE r.depth > 0
			GROUP BY r.entity_id ORDER BY sum(r.amount) DESC LIMIT 5`)
		if err == nil {
			tw := tabwriter.NewWriter(os.Stdout, 2, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "  entity\tname\tdownline amount\tdownline events")
			for rows.Next() {
				var (
					id           uint64
					events       int64
					name, amount string
				)
				if rows.Scan(&id, &name, &amount, &events) == nil {
					fmt.Fprintf(tw, "  %d\t%s\t%s\t%d\n", id, name, amount, events)
				}
			}
			rows.Close()
			_ = tw.Flush()
		}
		select {
		case <-produced:
			if exit && int64(n-before) >= want { //nolint:gosec // counts
				fmt.Println("all events counted")
				return nil
			}
		default:
		}
	}
}
