package hierarchy

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgtype"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/canopyhq/canopy/internal/backoff"
	"github.com/canopyhq/canopy/internal/pglock"
	"github.com/canopyhq/canopy/internal/wait"
)

// Message is one hierarchy change as published on the hierarchy topic (JSON,
// keyed by entity id, header HeaderOutboxSeq).
type Message struct {
	OutboxSeq   int64   `json:"outbox_seq"`
	HistorySeq  int64   `json:"history_seq"`
	EntityID    int64   `json:"entity_id"`
	Op          string  `json:"op"`                  // insert | update
	ParentID    *int64  `json:"parent_id"`           // null for a root
	Status      string  `json:"status"`              // active | suspended | closed
	Name        *string `json:"name"`                // may be null
	EffectiveAt *string `json:"effective_at"`        // RFC 3339; null = always (imported)
	RecordedAt  string  `json:"recorded_at"`         // RFC 3339, commit-time clock
	TxID        string  `json:"txid,omitempty"`      // PostgreSQL transaction id
	Version     int     `json:"version,omitempty"`   // message format, 1
	Relay       string  `json:"relay,omitempty"`     // the relay that published it
	Published   string  `json:"published,omitempty"` // RFC 3339
}

// HeaderOutboxSeq carries the outbox seq of a hierarchy message.
const HeaderOutboxSeq = "canopy.outbox.seq"

// relayLockKey is the session advisory lock the active relay holds
// (internal/pglock/keys.go).
const relayLockKey = pglock.Relay

// Relay publishes the outbox to the hierarchy topic in commit (seq) order,
// exactly once per change:
//
//   - One relay at a time: the active relay holds a session advisory lock;
//     others wait for it.
//   - Where to resume is read from the topic itself (the highest outbox seq
//     committed there), never from a separate cursor that a crash could leave
//     behind.
//   - Each batch is one Kafka transaction under a fixed transactional id, so a
//     relay that lost its lock but is still running (a zombie) is fenced by
//     Kafka, and a crash mid-batch leaves nothing visible to read_committed
//     readers.
//
// Kafka being down only delays publishing: the outbox keeps every change.
type Relay struct {
	Pool    *pgxpool.Pool
	Brokers []string
	Topic   string // default "canopy.hierarchy"; created with one partition when missing
	Name    string // this relay's name, written into messages
	Log     *slog.Logger
	// OutboxRetention is how long a relayed outbox row is kept (by its
	// recorded_at) before the active relay deletes it. Nothing reads a
	// relayed row: workers load the tree from canopy.entity_history and
	// follow the topic from its end, the restater and rebuild read the
	// history. Rows not yet on the topic are never deleted. Default
	// (0): DefaultOutboxRetention; negative: never purge.
	OutboxRetention time.Duration
	// PurgeEvery is how often the active relay purges the outbox. Default
	// (0): 10 minutes.
	PurgeEvery time.Duration
	// Opts are extra Kafka client options (tests).
	Opts []kgo.Opt
}

// DefaultOutboxRetention is Relay.OutboxRetention's default: 7 days.
const DefaultOutboxRetention = 7 * 24 * time.Hour

// purgeChunk is how many outbox rows one purge statement deletes, so that
// no statement holds many row locks or runs long.
const purgeChunk = 10_000

// Run relays until ctx ends.
func (r *Relay) Run(ctx context.Context) error {
	if r.Topic == "" {
		r.Topic = "canopy.hierarchy"
	}
	if r.Log == nil {
		r.Log = slog.Default()
	}
	if r.OutboxRetention == 0 {
		r.OutboxRetention = DefaultOutboxRetention
	}
	if r.PurgeEvery <= 0 {
		r.PurgeEvery = 10 * time.Minute
	}
	pace := backoff.New(200*time.Millisecond, 10*time.Second)
	for ctx.Err() == nil {
		err := pglock.Lead(ctx, r.Pool, relayLockKey, time.Second, r.lead)
		if ctx.Err() != nil {
			return nil
		}
		d := pace.Next()
		r.Log.Warn("relay interrupted, retrying", "err", err, "backoff", d)
		if !wait.Sleep(ctx, d) {
			return nil
		}
	}
	return nil
}

// lead publishes, while this relay holds the relay lock (pglock.Lead:
// ctx ends when the lock's connection is lost), until an error or ctx ends.
func (r *Relay) lead(ctx context.Context) error {
	r.Log.Info("relay is active", "topic", r.Topic)

	cl, err := kgo.NewClient(append([]kgo.Opt{
		kgo.SeedBrokers(r.Brokers...),
		kgo.TransactionalID("canopy-relay:" + r.Topic),
		kgo.TransactionTimeout(30 * time.Second),
		kgo.RecordDeliveryTimeout(20 * time.Second),
		kgo.DefaultProduceTopic(r.Topic),
	}, r.Opts...)...)
	if err != nil {
		return fmt.Errorf("relay kafka client: %w", err)
	}
	defer cl.Close()
	if err := ensureTopic(ctx, cl, r.Topic); err != nil {
		return err
	}
	if err := fence(ctx, cl); err != nil {
		return err
	}
	last, skipped, err := lastRelayed(ctx, r.Brokers, r.Topic, r.Opts, r.outboxCheck(ctx))
	if err != nil {
		return err
	}
	if skipped > 0 {
		r.Log.Warn("relay: records on the hierarchy topic that no outbox row vouches for were not taken as relayed (forged, or from another database)",
			"records", skipped, "topic", r.Topic)
	}
	r.Log.Info("relay resumes", "after_outbox_seq", last)
	nextPurge := time.Now()
	for {
		if r.OutboxRetention > 0 && !time.Now().Before(nextPurge) {
			// Only the lock holder purges, and only what the topic holds
			// (seq <= last, read from the topic or published by us).
			nextPurge = time.Now().Add(r.PurgeEvery)
			n, err := PurgeOutbox(ctx, r.Pool, last, time.Now().Add(-r.OutboxRetention))
			if err != nil {
				return err
			}
			r.Log.Info("outbox purged", "rows", n, "relayed_through", last, "retention", r.OutboxRetention)
		}
		msgs, err := r.pending(ctx, last, 5000)
		if err != nil {
			return err
		}
		if len(msgs) == 0 {
			if !wait.Sleep(ctx, 100*time.Millisecond) {
				return ctx.Err()
			}
			continue
		}
		if err := r.publish(ctx, cl, msgs); err != nil {
			return err
		}
		last = msgs[len(msgs)-1].OutboxSeq
	}
}

// PurgeOutbox deletes the outbox rows with seq <= relayedThrough that were
// recorded before olderThan, in statements of at most 10,000 rows each, and
// returns how many it deleted. relayedThrough must be an outbox seq the
// hierarchy topic holds (with every lower one): rows above it are kept
// whatever their age. Cancelling ctx stops between statements; what was
// deleted stays deleted.
func PurgeOutbox(ctx context.Context, pool *pgxpool.Pool, relayedThrough int64, olderThan time.Time) (int64, error) {
	return purgeOutbox(ctx, pool, relayedThrough, olderThan, purgeChunk)
}

func purgeOutbox(ctx context.Context, pool *pgxpool.Pool, relayedThrough int64, olderThan time.Time, chunk int) (int64, error) {
	var total int64
	for {
		tag, err := pool.Exec(ctx, `
			delete from canopy.outbox where ctid in (
				select ctid from canopy.outbox
				 where seq <= $1 and recorded_at < $2
				 order by seq limit $3)`, relayedThrough, olderThan, chunk)
		if err != nil {
			return total, fmt.Errorf("relay: purge outbox: %w", err)
		}
		total += tag.RowsAffected()
		if tag.RowsAffected() < int64(chunk) {
			return total, nil
		}
	}
}

// publish writes msgs in one transaction.
func (r *Relay) publish(ctx context.Context, cl *kgo.Client, msgs []Message) error {
	if err := cl.BeginTransaction(); err != nil {
		return fmt.Errorf("relay: begin transaction: %w", err)
	}
	// Flush returns once every record is done, not whether any failed, and
	// franz-go turns a commit with no record produced into an abort that
	// returns nil: a failure is only seen here, in the promises.
	var (
		mu     sync.Mutex
		failed error
	)
	promise := func(_ *kgo.Record, err error) {
		if err != nil {
			mu.Lock()
			failed = cmp.Or(failed, err)
			mu.Unlock()
		}
	}
	now := time.Now().UTC().Format(time.RFC3339Nano)
	for i := range msgs {
		m := &msgs[i]
		m.Relay, m.Published, m.Version = r.Name, now, 1
		value, err := json.Marshal(m)
		if err != nil {
			return err
		}
		cl.Produce(ctx, &kgo.Record{
			Key:     []byte(strconv.FormatInt(m.EntityID, 10)),
			Value:   value,
			Headers: []kgo.RecordHeader{{Key: HeaderOutboxSeq, Value: []byte(strconv.FormatInt(m.OutboxSeq, 10))}},
		}, promise)
	}
	flushErr := cl.Flush(ctx)
	if flushErr == nil {
		mu.Lock()
		flushErr = failed
		mu.Unlock()
	}
	commit := kgo.TryCommit
	if flushErr != nil {
		commit = kgo.TryAbort
	}
	if err := cl.EndTransaction(context.WithoutCancel(ctx), commit); err != nil {
		return fmt.Errorf("relay: end transaction: %w", err)
	}
	if flushErr != nil {
		return fmt.Errorf("relay: produce: %w", flushErr)
	}
	return nil
}

// fence takes over the transactional id before the tail is read: producing
// in an aborted transaction makes Kafka bump the producer epoch, which aborts
// any transaction a previous relay left open and refuses its later commits.
// Without this, such a relay could commit after the tail was read, and its
// changes would be published twice.
func fence(ctx context.Context, cl *kgo.Client) error {
	if err := cl.BeginTransaction(); err != nil {
		return fmt.Errorf("relay: begin fencing transaction: %w", err)
	}
	cl.Produce(ctx, &kgo.Record{Key: []byte("fence"), Value: nil}, nil)
	flushErr := cl.Flush(ctx)
	if err := cl.EndTransaction(context.WithoutCancel(ctx), kgo.TryAbort); err != nil {
		return fmt.Errorf("relay: end fencing transaction: %w", err)
	}
	if flushErr != nil {
		return fmt.Errorf("relay: fencing: %w", flushErr)
	}
	return nil
}

// pending reads up to limit outbox rows after seq, in seq order.
func (r *Relay) pending(ctx context.Context, after int64, limit int) ([]Message, error) {
	rows, err := r.Pool.Query(ctx, `
		select seq, history_seq, entity_id, op, parent_id, status, name, effective_at, recorded_at, txid::text
		  from canopy.outbox where seq > $1 order by seq limit $2`, after, limit)
	if err != nil {
		return nil, fmt.Errorf("relay: read outbox: %w", err)
	}
	defer rows.Close()
	var out []Message
	for rows.Next() {
		var (
			m         Message
			effective pgtype.Timestamptz
			recorded  time.Time
		)
		if err := rows.Scan(&m.OutboxSeq, &m.HistorySeq, &m.EntityID, &m.Op, &m.ParentID, &m.Status, &m.Name,
			&effective, &recorded, &m.TxID); err != nil {
			return nil, fmt.Errorf("relay: read outbox: %w", err)
		}
		if effective.InfinityModifier == pgtype.Finite {
			s := effective.Time.UTC().Format(time.RFC3339Nano)
			m.EffectiveAt = &s
		}
		m.RecordedAt = recorded.UTC().Format(time.RFC3339Nano)
		out = append(out, m)
	}
	return out, rows.Err()
}

// ensureTopic creates the hierarchy topic with a single partition, so that
// its one log is the total commit order, when it does not exist yet.
func ensureTopic(ctx context.Context, cl *kgo.Client, topic string) error {
	_, err := kadm.NewClient(cl).CreateTopic(ctx, 1, -1, nil, topic)
	if err != nil && !errors.Is(err, kerr.TopicAlreadyExists) {
		return fmt.Errorf("relay: create topic %s: %w", topic, err)
	}
	return nil
}

// LastRelayed returns the highest outbox seq committed to the topic, 0 for
// an empty topic. It reads the tail of every partition read_committed, so a
// transaction a crashed relay left open or aborted does not count. It
// trusts the topic's headers; the relay itself resumes only from records
// its outbox vouches for (Relay.outboxCheck).
func LastRelayed(ctx context.Context, brokers []string, topic string, opts ...kgo.Opt) (int64, error) {
	last, _, err := lastRelayed(ctx, brokers, topic, opts, nil)
	return last, err
}

// relayed is one record of the hierarchy topic's tail: its outbox seq
// header and its value.
type relayed struct {
	seq   int64
	value []byte
}

// lastRelayed is LastRelayed keeping only records check accepts (all when
// check is nil); skipped counts the others. check sees a partition's
// candidates from the highest seq down and stops at the first it accepts.
func lastRelayed(ctx context.Context, brokers []string, topic string, opts []kgo.Opt, check func(relayed) (bool, error)) (last int64, skipped int, err error) {
	cl, err := kgo.NewClient(append([]kgo.Opt{kgo.SeedBrokers(brokers...)}, opts...)...)
	if err != nil {
		return 0, 0, err
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)
	ends, err := adm.ListCommittedOffsets(ctx, topic)
	if err != nil {
		return 0, 0, fmt.Errorf("relay: end offsets of %s: %w", topic, err)
	}
	starts, err := adm.ListStartOffsets(ctx, topic)
	if err != nil {
		return 0, 0, fmt.Errorf("relay: start offsets of %s: %w", topic, err)
	}
	for _, parts := range ends {
		for p, end := range parts {
			if end.Err != nil {
				return 0, 0, fmt.Errorf("relay: end offset of %s/%d: %w", topic, p, end.Err)
			}
			start, _ := starts.Lookup(topic, p)
			// Read backwards in growing windows until one holds a committed
			// record that check accepts (a window may hold only transaction
			// markers, or forged records).
			for window := int64(64); ; window *= 4 {
				from := max(end.Offset-window, start.Offset)
				if from >= end.Offset {
					break
				}
				recs, err := tailFrom(ctx, brokers, opts, topic, p, from)
				if err != nil {
					return 0, 0, err
				}
				slices.SortStableFunc(recs, func(a, b relayed) int { return cmp.Compare(b.seq, a.seq) })
				found, rejected := false, 0
				for _, rec := range recs {
					ok := true
					if check != nil {
						if ok, err = check(rec); err != nil {
							return 0, 0, err
						}
					}
					if ok {
						last, found = max(last, rec.seq), true
						break
					}
					rejected++
				}
				if found || from == start.Offset {
					skipped += rejected
					break
				}
			}
		}
	}
	return last, skipped, nil
}

// outboxCheck accepts a record of the topic as relayed only if the outbox
// vouches for it: its seq was handed out by the outbox's sequence, and
// either the outbox row with that seq has the record's entity and history
// seq, or the row is gone because it was purged (a seq below every row
// kept: the relay purges only relayed rows, oldest first). A seq in a gap
// the outbox never filled (a rolled-back change), one above every seq
// handed out, or a record that does not match its row is forged or comes
// from another database, and must not move the point the relay resumes
// from: that would skip real changes for good.
func (r *Relay) outboxCheck(ctx context.Context) func(relayed) (bool, error) {
	return func(rec relayed) (bool, error) {
		var (
			handedOut, minKept   *int64
			rowEntity, rowHistor *int64
		)
		err := r.Pool.QueryRow(ctx, `
			select (select case when is_called then last_value else last_value - 1 end
			          from canopy.outbox_seq_seq),
			       (select min(seq) from canopy.outbox),
			       o.entity_id, o.history_seq
			  from (select 1) one left join canopy.outbox o on o.seq = $1`, rec.seq).
			Scan(&handedOut, &minKept, &rowEntity, &rowHistor)
		if err != nil {
			return false, fmt.Errorf("relay: check a relayed record against the outbox: %w", err)
		}
		if rec.seq <= 0 || handedOut == nil || rec.seq > *handedOut {
			return false, nil
		}
		if rowEntity == nil {
			return minKept == nil || rec.seq < *minKept, nil
		}
		var m Message
		if err := json.Unmarshal(rec.value, &m); err != nil {
			return false, nil
		}
		return m.OutboxSeq == rec.seq && m.EntityID == *rowEntity && m.HistorySeq == *rowHistor, nil
	}
}

// tailFrom reads a partition from an offset to its committed end and
// returns the records that carry an outbox seq.
func tailFrom(ctx context.Context, brokers []string, opts []kgo.Opt, topic string, p int32, from int64) ([]relayed, error) {
	cl, err := kgo.NewClient(append([]kgo.Opt{
		kgo.SeedBrokers(brokers...),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		kgo.FetchMaxWait(200 * time.Millisecond),
		kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{topic: {p: kgo.NewOffset().At(from)}}),
	}, opts...)...)
	if err != nil {
		return nil, err
	}
	defer cl.Close()
	var out []relayed
	for {
		// Nothing new is produced while we hold the relay lock, so a poll
		// that brings no record within a few fetch waits is the end.
		pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		fs := cl.PollFetches(pctx)
		cancel()
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		for _, fe := range fs.Errors() {
			if !errors.Is(fe.Err, context.DeadlineExceeded) {
				return nil, fmt.Errorf("relay: read tail of %s/%d: %w", topic, p, fe.Err)
			}
		}
		if fs.NumRecords() == 0 {
			return out, nil
		}
		fs.EachRecord(func(rec *kgo.Record) {
			for _, h := range rec.Headers {
				if h.Key == HeaderOutboxSeq {
					if v, err := strconv.ParseInt(string(h.Value), 10, 64); err == nil {
						out = append(out, relayed{seq: v, value: rec.Value})
					}
				}
			}
		})
	}
}
