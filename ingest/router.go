package ingest

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/canopyhq/canopy/internal/backoff"
	"github.com/canopyhq/canopy/internal/recreated"
	"github.com/canopyhq/canopy/internal/wait"
)

// RouterConfig configures a Router.
type RouterConfig struct {
	Topic      string // the events topic
	RetryTopic string // routed once due; "" for none
	Target     string // the by-id topic
	Group      string // the routers' consumer group
	MaxPoll    int    // records per poll; default DefaultMaxPollRecords
	// RetryBackoffMax caps the wait between attempts to produce.
	RetryBackoffMax time.Duration
	// MaxRetryDelay caps how long after it was published a retry waits for
	// its due time (the retry policy's MaxBackoff); default 1h.
	MaxRetryDelay time.Duration
	// MaxRecordBytes is the largest record that may be an event (the
	// decoder's limit); a larger one is routed truncated, to be
	// dead-lettered as oversize. Default DefaultMaxRecordBytes.
	MaxRecordBytes int
	// SessionTimeout is the group session timeout, as the worker's
	// (ingest.session_timeout); default DefaultSessionTimeout. A router
	// that dies holds its partitions this long.
	SessionTimeout time.Duration
	// InstanceID, when set, makes the router a static member of its group,
	// as WorkerConfig.InstanceID does the worker.
	InstanceID string
	// ShutdownTimeout bounds leaving the group on shutdown; default 10s.
	ShutdownTimeout time.Duration
	// TopicGoneAfter is how long the by-id topic must stay deleted (or
	// replaced by a new topic of its name) before Run gives up with
	// ErrTopicGone; default 30s.
	TopicGoneAfter time.Duration
}

// Router is the first stage of the partitioned deduplication mode
// (PartitionedClaims): it copies every record of the events topic, and every
// due record of the retry topic, to the by-id topic keyed by its event id,
// so every copy of an id lands in one partition. It keeps the record's bytes
// and canopy.* headers (but for the retry's due time) and names its source
// in the source headers when the record carries none, so failures and
// dead letters still point at the events topic. It commits a source offset
// only after the by-id topic has acknowledged every record before it; a
// crash copies some records twice, which the by-id stage counts once.
type Router struct {
	cfg     RouterConfig
	cl      *kgo.Client
	log     *slog.Logger
	metrics *Metrics

	mu     sync.Mutex
	buf    map[partitionKey][]*kgo.Record // due later (retry topic)
	paused map[partitionKey]bool
	// unpause holds revoked partitions that were paused: a pause outlives
	// the assignment in the client, so it is lifted before the next poll.
	unpause map[string][]int32
	watch   recreated.Watch // topics deleted and created again
}

// NewRouter returns a Router; opts carry the brokers and security.
func NewRouter(cfg RouterConfig, log *slog.Logger, m *Metrics, opts ...kgo.Opt) (*Router, error) {
	if cfg.Topic == "" || cfg.Target == "" || cfg.Group == "" {
		return nil, errors.New("ingest: router needs a topic, a target and a group")
	}
	if cfg.MaxPoll <= 0 {
		cfg.MaxPoll = DefaultMaxPollRecords
	}
	if cfg.RetryBackoffMax <= 0 {
		cfg.RetryBackoffMax = 10 * time.Second
	}
	if cfg.MaxRetryDelay <= 0 {
		cfg.MaxRetryDelay = time.Hour
	}
	if cfg.MaxRecordBytes <= 0 {
		cfg.MaxRecordBytes = DefaultMaxRecordBytes
	}
	if cfg.SessionTimeout <= 0 {
		cfg.SessionTimeout = DefaultSessionTimeout
	}
	if cfg.ShutdownTimeout <= 0 {
		cfg.ShutdownTimeout = 10 * time.Second
	}
	if cfg.TopicGoneAfter <= 0 {
		cfg.TopicGoneAfter = 30 * time.Second
	}
	if log == nil {
		log = slog.Default()
	}
	r := &Router{cfg: cfg, log: log, metrics: m, buf: map[partitionKey][]*kgo.Record{}, paused: map[partitionKey]bool{},
		watch: recreated.Watch{Log: log}}
	topics := []string{cfg.Topic}
	if cfg.RetryTopic != "" && cfg.RetryTopic != cfg.Topic {
		topics = append(topics, cfg.RetryTopic)
	}
	all := append(append([]kgo.Opt(nil), opts...),
		kgo.ConsumerGroup(cfg.Group),
		kgo.SessionTimeout(cfg.SessionTimeout),
		kgo.HeartbeatInterval(min(3*time.Second, cfg.SessionTimeout/3)),
		kgo.ConsumeTopics(topics...),
		kgo.DisableAutoCommit(),
		kgo.BlockRebalanceOnPoll(),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		// Each pass of Run is a fetch, a produce and an offset commit, so
		// the passes' rate is Kafka's load: with the default FetchMinBytes
		// (1) a steady trickle answers every fetch at once with a few
		// records, and Kafka spent 0.45 of 2 cores on the passes at 26,000
		// events/s, four times its CPU per event at full speed. Waiting for
		// 1 MiB or 50ms batches the passes (64 KiB still came every few
		// milliseconds at 35,000 events/s); an event waits at most 50ms
		// here.
		kgo.FetchMinBytes(1<<20),
		kgo.FetchMaxWait(50*time.Millisecond),
		kgo.ProducerBatchMaxBytes(4<<20), // the by-id topic's max.message.bytes
		kgo.ProducerLinger(5*time.Millisecond),
		kgo.OnPartitionsRevoked(r.revoked),
		kgo.OnPartitionsLost(r.revoked),
	)
	if cfg.InstanceID != "" {
		all = append(all, kgo.InstanceID(cfg.InstanceID))
	}
	cl, err := kgo.NewClient(all...)
	if err != nil {
		return nil, fmt.Errorf("kafka client: %w", err)
	}
	r.cl = cl
	return r, nil
}

// held lists the partitions the router holds records or a pause of.
func (r *Router) held() []partitionKey {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append(slices.Collect(maps.Keys(r.buf)), slices.Collect(maps.Keys(r.paused))...)
}

func (r *Router) revoked(_ context.Context, _ *kgo.Client, m map[string][]int32) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for topic, parts := range m {
		for _, p := range parts {
			k := partitionKey{topic, p}
			if r.paused[k] {
				r.unpause = appendPart(r.unpause, k)
			}
			delete(r.buf, k)
			delete(r.paused, k)
		}
	}
}

// Run routes until ctx ends, or until the by-id topic is gone (an error
// wrapping ErrTopicGone): its records that were not routed stay uncommitted.
func (r *Router) Run(ctx context.Context) error {
	defer leaveGroup(r.cl, r.cfg.ShutdownTimeout, r.log)
	for {
		r.mu.Lock()
		if len(r.unpause) > 0 {
			r.cl.ResumeFetchPartitions(r.unpause)
			r.unpause = nil
		}
		r.mu.Unlock()
		pctx, cancel := context.WithTimeout(ctx, time.Second)
		fetches := r.cl.PollRecords(pctx, r.cfg.MaxPoll)
		cancel()
		if fetches.IsClientClosed() || ctx.Err() != nil {
			r.cl.AllowRebalance()
			return nil
		}
		gone := fetchErrors(ctx, fetches, &r.watch, r.log, "router fetch error")
		if err := instanceFenced(fetches, r.cfg.Group, r.cfg.InstanceID); err != nil {
			r.cl.AllowRebalance()
			return err
		}
		r.mu.Lock()
		fetches.EachPartition(func(fp kgo.FetchTopicPartition) {
			k := partitionKey{fp.Topic, fp.Partition}
			r.buf[k] = append(r.buf[k], fp.Records...)
		})
		out, commits := r.due(time.Now())
		r.mu.Unlock()
		if len(out) > 0 {
			if err := r.produce(ctx, out); err != nil {
				r.cl.AllowRebalance()
				if ctx.Err() != nil {
					return nil
				}
				return err
			}
		}
		if len(commits) > 0 {
			r.cl.CommitOffsetsSync(ctx, commits, func(_ *kgo.Client, _ *kmsg.OffsetCommitRequest, _ *kmsg.OffsetCommitResponse, err error) {
				if err != nil && ctx.Err() == nil {
					r.log.Warn("router offset commit failed", "err", err) // routed again after a restart, counted once
				}
			})
		}
		r.cl.AllowRebalance()
		// An events or retry topic created again is read from its start:
		// its records are new, and the by-id topic's state refuses any id
		// it already holds.
		follow(r.cl, r.log, gone, r.revoked, r.held())
	}
}

// due takes every buffered record that may go now, in order per partition,
// and pauses fetching from a retry partition whose next record is not due.
func (r *Router) due(now time.Time) ([]*kgo.Record, map[string]map[int32]kgo.EpochOffset) {
	total := 0
	for _, recs := range r.buf {
		total += len(recs)
	}
	out := make([]*kgo.Record, 0, total)
	made := newByIDRecords(r.cfg.Target, total)
	commits := map[string]map[int32]kgo.EpochOffset{}
	var pause, resume map[string][]int32
	for k, recs := range r.buf {
		n := 0
		for _, rec := range recs {
			if rec.Topic != r.cfg.Topic {
				if t := retryAtIn(rec.Headers); !t.IsZero() {
					if !rec.Timestamp.IsZero() {
						t = earlier(t, rec.Timestamp.Add(r.cfg.MaxRetryDelay)) // a due time past the policy is not Canopy's
					}
					if t.After(now) {
						break
					}
				}
			}
			out = append(out, r.byID(made, rec))
			n++
		}
		if n > 0 {
			if commits[k.topic] == nil {
				commits[k.topic] = map[int32]kgo.EpochOffset{}
			}
			commits[k.topic][k.partition] = kgo.EpochOffset{Epoch: recs[n-1].LeaderEpoch, Offset: recs[n-1].Offset + 1}
		}
		r.buf[k] = recs[n:]
		waiting := len(r.buf[k]) > 0
		switch {
		case waiting && !r.paused[k]:
			pause = appendPart(pause, k)
		case !waiting && r.paused[k]:
			resume = appendPart(resume, k)
		}
		r.paused[k] = waiting
	}
	if len(pause) > 0 {
		r.cl.PauseFetchPartitions(pause)
	}
	if len(resume) > 0 {
		r.cl.ResumeFetchPartitions(resume)
	}
	return out, commits
}

func appendPart(m map[string][]int32, k partitionKey) map[string][]int32 {
	if m == nil {
		m = map[string][]int32{}
	}
	m[k.topic] = append(m[k.topic], k.partition)
	return m
}

func earlier(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

// byID is rec as a record of the by-id topic, made by made. The canopy.*
// headers of the events topic's records are dropped (anyone may write
// there: a forged replay or retry is an ordinary event); the retry topic's
// are kept. A record too large to be an event goes truncated (see
// truncated), so the by-id topic never refuses it and the by-id stage
// dead-letters it.
func (r *Router) byID(made *byIDRecords, rec *kgo.Record) *kgo.Record {
	hs := rec.Headers
	if rec.Topic == r.cfg.Topic {
		hs = withoutCanopyHeaders(hs)
	}
	src := Source{Topic: rec.Topic, Partition: rec.Partition, First: rec.Offset}
	if len(rec.Value) > cmp.Or(r.cfg.MaxRecordBytes, DefaultMaxRecordBytes) {
		value, cut := truncated(rec.Value) // keyed by what the prefix holds, if anything: any partition dead-letters it
		return made.add(value, hs, src, cut...)
	}
	return made.add(rec.Value, hs, src)
}

// byIDRecords makes records of the by-id topic, a poll's worth at a time,
// with a few allocations in all: the records, their header lists and the
// source headers' values are cut from arrays they share. Each record's
// headers are a full slice expression, so appending to them copies and
// never reaches the next record's.
type byIDRecords struct {
	target string
	recs   []kgo.Record
	hdrs   []kgo.RecordHeader
	vals   []byte
	// The source partition of the last record, and the start of its
	// HeaderSource value, shared by that partition's records.
	src    partitionKey
	prefix []byte
}

// newByIDRecords is ready for about n records of the topic target.
func newByIDRecords(target string, n int) *byIDRecords {
	return &byIDRecords{
		target: target,
		recs:   make([]kgo.Record, 0, n),
		hdrs:   make([]kgo.RecordHeader, 0, n),
		vals:   make([]byte, 0, 32*n),
	}
}

// add returns a record of the by-id topic keyed by the event id of value
// (routeKey). It keeps the canopy.* headers but for the retry's due time
// and, unless they name a source already, adds HeaderSource naming src
// (its First offset), so failures and dead letters point at where the
// record came from. extra headers are appended.
func (b *byIDRecords) add(value []byte, headers []kgo.RecordHeader, src Source, extra ...kgo.RecordHeader) *kgo.Record {
	if len(b.recs) == cap(b.recs) {
		b.recs = make([]kgo.Record, 0, max(64, 2*cap(b.recs))) // the records made so far stay where they are
	}
	b.recs = append(b.recs, kgo.Record{Topic: b.target, Key: routeKey(value), Value: value})
	out := &b.recs[len(b.recs)-1]
	first := len(b.hdrs)
	sourced := false
	for _, h := range headers {
		switch h.Key {
		case HeaderRetryAt:
			continue // due now
		case HeaderReleaseOf, HeaderBackfill, HeaderRawBytes, HeaderRawSHA256:
			continue // the by-id stage's and the backfill's alone, never a producer's
		case HeaderSourceTopic, HeaderSource:
			sourced = true
		}
		b.hdrs = append(b.hdrs, h)
	}
	if !sourced {
		if k := (partitionKey{src.Topic, src.Partition}); b.prefix == nil || k != b.src {
			b.src, b.prefix = k, foldedPrefix(src.Topic, src.Partition)
		}
		at := len(b.vals)
		b.vals = appendFoldedSource(b.vals, b.prefix, src.First)
		b.hdrs = append(b.hdrs, kgo.RecordHeader{Key: HeaderSource, Value: b.vals[at:len(b.vals):len(b.vals)]})
	}
	b.hdrs = append(b.hdrs, extra...)
	out.Headers = b.hdrs[first:len(b.hdrs):len(b.hdrs)]
	return out
}

// produce sends recs to the by-id topic until the topic has acknowledged
// every one (nil), ctx ends (its error) or the topic has been gone for
// TopicGoneAfter (ErrTopicGone); any other failure is retried with backoff.
// A record the topic refuses for good (too large for it) is sent again
// truncated (see truncated), so the by-id stage dead-letters it rather than
// the partition stopping.
func (r *Router) produce(ctx context.Context, recs []*kgo.Record) error {
	pace := backoff.New(100*time.Millisecond, r.cfg.RetryBackoffMax)
	var goneSince time.Time
	for {
		var failed []*kgo.Record
		var err error
		for _, res := range r.cl.ProduceSync(ctx, recs...) {
			switch {
			case res.Err == nil:
				r.metrics.addRouted(1)
				continue
			case Classify(res.Err) == Refused && !truncatedRecord(res.Record):
				// Kafka judges a batch as a whole: only a record refused on
				// its own is too large for the topic.
				alone := r.cl.ProduceSync(ctx, res.Record).FirstErr()
				if alone == nil {
					r.metrics.addRouted(1)
					continue
				}
				if Classify(alone) == Refused {
					r.log.Warn("the by-id topic refused a record for good; routing it truncated, to be dead-lettered",
						"topic", r.cfg.Target, "bytes", len(res.Record.Value), "err", alone)
					value, cut := truncated(res.Record.Value)
					res.Record.Value, res.Record.Key = value, nil
					res.Record.Headers = append(res.Record.Headers, cut...)
				}
				res.Err = alone
			}
			failed = append(failed, res.Record)
			err = res.Err
		}
		if len(failed) == 0 {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		switch {
		case !r.topicGone(ctx, err):
			goneSince = time.Time{}
		case goneSince.IsZero():
			goneSince = time.Now()
		case time.Since(goneSince) >= r.cfg.TopicGoneAfter:
			return fmt.Errorf("%w: %s (%v): %d record(s) not routed stay uncommitted in %s; "+
				"restart the workers, which create the topic again (see docs/failures.md)",
				ErrTopicGone, r.cfg.Target, err, len(failed), r.cfg.Topic)
		}
		d := pace.Next()
		r.log.Warn("routing to the by-id topic failed, retrying", "topic", r.cfg.Target, "records", len(failed), "err", err, "backoff", d)
		if !wait.Sleep(ctx, d) {
			return ctx.Err()
		}
		recs = failed
	}
}

// topicGone reports whether err, a failure to produce to the by-id topic,
// means the topic is no longer the one the router wrote to: Kafka no longer
// knows the id the client holds (deleted and created again), or the topic
// does not exist. A failure to ask is not taken as an answer.
func (r *Router) topicGone(ctx context.Context, err error) bool {
	switch {
	case errors.Is(err, kerr.UnknownTopicID):
		return true
	case !errors.Is(err, kerr.UnknownTopicOrPartition):
		return false
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	topics, lerr := kadm.NewClient(r.cl).ListTopics(ctx, r.cfg.Target)
	if lerr != nil {
		return false
	}
	t, ok := topics[r.cfg.Target]
	return !ok || errors.Is(t.Err, kerr.UnknownTopicOrPartition)
}

func truncatedRecord(rec *kgo.Record) bool {
	return DecodeOrigin(rec.Headers).RawBytes > 0
}
