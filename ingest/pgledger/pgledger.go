// Package pgledger implements ingest.Ledger on PostgreSQL: partition leases,
// batch intents and event-id claims in one transaction per batch, and the
// Fence, the one owner of the protocol (canopy.restate_state under the
// fence advisory lock) that orders the restater and canopy rebuild against
// those batches. The tables are created by schema/postgres/0100_ingest_ledger.sql
// and 0101_restate.sql.
//
// It imports ingest (the Ledger contract it implements) and internal/ only;
// nothing of restate, hierarchy or cmd.
package pgledger

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/canopyhq/canopy/ingest"
)

// Ledger is an ingest.Ledger over a pgx pool. Safe for concurrent use.
type Ledger struct {
	Pool *pgxpool.Pool
}

var _ ingest.Ledger = (*Ledger)(nil)

// key is the ledger's name of a source log: the topic, qualified by the
// topic's incarnation when known.
func key(src ingest.Source) string {
	if src.TopicID == "" {
		return src.Topic
	}
	return src.Topic + "@" + src.TopicID
}

// Acquire implements ingest.Ledger.
func (l *Ledger) Acquire(ctx context.Context, src ingest.Source, owner string) (int64, error) {
	topic, partition := key(src), src.Partition
	var epoch int64
	err := l.Pool.QueryRow(ctx, `
		insert into canopy.partition_leases (src_topic, src_partition, epoch, owner)
		values ($1, $2, 1, $3)
		on conflict (src_topic, src_partition) do update
		   set epoch = canopy.partition_leases.epoch + 1, owner = excluded.owner, acquired_at = now()
		returning epoch`, topic, partition, owner).Scan(&epoch)
	if err != nil {
		return 0, fmt.Errorf("acquire lease %s/%d: %w", topic, partition, err)
	}
	return epoch, nil
}

// Intent implements ingest.Ledger.
func (l *Ledger) Intent(ctx context.Context, src ingest.Source) (ingest.Intent, bool, error) {
	topic, partition, first := key(src), src.Partition, src.First
	in := ingest.Intent{Source: ingest.Source{Topic: src.Topic, TopicID: src.TopicID, Partition: partition}}
	var done *time.Time
	// The intent containing first, else the first one starting after it
	// within last.
	err := l.Pool.QueryRow(ctx, `
		select first_offset, last_offset, hierarchy_version, asis_tag, created_at, coalesce(fingerprint, ''), done_at from (
		  (select * from canopy.ingest_intents
		    where src_topic = $1 and src_partition = $2 and first_offset <= $3 and last_offset >= $3
		    order by first_offset desc limit 1)
		  union all
		  (select * from canopy.ingest_intents
		    where src_topic = $1 and src_partition = $2 and first_offset > $3 and first_offset <= $4
		    order by first_offset limit 1)) i
		 order by first_offset > $3 limit 1`, topic, partition, first, max(src.Last, first)).
		Scan(&in.First, &in.Last, &in.HierarchyVersion, &in.PendingVersion, &in.CreatedAt, &in.Fingerprint, &done)
	if errors.Is(err, pgx.ErrNoRows) {
		return in, false, nil
	}
	if err != nil {
		return in, false, fmt.Errorf("look up intent %s/%d@%d: %w", topic, partition, first, err)
	}
	in.CreatedAt = in.CreatedAt.UTC()
	in.Replay = true
	in.Done = done != nil
	return in, true, nil
}

// Begin implements ingest.Ledger.
//
// The lease check, the fence lock and the intent go to PostgreSQL in one
// pipeline (beginBatch): one round trip for a batch that claims nothing
// (ingest.dedup=partitioned), where the pipeline is an implicit transaction
// of its own; with claims (ingest.dedup=postgres) it opens an explicit
// transaction that then claims the ids or reads the replay's claims.
func (l *Ledger) Begin(ctx context.Context, epoch int64, in ingest.Intent, claims []ingest.Claim) (ingest.Intent, *ingest.Owned, error) {
	if len(claims) == 0 {
		got, _, err := l.begin(ctx, l.Pool, epoch, in)
		if err != nil {
			return in, nil, err
		}
		return got, &ingest.Owned{}, nil
	}
	var owned *ingest.Owned
	err := pgx.BeginFunc(ctx, l.Pool, func(tx pgx.Tx) error {
		got, inserted, err := l.begin(ctx, tx, epoch, in)
		if err != nil {
			return err
		}
		in = got
		if inserted {
			// A new batch owns exactly the ids it claims now. Claims that
			// name its offsets but exist already were made by an earlier
			// batch over the same offsets whose intent has been purged
			// since (the range read again much later): those events are
			// counted, and are duplicates here.
			owned, err = insertClaims(ctx, tx, in, claims)
			return err
		}
		// A replay owns the claims its own batch made, named by the intent's
		// created_at: not those of an earlier batch over the same offsets
		// whose intent was purged since, whose events that batch counted.
		// Claims made before migration 0104 carry no batch; they are this
		// batch's if made after it began (an older batch's claims are at
		// least a day older: intents are kept a day after they are done),
		// with an hour's room for the worker's clock against the database's.
		// The claims are found by their ids, through the primary key: the
		// replay's records are the batch's records, so its candidate claims
		// name the same ids (an index on the source offsets, kept only for
		// this rare read, cost a third of every claim's bytes).
		ids := make([]string, len(claims))
		for i, c := range claims {
			ids[i] = c.EventID
		}
		rows, err := tx.Query(ctx, `
			select src_offset from canopy.event_claims
			 where event_id = any($6::text[])
			   and src_topic = $1 and src_partition = $2 and src_offset between $3 and $4
			   and (batch_created_at = $5
			        or (batch_created_at is null and claimed_at > $5::timestamptz - interval '1 hour'))`,
			key(in.Source), in.Partition, in.First, in.Last, in.CreatedAt, ids)
		if err != nil {
			return fmt.Errorf("read claims: %w", err)
		}
		offsets, err := pgx.CollectRows(rows, pgx.RowTo[int64])
		if err != nil {
			return fmt.Errorf("read claims: %w", err)
		}
		owned = ownedOf(in.Source, offsets)
		return nil
	})
	if err != nil {
		return in, nil, err
	}
	return in, owned, nil
}

// sender is a pool (its batches run as implicit transactions) or a
// transaction.
type sender interface {
	SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// begin checks the lease, takes the fence lock shared and records the intent
// unless one exists, in one round trip: three statements pipelined, run in
// one transaction (db's, or the implicit one of the pipeline), each with
// its own snapshot. It returns the intent to attempt — the recorded one on
// a replay — and whether this call recorded it.
func (l *Ledger) begin(ctx context.Context, db sender, epoch int64, in ingest.Intent) (ingest.Intent, bool, error) {
	topic := key(in.Source)
	b := &pgx.Batch{}
	// FOR SHARE: a concurrent Acquire (an UPDATE) waits for this batch to
	// commit, and this batch sees any Acquire that committed first.
	// Epoch 0 is a batch below the group's committed offset, which no live
	// owner reads again (canopy reconcile): no lease to check.
	if epoch != 0 {
		b.Queue(`select epoch from canopy.partition_leases
			where src_topic = $1 and src_partition = $2 for share`, topic, in.Partition)
	}
	// The restater's fence and progress, and canopy rebuild's pause, are
	// read under the fence lock (Fence; docs/hierarchy.md): once the fence
	// is up, no new batch resolves with an older version. The pipeline
	// keeps the lock's statement before the one reading the state; it only
	// saves the round trips between them.
	queueCheck(b)
	// The intent is recorded only if the lease is still this batch's (the
	// row is locked since the first statement, so the check sees what that
	// one saw), the batch's version is not below the fence and canopy
	// rebuild does not pause writers. The statement also returns the
	// intent recorded earlier for the same first offset, if its snapshot
	// holds one.
	b.Queue(`
		with st as (`+fenceStateSQL+`),
		ins as (
		  insert into canopy.ingest_intents
		         (src_topic, src_partition, first_offset, last_offset, epoch, hierarchy_version, asis_tag, created_at, fingerprint)
		  select $1, $2, $3, $4, $5, $6::bigint,
		         case when $6::bigint <= st.restated_through then 0 else $6::bigint end, $7, nullif($8, '')
		    from st
		   where $6::bigint >= st.fence and not st.paused
		     and ($5::bigint = 0 or exists (select 1 from canopy.partition_leases l
		                                   where l.src_topic = $1 and l.src_partition = $2 and l.epoch = $5::bigint))
		  on conflict do nothing
		  returning asis_tag)
		select st.fence, st.paused, (select asis_tag from ins),
		       i.last_offset, i.hierarchy_version, i.asis_tag, i.created_at, coalesce(i.fingerprint, ''), i.done_at
		  from st left join canopy.ingest_intents i
		    on i.src_topic = $1 and i.src_partition = $2 and i.first_offset = $3`,
		topic, in.Partition, in.First, in.Last, epoch, in.HierarchyVersion, in.CreatedAt, in.Fingerprint)
	br := db.SendBatch(ctx, b)
	defer br.Close()
	if epoch != 0 {
		var current int64
		err := br.QueryRow().Scan(&current)
		if errors.Is(err, pgx.ErrNoRows) || (err == nil && current != epoch) {
			return in, false, fmt.Errorf("%w (epoch %d, current %d)", ingest.ErrFenced, epoch, current)
		}
		if err != nil {
			return in, false, err
		}
	}
	if _, err := br.Exec(); err != nil {
		return in, false, fmt.Errorf("fence lock: %w", err)
	}
	var (
		fence         int64
		paused        bool // canopy rebuild is swapping rollups: no new batch
		pending       *int64
		last, hv, tag *int64
		created, done *time.Time
		fingerprint   string
	)
	err := br.QueryRow().Scan(&fence, &paused, &pending, &last, &hv, &tag, &created, &fingerprint, &done)
	if errors.Is(err, pgx.ErrNoRows) {
		return in, false, errors.New("record intent: no restate state (canopy.restate_state is empty)")
	}
	if err != nil {
		return in, false, fmt.Errorf("record intent: %w", err)
	}
	if err := br.Close(); err != nil {
		return in, false, fmt.Errorf("record intent: %w", err)
	}
	if pending != nil {
		in.PendingVersion = *pending
		return in, true, nil
	}
	if last == nil {
		// Not recorded, and no intent in the statement's snapshot: an
		// intent committed meanwhile (the insert waited for it), or none,
		// because the batch is fenced off or paused.
		err := db.QueryRow(ctx, `
			select last_offset, hierarchy_version, asis_tag, created_at, coalesce(fingerprint, ''), done_at from canopy.ingest_intents
			 where src_topic = $1 and src_partition = $2 and first_offset = $3`,
			topic, in.Partition, in.First).Scan(&last, &hv, &tag, &created, &fingerprint, &done)
		if errors.Is(err, pgx.ErrNoRows) && paused {
			return in, false, ingest.ErrPaused
		}
		if errors.Is(err, pgx.ErrNoRows) {
			return in, false, fmt.Errorf("%w: batch resolved with version %d, the restater's fence is %d",
				ingest.ErrHierarchyBehind, in.HierarchyVersion, fence)
		}
		if err != nil {
			return in, false, fmt.Errorf("read intent: %w", err)
		}
	}
	// An earlier attempt recorded this batch: replay it as it was, claiming
	// nothing new.
	in.Last, in.HierarchyVersion, in.PendingVersion = *last, *hv, *tag
	in.CreatedAt, in.Fingerprint = created.UTC(), fingerprint
	in.Replay, in.Done = true, done != nil
	return in, false, nil
}

// insertClaims claims ids in sorted order, so two batches claiming
// overlapping ids lock them in the same order and cannot deadlock, and
// returns the offsets whose claim it made.
func insertClaims(ctx context.Context, tx pgx.Tx, in ingest.Intent, claims []ingest.Claim) (*ingest.Owned, error) {
	sorted := make([]ingest.Claim, len(claims))
	copy(sorted, claims)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].EventID < sorted[j].EventID })
	ids := make([]string, len(sorted))
	at := make([]time.Time, len(sorted))
	offs := make([]int64, len(sorted))
	for i, c := range sorted {
		ids[i], at[i], offs[i] = c.EventID, c.OccurredAt, c.Offset
	}
	rows, err := tx.Query(ctx, `
		insert into canopy.event_claims (event_id, occurred_at, src_topic, src_partition, src_offset, batch_created_at)
		select id, at, $4, $5, off, $6 from unnest($1::text[], $2::timestamptz[], $3::bigint[]) as c(id, at, off)
		on conflict (event_id) do nothing
		returning src_offset`, ids, at, offs, key(in.Source), in.Partition, in.CreatedAt)
	if err != nil {
		return nil, fmt.Errorf("claim event ids: %w", err)
	}
	offsets, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		return nil, fmt.Errorf("claim event ids: %w", err)
	}
	return ownedOf(in.Source, offsets), nil
}

// ownedOf is the set of offsets of src.
func ownedOf(src ingest.Source, offsets []int64) *ingest.Owned {
	owned := ingest.NewOwned(src)
	for _, o := range offsets {
		owned.Add(o)
	}
	return owned
}

// Done implements ingest.Ledger.
func (l *Ledger) Done(ctx context.Context, src ingest.Source) error {
	_, err := l.Pool.Exec(ctx, `update canopy.ingest_intents set done_at = now()
		where src_topic = $1 and src_partition = $2 and first_offset = $3 and done_at is null`,
		key(src), src.Partition, src.First)
	if err != nil {
		return fmt.Errorf("mark %s/%d@%d done: %w", src.Topic, src.Partition, src.First, err)
	}
	return nil
}

// Purge forgets event ids whose occurred_at is older than the deduplication
// horizon and that were claimed longer than the horizon ago (so a backfill of
// old history stays deduplicated while it runs), and finished intents older
// than keepIntents. It returns how many claims it removed.
func (l *Ledger) Purge(ctx context.Context, horizon, keepIntents time.Duration) (int64, error) {
	tag, err := l.Pool.Exec(ctx, `delete from canopy.event_claims
		where claimed_at < now() - make_interval(secs => $1) and occurred_at < now() - make_interval(secs => $1)`,
		horizon.Seconds())
	if err != nil {
		return 0, fmt.Errorf("purge claims: %w", err)
	}
	if _, err := l.Pool.Exec(ctx, `delete from canopy.ingest_intents where done_at < now() - make_interval(secs => $1)`,
		keepIntents.Seconds()); err != nil {
		return 0, fmt.Errorf("purge intents: %w", err)
	}
	if _, err := l.Pool.Exec(ctx, `delete from canopy.forwarded_strides where forwarded_at < now() - make_interval(secs => $1)`,
		horizon.Seconds()); err != nil {
		return 0, fmt.Errorf("purge forwarded strides: %w", err)
	}
	return tag.RowsAffected(), nil
}

// Forwarded returns the last offset of the stride starting at src.First
// that an earlier backfill forwarded to the by-id topic (ingest.Forward),
// if any.
func (l *Ledger) Forwarded(ctx context.Context, src ingest.Source) (last int64, found bool, err error) {
	err = l.Pool.QueryRow(ctx, `select last_offset from canopy.forwarded_strides
		where src_topic = $1 and src_partition = $2 and first_offset = $3`, key(src), src.Partition, src.First).Scan(&last)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, fmt.Errorf("look up forwarded stride %s/%d@%d: %w", key(src), src.Partition, src.First, err)
	}
	return last, true, nil
}

// MarkForwarded records that the stride src was forwarded, with its record
// count; a stride recorded before with the same first offset is extended.
func (l *Ledger) MarkForwarded(ctx context.Context, src ingest.Source, records int) error {
	_, err := l.Pool.Exec(ctx, `insert into canopy.forwarded_strides (src_topic, src_partition, first_offset, last_offset, records)
		values ($1, $2, $3, $4, $5) on conflict (src_topic, src_partition, first_offset) do update
		   set last_offset = greatest(canopy.forwarded_strides.last_offset, excluded.last_offset),
		       records = canopy.forwarded_strides.records + excluded.records, forwarded_at = now()`,
		key(src), src.Partition, src.First, src.Last, records)
	if err != nil {
		return fmt.Errorf("record forwarded stride %s/%d@%d: %w", key(src), src.Partition, src.First, err)
	}
	return nil
}

// StateSize returns the deduplication state's size: the number of event-id
// claims held (PostgreSQL's estimate, from its statistics: counting would
// read the whole table) and the disk they take, indexes included.
func (l *Ledger) StateSize(ctx context.Context) (ids, bytes int64, err error) {
	err = l.Pool.QueryRow(ctx, `
		select greatest(c.reltuples, 0)::bigint, pg_total_relation_size(c.oid)
		  from pg_class c where c.oid = 'canopy.event_claims'::regclass`).Scan(&ids, &bytes)
	if err != nil {
		return 0, 0, fmt.Errorf("size of the event-id claims: %w", err)
	}
	return ids, bytes, nil
}
