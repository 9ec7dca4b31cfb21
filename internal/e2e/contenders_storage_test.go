package e2e

import (
	"cmp"
	"context"
	"fmt"
	"maps"
	"math"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// canopyTables are the ClickHouse tables a Canopy worker writes.
var canopyTables = []string{"events", "rollup_hourly", "rollup_daily", "rollup_daily_current", "ingest_acks"}

// tableStorage is one ClickHouse table's active parts after a contender's
// ingest.
type tableStorage struct {
	contender, table         string
	events                   int // the contender's ingest run
	rows, onDisk, compressed uint64
	parts                    uint64
}

func (s tableStorage) perEvent(v uint64) float64 { return float64(v) / float64(s.events) }

// storage reads the active parts of tables in e's ClickHouse database from
// system.parts (18.16 has rows, bytes_on_disk and data_compressed_bytes). A
// table without parts is reported with zeros.
func (e *env) storage(b *testing.B, contender string, events int, tables ...string) []tableStorage {
	ctx := context.Background()
	quoted := make([]string, len(tables))
	for i, t := range tables {
		quoted[i] = "'" + t + "'"
	}
	rows, err := e.ch.Query(ctx, fmt.Sprintf(`SELECT table, sum(rows), sum(bytes_on_disk), sum(data_compressed_bytes), count()
		FROM system.parts WHERE database = ? AND active AND table IN (%s) GROUP BY table`, strings.Join(quoted, ", ")), e.chDB)
	if err != nil {
		b.Fatalf("system.parts: %v", err)
	}
	defer func() { _ = rows.Close() }()
	got := map[string]tableStorage{}
	for rows.Next() {
		var s tableStorage
		if err := rows.Scan(&s.table, &s.rows, &s.onDisk, &s.compressed, &s.parts); err != nil {
			b.Fatalf("system.parts: %v", err)
		}
		got[s.table] = s
	}
	if err := rows.Err(); err != nil {
		b.Fatalf("system.parts: %v", err)
	}
	out := make([]tableStorage, len(tables))
	for i, t := range tables {
		s := got[t]
		s.contender, s.table, s.events = contender, t, events
		out[i] = s
	}
	return out
}

// pgInserts is n_tup_ins of every table of the canopy schema in e's
// PostgreSQL database. The counters reach pg_stat_user_tables when a
// backend flushes its statistics (at most once a second, and when it
// exits), so it reads until two readings a second apart agree, for at most
// 15 seconds.
func (e *env) pgInserts(b *testing.B) map[string]int64 {
	ctx := context.Background()
	read := func() map[string]int64 {
		rows, err := e.pg.Query(ctx, "select relname, n_tup_ins from pg_stat_user_tables where schemaname = 'canopy'")
		if err != nil {
			b.Fatalf("pg_stat_user_tables: %v", err)
		}
		defer rows.Close()
		out := map[string]int64{}
		for rows.Next() {
			var name string
			var n int64
			if err := rows.Scan(&name, &n); err != nil {
				b.Fatalf("pg_stat_user_tables: %v", err)
			}
			out[name] = n
		}
		if err := rows.Err(); err != nil {
			b.Fatalf("pg_stat_user_tables: %v", err)
		}
		return out
	}
	last := read()
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); {
		time.Sleep(time.Second)
		cur := read()
		if maps.Equal(cur, last) {
			break
		}
		last = cur
	}
	return last
}

// insertsSince is the rows inserted into each table since before, without
// the tables that had none.
func insertsSince(before, after map[string]int64) map[string]int64 {
	out := map[string]int64{}
	for t, n := range after {
		if d := n - before[t]; d != 0 {
			out[t] = d
		}
	}
	return out
}

// formatInserts renders rows inserted per event, in total and by table
// (largest first).
func formatInserts(ins map[string]int64, events int) (total string, byTable string) {
	var sum int64
	names := slices.Collect(maps.Keys(ins))
	slices.SortFunc(names, func(a, b string) int {
		return cmp.Or(cmp.Compare(ins[b], ins[a]), strings.Compare(a, b))
	})
	var parts []string
	for _, t := range names {
		sum += ins[t]
		parts = append(parts, t+" "+perEvent(float64(ins[t])/float64(events)))
	}
	if len(parts) == 0 {
		parts = []string{"none"}
	}
	return perEvent(float64(sum) / float64(events)), strings.Join(parts, " · ")
}

// perEvent formats a per-event figure: three significant digits, or two
// below 0.1 (an ack per batch is a small fraction of a row), never in
// exponent form.
func perEvent(v float64) string {
	switch {
	case v == 0:
		return "0"
	case v >= 100:
		return fmt.Sprintf("%.0f", v)
	case v >= 10:
		return fmt.Sprintf("%.1f", v)
	case v >= 0.1:
		return fmt.Sprintf("%.2f", v)
	}
	return strconv.FormatFloat(v, 'f', 1-int(math.Floor(math.Log10(v))), 64)
}
