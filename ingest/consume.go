package ingest

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/canopyhq/canopy/internal/backoff"
	"github.com/canopyhq/canopy/internal/recreated"
	"github.com/canopyhq/canopy/internal/wait"
)

// WorkerConfig configures a consumer-group worker.
type WorkerConfig struct {
	Brokers []string
	Topic   string // default "canopy.events"
	// RetryTopic, when set, is consumed too: records waiting for a retry
	// (see RetryPolicy) are processed when due.
	RetryTopic string
	Group      string // default "canopy"
	// Owner is this member's name in partition leases, for operators
	// reading them; no default here (canopy worker sets hostname-pid).
	Owner string
	// MaxPollRecords caps the records taken per poll; default
	// DefaultMaxPollRecords.
	MaxPollRecords int
	// FetchMaxWait is how long the broker may hold a fetch to fill
	// FetchMinBytes; default 250ms.
	FetchMaxWait time.Duration
	// FetchMaxPartitionBytes caps what one fetch brings of one partition;
	// default DefaultFetchMaxPartitionBytes. A partition catching up makes
	// its batches of what its polls brought, so this sizes the batches of
	// a backlog.
	FetchMaxPartitionBytes int
	// HeadBatchBytes caps, in record values, a new batch of a partition at
	// its head (the broker had no more than a few records past those
	// fetched): what arrived during a turn is then written in batches of
	// this size, each acknowledged as soon as it is written, rather than as
	// one. Default DefaultHeadBatchBytes; see DefaultFetchMaxPartitionBytes.
	HeadBatchBytes int
	// SessionTimeout is the group session timeout; default
	// DefaultSessionTimeout. A member that is silent longer loses its
	// partitions (a zombie if it wakes).
	SessionTimeout time.Duration
	// InstanceID, when set, makes the worker a static member of its group
	// (KIP-345): it does not leave the group on shutdown, and the same ID
	// back within SessionTimeout gets its partitions again without a
	// rebalance, so a restart keeps them on the machine whose local state
	// holds them. "" is a dynamic member.
	InstanceID string
	// ShutdownTimeout bounds the final commit on shutdown; default 10s.
	ShutdownTimeout time.Duration
	// RetryBackoffMax caps the backoff between attempts of a batch that
	// failed transiently; default 10s.
	RetryBackoffMax time.Duration
	// MaxBufferedRecords and MaxBufferedBytes bound what is fetched but not
	// processed yet: a partition holding MaxBufferedRecords, or every
	// partition holding records while all together hold MaxBufferedBytes
	// (of keys and values), is paused at the fetch until its batches go
	// through. Defaults: DefaultMaxBufferedRecords (or MaxPollRecords when
	// that is larger, so one poll's records fit) and
	// DefaultMaxBufferedBytes.
	MaxBufferedRecords int
	MaxBufferedBytes   int
	// TrustHeaders says that only Canopy writes Topic (the by-id topic), so
	// its canopy.* headers are honoured. Otherwise they are dropped from
	// Topic's records: anyone may produce there. The retry topic's are
	// always honoured.
	TrustHeaders bool
	// StateFromTopic says the worker keeps state built from Topic's
	// records (the by-id topic's event-id state). Topic deleted and created
	// again then ends Run with ErrTopicGone, as it ends the router's, and
	// the restart forgets that state. Otherwise a topic created again is
	// read from its start.
	StateFromTopic bool
}

// DefaultFetchMaxPartitionBytes is WorkerConfig.FetchMaxPartitionBytes'
// default, and DefaultHeadBatchBytes is HeadBatchBytes'. Batch size trades
// catching up against freshness. ClickHouse's cost is as much per part as
// per row: a backlog drained in 8 MiB batches instead of Kafka's default
// 1 MiB took about a third less ClickHouse CPU per event and went 1.2 to
// 1.4 times as fast. At the head, a smaller cap acknowledges the first
// part of what arrived during a turn sooner, but every further batch pays
// a whole batch's INSERTs, and a turn holds more than one batch's worth
// only when the worker is loaded: at 37,000 zipf events/s (a little over
// half load) a 2 MiB cap gave p99 7.6–8.6 s against 2.1–6.5 s with 8 MiB,
// and at 30,000 uniform events/s the two were within noise
// (docs/scaling.md). So by default the head's cap is the fetch's, and a
// smaller one is a setting for those who want early acknowledgements at
// low load.
const (
	DefaultFetchMaxPartitionBytes = 8 << 20
	DefaultHeadBatchBytes         = DefaultFetchMaxPartitionBytes
)

// DefaultMaxPollRecords is WorkerConfig.MaxPollRecords' and
// RouterConfig.MaxPoll's default. It is large enough that the byte caps
// above, not the record count, size a batch: a poll's records are shared
// by the partitions that had any, and 50,000 over four partitions made
// batches of about 2 MB, a quarter of the fetch. On 2M events at 1M
// entities, 200,000 ingested 1.15–1.6 times as fast with 15–50% less
// ClickHouse CPU per event, for 15–50% more worker peak RSS
// (docs/scaling.md).
const DefaultMaxPollRecords = 200_000

// Defaults of WorkerConfig's SessionTimeout, MaxBufferedRecords (per
// partition) and MaxBufferedBytes (all partitions together).
const (
	DefaultSessionTimeout     = 10 * time.Second
	DefaultMaxBufferedRecords = 200_000
	DefaultMaxBufferedBytes   = 256 << 20
)

// headLag is how many records the broker may hold past those fetched for a
// partition to still be at its head: a transactional producer's commit
// marker is one, and records that arrived while the fetch returned a few.
const headLag = 1000

// Validate fills defaults and checks the configuration.
func (c *WorkerConfig) Validate() error {
	if len(c.Brokers) == 0 {
		return errors.New("ingest: no Kafka brokers configured")
	}
	if c.Topic == "" {
		c.Topic = "canopy.events"
	}
	if c.Group == "" {
		c.Group = "canopy"
	}
	if c.MaxPollRecords <= 0 {
		c.MaxPollRecords = DefaultMaxPollRecords
	}
	if c.FetchMaxWait <= 0 {
		c.FetchMaxWait = 250 * time.Millisecond
	}
	if c.FetchMaxPartitionBytes <= 0 {
		c.FetchMaxPartitionBytes = DefaultFetchMaxPartitionBytes
	}
	if c.HeadBatchBytes <= 0 {
		c.HeadBatchBytes = DefaultHeadBatchBytes
	}
	if c.SessionTimeout <= 0 {
		c.SessionTimeout = DefaultSessionTimeout
	}
	if c.ShutdownTimeout <= 0 {
		c.ShutdownTimeout = 10 * time.Second
	}
	if c.RetryBackoffMax <= 0 {
		c.RetryBackoffMax = 10 * time.Second
	}
	if c.MaxBufferedRecords <= 0 {
		c.MaxBufferedRecords = max(DefaultMaxBufferedRecords, c.MaxPollRecords)
	}
	if c.MaxBufferedBytes <= 0 {
		c.MaxBufferedBytes = DefaultMaxBufferedBytes
	}
	return nil
}

// held is what a worker holds of one partition between polls.
type held struct {
	recs  []Record // fetched, not processed yet
	bytes int
	// end is the partition's end (its last stable offset) as its latest
	// fetch saw it: how far behind the records held are.
	end    int64
	paused bool // fetching paused: too much is held
	// waiting marks a partition whose last attempt needed more records (a
	// batch recorded earlier is longer than what is held): it is never
	// paused for holding too much.
	waiting bool
	// After a failed attempt the partition rests until notBefore, the rest
	// doubling up to RetryBackoffMax (pace, nil until the first failure);
	// other partitions go on meanwhile.
	notBefore time.Time
	pace      *backoff.Backoff
}

type partitionKey struct {
	topic     string
	partition int32
}

// lease is what a worker holds for a partition it owns: the lease epoch
// that fences older owners, and the topic id its records are ledgered under.
type lease struct {
	epoch    int64
	log      string
	fencedAt time.Time // first refusal of the current epoch; zero if none
}

// Worker is one consumer-group member: poll → decode → expand → aggregate →
// write → ack → commit, one loop iteration per poll, partitions processed in
// parallel. Construct with NewWorker; Run until the context ends.
type Worker struct {
	cfg  WorkerConfig
	proc *Processor
	cl   *kgo.Client
	log  *slog.Logger

	mu     sync.Mutex
	leases map[partitionKey]lease // per owned partition
	parts  map[partitionKey]*held // fetched, not yet processed
	bytes  int                    // of every held record
	// unpause holds revoked partitions that were paused: a pause outlives
	// the assignment in the client, so it is lifted before the next poll.
	unpause map[string][]int32

	ready chan struct{} // closed once partitions are leased, or after the first successful poll
	watch recreated.Watch
	once  sync.Once
}

func (c WorkerConfig) topics() []string {
	if c.RetryTopic == "" || c.RetryTopic == c.Topic {
		return []string{c.Topic}
	}
	return []string{c.Topic, c.RetryTopic}
}

// NewWorker builds the Kafka client of a worker. extra options (e.g. for
// tests) are appended last.
func NewWorker(cfg WorkerConfig, proc *Processor, log *slog.Logger, extra ...kgo.Opt) (*Worker, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.Default()
	}
	w := &Worker{cfg: cfg, proc: proc, log: log, leases: map[partitionKey]lease{}, parts: map[partitionKey]*held{}, ready: make(chan struct{}),
		watch: recreated.Watch{Log: log}}
	opts := []kgo.Opt{
		kgo.SeedBrokers(cfg.Brokers...),
		kgo.ConsumerGroup(cfg.Group),
		kgo.ConsumeTopics(cfg.topics()...),
		kgo.DisableAutoCommit(),
		// Processing between polls is atomic with respect to rebalances, so
		// a commit never covers a partition this member no longer owns.
		kgo.BlockRebalanceOnPoll(),
		kgo.SessionTimeout(cfg.SessionTimeout),
		kgo.HeartbeatInterval(min(3*time.Second, cfg.SessionTimeout/3)),
		kgo.FetchMaxWait(cfg.FetchMaxWait),
		kgo.FetchMinBytes(1 << 20),
		kgo.FetchMaxPartitionBytes(int32(min(cfg.FetchMaxPartitionBytes, math.MaxInt32))),     //nolint:gosec // capped
		kgo.FetchMaxBytes(int32(min(max(cfg.FetchMaxPartitionBytes, 50<<20), math.MaxInt32))), //nolint:gosec // capped
		kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.OnPartitionsAssigned(w.assigned),
		kgo.OnPartitionsRevoked(w.revoked),
		kgo.OnPartitionsLost(w.revoked),
	}
	if cfg.InstanceID != "" {
		opts = append(opts, kgo.InstanceID(cfg.InstanceID))
	}
	cl, err := kgo.NewClient(append(opts, extra...)...)
	if err != nil {
		return nil, fmt.Errorf("kafka client: %w", err)
	}
	w.cl = cl
	return w, nil
}

// Ready is closed once the worker has joined its group and leased its
// partitions, or has polled.
func (w *Worker) Ready() <-chan struct{} { return w.ready }

// assigned takes the lease of every new partition before any of its records
// is processed; a zombie still holding the old epoch is fenced from then on.
func (w *Worker) assigned(ctx context.Context, cl *kgo.Client, m map[string][]int32) {
	for topic, parts := range m {
		log := topicID(ctx, cl, topic, w.log, w.cfg.RetryBackoffMax)
		for _, p := range parts {
			pace := backoff.New(100*time.Millisecond, w.cfg.RetryBackoffMax)
			for {
				epoch, err := w.proc.Ledger.Acquire(ctx, Source{Topic: topic, TopicID: log, Partition: p}, w.cfg.Owner)
				if err == nil {
					w.mu.Lock()
					w.leases[partitionKey{topic, p}] = lease{epoch: epoch, log: log}
					w.mu.Unlock()
					w.log.Info("partition assigned", "topic", topic, "partition", p, "epoch", epoch)
					break
				}
				w.log.Warn("acquire lease failed, retrying", "topic", topic, "partition", p, "err", err)
				if !pace.Wait(ctx) {
					return
				}
			}
		}
	}
	// Holding its partitions' leases, the worker is ready even if the topic
	// is idle (a poll would block until a record comes).
	if ctx.Err() == nil {
		w.once.Do(func() { close(w.ready) })
	}
}

// topicID returns the topic's id, retrying until the broker answers or ctx
// ends. Brokers too old to have topic ids give "".
func topicID(ctx context.Context, cl *kgo.Client, topic string, log *slog.Logger, maxBackoff time.Duration) string {
	pace := backoff.New(100*time.Millisecond, maxBackoff)
	for {
		details, err := kadm.NewClient(cl).ListTopics(ctx, topic)
		if err == nil {
			err = details.Error()
		}
		if err == nil {
			var zero kadm.TopicID
			if d := details[topic]; d.ID != zero {
				return d.ID.String()
			}
			return ""
		}
		log.Warn("topic metadata failed, retrying", "topic", topic, "err", err)
		if !pace.Wait(ctx) {
			return ""
		}
	}
}

func (w *Worker) revoked(_ context.Context, _ *kgo.Client, m map[string][]int32) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for topic, parts := range m {
		for _, p := range parts {
			k := partitionKey{topic, p}
			delete(w.leases, k)
			if h := w.parts[k]; h != nil {
				w.bytes -= h.bytes
				if h.paused {
					w.unpause = appendPart(w.unpause, k)
				}
				delete(w.parts, k)
			}
			w.log.Info("partition revoked", "topic", topic, "partition", p)
		}
	}
}

// Run consumes until ctx ends, then commits what is finished and leaves the
// group. An in-flight batch is abandoned on cancel: nothing of it is
// committed, so the next owner replays it (harmlessly, see Processor).
func (w *Worker) Run(ctx context.Context) error {
	defer w.close()
	for {
		w.mu.Lock()
		if len(w.unpause) > 0 {
			w.cl.ResumeFetchPartitions(w.unpause)
			w.unpause = nil
		}
		w.mu.Unlock()
		fetches := w.poll(ctx)
		if fetches.IsClientClosed() || ctx.Err() != nil {
			w.cl.AllowRebalance()
			return nil
		}
		w.once.Do(func() { close(w.ready) })
		gone := fetchErrors(ctx, fetches, &w.watch, w.log, "fetch error")
		if err := instanceFenced(fetches, w.cfg.Group, w.cfg.InstanceID); err != nil {
			w.cl.AllowRebalance()
			return err
		}
		if w.cfg.StateFromTopic && slices.Contains(gone, w.cfg.Topic) {
			w.cl.AllowRebalance()
			return fmt.Errorf("%w: %s was deleted and created again; "+
				"restart the workers, which forget the state built from the old topic (see docs/failures.md)", ErrTopicGone, w.cfg.Topic)
		}
		w.buffer(fetches)
		commits := w.processAll(ctx)
		if len(commits) > 0 {
			w.commit(ctx, commits)
		}
		w.throttle()
		w.cl.AllowRebalance()
		// The events or retry topic created again is read from its start;
		// the ledger keys its batches by the new topic's id.
		follow(w.cl, w.log, gone, w.revoked, w.held())
	}
}

// fetchErrors logs a poll's fetch errors under msg (but for the poll's own
// deadline) and returns the topics watch finds were deleted and created
// again. After a poll that brought nothing but such failures it pauses a
// little: franz-go answers those polls at once.
func fetchErrors(ctx context.Context, fetches kgo.Fetches, watch *recreated.Watch, log *slog.Logger, msg string) []string {
	others, gone, idle := watch.Note(fetches)
	for _, fe := range others {
		if !errors.Is(fe.Err, context.DeadlineExceeded) {
			log.Warn(msg, "topic", fe.Topic, "partition", fe.Partition, "err", fe.Err)
		}
	}
	if idle {
		wait.Sleep(ctx, 100*time.Millisecond)
	}
	return gone
}

// follow makes cl read topics, deleted and created again, as they now are.
// First revoke drops what the consumer holds of the old topics' partitions
// (franz-go does not call OnPartitionsRevoked for a purged topic's): their
// records and offsets belong to the old topics.
func follow(cl *kgo.Client, log *slog.Logger, topics []string, revoke func(context.Context, *kgo.Client, map[string][]int32), held []partitionKey) {
	if len(topics) == 0 {
		return
	}
	log.Warn("topic deleted and created again: reading the new topic from its committed offsets, or from its start", "topics", topics)
	old := map[string][]int32{}
	for _, k := range held {
		if slices.Contains(topics, k.topic) && !slices.Contains(old[k.topic], k.partition) {
			old[k.topic] = append(old[k.topic], k.partition)
		}
	}
	revoke(context.Background(), cl, old)
	recreated.Follow(cl, topics...)
}

// held lists the partitions the worker holds a lease or records of.
func (w *Worker) held() []partitionKey {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append(slices.Collect(maps.Keys(w.leases)), slices.Collect(maps.Keys(w.parts))...)
}

// poll waits for records. While held records wait for another attempt (a
// failure, a lost lease, a retry not due) it returns within a second, or
// when the next partition's rest ends, even if nothing new arrived, so a
// quiet partition is retried, not stuck.
//
// The records a poll returns were fetched while the last turn ran, just
// after its poll: franz-go keeps one fetch buffered and sends the next
// only once that one is taken. Whatever reached the broker during the
// turn would wait in Kafka for the whole next turn. So when a poll took a
// fetch that was waiting (it returned at once), poll also waits for the
// fetch that taking it sent, which brings what arrived meanwhile: an
// event then waits for about one turn instead of two (docs/scaling.md,
// "Freshness: one turn, not two"). That wait is at most FetchMaxWait
// (the broker answers sooner once FetchMinBytes wait). A poll that had to
// wait got records just fetched, and does not wait again.
func (w *Worker) poll(ctx context.Context) kgo.Fetches {
	w.mu.Lock()
	timeout, pending := time.Second, false
	now := time.Now()
	for _, h := range w.parts {
		if len(h.recs) > 0 {
			pending = true
			if h.notBefore.After(now) {
				timeout = min(timeout, max(h.notBefore.Sub(now), 10*time.Millisecond))
			}
		}
	}
	w.mu.Unlock()
	if !pending {
		timeout = 0
	}
	start := time.Now()
	fetches := w.pollFor(ctx, timeout, w.cfg.MaxPollRecords)
	// A poll that had to wait took a fetch that has just returned: fresh.
	stale := time.Since(start) < w.cfg.FetchMaxWait/5
	if n := fetches.NumRecords(); stale && n > 0 && n < w.cfg.MaxPollRecords {
		// The broker holds the fetch until FetchMinBytes or FetchMaxWait;
		// twice that is for the round trip.
		if fresh := w.pollFor(ctx, 2*w.cfg.FetchMaxWait, w.cfg.MaxPollRecords-n); !fresh.IsClientClosed() {
			fetches = append(fetches, fresh...)
		}
	}
	return fetches
}

// pollFor polls for up to limit records, waiting at most timeout (0: until
// records come or ctx ends).
func (w *Worker) pollFor(ctx context.Context, timeout time.Duration, limit int) kgo.Fetches {
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	return w.cl.PollRecords(ctx, limit)
}

func (w *Worker) buffer(fetches kgo.Fetches) {
	w.mu.Lock()
	defer w.mu.Unlock()
	fetches.EachPartition(func(fp kgo.FetchTopicPartition) {
		k := partitionKey{fp.Topic, fp.Partition}
		l, owned := w.leases[k]
		if !owned {
			return
		}
		h := w.parts[k]
		if h == nil {
			h = &held{}
			w.parts[k] = h
		}
		untrusted := fp.Topic == w.cfg.Topic && !w.cfg.TrustHeaders
		h.recs = slices.Grow(h.recs, len(fp.Records))
		for _, r := range fp.Records {
			hs := r.Headers
			if untrusted {
				hs = withoutCanopyHeaders(hs)
			}
			h.recs = append(h.recs, Record{Topic: r.Topic, TopicID: l.log, Partition: r.Partition, Offset: r.Offset, Key: r.Key, Value: r.Value, Headers: hs, Time: r.Timestamp})
			n := len(r.Key) + len(r.Value)
			h.bytes += n
			w.bytes += n
		}
		if fp.Err == nil {
			// Reading committed records, the end is the last stable offset
			// (brokers too old to report one give -1).
			h.end = fp.LastStableOffset
			if h.end < 0 {
				h.end = fp.HighWatermark
			}
		}
		if n := len(fp.Records); n > 0 {
			w.proc.Metrics.setLag(fp.Topic, strconv.Itoa(int(fp.Partition)), fp.HighWatermark-fp.Records[n-1].Offset-1)
		}
	})
}

// throttle pauses fetching from partitions that hold too much (see
// WorkerConfig.MaxBufferedRecords) and resumes those that went under.
func (w *Worker) throttle() {
	w.mu.Lock()
	defer w.mu.Unlock()
	var pause, resume map[string][]int32
	full, paused := w.bytes >= w.cfg.MaxBufferedBytes, 0
	for k, h := range w.parts {
		over := !h.waiting && len(h.recs) > 0 && (full || len(h.recs) >= w.cfg.MaxBufferedRecords)
		switch {
		case over && !h.paused:
			pause = appendPart(pause, k)
			w.log.Warn("partition paused: too many records wait for its batches", "topic", k.topic, "partition", k.partition,
				"records", len(h.recs), "bytes", h.bytes, "all_bytes", w.bytes)
		case !over && h.paused:
			resume = appendPart(resume, k)
		}
		h.paused = over
		if over {
			paused++
		}
	}
	if len(pause) > 0 {
		w.cl.PauseFetchPartitions(pause)
	}
	if len(resume) > 0 {
		w.cl.ResumeFetchPartitions(resume)
	}
	w.proc.Metrics.setBuffered(w.bytes, paused)
}

// processAll processes every held partition that is not resting, in
// parallel, and returns the offsets to commit.
func (w *Worker) processAll(ctx context.Context) map[string]map[int32]kgo.EpochOffset {
	type result struct {
		k    partitionKey
		next int64
	}
	w.mu.Lock()
	now := time.Now()
	work := make(map[partitionKey][]Record, len(w.parts))
	epochs := make(map[partitionKey]int64, len(w.parts))
	caps := make(map[partitionKey]int, len(w.parts))
	for k, h := range w.parts {
		if len(h.recs) > 0 && !now.Before(h.notBefore) {
			work[k], epochs[k] = h.recs, w.leases[k].epoch
			caps[k] = w.batchCap(h)
		}
	}
	w.mu.Unlock()

	results := make(chan result, len(work))
	var wg sync.WaitGroup
	for k, recs := range work {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out := w.processPartition(ctx, epochs[k], recs, caps[k])
			if out.done > 0 {
				results <- result{k, recs[out.done-1].Offset + 1}
			}
			if out.fenced {
				w.fenced(ctx, k)
			}
			w.mu.Lock()
			defer w.mu.Unlock()
			h, ok := w.parts[k]
			if !ok || len(h.recs) < out.done {
				return // revoked meanwhile
			}
			for _, r := range h.recs[:out.done] {
				h.bytes -= len(r.Key) + len(r.Value)
				w.bytes -= len(r.Key) + len(r.Value)
			}
			h.recs = dropFront(h.recs, out.done)
			h.waiting = out.needMore
			switch {
			case out.failed:
				if h.pace == nil {
					h.pace = backoff.New(100*time.Millisecond, w.cfg.RetryBackoffMax)
				}
				rest := h.pace.Next()
				if out.rest > 0 {
					rest = out.rest
				}
				h.notBefore = time.Now().Add(rest)
			case out.done > 0:
				h.notBefore = time.Time{}
				if h.pace != nil {
					h.pace.Reset()
				}
			}
		}()
	}
	wg.Wait()
	close(results)
	commits := map[string]map[int32]kgo.EpochOffset{}
	for r := range results {
		if commits[r.k.topic] == nil {
			commits[r.k.topic] = map[int32]kgo.EpochOffset{}
		}
		commits[r.k.topic][r.k.partition] = kgo.EpochOffset{Epoch: -1, Offset: r.next}
	}
	return commits
}

// batchCap is the cap in bytes of a new batch of h's records (0: none but
// the Processor's): HeadBatchBytes when the partition is at its head, so
// that what arrived during a turn is acknowledged batch by batch; none when
// the broker holds more past the records held, so that a backlog drains in
// batches as large as its fetches. Called with w.mu held.
func (w *Worker) batchCap(h *held) int {
	if len(h.recs) == 0 || h.end-h.recs[len(h.recs)-1].Offset-1 > headLag {
		return 0
	}
	return w.cfg.HeadBatchBytes
}

// dropFront returns recs without its first n records, letting them go. When
// no more records remain than were dropped it moves them to the front, so
// that the partition's next fetches append into the same array: sliding the
// window forward instead left the array's head behind, and buffer then
// copied the records held into a new array about once a batch.
func dropFront(recs []Record, n int) []Record {
	rest := len(recs) - n
	if rest > n {
		clear(recs[:n])
		return recs[n:]
	}
	copy(recs, recs[n:])
	clear(recs[rest:]) // the dropped records, and the copies of those moved
	return recs[:rest]
}

// outcome is what one turn of a partition did.
type outcome struct {
	done     int           // records finished, from the first
	fenced   bool          // the lease was lost
	failed   bool          // an attempt failed: rest before the next
	rest     time.Duration // the rest, when the failure calls for one of its own
	needMore bool          // a batch recorded earlier needs records not held yet
}

// processPartition processes as many whole batches of recs as it can. An
// attempt that fails ends the turn, as Classify says: a fenced partition is
// abandoned; a parked one (and a batch that cannot succeed as it is) rests
// RetryBackoffMax; a transient failure rests with capped exponential
// backoff (holding its records, fetching paused once it holds too many)
// while the worker's other partitions go on.
func (w *Worker) processPartition(ctx context.Context, epoch int64, recs []Record, maxBytes int) (out outcome) {
	for out.done < len(recs) {
		n, err := w.proc.ProcessWithin(ctx, epoch, recs[out.done:], maxBytes)
		if err == nil {
			if n == 0 {
				// Not due yet (the retry topic), or a recorded batch needs
				// more records than fetched yet.
				out.needMore = recs[out.done].Topic == w.cfg.Topic
				return out
			}
			out.done += n
			continue
		}
		kind := Classify(err)
		switch {
		case kind == Fenced:
			w.proc.Metrics.batchError("fenced")
			w.log.Warn("partition taken over by another worker; abandoning batch", "err", err)
			out.fenced = true
		case errors.Is(err, ErrOverlap):
			w.proc.Metrics.batchError("overlap")
			w.log.Error("committed offset is inside an unfinished batch; run canopy reconcile", "err", err)
			out.failed, out.rest = true, w.cfg.RetryBackoffMax
		case errors.Is(err, ErrReplayMismatch):
			// Parked until a worker with the batch's configuration (or this
			// one, restarted with it) finishes it; nothing is written.
			w.proc.Metrics.batchError("replay_mismatch")
			w.log.Error("unfinished batch needs the configuration it was begun with; partition waits", "err", err)
			out.failed, out.rest = true, w.cfg.RetryBackoffMax
		case ctx.Err() != nil:
		case kind == Poison, kind == Refused:
			// Not reached today (a record's poison is dead-lettered, a
			// topic's refusal routed to ingest_failures), but a batch that
			// cannot succeed as it is waits as long as the longest rest.
			w.proc.Metrics.batchError("permanent")
			w.log.Error("batch cannot succeed as it is; the partition waits", "err", err)
			out.failed, out.rest = true, w.cfg.RetryBackoffMax
		default:
			w.proc.Metrics.batchError("transient")
			w.log.Warn("batch failed; the partition rests, then retries", "err", err)
			out.failed = true
		}
		return out
	}
	return out
}

// fenced handles a batch refused for a stale lease. Normally this member is
// a zombie and the group revokes the partition within a session timeout. If
// that does not happen, the group still says the partition is ours: take the
// lease again rather than leave the partition stuck. Fencing keeps that safe
// whoever is right: any other holder's unfinished batch is replayed
// identically from its intent.
func (w *Worker) fenced(ctx context.Context, k partitionKey) {
	w.mu.Lock()
	l, owned := w.leases[k]
	if !owned {
		w.mu.Unlock()
		return
	}
	if l.fencedAt.IsZero() {
		l.fencedAt = time.Now()
		w.leases[k] = l
	}
	stale := time.Since(l.fencedAt) > 2*w.cfg.SessionTimeout
	w.mu.Unlock()
	if !stale {
		return
	}
	epoch, err := w.proc.Ledger.Acquire(ctx, Source{Topic: k.topic, TopicID: l.log, Partition: k.partition}, w.cfg.Owner)
	if err != nil {
		w.log.Warn("re-acquire lease failed", "topic", k.topic, "partition", k.partition, "err", err)
		return
	}
	w.log.Warn("partition still assigned to this member after being fenced; took the lease again",
		"topic", k.topic, "partition", k.partition, "epoch", epoch)
	w.mu.Lock()
	if _, still := w.leases[k]; still {
		w.leases[k] = lease{epoch: epoch, log: l.log}
	}
	w.mu.Unlock()
}

func (w *Worker) commit(ctx context.Context, offsets map[string]map[int32]kgo.EpochOffset) {
	cctx := ctx
	if ctx.Err() != nil {
		var cancel context.CancelFunc
		cctx, cancel = context.WithTimeout(context.Background(), w.cfg.ShutdownTimeout)
		defer cancel()
	}
	w.cl.CommitOffsetsSync(cctx, offsets, func(_ *kgo.Client, _ *kmsg.OffsetCommitRequest, resp *kmsg.OffsetCommitResponse, err error) {
		if err != nil {
			// A lost commit only means a replay of finished batches, which
			// the ledger skips.
			w.log.Warn("offset commit failed", "err", err)
			return
		}
		for _, t := range resp.Topics {
			for _, p := range t.Partitions {
				if p.ErrorCode != 0 {
					w.log.Warn("offset commit refused", "topic", t.Topic, "partition", p.Partition, "code", p.ErrorCode)
				}
			}
		}
	})
}

func (w *Worker) close() {
	leaveGroup(w.cl, w.cfg.ShutdownTimeout, w.log)
}

// leaveGroup closes a group member's client, which leaves its group, but
// waits at most d. A leave waits for a join in flight, and the broker holds
// a join until every member has rejoined or been expelled — up to the
// rebalance timeout, a minute, after members crashed or Kafka restarted.
// Not waiting that out is what a crash does: the group expels the member
// after its session timeout, and the ledger fences whatever it had in
// flight, so nothing is lost or counted twice.
func leaveGroup(cl *kgo.Client, d time.Duration, log *slog.Logger) {
	left := make(chan struct{})
	go func() {
		cl.Close()
		close(left)
	}()
	select {
	case <-left:
	case <-time.After(d):
		log.Warn("left without leaving the group: a rebalance was still in progress; the group expels this member after its session timeout", "waited", d)
	}
}
