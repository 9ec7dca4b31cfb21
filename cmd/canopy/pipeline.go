package main

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/canopyhq/canopy/hierarchy"
	"github.com/canopyhq/canopy/ingest"
	"github.com/canopyhq/canopy/ingest/pgledger"
	"github.com/canopyhq/canopy/schema"
)

// pipeline is what every command that ingests needs: the stores, the
// hierarchy in memory and a Processor over them.
type pipeline struct {
	pool     *pgxpool.Pool
	ch       driver.Conn
	shards   []driver.Conn // clickhouse.shards; nil without a cluster
	chs      schema.ClickHouse
	store    *hierarchy.Store
	resolver *treeResolver
	producer *kgo.Client
	proc     *ingest.Processor
	policy   ingest.SuspendedPolicy
}

// openPipeline connects, loads the hierarchy (after beforeLoad, if given)
// and builds the Processor. Close it when done.
func openPipeline(ctx context.Context, cfg *config, log *slog.Logger, metrics *ingest.Metrics,
	beforeLoad func(), extra ...kgo.Opt) (p *pipeline, err error) {
	p = &pipeline{}
	opened := p // an error return clears p; what was opened still closes
	defer func() {
		if err != nil {
			opened.Close()
		}
	}()
	if p.chs, err = cfg.chSchema(); err != nil {
		return nil, usageError{err}
	}
	p.policy, _ = cfg.suspendedPolicy()
	if p.pool, err = openPostgres(ctx, cfg); err != nil {
		return nil, err
	}
	if p.ch, err = openClickHouse(ctx, cfg); err != nil {
		return nil, err
	}
	if p.shards, err = openShards(ctx, cfg); err != nil {
		return nil, err
	}
	if err = awaitKafka(ctx, cfg, extra...); err != nil {
		return nil, err
	}
	p.store = hierarchy.NewStore(p.pool)
	if beforeLoad != nil {
		beforeLoad()
	}
	start := time.Now()
	tree, err := p.store.Load(ctx)
	if err != nil {
		return nil, err
	}
	log.Info("hierarchy loaded", "entities", tree.Len(), "version", tree.Version(), "took", time.Since(start).Round(time.Millisecond),
		"heap_bytes_per_entity", heapPerEntity(tree.Len()))
	// Dead letters carry the original bytes, oversize records included.
	p.producer, err = kgo.NewClient(cfg.kafkaOpts(append([]kgo.Opt{kgo.AllowAutoTopicCreation(),
		kgo.ProducerBatchMaxBytes(16 << 20)}, extra...)...)...)
	if err != nil {
		return nil, fmt.Errorf("kafka producer: %w", err)
	}
	p.resolver = &treeResolver{t: tree, store: p.store}
	p.proc = &ingest.Processor{
		Decoder:   ingest.NewDecoder(cfg.measures, 0),
		Resolver:  p.resolver,
		Ledger:    &pgledger.Ledger{Pool: p.pool},
		Sink:      &ingest.ClickHouseSink{Conn: p.ch, Schema: p.chs, Shards: p.shards},
		DLQ:       &ingest.KafkaDeadLetters{Client: p.producer, Topic: cfg.get("kafka.dlq_topic")},
		Suspended: p.policy,
		Retry: ingest.RetryPolicy{
			Publisher:   &ingest.KafkaRetries{Client: p.producer, Topic: cfg.get("kafka.retry_topic")},
			MaxAttempts: uint32(max(cfg.int("ingest.retry_attempts"), 1)), //nolint:gosec // small
			Backoff:     cfg.duration("ingest.retry_backoff"),
			MaxBackoff:  cfg.duration("ingest.retry_max_backoff"),
			MaxAge:      cfg.duration("ingest.retry_max_age"),
		},
		Metrics:           metrics,
		Log:               log,
		MaxBatchRecords:   cfg.int("ingest.max_poll_records"),
		MaxBatchBytes:     cfg.int("ingest.max_batch_mb") << 20,
		MaxTypes:          cfg.int("ingest.max_types_per_batch"),
		ReplayVerifyAfter: replayVerifyAfter(cfg.duration("ingest.replay_verify_after")),
		Grains:            p.chs.Grains,
	}
	return p, nil
}

// replayVerifyAfter maps the setting, where 0 means never, to
// Processor.ReplayVerifyAfter, where 0 means the default.
func replayVerifyAfter(d time.Duration) time.Duration {
	if d <= 0 {
		return -1
	}
	return d
}

func (p *pipeline) Close() {
	if p.producer != nil {
		p.producer.Close()
	}
	if p.ch != nil {
		_ = p.ch.Close()
	}
	for _, c := range p.shards {
		_ = c.Close()
	}
	if p.pool != nil {
		p.pool.Close()
	}
}
