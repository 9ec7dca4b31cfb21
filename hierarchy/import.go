package hierarchy

import (
	"context"
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// ImportOptions tunes Import. The zero value is ready to use.
type ImportOptions struct {
	// Progress, if set, is called about every 100,000 rows read and once at
	// the start of each later phase. Default: nil.
	Progress ProgressFunc
	// DryRun validates the file against the database, then rolls back.
	// Default: false.
	DryRun bool
	// ChunkSize, when positive, applies the file in transactions of this
	// many rows each (parents before children), each holding the hierarchy
	// lock only while it writes, so other hierarchy writes wait for one
	// chunk, not for the whole import. The price is atomicity: a file that
	// breaks a rule is still refused before anything is written, but a
	// chunk refused because of a concurrent change (a parent closed, a move
	// that now makes a chain too deep) stops the import with the earlier
	// chunks committed. Running the same file again finishes it, since an
	// import only writes what differs. Default: 0, one transaction, all or
	// nothing, holding the lock while it validates and writes.
	ChunkSize int
}

// ProgressFunc reports an import's phase ("read", "validate", "apply",
// "done") and the rows read so far. It runs on the importing goroutine.
// In chunked mode "apply" is reported after every committed chunk with the
// rows applied so far, while no lock is held.
type ProgressFunc func(phase string, rows int64)

// ImportStats counts what an import did.
type ImportStats struct {
	Rows      int64 // data rows in the file
	Inserted  int64 // entities new to canopy.entities
	Updated   int64 // entities whose parent, status or name changed
	Unchanged int64
	Elapsed   time.Duration
}

// progressEvery is how many rows pass between Progress calls while reading.
const progressEvery = 100_000

// maxReported is how many offending rows an import error lists.
const maxReported = 5

// Import loads a CSV file of entities into canopy.entities: columns
// id,parent_id,status,name, an optional header row (detected when the first
// field is not a number; it may then name the columns in any order, with
// only id required), empty parent_id = root, empty status = active, empty
// name = NULL.
//
// The file is a snapshot: rows are inserted or, if the id exists, updated.
// The file is copied into a temporary table and checked with set-based
// queries (duplicate ids, names longer than MaxNameLength, unknown parents,
// cycles, chains longer than MaxDepth, new children of an already closed
// entity not in the file), then applied with the row triggers switched off
// (canopy.bulk = 'on'); history and outbox rows are written in bulk instead.
// Entities new to the table get a history row valid from '-infinity' (they
// always existed); changed ones close their current row and open a new one
// at now().
//
// By default it is all-or-nothing: one transaction that holds the
// hierarchy lock from the checks against canopy.entities to the commit, so
// every other hierarchy write waits for that long. With opts.ChunkSize the
// lock is held one chunk at a time instead; see ImportOptions.
//
// Errors in the file wrap ErrInvalidImport and name the first few
// offending lines. Cancelling ctx rolls back what is not yet committed
// (everything, by default).
func Import(ctx context.Context, pool *pgxpool.Pool, r io.Reader, opts ImportOptions) (ImportStats, error) {
	start := time.Now()
	progress := opts.Progress
	if progress == nil {
		progress = func(string, int64) {}
	}
	var (
		stats ImportStats
		err   error
	)
	if opts.ChunkSize > 0 {
		err = importChunked(ctx, pool, r, opts, progress, &stats)
	} else {
		err = pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
			if err := copyImport(ctx, tx, r, "on commit drop", progress, &stats); err != nil {
				return err
			}
			if err := validateImport(ctx, tx, true, "on commit drop"); err != nil {
				return err
			}
			progress("apply", stats.Rows)
			ins, upd, err := applyImport(ctx, tx, "canopy_import")
			if err != nil {
				return err
			}
			stats.Inserted, stats.Updated = ins, upd
			if opts.DryRun {
				return errDryRun
			}
			return nil
		})
	}
	if errors.Is(err, errDryRun) {
		err = nil
	}
	stats.Unchanged = stats.Rows - stats.Inserted - stats.Updated
	stats.Elapsed = time.Since(start)
	if err != nil {
		return stats, fmt.Errorf("hierarchy: import: %w", err)
	}
	progress("done", stats.Rows)
	return stats, nil
}

// copyImport creates the canopy_import table (onCommit: its ON COMMIT
// clause) and copies the file into it.
func copyImport(ctx context.Context, db dbConn, r io.Reader, onCommit string, progress ProgressFunc, stats *ImportStats) error {
	if _, err := db.Exec(ctx, `create temp table canopy_import (
			line bigint not null, id bigint not null, parent_id bigint,
			status text not null, name text
		) `+onCommit); err != nil {
		return err
	}
	src := newCSVSource(r, progress)
	n, err := db.CopyFrom(ctx, pgx.Identifier{"canopy_import"},
		[]string{"line", "id", "parent_id", "status", "name"}, src)
	if src.err != nil {
		return src.err // the reader's own error, not the one COPY reports for it
	}
	if err != nil {
		return err
	}
	stats.Rows = n
	progress("validate", n)
	return nil
}

// dbConn is what the import needs of a transaction or a connection.
type dbConn interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
	CopyFrom(ctx context.Context, table pgx.Identifier, cols []string, src pgx.CopyFromSource) (int64, error)
}

// importChunked is Import with opts.ChunkSize > 0. It runs on one
// connection, whose temporary tables outlive the chunk transactions; the
// connection is closed at the end rather than returned to the pool, which
// drops them whatever happened.
func importChunked(ctx context.Context, pool *pgxpool.Pool, r io.Reader, opts ImportOptions, progress ProgressFunc, stats *ImportStats) error {
	pc, err := pool.Acquire(ctx)
	if err != nil {
		return err
	}
	conn := pc.Hijack()
	defer func() { _ = conn.Close(context.WithoutCancel(ctx)) }()

	if err := copyImport(ctx, conn, r, "", progress, stats); err != nil {
		return err
	}
	// Validate the whole file without the lock: what it finds wrong with
	// the file is refused before anything is written. The checks against
	// canopy.entities are repeated per chunk under the lock.
	if err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		return validateImport(ctx, tx, false, "")
	}); err != nil {
		return err
	}
	// Parents before children: in the order of their depth in the
	// resulting forest, every ancestor of a row is in its final place
	// before the row is written, so no chunk creates a cycle or, unless a
	// concurrent change interferes, a chain longer than the file's own.
	if _, err := conn.Exec(ctx, `
		create temp table canopy_import_order as
			select d.depth, i.id from canopy_import i join canopy_import_depth d using (id);
		create unique index on canopy_import_order (depth, id);
		analyze canopy_import_order`); err != nil {
		return err
	}
	if opts.DryRun {
		return nil
	}
	var (
		afterDepth, afterID int64 = -1, 0
		applied, chunks     int64
	)
	for {
		var n int64
		err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, "select pg_advisory_xact_lock($1)", lockKey); err != nil {
				return err
			}
			if _, err := tx.Exec(ctx, `
				create temp table canopy_import_chunk on commit drop as
				select o.depth, i.*
				  from canopy_import_order o join canopy_import i using (id)
				 where (o.depth, o.id) > ($1, $2)
				 order by o.depth, o.id
				 limit $3`, afterDepth, afterID, opts.ChunkSize); err != nil {
				return err
			}
			if err := tx.QueryRow(ctx, `select count(*), coalesce(max(depth), 0),
					coalesce(max(id) filter (where depth = (select max(depth) from canopy_import_chunk)), 0)
				from canopy_import_chunk`).Scan(&n, &afterDepth, &afterID); err != nil || n == 0 {
				return err
			}
			if err := checkClosedParents(ctx, tx, "canopy_import_chunk"); err != nil {
				return err
			}
			ins, upd, err := applyImport(ctx, tx, "canopy_import_chunk")
			if err != nil {
				return err
			}
			if err := checkChunkChains(ctx, tx); err != nil {
				return err
			}
			stats.Inserted += ins
			stats.Updated += upd
			return nil
		})
		if err != nil {
			if applied > 0 {
				return fmt.Errorf("%w (rows %d… of the file in depth order; %d rows in %d chunks before it are committed: run the import again to finish it)",
					err, applied+1, applied, chunks)
			}
			return err
		}
		if n == 0 {
			return nil
		}
		applied += n
		chunks++
		progress("apply", applied)
	}
}

// checkChunkChains refuses a chunk after which one of its rows does not
// reach a root within MaxDepth entities: a concurrent change between the
// validation and this chunk made its chain too long (or, with it, a
// cycle). Run after the chunk's writes, in its transaction.
func checkChunkChains(ctx context.Context, tx pgx.Tx) error {
	return rejectRows(ctx, tx, "ancestor chain longer than "+strconv.Itoa(MaxDepth)+" (after concurrent changes)", `
		with recursive up (id, cur, n) as (
			select c.id, c.parent_id, 1 from canopy_import_chunk c
			union all
			select u.id, e.parent_id, u.n + 1
			  from up u join canopy.entities e on e.id = u.cur
			 where u.n < `+strconv.Itoa(MaxDepth)+`
		)
		select c.line, c.id, c.parent_id, count(*) over ()
		  from up u join canopy_import_chunk c using (id)
		 where u.n = `+strconv.Itoa(MaxDepth)+` and u.cur is not null
		 order by c.line limit $1`)
}

var errDryRun = errors.New("dry run")

// validateImport checks the rules the row triggers would check, for the
// whole file at once. With lock, the hierarchy lock is taken first so that
// nobody changes canopy.entities between these checks and the writes.
// onCommit is the ON COMMIT clause of the tables it leaves behind
// (canopy_import_depth: the depth of every entity in the resulting forest).
func validateImport(ctx context.Context, tx pgx.Tx, lock bool, onCommit string) error {
	if err := rejectRows(ctx, tx, "duplicate id", `
		select min(line), id, null::bigint, count(*) over ()
		  from canopy_import group by id having count(*) > 1
		 order by 1 limit $1`); err != nil {
		return err
	}
	if err := rejectRows(ctx, tx, "name longer than "+strconv.Itoa(MaxNameLength)+" characters", `
		select line, id, parent_id, count(*) over ()
		  from canopy_import where char_length(name) > `+strconv.Itoa(MaxNameLength)+`
		 order by line limit $1`); err != nil {
		return err
	}
	if _, err := tx.Exec(ctx, `create unique index on canopy_import (id);
		analyze canopy_import`); err != nil {
		return err
	}
	if lock {
		if _, err := tx.Exec(ctx, "select pg_advisory_xact_lock($1)", lockKey); err != nil {
			return err
		}
	}
	if err := rejectRows(ctx, tx, "unknown parent", `
		select i.line, i.id, i.parent_id, count(*) over ()
		  from canopy_import i
		 where i.parent_id is not null
		   and not exists (select 1 from canopy_import p where p.id = i.parent_id)
		   and not exists (select 1 from canopy.entities e where e.id = i.parent_id)
		 order by i.line limit $1`); err != nil {
		return err
	}
	if err := checkClosedParents(ctx, tx, "canopy_import"); err != nil {
		return err
	}
	// With every parent known, an entity whose chain never reaches a root
	// is on, or under, a cycle. Walk down from the roots of the resulting
	// forest (file rows replacing table rows) and see who is left out; the
	// walk also gives every entity's depth (a root is 0).
	if _, err := tx.Exec(ctx, `
		create temp table canopy_import_graph on commit drop as
			select id, parent_id from canopy_import
			union all
			select e.id, e.parent_id from canopy.entities e
			 where not exists (select 1 from canopy_import i where i.id = e.id);
		create index on canopy_import_graph (parent_id);
		analyze canopy_import_graph;
		create temp table canopy_import_depth `+onCommit+` as
			with recursive reach(id, depth) as (
				select id, 0 from canopy_import_graph where parent_id is null
				union all
				select g.id, r.depth + 1 from reach r join canopy_import_graph g on g.parent_id = r.id
			)
			select id, depth from reach;
		create index on canopy_import_depth (id);
		analyze canopy_import_depth`); err != nil {
		return err
	}
	if err := rejectRows(ctx, tx, "cycle", `
		select i.line, i.id, i.parent_id, count(*) over ()
		  from canopy_import i
		 where not exists (select 1 from canopy_import_depth d where d.id = i.id)
		 order by i.line limit $1`); err != nil {
		return err
	}
	// Depth MaxDepth or more means a chain (the entity included) longer
	// than MaxDepth. Entities outside the file count too: a file that moves
	// their ancestors lengthens their chains. Line 0 = not in the file.
	return rejectRows(ctx, tx, "ancestor chain longer than "+strconv.Itoa(MaxDepth), `
		select coalesce(i.line, 0), d.id, g.parent_id, count(*) over ()
		  from canopy_import_depth d
		  join canopy_import_graph g on g.id = d.id
		  left join canopy_import i on i.id = d.id
		 where d.depth >= `+strconv.Itoa(MaxDepth)+`
		 order by d.depth, i.line nulls last, d.id limit $1`)
}

// checkClosedParents refuses rows of src that attach something new to a
// closed entity. A file may describe a closed entity together with its
// former members (it is a snapshot), but may not attach anything new to an
// entity that is already closed and that the file leaves alone.
func checkClosedParents(ctx context.Context, tx pgx.Tx, src string) error {
	return rejectRows(ctx, tx, "new child of a closed parent", `
		select i.line, i.id, i.parent_id, count(*) over ()
		  from `+src+` i
		  join canopy.entities p on p.id = i.parent_id and p.status = 'closed'
		  left join canopy.entities e on e.id = i.id
		 where not exists (select 1 from canopy_import f where f.id = i.parent_id)
		   and (e.id is null or e.parent_id is distinct from i.parent_id)
		 order by i.line limit $1`)
}

// rejectRows runs a query returning (line, id, parent_id, total) for
// offending rows and turns any result into an ErrInvalidImport.
func rejectRows(ctx context.Context, tx pgx.Tx, what, sql string) error {
	rows, err := tx.Query(ctx, sql, maxReported)
	if err != nil {
		return fmt.Errorf("check %s: %w", what, err)
	}
	defer rows.Close()
	var (
		list  []string
		total int64
	)
	for rows.Next() {
		var line, id int64
		var parent *int64
		if err := rows.Scan(&line, &id, &parent, &total); err != nil {
			return fmt.Errorf("check %s: %w", what, err)
		}
		s := fmt.Sprintf("line %d: id %d", line, id)
		if line == 0 {
			s = fmt.Sprintf("id %d (not in the file)", id)
		}
		if parent != nil {
			s += fmt.Sprintf(" parent %d", *parent)
		}
		list = append(list, s)
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("check %s: %w", what, err)
	}
	if total == 0 {
		return nil
	}
	more := ""
	if total > int64(len(list)) {
		more = fmt.Sprintf(" and %d more", total-int64(len(list)))
	}
	return fmt.Errorf("%w: %s: %s%s", ErrInvalidImport, what, strings.Join(list, "; "), more)
}

// applyImport writes the validated rows of src (canopy_import, or one chunk
// of it) and returns how many entities it inserted and updated. Only new and
// changed rows are touched, so re-importing the same file writes nothing.
// The caller holds the hierarchy lock.
func applyImport(ctx context.Context, tx pgx.Tx, src string) (inserted, updated int64, err error) {
	// effective: '-infinity' for new entities; for changed ones now(), or
	// the current version's start if that lies in the future, so intervals
	// never run backwards.
	if _, err := tx.Exec(ctx, `
		create temp table canopy_import_delta on commit drop as
		select i.id, i.parent_id, i.status, i.name, e.id is null as is_new,
		       case when e.id is null then '-infinity'::timestamptz
		            else greatest(now(), (select h.valid_from from canopy.entity_history h
		                                   where h.id = e.id and h.valid_to is null))
		       end as effective
		  from `+src+` i
		  left join canopy.entities e on e.id = i.id
		 where e.id is null
		    or e.parent_id is distinct from i.parent_id
		    or e.status <> i.status
		    or e.name is distinct from i.name`); err != nil {
		return 0, 0, fmt.Errorf("compute changes: %w", err)
	}
	if err := tx.QueryRow(ctx, `select count(*) filter (where is_new), count(*) filter (where not is_new)
		from canopy_import_delta`).Scan(&inserted, &updated); err != nil {
		return 0, 0, fmt.Errorf("compute changes: %w", err)
	}
	if inserted+updated == 0 {
		return 0, 0, nil
	}
	steps := []struct{ what, sql string }{
		{"bulk mode", `select set_config('canopy.bulk', 'on', true)`},
		{"write entities", `
			insert into canopy.entities as e (id, parent_id, status, name, updated_at)
			select id, parent_id, status, name, now() from canopy_import_delta
			on conflict (id) do update
			   set parent_id = excluded.parent_id, status = excluded.status,
			       name = excluded.name, updated_at = excluded.updated_at`},
		{"close history", `
			update canopy.entity_history h
			   set valid_to = d.effective
			  from canopy_import_delta d
			 where h.id = d.id and not d.is_new and h.valid_to is null`},
		{"write history", `
			insert into canopy.entity_history (id, parent_id, status, name, valid_from)
			select id, parent_id, status, name, effective from canopy_import_delta order by id`},
		{"write outbox", `
			insert into canopy.outbox (entity_id, op, parent_id, status, name, effective_at, history_seq)
			select d.id, case when d.is_new then 'insert' else 'update' end, d.parent_id, d.status, d.name, d.effective, h.seq
			  from canopy_import_delta d
			  join canopy.entity_history h on h.id = d.id and h.valid_to is null
			 order by h.seq`},
		{"bulk mode off", `select set_config('canopy.bulk', 'off', true)`},
	}
	for _, s := range steps {
		if _, err := tx.Exec(ctx, s.sql); err != nil {
			return 0, 0, fmt.Errorf("%s: %w", s.what, classify(err))
		}
	}
	return inserted, updated, nil
}

// csvSource feeds parsed CSV rows to COPY. Parsing errors stop the copy and
// are kept in err, so Import can report them instead of COPY's wrapper.
type csvSource struct {
	r        *csv.Reader
	progress ProgressFunc
	cols     [4]int // index in the record of id, parent_id, status, name; -1 = absent
	first    bool
	line     int64
	rows     int64
	vals     []any
	err      error
}

func newCSVSource(r io.Reader, progress ProgressFunc) *csvSource {
	cr := csv.NewReader(r)
	cr.ReuseRecord = true
	cr.FieldsPerRecord = -1
	return &csvSource{r: cr, progress: progress, cols: [4]int{0, 1, 2, 3}, first: true, vals: make([]any, 5)}
}

var importColumns = [4]string{"id", "parent_id", "status", "name"}

func (s *csvSource) Next() bool {
	for {
		rec, err := s.r.Read()
		if err == io.EOF {
			return false
		}
		if err != nil {
			s.err = fmt.Errorf("%w: %v", ErrInvalidImport, err)
			return false
		}
		line, _ := s.r.FieldPos(0)
		s.line = int64(line)
		if len(rec) == 1 && rec[0] == "" {
			continue // blank line
		}
		if s.first {
			s.first = false
			if _, err := strconv.ParseInt(strings.TrimSpace(rec[0]), 10, 64); err != nil {
				if s.err = s.header(rec); s.err != nil {
					return false
				}
				continue
			}
		}
		if s.err = s.parse(rec); s.err != nil {
			return false
		}
		s.rows++
		if s.rows%progressEvery == 0 {
			s.progress("read", s.rows)
		}
		return true
	}
}

func (s *csvSource) header(rec []string) error {
	s.cols = [4]int{-1, -1, -1, -1}
	for i, name := range rec {
		name = strings.ToLower(strings.TrimSpace(name))
		if i == 0 {
			name = strings.TrimPrefix(name, "\ufeff")
		}
		found := false
		for c, want := range importColumns {
			if name == want {
				if s.cols[c] >= 0 {
					return fmt.Errorf("%w: line %d: column %q appears twice", ErrInvalidImport, s.line, name)
				}
				s.cols[c], found = i, true
			}
		}
		if !found {
			return fmt.Errorf("%w: line %d: unknown column %q (want id, parent_id, status, name)", ErrInvalidImport, s.line, name)
		}
	}
	if s.cols[0] < 0 {
		return fmt.Errorf("%w: line %d: header has no id column", ErrInvalidImport, s.line)
	}
	return nil
}

func (s *csvSource) parse(rec []string) error {
	field := func(c int) string {
		if i := s.cols[c]; i >= 0 && i < len(rec) {
			return strings.TrimSpace(rec[i])
		}
		return ""
	}
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: line %d: %s", ErrInvalidImport, s.line, fmt.Sprintf(format, args...))
	}
	if len(rec) > len(importColumns) {
		return bad("%d fields, want at most %d (id,parent_id,status,name)", len(rec), len(importColumns))
	}
	id, err := strconv.ParseInt(field(0), 10, 64)
	if err != nil || id <= 0 {
		return bad("id %q is not a positive integer", field(0))
	}
	s.vals[0], s.vals[1], s.vals[2] = s.line, id, nil
	if p := field(1); p != "" {
		parent, err := strconv.ParseInt(p, 10, 64)
		switch {
		case err != nil || parent <= 0:
			return bad("parent_id %q is not a positive integer", p)
		case parent == id:
			return bad("entity %d is its own parent", id)
		}
		s.vals[2] = parent
	}
	status := StatusActive
	if st := field(2); st != "" {
		if status, err = ParseStatus(st); err != nil {
			return bad("entity %d: %v", id, err)
		}
	}
	s.vals[3] = status.String()
	s.vals[4] = nil
	if i := s.cols[3]; i >= 0 && i < len(rec) && rec[i] != "" {
		s.vals[4] = rec[i] // names keep their spaces
	}
	return nil
}

func (s *csvSource) Values() ([]any, error) { return s.vals, nil }

func (s *csvSource) Err() error { return s.err }
