package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/canopyhq/canopy/ingest"
	"github.com/canopyhq/canopy/ingest/idstate"
	"github.com/canopyhq/canopy/ingest/pgledger"
	"github.com/canopyhq/canopy/internal/backoff"
)

// keepIntents is how long finished batch intents are kept: a replay of a
// batch can come at most this late (a crashed batch is replayed by the next
// owner within minutes), so the event-id state is kept this long past the
// horizon too.
const keepIntents = 24 * time.Hour

// dedupState is the deduplication state the worker sizes and purges.
type dedupState interface {
	StateSize(ctx context.Context) (ids, bytes int64, err error)
	Purge(ctx context.Context, horizon, keepIntents time.Duration) (int64, error)
}

// pgDedup is the PostgreSQL claims table (ingest.dedup=postgres).
type pgDedup struct{ *pgledger.Ledger }

// localDedup is the worker's local event-id state (ingest.dedup=partitioned);
// PostgreSQL keeps only the batch intents.
type localDedup struct {
	pg      *pgledger.Ledger
	state   *idstate.Store
	markers *kgo.Client
}

// Close closes the state and the release markers' producer.
func (l *localDedup) Close() error {
	l.markers.Close()
	return l.state.Close()
}

func (l *localDedup) StateSize(context.Context) (int64, int64, error) {
	ids, bytes := l.state.Size()
	return ids, bytes, nil
}

// Purge drops the state's time segments past the horizon (one range delete
// each) and the old intents.
func (l *localDedup) Purge(ctx context.Context, horizon, keep time.Duration) (int64, error) {
	n, err := l.state.Expire(time.Now())
	if err != nil {
		return 0, fmt.Errorf("expire event-id state: %w", err)
	}
	if _, err := l.pg.Purge(ctx, horizon, keep); err != nil {
		return 0, err
	}
	return int64(n), nil
}

// openPartitioned opens the local event-id state in a free slot of dir,
// makes sure the by-id topic exists, and puts PartitionedClaims in front of
// the processor's ledger. A temporary state starts empty and is emptied
// again on Close (idstate.Options.Temporary).
func openPartitioned(ctx context.Context, cfg *config, log *slog.Logger, dir string, temporary bool, proc *ingest.Processor, metrics *ingest.Metrics, extra ...kgo.Opt) (*localDedup, error) {
	horizon := cfg.duration("ingest.dedup_horizon")
	state, err := openSlot(dir, idstate.Options{Horizon: horizon, Keep: keepIntents, Logger: log, Temporary: temporary})
	if err != nil {
		return nil, err
	}
	opts := cfg.kafkaOpts(extra...)
	if err := await(ctx, "kafka", func() error {
		if err := ensureByIDTopic(ctx, cfg, horizon, opts); err != nil {
			return err
		}
		return forgetStale(ctx, log, state, cfg.get("kafka.byid_topic"), opts)
	}); err != nil {
		_ = state.Close()
		return nil, err
	}
	markers, err := kgo.NewClient(append(opts, kgo.RecordPartitioner(kgo.ManualPartitioner()))...)
	if err != nil {
		_ = state.Close()
		return nil, fmt.Errorf("kafka producer: %w", err)
	}
	pg := proc.Ledger.(*pgledger.Ledger)
	proc.Ledger = &ingest.PartitionedClaims{
		Ledger:  pg,
		State:   state,
		Restore: &ingest.KafkaRestorer{Opts: opts, Topic: cfg.get("kafka.byid_topic")},
		Decoder: proc.Decoder,
		Horizon: horizon,
		Log:     log.With("component", "dedup"),
		Metrics: metrics,
		Markers: markers,
		Topic:   cfg.get("kafka.byid_topic"),
	}
	return &localDedup{pg: pg, state: state, markers: markers}, nil
}

// stateSlots bounds the worker processes that share one ingest.state_dir.
const stateSlots = 64

// openSlot opens the state in the first subdirectory of dir (0, 1, …) that
// no other process holds, so workers started from one directory each get
// their own, and a restarted worker usually finds the state it left. Any
// slot serves any partitions: state is rebuilt from the by-id topic where
// it stops.
func openSlot(dir string, opts idstate.Options) (*idstate.Store, error) {
	for i := range stateSlots {
		d := filepath.Join(dir, strconv.Itoa(i))
		st, err := idstate.Open(d, opts)
		if errors.Is(err, idstate.ErrLocked) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("ingest.state_dir: %w", err)
		}
		if opts.Logger != nil {
			opts.Logger.Info("event-id state opened", "dir", d)
		}
		return st, nil
	}
	return nil, fmt.Errorf("ingest.state_dir %s: all %d slots are held by running processes", dir, stateSlots)
}

// ensureByIDTopic creates the by-id topic with as many partitions as the
// events topic, broker-stamped times (the horizon is measured in them) and a
// retention covering the horizon and the replay allowance, so a new owner can
// rebuild a partition's state from it. An existing topic is left as it is.
func ensureByIDTopic(ctx context.Context, cfg *config, horizon time.Duration, opts []kgo.Opt) error {
	cl, err := kgo.NewClient(opts...)
	if err != nil {
		return err
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	events, target := cfg.get("kafka.events_topic"), cfg.get("kafka.byid_topic")
	d, err := adm.ListTopics(ctx, events, target)
	if err != nil {
		return fmt.Errorf("kafka: %w", err)
	}
	if t, ok := d[target]; ok && t.Err == nil {
		return nil
	}
	partitions := int32(1)
	if t, ok := d[events]; ok && t.Err == nil && len(t.Partitions) > 0 {
		partitions = int32(len(t.Partitions)) //nolint:gosec // partition counts are small
	}
	retention := strconv.FormatInt((horizon + keepIntents + 24*time.Hour).Milliseconds(), 10)
	appendTime := "LogAppendTime"
	maxBytes := strconv.Itoa(4 << 20) // an event (≤ 1 MiB) with its headers
	resp, err := adm.CreateTopic(ctx, partitions, -1, map[string]*string{
		"retention.ms": &retention, "message.timestamp.type": &appendTime, "max.message.bytes": &maxBytes,
	}, target)
	if err == nil {
		err = resp.Err
	}
	if err != nil && !errors.Is(err, kerr.TopicAlreadyExists) {
		return fmt.Errorf("create the by-id topic %s: %w", target, err)
	}
	return nil
}

// forgetStale drops the local state of every partition whose mark lies at or
// past the partition's end: it was built from an earlier incarnation of the
// by-id topic (deleted and created again), whose offsets mean other records.
func forgetStale(ctx context.Context, log *slog.Logger, state *idstate.Store, topic string, opts []kgo.Opt) error {
	cl, err := kgo.NewClient(opts...)
	if err != nil {
		return err
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	ends, err := kadm.NewClient(cl).ListEndOffsets(ctx, topic)
	if err == nil {
		err = ends.Error()
	}
	if err != nil {
		return fmt.Errorf("end offsets of %s: %w", topic, err)
	}
	var ferr error
	ends.Each(func(o kadm.ListedOffset) {
		if through, ok := state.Through(o.Partition); ok && through >= o.Offset && ferr == nil {
			log.Warn("local event-id state is ahead of the by-id topic (topic recreated?); forgetting it",
				"partition", o.Partition, "state_through", through, "topic_end", o.Offset)
			ferr = state.Reset(o.Partition)
		}
	})
	return ferr
}

// forward runs a backfill under partitioned deduplication (ingest.Forward):
// the records go to the by-id topic and the workers write them.
func forward(ctx context.Context, cfg *config, log *slog.Logger, inputs []ingest.Input, batch int,
	progress func(done, records int64)) (ingest.BackfillStats, error) {
	chs, err := cfg.chSchema()
	if err != nil {
		return ingest.BackfillStats{}, usageError{err}
	}
	opts := cfg.kafkaOpts()
	if err := ensureByIDTopic(ctx, cfg, cfg.duration("ingest.dedup_horizon"), opts); err != nil {
		return ingest.BackfillStats{}, err
	}
	pool, err := openPostgres(ctx, cfg)
	if err != nil {
		return ingest.BackfillStats{}, err
	}
	defer pool.Close()
	ch, err := openClickHouse(ctx, cfg)
	if err != nil {
		return ingest.BackfillStats{}, err
	}
	defer func() { _ = ch.Close() }()
	cl, err := kgo.NewClient(append(opts, kgo.ProducerBatchMaxBytes(16<<20), kgo.ProducerLinger(5*time.Millisecond))...)
	if err != nil {
		return ingest.BackfillStats{}, fmt.Errorf("kafka producer: %w", err)
	}
	defer cl.Close()
	target := cfg.get("kafka.byid_topic")
	stop, err := workIfAlone(ctx, cfg, log, opts)
	if err != nil {
		return ingest.BackfillStats{}, err
	}
	defer stop()
	f := &ingest.Forward{
		Client:       cl,
		Target:       target,
		Group:        cfg.get("kafka.group"),
		Strides:      &pgledger.Ledger{Pool: pool},
		Outcomes:     &ingest.ClickHouseSink{Conn: ch, Schema: chs},
		BatchRecords: batch,
		Progress:     progress,
		Waiting:      awaitingWorkers(log, target),
		Log:          log,
	}
	return f.Run(ctx, inputs)
}

// standIn runs a worker in a backfill's process whenever the workers' group
// has no member, so a backfill completes on its own. A member of a worker
// that died stays in the group until its session times out, so the group is
// looked at again every few seconds, not only at the start. With workers
// running it does nothing: they process the forwarded records.
type standIn struct {
	cfg  *config
	log  *slog.Logger
	opts []kgo.Opt

	mu      sync.Mutex
	stopped chan struct{} // closed by stop
	cancel  context.CancelFunc
	done    chan error // the worker's result, once started
}

// alone reports whether the workers' group has no member.
func (s *standIn) alone(ctx context.Context) (bool, error) {
	cl, err := kgo.NewClient(s.opts...)
	if err != nil {
		return false, err
	}
	defer cl.Close()
	group := s.cfg.get("kafka.group")
	dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	adm := kadm.NewClient(cl)
	var groups kadm.DescribedGroups
	// A coordinator that is loading or moving (COORDINATOR_NOT_AVAILABLE on a
	// fresh cluster, while __consumer_offsets is created) answers again
	// shortly: only a lasting or permanent error is reported.
	for pace := backoff.New(100*time.Millisecond, 2*time.Second); ; {
		groups, err = adm.DescribeGroups(dctx, group)
		if err == nil {
			err = groups.Error()
		}
		if !kerr.IsRetriable(err) || !pace.Wait(dctx) {
			break
		}
	}
	if errors.Is(err, kerr.GroupIDNotFound) {
		return true, nil // never joined: no members
	}
	if err != nil {
		return false, fmt.Errorf("kafka: describe group %s: %w", group, err)
	}
	g, ok := groups[group]
	return !ok || len(g.Members) == 0, nil
}

// start runs the worker unless it runs already, and waits until it serves.
func (s *standIn) start(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	select {
	case <-s.stopped:
		return nil // the backfill is done
	default:
	}
	if s.done != nil {
		return nil
	}
	s.log.Info("backfill: no worker consumes the group; running one in this process until the forwarded records are processed",
		"group", s.cfg.get("kafka.group"))
	s.cfg.byKey["http.addr"].val = "127.0.0.1:0" // its metrics are this run's alone
	// Nor is it the static member kafka.instance_id names: joining as that
	// member would push the worker that is out of the group out of it.
	s.cfg.byKey["kafka.instance_id"].val = ""
	wctx, cancel := context.WithCancel(ctx)
	ready, done := make(chan string, 1), make(chan error, 1)
	go func() { done <- runWorker(wctx, s.cfg, ready) }()
	select {
	case <-ready:
		s.cancel, s.done = cancel, done
		return nil
	case err := <-done:
		cancel()
		return fmt.Errorf("start a worker: %w", err)
	case <-ctx.Done():
		cancel()
		<-done
		return ctx.Err()
	}
}

// watch starts the worker once the group is empty, looking every 5 s,
// until stop.
func (s *standIn) watch(ctx context.Context) {
	tick := time.NewTicker(5 * time.Second)
	defer tick.Stop()
	for {
		select {
		case <-s.stopped:
			return
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		if alone, err := s.alone(ctx); err != nil {
			s.log.Warn("backfill: could not look at the workers' group", "err", err)
		} else if alone {
			if err := s.start(ctx); err != nil && ctx.Err() == nil {
				s.log.Warn("backfill: could not run a worker", "err", err)
			}
		}
	}
}

// stop ends the watch and, gracefully, the worker.
func (s *standIn) stop() {
	s.mu.Lock()
	close(s.stopped)
	cancel, done := s.cancel, s.done
	s.mu.Unlock()
	if done == nil {
		return
	}
	cancel()
	if err := <-done; err != nil {
		s.log.Warn("backfill: the worker it ran stopped with an error", "err", err)
	}
}

// workIfAlone starts a standIn: a worker now if the group is empty, and a
// watch that starts one later if it empties.
func workIfAlone(ctx context.Context, cfg *config, log *slog.Logger, opts []kgo.Opt) (stop func(), err error) {
	s := &standIn{cfg: cfg, log: log, opts: opts, stopped: make(chan struct{})}
	alone, err := s.alone(ctx)
	if err != nil {
		return nil, err
	}
	if alone {
		if err := s.start(ctx); err != nil {
			return nil, err
		}
	} else {
		log.Info("backfill: the workers of the group will process the forwarded records", "group", cfg.get("kafka.group"))
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		s.watch(ctx)
	}()
	return func() {
		s.stop()
		wg.Wait()
	}, nil
}

// awaitingWorkers reports a forwarding backfill's wait for the workers every
// 5 s, and says what to check when nothing moves for a minute.
func awaitingWorkers(log *slog.Logger, topic string) func(acked, sent int64) {
	var last, moved time.Time
	prev := int64(-1)
	return func(acked, sent int64) {
		now := time.Now()
		if acked != prev {
			prev, moved = acked, now
		}
		if acked == sent || now.Sub(last) < 5*time.Second {
			return
		}
		last = now
		if now.Sub(moved) > time.Minute {
			log.Warn("backfill: no acknowledgement for a minute; is a worker running with ingest.dedup=partitioned?",
				"topic", topic, "acknowledged", acked, "forwarded", sent)
			return
		}
		log.Info("backfill: waiting for the workers", "topic", topic, "acknowledged", acked, "forwarded", sent)
	}
}
