package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/cobra"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"golang.org/x/sync/errgroup"

	"github.com/canopyhq/canopy/hierarchy"
	"github.com/canopyhq/canopy/ingest"
	"github.com/canopyhq/canopy/ingest/pgledger"
	"github.com/canopyhq/canopy/restate"
)

func newWorker(cfg *config) *cobra.Command {
	return &cobra.Command{
		Use:   "worker",
		Short: "Consume events, fan them out over the hierarchy and write rollups (a consumer-group member)",
		Args:  args(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runWorker(cmd.Context(), cfg, nil)
		},
	}
}

// runWorker runs one worker until ctx ends. extra Kafka options are for dev
// mode and tests.
func runWorker(ctx context.Context, cfg *config, ready chan<- string, extra ...kgo.Opt) error {
	log := cfg.logger()
	ctx = patiently(ctx, log)
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	metrics := ingest.NewMetrics(reg)
	propagation := prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "canopy_hierarchy_propagation_seconds",
		Help:    "Time from a hierarchy change's commit in PostgreSQL to its use by this worker (via the hierarchy topic).",
		Buckets: prometheus.ExponentialBuckets(0.005, 1.5, 16), // 5 ms … 2.2 s
	})
	reg.MustRegister(propagation)

	// Where to follow the hierarchy topic from is taken before the load
	// (hierarchy.EndOffsets says why). Without the topic yet, follow from
	// its start once it appears; PostgreSQL polling covers the gap.
	var follow map[int32]int64
	p, err := openPipeline(ctx, cfg, log, metrics, func() {
		ectx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		var ferr error
		if follow, ferr = hierarchy.EndOffsets(ectx, cfg.brokers(), cfg.get("kafka.hierarchy_topic"), cfg.kafkaOpts(extra...)...); ferr != nil {
			log.Info("hierarchy topic not readable yet; following it from its start", "topic", cfg.get("kafka.hierarchy_topic"), "err", ferr)
			follow = nil
		}
	}, extra...)
	if err != nil {
		return err
	}
	defer p.Close()
	pool, ch, chs, store, resolver, proc, policy, tree := p.pool, p.ch, p.chs, p.store, p.resolver, p.proc, p.policy, p.resolver.t
	metrics.SetHierarchyVersion(tree.Version())
	hostname, _ := os.Hostname()
	ensureRetryTopic(ctx, log, cfg, extra...)
	// The processing stage reads the events and retry topics, or, with
	// partitioned deduplication, the by-id topic the router fills.
	topic, retryTopic := cfg.get("kafka.events_topic"), cfg.get("kafka.retry_topic")
	dedup := dedupState(&pgDedup{proc.Ledger.(*pgledger.Ledger)})
	var router *ingest.Router
	if cfg.partitioned() {
		local, err := openPartitioned(ctx, cfg, log, cfg.get("ingest.state_dir"), false, proc, metrics, extra...)
		if err != nil {
			return err
		}
		defer local.Close()
		dedup = local
		topic, retryTopic = cfg.get("kafka.byid_topic"), ""
		router, err = ingest.NewRouter(ingest.RouterConfig{
			Topic: cfg.get("kafka.events_topic"), RetryTopic: cfg.get("kafka.retry_topic"), Target: topic,
			Group: cfg.get("kafka.group") + ".router", MaxPoll: cfg.int("ingest.max_poll_records"),
			MaxRetryDelay:  cfg.duration("ingest.retry_max_backoff"),
			SessionTimeout: cfg.duration("ingest.session_timeout"),
			InstanceID:     cfg.get("kafka.instance_id"),
		}, log.With("component", "router"), metrics, cfg.kafkaOpts(extra...)...)
		if err != nil {
			return err
		}
	}
	w, err := ingest.NewWorker(ingest.WorkerConfig{
		Brokers:                cfg.brokers(),
		Topic:                  topic,
		RetryTopic:             retryTopic,
		Group:                  cfg.get("kafka.group"),
		Owner:                  fmt.Sprintf("%s-%d", hostname, os.Getpid()),
		MaxPollRecords:         cfg.int("ingest.max_poll_records"),
		FetchMaxPartitionBytes: cfg.int("ingest.fetch_max_partition_mb") << 20,
		HeadBatchBytes:         cfg.int("ingest.head_batch_mb") << 20,
		SessionTimeout:         cfg.duration("ingest.session_timeout"),
		InstanceID:             cfg.get("kafka.instance_id"),
		// The by-id topic is written by the router alone; anyone may write
		// the events topic.
		TrustHeaders:       cfg.partitioned(),
		StateFromTopic:     cfg.partitioned(),
		MaxBufferedRecords: cfg.int("ingest.max_buffered_records"),
		MaxBufferedBytes:   cfg.int("ingest.max_buffered_mb") << 20,
	}, proc, log, cfg.kafkaOpts(extra...)...)
	if err != nil {
		return usageError{err}
	}

	var healthy atomic.Bool
	rejected := hierarchy.NewRejectedCounter(reg)
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return w.Run(gctx) })
	if router != nil {
		g.Go(func() error { return router.Run(gctx) })
	}
	g.Go(func() error {
		return followHierarchy(gctx, log, resolver, metrics, &healthy)
	})
	g.Go(func() error {
		rs := &restate.Restater{
			PG: pool, Store: store, CH: ch, Shards: p.shards, Schema: chs, Tree: resolver, Refresh: resolver.Refresh,
			Policy: policy, Log: log.With("component", "restater"), Metrics: restate.NewMetrics(reg),
		}
		return rs.Run(gctx)
	})
	g.Go(func() error {
		f := &hierarchy.Follower{
			Brokers: cfg.brokers(), Topic: cfg.get("kafka.hierarchy_topic"), Tree: tree, Log: log, Opts: cfg.kafkaOpts(extra...),
			Applied: func(d time.Duration) { propagation.Observe(d.Seconds()) },
			// Only changes that match PostgreSQL's history are applied.
			History: store, Rejected: rejected,
		}
		return f.Run(gctx, follow)
	})
	g.Go(func() error {
		purgeClaims(gctx, log, dedup, metrics, cfg.duration("ingest.dedup_horizon"))
		return nil
	})
	srv, addr, err := serveHTTP(cfg.get("http.addr"), cfg.bool("http.pprof"), reg, w, &healthy)
	if err != nil {
		return err
	}
	if cfg.bool("http.pprof") && !loopback(addr) {
		log.Warn("http.pprof serves /debug/pprof/ beyond loopback: profiles expose the process to anyone who reaches it", "addr", addr)
	}
	log.Info("worker started", "metrics", "http://"+addr+"/metrics", "topic", cfg.get("kafka.events_topic"), "group", cfg.get("kafka.group"))
	if ready != nil {
		ready <- addr
	}
	g.Go(func() error {
		<-gctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		return srv.Shutdown(sctx)
	})
	err = g.Wait()
	log.Info("worker stopped")
	if errors.Is(err, context.Canceled) || errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// serveHTTP serves /metrics, /healthz (the process runs), /readyz (joined
// the group and the hierarchy is current) and, when withPprof (http.pprof,
// default false), /debug/pprof/.
func serveHTTP(addr string, withPprof bool, reg *prometheus.Registry, w *ingest.Worker, healthy *atomic.Bool) (*http.Server, string, error) {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	if withPprof {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	mux.HandleFunc("/healthz", func(rw http.ResponseWriter, _ *http.Request) { _, _ = rw.Write([]byte("ok\n")) })
	mux.HandleFunc("/readyz", func(rw http.ResponseWriter, _ *http.Request) {
		select {
		case <-w.Ready():
			if healthy.Load() {
				_, _ = rw.Write([]byte("ready\n"))
				return
			}
		default:
		}
		http.Error(rw, "not ready", http.StatusServiceUnavailable)
	})
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, "", usageError{fmt.Errorf("http.addr %s: %w", addr, err)}
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	return srv, ln.Addr().String(), nil
}

// loopback reports whether addr (host:port, as listened on) is reachable only
// from this machine.
func loopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// followHierarchy polls PostgreSQL for hierarchy changes the topic follower
// has not brought yet (the relay is down, or the worker fell behind), once a
// second.
func followHierarchy(ctx context.Context, log *slog.Logger, r *treeResolver, metrics *ingest.Metrics, healthy *atomic.Bool) error {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		v, err := r.Refresh(ctx)
		if err != nil && ctx.Err() == nil {
			healthy.Store(false)
			log.Warn("hierarchy poll failed", "err", err)
		}
		if err == nil {
			healthy.Store(true)
			metrics.SetHierarchyVersion(v)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
}

// purgeClaims forgets event ids past the deduplication horizon, and finished
// batch intents older than a day, once an hour; and reports the size of the
// deduplication state every minute. Every worker may run it: the deletes
// are idempotent.
func purgeClaims(ctx context.Context, log *slog.Logger, l dedupState, m *ingest.Metrics, horizon time.Duration) {
	// size refreshes the gauges; announce also logs the size.
	size := func(announce bool) {
		ids, bytes, err := l.StateSize(ctx)
		if err != nil {
			log.Warn("could not read the deduplication state's size", "err", err)
			return
		}
		m.SetDedupState(ids, bytes)
		if announce {
			log.Info("deduplication state", "event_ids", ids, "bytes", bytes, "horizon", horizon)
		}
	}
	size(true)
	sizeTick, purgeTick := time.NewTicker(time.Minute), time.NewTicker(time.Hour)
	defer sizeTick.Stop()
	defer purgeTick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-sizeTick.C:
			size(false)
		case <-purgeTick.C:
			n, err := l.Purge(ctx, horizon, keepIntents)
			if err != nil {
				log.Warn("purge of old event-id claims failed", "err", err)
				continue
			}
			log.Info("purged event-id claims past the deduplication horizon", "claims", n, "horizon", horizon)
			size(true)
		}
	}
}

// heapPerEntity is the live heap after a collection divided by the number
// of entities: what holding the hierarchy costs the worker.
func heapPerEntity(n int) int {
	if n == 0 {
		return 0
	}
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return int(ms.HeapAlloc) / n //nolint:gosec // heap size fits int
}

// treeResolver adapts hierarchy.Tree to ingest.Resolver and follows the
// store's changes. Safe for concurrent use.
type treeResolver struct {
	t     *hierarchy.Tree
	store *hierarchy.Store
	mu    sync.Mutex // one catch-up at a time
}

func (r *treeResolver) Version() int64 { return r.t.Version() }

// Subtree, Related and Path serve the restater (restate.Tree).
func (r *treeResolver) Subtree(id int64) []int64 { return r.t.Subtree(id) }
func (r *treeResolver) Related(id int64) []int64 { return r.t.Related(id) }
func (r *treeResolver) Path(id int64) []int64    { return r.t.Path(id) }

// Refresh applies every change committed in PostgreSQL since the tree's
// version (implements ingest.Refresher).
func (r *treeResolver) Refresh(ctx context.Context) (int64, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for {
		changes, err := r.store.ChangesSince(ctx, r.t.Version(), 10000)
		if err != nil {
			return r.t.Version(), err
		}
		for _, c := range changes {
			if err := r.t.Apply(c); err != nil {
				return r.t.Version(), fmt.Errorf("apply hierarchy change %d: %w", c.Seq, err)
			}
		}
		if len(changes) < 10000 {
			return r.t.Version(), nil
		}
	}
}

func (r *treeResolver) Ancestors(id int64, at time.Time, asOf int64, dst []ingest.Ancestor) ([]ingest.Ancestor, bool) {
	dst, ok, _ := r.AncestorsLatest(id, at, asOf, dst)
	return dst, ok
}

func (r *treeResolver) AncestorsLatest(id int64, at time.Time, asOf int64, dst []ingest.Ancestor) (_ []ingest.Ancestor, ok, latest bool) {
	var buf [chainBuf]hierarchy.Ancestor
	chain, ok, latest := r.t.AncestorsAsOfLatest(id, at, asOf, buf[:0])
	return ingestChain(chain, ok, latest, dst)
}

// chainBuf is the room for a chain on the stack of a look-up. Each caller
// calls its tree's method itself, with its own buffer: passed to a shared
// function as a func value, the look-up would move the buffer to the heap,
// 512 bytes an event.
const chainBuf = 32

// ingestChain appends to dst, as ingest's links, the chain a look-up
// returned.
func ingestChain(chain []hierarchy.Ancestor, ok, latest bool, dst []ingest.Ancestor) (_ []ingest.Ancestor, _, _ bool) {
	if !ok {
		return dst, false, false
	}
	for _, a := range chain {
		dst = append(dst, ingest.Ancestor{ID: a.ID, Depth: a.Depth, Suspended: a.Status != hierarchy.StatusActive})
	}
	return dst, true, latest
}

// Warm holds the tree's read lock for a chunk's look-ups, after reading
// ahead what they will read (implements ingest.Warmer).
func (r *treeResolver) Warm(ids []int64) (ingest.Resolver, func()) {
	h, release := r.t.Hold()
	h.Warm(ids)
	return heldResolver{h}, release
}

// heldResolver is treeResolver's look-ups through a held tree.
type heldResolver struct{ h hierarchy.Held }

func (r heldResolver) Version() int64 { return r.h.Version() }

func (r heldResolver) Ancestors(id int64, at time.Time, asOf int64, dst []ingest.Ancestor) ([]ingest.Ancestor, bool) {
	dst, ok, _ := r.AncestorsLatest(id, at, asOf, dst)
	return dst, ok
}

func (r heldResolver) AncestorsLatest(id int64, at time.Time, asOf int64, dst []ingest.Ancestor) (_ []ingest.Ancestor, ok, latest bool) {
	var buf [chainBuf]hierarchy.Ancestor
	chain, ok, latest := r.h.AncestorsAsOfLatest(id, at, asOf, buf[:0])
	return ingestChain(chain, ok, latest, dst)
}

// ensureRetryTopic creates the retry topic, with as many partitions as the
// events topic, if it does not exist: a consumer only learns of a topic
// created later at its next metadata refresh, minutes away.
func ensureRetryTopic(ctx context.Context, log *slog.Logger, cfg *config, extra ...kgo.Opt) {
	cl, err := kgo.NewClient(cfg.kafkaOpts(extra...)...)
	if err != nil {
		return
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	partitions := int32(1)
	if d, err := adm.ListTopics(ctx, cfg.get("kafka.events_topic")); err == nil {
		if t, ok := d[cfg.get("kafka.events_topic")]; ok && t.Err == nil && len(t.Partitions) > 0 {
			partitions = int32(len(t.Partitions)) //nolint:gosec // partition counts are small
		}
	}
	// A retry carries its record whole; events may be up to 1 MiB, past the
	// broker's default limit once headers are added.
	maxBytes := strconv.Itoa(4 << 20)
	resp, err := adm.CreateTopic(ctx, partitions, -1, map[string]*string{"max.message.bytes": &maxBytes}, cfg.get("kafka.retry_topic"))
	if err == nil {
		err = resp.Err
	}
	if err != nil && !errors.Is(err, kerr.TopicAlreadyExists) {
		log.Warn("could not create the retry topic; retries wait until it exists", "topic", cfg.get("kafka.retry_topic"), "err", err)
	}
}
