package hierarchy

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/canopyhq/canopy/internal/pglock"
	"github.com/canopyhq/canopy/schema"
)

// Advisory lock keys; internal/pglock/keys.go lists every key of Canopy.
const (
	// lockKey serializes every change that writes history; the triggers in
	// schema/postgres/0001_hierarchy.sql take the same key. See there why.
	lockKey = pglock.HierarchyWrite
	// migrateLockKey serializes concurrent Migrate runs.
	migrateLockKey = pglock.Migrate
)

// Store is the hierarchy's system of record in PostgreSQL (schema canopy).
// Every write goes through plain SQL on canopy.entities so that the database
// triggers, not this code, decide what is valid and record history and
// outbox rows; the Store adds sentinel errors and effective times.
//
// Store is safe for concurrent use. Every method takes ctx; cancelling it
// aborts the statement and rolls its transaction back.
type Store struct {
	pool *pgxpool.Pool
}

// NewStore returns a Store over pool. The Store does not close the pool.
func NewStore(pool *pgxpool.Pool) *Store { return &Store{pool: pool} }

// Migrate applies the PostgreSQL migrations that are not yet recorded in
// canopy.schema_migrations, in version order, each in its own transaction.
// It is idempotent, and concurrent runs are safe: each migration's
// transaction first takes an advisory lock, then re-checks whether it has
// been applied meanwhile.
func (s *Store) Migrate(ctx context.Context) error {
	for _, m := range schema.PostgresMigrations() {
		if err := s.migrate(ctx, m); err != nil {
			return fmt.Errorf("hierarchy: postgres migration %04d_%s: %w", m.Version, m.Name, err)
		}
	}
	return nil
}

func (s *Store) migrate(ctx context.Context, m schema.Migration) error {
	return pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "select pg_advisory_xact_lock($1)", migrateLockKey); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `
			create schema if not exists canopy;
			create table if not exists canopy.schema_migrations (
				version    int primary key,
				name       text not null,
				applied_at timestamptz not null default now()
			)`); err != nil {
			return err
		}
		var done bool
		if err := tx.QueryRow(ctx, "select exists (select 1 from canopy.schema_migrations where version = $1)",
			m.Version).Scan(&done); err != nil || done {
			return err
		}
		if _, err := tx.Exec(ctx, m.SQL); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, "insert into canopy.schema_migrations (version, name) values ($1, $2)", m.Version, m.Name)
		return err
	})
}

// historyColumns selects a history row as a Change. Statuses outside the
// three known ones come back as 255, which Tree.Apply rejects.
const historyColumns = `seq, id, coalesce(parent_id, 0),
	case status when 'active' then 0 when 'suspended' then 1 when 'closed' then 2 else 255 end,
	valid_from
	from canopy.entity_history`

// Load reads the whole history into a new Tree, in seq order, from one
// snapshot. Keep it current with ChangesSince(ctx, tree.Version(), …).
func (s *Store) Load(ctx context.Context) (*Tree, error) {
	t := NewTree()
	_, err := s.scanChanges(ctx, func(c Change) error { return t.Apply(c) },
		"select "+historyColumns+" order by seq")
	if err != nil {
		return nil, fmt.Errorf("hierarchy: load tree: %w", err)
	}
	return t, nil
}

// ChangesSince returns up to limit history rows with seq above seq, in seq
// order. Because every history write holds the hierarchy lock until commit,
// seq order is commit order: a reader that resumes after the last seq it saw
// never misses a change that committed later with a smaller seq.
func (s *Store) ChangesSince(ctx context.Context, seq int64, limit int) ([]Change, error) {
	var out []Change
	_, err := s.scanChanges(ctx, func(c Change) error { out = append(out, c); return nil },
		"select "+historyColumns+" where seq > $1 order by seq limit $2", seq, limit)
	if err != nil {
		return nil, fmt.Errorf("hierarchy: changes since %d: %w", seq, err)
	}
	return out, nil
}

func (s *Store) scanChanges(ctx context.Context, fn func(Change) error, sql string, args ...any) (int, error) {
	rows, err := s.pool.Query(ctx, sql, args...)
	if err != nil {
		return 0, err
	}
	defer rows.Close()
	var (
		c      Change
		status int16
		from   pgtype.Timestamptz
		n      int
	)
	for rows.Next() {
		if err := rows.Scan(&c.Seq, &c.ID, &c.ParentID, &status, &from); err != nil {
			return n, err
		}
		c.Status = Status(status)
		c.ValidFrom = fromTimestamptz(from)
		if err := fn(c); err != nil {
			return n, err
		}
		n++
	}
	return n, rows.Err()
}

// fromTimestamptz maps '-infinity' (the bulk importer's "always existed") to
// the zero time, which Tree reads the same way.
func fromTimestamptz(ts pgtype.Timestamptz) time.Time {
	if ts.InfinityModifier == pgtype.NegativeInfinity || !ts.Valid {
		return time.Time{}
	}
	return ts.Time
}

// Create inserts entity id under parent (0 = root). An empty name is stored
// as NULL. A nil effectiveAt means now.
func (s *Store) Create(ctx context.Context, id, parent int64, name string, status Status, effectiveAt *time.Time) error {
	var nameArg any
	if name != "" {
		nameArg = name
	}
	err := s.change(ctx, effectiveAt, func(tx pgx.Tx) (pgconn.CommandTag, error) {
		return tx.Exec(ctx, "insert into canopy.entities (id, parent_id, status, name) values ($1, $2, $3, $4)",
			id, nullID(parent), status.String(), nameArg)
	})
	if err != nil {
		return fmt.Errorf("hierarchy: create entity %d under %d: %w", id, parent, err)
	}
	return nil
}

// Move makes newParent (0 = root) the parent of entity id from effectiveAt
// on (nil = now). Moving an entity under its current parent records nothing.
func (s *Store) Move(ctx context.Context, id, newParent int64, effectiveAt *time.Time) error {
	err := s.change(ctx, effectiveAt, func(tx pgx.Tx) (pgconn.CommandTag, error) {
		return tx.Exec(ctx, "update canopy.entities set parent_id = $2 where id = $1", id, nullID(newParent))
	})
	if err != nil {
		return fmt.Errorf("hierarchy: move entity %d under %d: %w", id, newParent, err)
	}
	return nil
}

// SetStatus sets the status of entity id from effectiveAt on (nil = now).
func (s *Store) SetStatus(ctx context.Context, id int64, status Status, effectiveAt *time.Time) error {
	if !status.valid() {
		return fmt.Errorf("hierarchy: set status of entity %d: %w: %v", id, ErrBadStatus, status)
	}
	err := s.change(ctx, effectiveAt, func(tx pgx.Tx) (pgconn.CommandTag, error) {
		return tx.Exec(ctx, "update canopy.entities set status = $2 where id = $1", id, status.String())
	})
	if err != nil {
		return fmt.Errorf("hierarchy: set status of entity %d to %s: %w", id, status, err)
	}
	return nil
}

// change runs one write in a transaction that holds the hierarchy lock from
// its start, so that the trigger's own lock request never has to wait while
// this transaction already holds row locks (two multi-row writers could
// otherwise deadlock).
func (s *Store) change(ctx context.Context, effectiveAt *time.Time, write func(pgx.Tx) (pgconn.CommandTag, error)) error {
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "select pg_advisory_xact_lock($1)", lockKey); err != nil {
			return err
		}
		if effectiveAt != nil {
			if _, err := tx.Exec(ctx, "select set_config('canopy.effective_at', $1, true)", pgTime(*effectiveAt)); err != nil {
				return err
			}
		}
		tag, err := write(tx)
		if err != nil {
			return err
		}
		if tag.RowsAffected() == 0 {
			return ErrNotFound
		}
		return nil
	})
	return classify(err)
}

// pgTime formats t for a timestamptz setting, keeping PostgreSQL's
// microsecond precision; the zero time is '-infinity'.
func pgTime(t time.Time) string {
	if t.IsZero() {
		return "-infinity"
	}
	return t.Format("2006-01-02 15:04:05.999999-07:00")
}

func nullID(id int64) any {
	if id == 0 {
		return nil
	}
	return id
}

// EntityRow is a row of canopy.entities, for the ClickHouse entities table.
type EntityRow struct {
	ID        int64
	ParentID  int64 // 0 = root
	Name      string
	Status    Status
	UpdatedAt time.Time
}

// EntityRows calls fn for every entity in id order, from one snapshot. An
// error from fn stops the scan and is returned as is.
func (s *Store) EntityRows(ctx context.Context, fn func(EntityRow) error) error {
	return s.scanEntities(ctx, fn, "order by id")
}

// scanEntities calls fn for each row of canopy.entities selected by tail
// (a WHERE and ORDER BY clause).
func (s *Store) scanEntities(ctx context.Context, fn func(EntityRow) error, tail string, args ...any) error {
	rows, err := s.pool.Query(ctx, `select id, coalesce(parent_id, 0), coalesce(name, ''), status, updated_at
		from canopy.entities `+tail, args...)
	if err != nil {
		return fmt.Errorf("hierarchy: read entities: %w", err)
	}
	defer rows.Close()
	var (
		r      EntityRow
		status string
	)
	for rows.Next() {
		if err := rows.Scan(&r.ID, &r.ParentID, &r.Name, &status, &r.UpdatedAt); err != nil {
			return fmt.Errorf("hierarchy: read entities: %w", err)
		}
		if r.Status, err = ParseStatus(status); err != nil {
			return fmt.Errorf("hierarchy: entity %d: %w", r.ID, err)
		}
		if err := fn(r); err != nil {
			return err
		}
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("hierarchy: read entities: %w", err)
	}
	return nil
}

// Recorded is a history row as the restater needs it: the change, the
// entity's name from then on, and whether it corrected (superseded) later
// versions.
type Recorded struct {
	Change
	Name       string
	Supersedes bool
}

// Recorded returns the history rows with seq in (after, upTo], in seq order.
func (s *Store) Recorded(ctx context.Context, after, upTo int64) ([]Recorded, error) {
	rows, err := s.pool.Query(ctx, `
		select h.seq, h.id, coalesce(h.parent_id, 0),
		       case h.status when 'active' then 0 when 'suspended' then 1 when 'closed' then 2 else 255 end,
		       h.valid_from, coalesce(h.name, ''),
		       exists (select 1 from canopy.entity_history o where o.id = h.id and o.superseded_by = h.seq)
		  from canopy.entity_history h
		 where h.seq > $1 and h.seq <= $2
		 order by h.seq`, after, upTo)
	if err != nil {
		return nil, fmt.Errorf("hierarchy: history %d…%d: %w", after, upTo, err)
	}
	defer rows.Close()
	var out []Recorded
	for rows.Next() {
		var (
			r      Recorded
			status int16
			from   pgtype.Timestamptz
		)
		if err := rows.Scan(&r.Seq, &r.ID, &r.ParentID, &status, &from, &r.Name, &r.Supersedes); err != nil {
			return nil, fmt.Errorf("hierarchy: history: %w", err)
		}
		r.Status = Status(status)
		r.ValidFrom = fromTimestamptz(from)
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("hierarchy: history: %w", err)
	}
	return out, nil
}

// LatestSeq returns the highest history seq committed, 0 when there is none.
func (s *Store) LatestSeq(ctx context.Context) (int64, error) {
	var seq int64
	if err := s.pool.QueryRow(ctx, `select coalesce(max(seq), 0) from canopy.entity_history`).Scan(&seq); err != nil {
		return 0, fmt.Errorf("hierarchy: latest seq: %w", err)
	}
	return seq, nil
}

// EntitiesByID returns the current rows of the given ids (unknown ids are
// left out), in id order.
func (s *Store) EntitiesByID(ctx context.Context, ids []int64) ([]EntityRow, error) {
	var out []EntityRow
	err := s.scanEntities(ctx, func(r EntityRow) error { out = append(out, r); return nil },
		"where id = any($1) order by id", ids)
	return out, err
}
