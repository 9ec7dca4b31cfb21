package main

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/spf13/cobra"

	"github.com/canopyhq/canopy/dashboards"
)

type showOptions struct {
	days   int
	asIs   bool
	top    int
	format string
}

func newShow(cfg *config) *cobra.Command {
	var o showOptions
	cmd := &cobra.Command{
		Use:   "show ENTITY",
		Short: "An entity's numbers in the terminal: chain, own vs downline, events per day, top children",
		Long: `show prints what the Entity overview dashboard shows, for people without
Grafana: the entity (id, name, status, level) and its chain (root … self),
per measure its own events' sums (depth 0), its downline's (depth > 0) and
the total over the last --days days (UTC, today included), a sparkline of the
total events per day, and its --top children by total events.

It runs the dashboard's own queries (dashboards.OverviewSQL) on the same
tables: rollup_daily (as-was: each event under the chain it had when it
occurred) or, with --as-is, rollup_daily_current (every event under the
current chain). The chain printed is the current one (ClickHouse's
entities table) in both views.

It logs in as clickhouse.reader_user when clickhouse.reader_password is set,
else as clickhouse.dsn's user.

--format=tsv prints one record per line, tab-separated, for scripts:
  entity  ID NAME STATUS LEVEL PARENT_ID
  chain   ID NAME                      (root first, one line each)
  view    TABLE FROM TO                (dates, inclusive)
  measure NAME OWN DOWNLINE TOTAL      (events first, then the measures)
  day     DATE EVENTS                  (total events; every day, 0 included)
  child   ID NAME EVENTS OWN DOWNLINE TOTAL   (OWN, DOWNLINE, TOTAL of the
          rank measure, the first decimal measure; by EVENTS descending)

Exit codes: 0 ok; 1 for an entity id that is not a whole number >= 1 or is
not in the hierarchy, or a failed query; 2 for bad flags.`,
		Example: `  canopy show 1
  canopy show 42 --days 7 --as-is --top 10
  canopy show 42 --format tsv`,
		Args: args(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, a []string) error {
			return runShow(cmd.Context(), cfg, cmd.OutOrStdout(), a[0], o)
		},
	}
	f := cmd.Flags()
	f.IntVar(&o.days, "days", 30, "days shown, ending today (UTC), 1 to 3660")
	f.BoolVar(&o.asIs, "as-is", false, "attribute through the current hierarchy (rollup_daily_current) instead of as-was (rollup_daily)")
	f.IntVar(&o.top, "top", 5, "children listed, 0 to 1000")
	f.StringVar(&o.format, "format", "text", "text|tsv")
	// "canopy show -5" reaches pflag as a shorthand flag: say what is wrong
	// with the id instead.
	cmd.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		if m := negativeArg.FindStringSubmatch(err.Error()); m != nil {
			return badEntity(m[1], "not a whole number >= 1")
		}
		return usageError{err}
	})
	return cmd
}

var negativeArg = regexp.MustCompile(`^unknown shorthand flag: '\d' in (-\d+)$`)

func badEntity(arg, why string) error {
	return fmt.Errorf("entity id %q: %s", arg, why)
}

// shown is what show prints.
type shown struct {
	id, parent   uint64
	name, status string
	level        uint8
	chain        [][2]string // id, name; root first
	table        string
	from, to     time.Time
	measures     [][4]string // name, own, downline, total
	days         []int64     // total events per day from from
	rank         string
	children     [][6]string // id, name, events, own, downline, total
}

func runShow(ctx context.Context, cfg *config, out io.Writer, arg string, o showOptions) error {
	if o.days < 1 || o.days > 3660 {
		return usageError{fmt.Errorf("--days %d: want 1 to 3660", o.days)}
	}
	if o.top < 0 || o.top > 1000 {
		return usageError{fmt.Errorf("--top %d: want 0 to 1000", o.top)}
	}
	if o.format != "text" && o.format != "tsv" {
		return usageError{fmt.Errorf("--format %q: want text or tsv", o.format)}
	}
	id, err := strconv.ParseInt(arg, 10, 64)
	if err != nil || id < 1 {
		return badEntity(arg, "not a whole number >= 1")
	}
	chs, err := cfg.chSchema()
	if err != nil {
		return usageError{err}
	}
	var ch driver.Conn
	if pw := cfg.get("clickhouse.reader_password"); pw != "" {
		ch, err = openClickHouseAs(ctx, cfg, cfg.get("clickhouse.reader_user"), pw)
	} else {
		ch, err = openClickHouse(ctx, cfg)
	}
	if err != nil {
		return err
	}
	defer func() { _ = ch.Close() }()

	s := shown{table: dashboards.ViewTables[0]}
	if o.asIs {
		s.table = dashboards.ViewTables[1]
	}
	s.to = time.Now().UTC().Truncate(24 * time.Hour)
	s.from = s.to.AddDate(0, 0, 1-o.days)
	date := func(t time.Time) string { return "toDate('" + t.Format(time.DateOnly) + "')" }
	q := dashboards.OverviewSQL{
		Database: chs.Database, Measures: chs.Measures, EntityID: strconv.FormatInt(id, 10),
		View:       "'" + s.table + "'",
		DateFilter: "bucket >= " + date(s.from) + " AND bucket <= " + date(s.to),
		TimeFilter: fmt.Sprintf("bucket >= toDateTime(%d) AND bucket < toDateTime(%d)", s.from.Unix(), s.to.AddDate(0, 0, 1).Unix()),
		Hourly:     "0", // one point a day
	}
	s.rank = q.RankMeasure()
	if err := s.read(ctx, ch, q, id, o.top); err != nil {
		return err
	}
	if o.format == "tsv" {
		return s.tsv(out)
	}
	return s.text(out, o.asIs)
}

func (s *shown) read(ctx context.Context, ch driver.Conn, q dashboards.OverviewSQL, id int64, top int) error {
	var path string
	err := ch.QueryRow(ctx, q.Entity()).Scan(&s.id, &s.name, &s.status, &s.level, &s.parent, &path)
	if errors.Is(err, sql.ErrNoRows) {
		return badEntity(strconv.FormatInt(id, 10), fmt.Sprintf("no such entity in %s.entities (the hierarchy ClickHouse holds)", q.Database))
	}
	if err != nil {
		return fmt.Errorf("read entity %d: %w", id, err)
	}
	names := map[string]string{}
	if err := each(ctx, ch, q.Chain(), func(r driver.Rows) error {
		var cid uint64
		var name string
		if err := r.Scan(&cid, &name); err != nil {
			return err
		}
		names[strconv.FormatUint(cid, 10)] = name
		return nil
	}); err != nil {
		return fmt.Errorf("read chain of %d: %w", id, err)
	}
	for _, p := range strings.Split(path, " › ") {
		s.chain = append(s.chain, [2]string{p, names[p]})
	}
	for _, m := range q.Columns() {
		var own, down, total string
		query := "SELECT toString(own), toString(downline), toString(own + downline) FROM (" + q.OwnDownline(m) + "\n)"
		if err := ch.QueryRow(ctx, query).Scan(&own, &down, &total); err != nil {
			return fmt.Errorf("read %s of %d: %w", m, id, err)
		}
		s.measures = append(s.measures, [4]string{m, own, down, total})
	}
	n := int(s.to.Sub(s.from).Hours()/24) + 1
	s.days = make([]int64, n)
	query := "SELECT toUInt32(toDate(time)), toString(own + downline) FROM (" + q.Series("events") + "\n)"
	if err := each(ctx, ch, query, func(r driver.Rows) error {
		var day uint32
		var total string
		if err := r.Scan(&day, &total); err != nil {
			return err
		}
		v, err := strconv.ParseInt(total, 10, 64)
		if err != nil {
			return err
		}
		if i := int((int64(day)*86400 - s.from.Unix()) / 86400); i >= 0 && i < n {
			s.days[i] += v
		}
		return nil
	}); err != nil {
		return fmt.Errorf("read events per day of %d: %w", id, err)
	}
	if top == 0 {
		return nil
	}
	query = "SELECT toString(id), name, toString(events), toString(own), toString(downline), toString(total) FROM (" +
		q.Children("events DESC, id", top) + "\n)\nORDER BY events DESC, id"
	if err := each(ctx, ch, query, func(r driver.Rows) error {
		var c [6]string
		if err := r.Scan(&c[0], &c[1], &c[2], &c[3], &c[4], &c[5]); err != nil {
			return err
		}
		s.children = append(s.children, c)
		return nil
	}); err != nil {
		return fmt.Errorf("read children of %d: %w", id, err)
	}
	return nil
}

// each runs sql and calls fn for every row.
func each(ctx context.Context, ch driver.Conn, query string, fn func(driver.Rows) error) error {
	rows, err := ch.Query(ctx, query)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		if err := fn(rows); err != nil {
			return err
		}
	}
	return rows.Err()
}

func (s *shown) tsv(out io.Writer) error {
	clean := func(v string) string { return strings.NewReplacer("\t", " ", "\n", " ").Replace(v) }
	var b strings.Builder
	fmt.Fprintf(&b, "entity\t%d\t%s\t%s\t%d\t%d\n", s.id, clean(s.name), s.status, s.level, s.parent)
	for _, c := range s.chain {
		fmt.Fprintf(&b, "chain\t%s\t%s\n", c[0], clean(c[1]))
	}
	fmt.Fprintf(&b, "view\t%s\t%s\t%s\n", s.table, s.from.Format(time.DateOnly), s.to.Format(time.DateOnly))
	for _, m := range s.measures {
		fmt.Fprintf(&b, "measure\t%s\t%s\t%s\t%s\n", m[0], m[1], m[2], m[3])
	}
	for i, v := range s.days {
		fmt.Fprintf(&b, "day\t%s\t%d\n", s.from.AddDate(0, 0, i).Format(time.DateOnly), v)
	}
	for _, c := range s.children {
		fmt.Fprintf(&b, "child\t%s\t%s\t%s\t%s\t%s\t%s\n", c[0], clean(c[1]), c[2], c[3], c[4], c[5])
	}
	_, err := io.WriteString(out, b.String())
	return err
}

func (s *shown) text(out io.Writer, asIs bool) error {
	tw := tabwriter.NewWriter(out, 2, 4, 2, ' ', 0)
	view := "as-was: each event under the chain it had when it occurred"
	if asIs {
		view = "as-is: every event under the current chain"
	}
	fmt.Fprintf(tw, "%s (%d)\t%s, level %d\n", s.name, s.id, s.status, s.level)
	var chain []string
	for _, c := range s.chain {
		chain = append(chain, fmt.Sprintf("%s (%s)", c[1], c[0]))
	}
	fmt.Fprintf(tw, "chain\t%s\n", strings.Join(chain, " › "))
	fmt.Fprintf(tw, "view\t%s (%s)\n", view, s.table)
	fmt.Fprintf(tw, "days\t%s … %s UTC (%d)\n\n", s.from.Format(time.DateOnly), s.to.Format(time.DateOnly), len(s.days))
	fmt.Fprintln(tw, "\town\tdownline\ttotal\t")
	for _, m := range s.measures {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t\n", m[0], m[1], m[2], m[3])
	}
	var sum, peak int64
	for _, v := range s.days {
		sum += v
		peak = max(peak, v)
	}
	fmt.Fprintf(tw, "\nevents/day\t%s\t(max %d, %d in all)\n", sparkline(s.days), peak, sum)
	if len(s.children) > 0 {
		fmt.Fprintf(tw, "\ntop children\tname\tevents\t%s own\t%s downline\t%s total\t\n", s.rank, s.rank, s.rank)
		for _, c := range s.children {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t\n", c[0], c[1], c[2], c[3], c[4], c[5])
		}
	}
	return tw.Flush()
}

// sparkline draws one block per value, its height proportional to the
// largest; a zero is a space.
func sparkline(vs []int64) string {
	const bars = "▁▂▃▄▅▆▇█"
	blocks := []rune(bars)
	var peak int64
	for _, v := range vs {
		peak = max(peak, v)
	}
	var b strings.Builder
	for _, v := range vs {
		if v <= 0 {
			b.WriteByte(' ')
			continue
		}
		i := int((v*int64(len(blocks)) - 1) / peak)
		b.WriteRune(blocks[min(i, len(blocks)-1)])
	}
	return b.String()
}
