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
}

// ProgressFunc reports an import's phase ("read", "validate", "apply",
// "done") and the rows read so far. It runs on the importing goroutine.
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
// It is all-or-nothing: the file is copied into a temporary table and
// checked with set-based queries (duplicate ids, unknown parents, cycles,
// new children of an already closed entity not in the file) while holding
// the hierarchy lock, then applied in the same transaction with the row
// triggers switched off (canopy.bulk = 'on'); history and outbox rows are
// written in bulk instead. Entities new to the table get a history row
// valid from '-infinity' (they always existed); changed ones close their
// current row and open a new one at now().
//
// Errors in the file wrap ErrInvalidImport and name the first few
// offending lines. Cancelling ctx rolls everything back.
func Import(ctx context.Context, pool *pgxpool.Pool, r io.Reader, opts ImportOptions) (ImportStats, error) {
	start := time.Now()
	progress := opts.Progress
	if progress == nil {
		progress = func(string, int64) {}
	}
	var stats ImportStats
	err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `create temp table canopy_import (
				line bigint not null, id bigint not null, parent_id bigint,
				status text not null, name text
			) on commit drop`); err != nil {
			return err
		}
		src := newCSVSource(r, progress)
		n, err := tx.CopyFrom(ctx, pgx.Identifier{"canopy_import"},
			[]string{"line", "id", "parent_id", "status", "name"}, src)
		if src.err != nil {
			return src.err // the reader's own error, not the one COPY reports for it
		}
		if err != nil {
			return err
		}
		stats.Rows = n
		progress("validate", n)
		if err := validateImport(ctx, tx); err != nil {
			return err
		}
		progress("apply", n)
		if err := applyImport(ctx, tx, &stats); err != nil {
			return err
		}
		if opts.DryRun {
			return errDryRun
		}
		return nil
	})
	if errors.Is(err, errDryRun) {
		err = nil
	}
	stats.Elapsed = time.Since(start)
	if err != nil {
		return stats, fmt.Errorf("hierarchy: import: %w", err)
	}
	progress("done", stats.Rows)
	return stats, nil
}

var errDryRun = errors.New("dry run")

// validateImport checks the rules the row triggers would check, for the
// whole file at once. The hierarchy lock is taken first so that nobody
// changes canopy.entities between these checks and the writes.
func validateImport(ctx context.Context, tx pgx.Tx) error {
	if err := rejectRows(ctx, tx, "duplicate id", `
		select min(line), id, null::bigint, count(*) over ()
		  from canopy_import group by id having count(*) > 1
		 order by 1 limit $1`); err != nil {
		return err
	}
	if _, err := tx.Exec(ctx, `create unique index on canopy_import (id);
		analyze canopy_import;
		select pg_advisory_xact_lock(`+strconv.FormatInt(lockKey, 10)+`)`); err != nil {
		return err
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
	// A file may describe a closed entity together with its former members
	// (it is a snapshot), but may not attach anything new to an entity that
	// is already closed and that the file leaves alone.
	if err := rejectRows(ctx, tx, "new child of a closed parent", `
		select i.line, i.id, i.parent_id, count(*) over ()
		  from canopy_import i
		  join canopy.entities p on p.id = i.parent_id and p.status = 'closed'
		  left join canopy.entities e on e.id = i.id
		 where not exists (select 1 from canopy_import f where f.id = i.parent_id)
		   and (e.id is null or e.parent_id is distinct from i.parent_id)
		 order by i.line limit $1`); err != nil {
		return err
	}
	// With every parent known, an entity whose chain never reaches a root
	// is on, or under, a cycle. Walk down from the roots of the resulting
	// forest (file rows replacing table rows) and see who is left out.
	if _, err := tx.Exec(ctx, `
		create temp table canopy_import_graph on commit drop as
			select id, parent_id from canopy_import
			union all
			select e.id, e.parent_id from canopy.entities e
			 where not exists (select 1 from canopy_import i where i.id = e.id);
		create index on canopy_import_graph (parent_id);
		analyze canopy_import_graph`); err != nil {
		return err
	}
	return rejectRows(ctx, tx, "cycle", `
		with recursive reach(id) as (
			select id from canopy_import_graph where parent_id is null
			union all
			select g.id from reach r join canopy_import_graph g on g.parent_id = r.id
		)
		select i.line, i.id, i.parent_id, count(*) over ()
		  from canopy_import i
		 where not exists (select 1 from reach r where r.id = i.id)
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

// applyImport writes the validated file. Only new and changed rows are
// touched, so re-importing the same file writes nothing.
func applyImport(ctx context.Context, tx pgx.Tx, stats *ImportStats) error {
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
		  from canopy_import i
		  left join canopy.entities e on e.id = i.id
		 where e.id is null
		    or e.parent_id is distinct from i.parent_id
		    or e.status <> i.status
		    or e.name is distinct from i.name`); err != nil {
		return fmt.Errorf("compute changes: %w", err)
	}
	if err := tx.QueryRow(ctx, `select count(*) filter (where is_new), count(*) filter (where not is_new)
		from canopy_import_delta`).Scan(&stats.Inserted, &stats.Updated); err != nil {
		return fmt.Errorf("compute changes: %w", err)
	}
	stats.Unchanged = stats.Rows - stats.Inserted - stats.Updated
	if stats.Inserted+stats.Updated == 0 {
		return nil
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
			return fmt.Errorf("%s: %w", s.what, classify(err))
		}
	}
	return nil
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
