// Package pgsource reads backfill events from a PostgreSQL query.
//
// The query runs once, in one read-only snapshot, and its rows are spooled
// to an NDJSON file before anything is ingested. The backfill then reads the
// spool like any file: a backfill killed and started again reads the very
// rows of its first run, in the same order, even if the source tables
// changed meanwhile, so its batches replay exactly. The spool is removed
// when the backfill finishes.
//
// It imports ingest (the backfill source contract) only.
package pgsource

import (
	"bufio"
	"context"
	"crypto/sha256"
	"database/sql/driver"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/canopyhq/canopy/ingest"
)

// Required are the event fields every query must provide.
var Required = []string{"event_id", "entity_id", "occurred_at", "type"}

// Query is a PostgreSQL backfill source.
type Query struct {
	DSN string
	SQL string
	// Map names the column of an event field when they differ
	// (field → column). Other fields are taken from the column of the same
	// name, if any.
	Map map[string]string
	// Fields are the event fields to fill: Required, then the measures.
	Fields []string
}

// Label is the source name of the query's records in the ledger and in
// ingest_acks: the same query, DSN and mapping give the same name.
func (q Query) Label() string { return "postgres:" + q.key()[:16] }

func (q Query) key() string {
	h := sha256.New()
	fmt.Fprintf(h, "%s\x00%s\x00", q.DSN, q.SQL)
	keys := make([]string, 0, len(q.Map))
	for k := range q.Map {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintf(h, "%s=%s\x00", k, q.Map[k])
	}
	return hex.EncodeToString(h.Sum(nil))[:32]
}

// ParseMap parses "field=column,field=column".
func ParseMap(s string, fields []string) (map[string]string, error) {
	out := map[string]string{}
	if strings.TrimSpace(s) == "" {
		return out, nil
	}
	known := map[string]bool{}
	for _, f := range fields {
		known[f] = true
	}
	for _, kv := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(kv, "=")
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		if !ok || k == "" || v == "" {
			return nil, fmt.Errorf("--map: %q is not field=column", kv)
		}
		if !known[k] {
			return nil, fmt.Errorf("--map: %s is not an event field (fields: %s)", k, strings.Join(fields, ", "))
		}
		out[k] = v
	}
	return out, nil
}

// Spool checks the query's columns, then runs it and writes its rows to an
// NDJSON file in dir, returned as a backfill input. A complete spool of the
// same query left by an interrupted run is reused as it is. A bad DSN, a
// query PostgreSQL refuses or a missing required column is an error before
// anything is written. progress, if set, is called with the rows spooled.
func Spool(ctx context.Context, q Query, dir string, progress func(rows int64)) (ingest.InputFile, error) {
	path := filepath.Join(dir, q.key()+".ndjson")
	if _, err := os.Stat(path); err == nil {
		f, err := ingest.OpenInput(path)
		f.Label = q.Label()
		return f, err
	}
	cfg, err := pgx.ParseConfig(q.DSN)
	if err != nil {
		return ingest.InputFile{}, fmt.Errorf("postgres source DSN: %w", err)
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return ingest.InputFile{}, fmt.Errorf("postgres source: %w", err)
	}
	defer func() { _ = conn.Close(context.Background()) }()
	tx, err := conn.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return ingest.InputFile{}, fmt.Errorf("postgres source: %w", err)
	}
	defer func() { _ = tx.Rollback(context.Background()) }()
	desc, err := tx.Prepare(ctx, "", q.SQL)
	if err != nil {
		return ingest.InputFile{}, fmt.Errorf("postgres source query: %w", err)
	}
	index, err := q.columns(desc.Fields)
	if err != nil {
		return ingest.InputFile{}, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return ingest.InputFile{}, err
	}
	tmp, err := os.CreateTemp(dir, q.key()+".*.tmp")
	if err != nil {
		return ingest.InputFile{}, err
	}
	defer func() { _ = os.Remove(tmp.Name()) }()
	w := bufio.NewWriterSize(tmp, 1<<20)
	rows, err := tx.Query(ctx, q.SQL)
	if err != nil {
		_ = tmp.Close()
		return ingest.InputFile{}, fmt.Errorf("postgres source query: %w", err)
	}
	vals := make([]string, len(q.Fields))
	var (
		n    int64
		verr error
	)
	for rows.Next() {
		raw, err := rows.Values()
		if err != nil {
			verr = fmt.Errorf("row %d: %w", n+1, err)
			break
		}
		for i, c := range index {
			vals[i] = ""
			if c >= 0 {
				vals[i] = text(raw[c])
			}
		}
		_, _ = w.Write(ingest.RowJSON(q.Fields, vals))
		_ = w.WriteByte('\n')
		if n++; progress != nil && n%10000 == 0 {
			progress(n)
		}
	}
	rows.Close()
	err = errors.Join(verr, rows.Err(), w.Flush(), tmp.Sync(), tmp.Close())
	if err != nil {
		return ingest.InputFile{}, fmt.Errorf("postgres source query: %w", err)
	}
	if progress != nil {
		progress(n)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return ingest.InputFile{}, err
	}
	f, err := ingest.OpenInput(path)
	f.Label = q.Label()
	return f, err
}

// columns maps each field to its column's index (-1: none).
func (q Query) columns(fields []pgconn.FieldDescription) ([]int, error) {
	byName := map[string]int{}
	var names []string
	for i, f := range fields {
		byName[f.Name] = i
		names = append(names, f.Name)
	}
	index := make([]int, len(q.Fields))
	for i, field := range q.Fields {
		col, mapped := q.Map[field]
		if !mapped {
			col = field
		}
		c, ok := byName[col]
		switch {
		case ok:
			index[i] = c
		case mapped:
			return nil, fmt.Errorf("postgres source query: --map %s=%s: the query has no column %s (it has %s)", field, col, col, strings.Join(names, ", "))
		case isRequired(field):
			return nil, fmt.Errorf("postgres source query: no column for %s (it has %s); name one %s or add --map %s=COLUMN", field, strings.Join(names, ", "), field, field)
		default:
			index[i] = -1
		}
	}
	return index, nil
}

func isRequired(f string) bool {
	for _, r := range Required {
		if r == f {
			return true
		}
	}
	return false
}

// text renders a column value as the event field's text: times in RFC 3339
// (UTC), numbers exactly as PostgreSQL holds them, NULL as missing.
func text(v any) string {
	switch v := v.(type) {
	case nil:
		return ""
	case string:
		return v
	case time.Time:
		return v.UTC().Format(time.RFC3339Nano)
	case int64:
		return strconv.FormatInt(v, 10)
	case int32:
		return strconv.FormatInt(int64(v), 10)
	case int16:
		return strconv.FormatInt(int64(v), 10)
	case float64:
		return strconv.FormatFloat(v, 'f', -1, 64)
	case float32:
		return strconv.FormatFloat(float64(v), 'f', -1, 32)
	case bool:
		return strconv.FormatBool(v)
	case []byte:
		return string(v)
	case [16]byte:
		return fmt.Sprintf("%x-%x-%x-%x-%x", v[0:4], v[4:6], v[6:8], v[8:10], v[10:16])
	case pgtype.Numeric:
		s, err := v.Value()
		if err == nil && s == nil {
			return "" // NULL
		}
		if s, ok := s.(string); ok && err == nil {
			return s
		}
	case driver.Valuer:
		if s, err := v.Value(); err == nil && s != nil {
			return fmt.Sprint(s)
		}
		return ""
	}
	return fmt.Sprint(v)
}
