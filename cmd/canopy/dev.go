package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/spf13/cobra"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"golang.org/x/sync/errgroup"

	"github.com/canopyhq/canopy/internal/synth"
	"github.com/canopyhq/canopy/schema"
)

type devOptions struct {
	dataDir     string
	entities    int
	events      int
	rate        float64
	duplicates  float64
	days        int
	seed        int64
	keepRunning bool
	timeout     time.Duration
	exitWhen    bool // --exit-when-done: the default now; kept so old scripts run
}

func newDev(cfg *config) *cobra.Command {
	var o devOptions
	cmd := &cobra.Command{
		Use:   "dev",
		Short: "Everything in one process: embedded Kafka (kfake), migrate, a demo hierarchy, generated events and a worker",
		Long: `dev runs the whole pipeline on an embedded Kafka-protocol broker (franz-go's kfake,
persisted under --data-dir) against the PostgreSQL and ClickHouse of the configured
DSNs (scripts/services up starts both). It migrates, imports a demo hierarchy of
--entities entities if the database has none, produces --events generated events
(--duplicates of them repeating an earlier event_id) at --rate per second, and runs
a worker. While that goes on it prints a progress line whenever something changed.

It is done when all of these hold, checked every second:
  - the broker acknowledged every produced event;
  - with ingest.dedup=partitioned, the workers' router group has committed the
    end of the events and retry topics (everything is copied to the by-id topic);
  - ingest_acks covers, partition by partition, every record that arrived in the
    processing topic (the by-id topic, or the events and retry topics under
    ingest.dedup=postgres) since dev started: each is accepted, a duplicate or
    dead-lettered, and its rollup rows are written (a batch is acknowledged
    after its writes);
  - the restater is idle: canopy.restate_state.restated_through has reached the
    latest hierarchy change, so the entities table and the as-is view are current.
Then it prints a summary (events accepted, duplicates, dead letters by class,
rows per ClickHouse table, time taken, events/s) and what to try next, and
stops the worker gracefully (exit 0). With --keep-running the worker stays up
after the summary until Ctrl-C. --timeout bounds the wait (exit 1 naming what
was still pending).`,
		Args: args(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := o.check(); err != nil {
				return err
			}
			return runDev(cmd.Context(), cfg, o, cmd.OutOrStdout())
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.dataDir, "data-dir", ".data/dev", "where the embedded broker keeps its log")
	f.IntVar(&o.entities, "entities", 10000, "size of the demo hierarchy, imported when the database has none (1 to 10,000,000)")
	f.IntVar(&o.events, "events", 200000, "events to produce (0 to 1,000,000,000)")
	f.Float64Var(&o.rate, "rate", 20000, "events per second (0 = as fast as possible)")
	f.Float64Var(&o.duplicates, "duplicates", 0, "fraction of the events that repeat an earlier event_id, from 0 to below 1 (each counts once)")
	f.IntVar(&o.days, "days", 1, "days of occurred_at the events span, ending now (1 to 3650)")
	f.Int64Var(&o.seed, "seed", 0, "random seed of the events (0 = from the clock)")
	f.BoolVar(&o.keepRunning, "keep-running", false, "keep the worker up after the summary, until Ctrl-C")
	f.DurationVar(&o.timeout, "timeout", 0, "give up (exit 1) if not done after this long (0 = wait as long as it takes)")
	f.BoolVar(&o.exitWhen, "exit-when-done", false, "")
	_ = f.MarkHidden("exit-when-done")
	return cmd
}

// check refuses out-of-range flags with a usage error naming the flag.
func (o devOptions) check() error {
	bad := func(flag string, v any, want string) error {
		return usageError{fmt.Errorf("--%s %v: want %s", flag, v, want)}
	}
	switch {
	case o.entities < 1 || o.entities > 10_000_000:
		return bad("entities", o.entities, "1 to 10,000,000")
	case o.events < 0 || o.events > 1_000_000_000:
		return bad("events", o.events, "0 to 1,000,000,000")
	case o.rate < 0 || math.IsNaN(o.rate) || math.IsInf(o.rate, 0):
		return bad("rate", o.rate, "0 (as fast as possible) or more")
	case !(o.duplicates >= 0 && o.duplicates < 1):
		return bad("duplicates", o.duplicates, "a fraction from 0 to below 1")
	case o.days < 1 || o.days > 3650:
		return bad("days", o.days, "1 to 3650")
	case o.timeout < 0:
		return bad("timeout", o.timeout, "0 (none) or a positive duration")
	}
	return nil
}

func runDev(ctx context.Context, cfg *config, o devOptions, out io.Writer) error {
	began := time.Now()
	log := cfg.logger()
	if err := os.MkdirAll(filepath.Join(o.dataDir, "kafka"), 0o755); err != nil { //nolint:gosec // a data dir
		return err
	}
	broker, err := kfake.NewCluster(
		kfake.NumBrokers(1),
		kfake.DataDir(filepath.Join(o.dataDir, "kafka")),
		kfake.SeedTopics(4, cfg.get("kafka.events_topic")),
		kfake.AllowAutoTopicCreation(),
		kfake.DefaultNumPartitions(4),
	)
	if err != nil {
		return fmt.Errorf("embedded kafka: %w", err)
	}
	defer broker.Close()
	cfg.byKey["kafka.brokers"].val = strings.Join(broker.ListenAddrs(), ",")
	// One worker in this process, on a broker of its own: a static group
	// membership meant for a deployed worker has no place here.
	cfg.byKey["kafka.instance_id"].val = ""
	if st := cfg.byKey["ingest.state_dir"]; st.val == st.def {
		st.val = filepath.Join(o.dataDir, "state") // beside the broker's log it indexes
	}
	log.Info("embedded kafka started", "brokers", cfg.get("kafka.brokers"), "data", o.dataDir)

	if err := runMigrate(ctx, cfg); err != nil {
		return err
	}
	pool, err := openPostgres(ctx, cfg)
	if err != nil {
		return err
	}
	defer pool.Close()
	var entities int64
	if err := pool.QueryRow(ctx, "select count(*) from canopy.entities").Scan(&entities); err != nil {
		return err
	}
	if entities == 0 {
		if err := runGen(ctx, cfg, genOptions{entities: o.entities, seed: 1, days: 1}); err != nil {
			return err
		}
		entities = int64(o.entities)
	}
	ch, err := openClickHouse(ctx, cfg)
	if err != nil {
		return err
	}
	defer func() { _ = ch.Close() }()
	chs, _ := cfg.chSchema()
	kcl, err := kgo.NewClient(cfg.kafkaOpts()...)
	if err != nil {
		return fmt.Errorf("kafka: %w", err)
	}
	defer kcl.Close()

	g, gctx := errgroup.WithContext(ctx)
	wctx, stopWorker := context.WithCancel(gctx)
	defer stopWorker()
	ready := make(chan string, 1)
	g.Go(func() error { return runWorker(wctx, cfg, ready) })
	var metricsAddr string
	select {
	case metricsAddr = <-ready:
	case <-gctx.Done():
		return g.Wait()
	}
	w := &devWatch{cfg: cfg, ch: ch, pg: pool, adm: kadm.NewClient(kcl), db: chs.Database, want: int64(o.events)}
	if err := w.baseline(gctx); err != nil {
		stopWorker()
		_ = g.Wait()
		return err
	}

	seed := o.seed
	if seed == 0 {
		seed = time.Now().UnixNano()
	}
	span := time.Duration(o.days) * 24 * time.Hour
	gen := synth.Events{Seed: seed, Count: o.events, Entities: entities, Start: time.Now().UTC().Add(-span), Span: span, Duplicates: o.duplicates}
	fmt.Fprintf(out, "canopy dev: %d events (seed %d, %.0f%% repeated ids) over %d entities, at %s; worker metrics on http://%s/metrics\n",
		o.events, seed, 100*o.duplicates, entities, rateText(o.rate), metricsAddr)
	producing := time.Now()
	g.Go(func() error {
		return produceEvents(gctx, cfg, gen, o.rate, &w.produced, nil)
	})
	g.Go(func() error {
		wait := w.wait
		if o.timeout > 0 {
			wait = func(ctx context.Context, out io.Writer) error {
				tctx, cancel := context.WithTimeout(ctx, o.timeout)
				defer cancel()
				err := w.wait(tctx, out)
				if errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
					return fmt.Errorf("dev: not done after --timeout %s; still %s", o.timeout, w.pending)
				}
				return err
			}
		}
		if err := wait(wctx, out); err != nil {
			if ctx.Err() != nil || errors.Is(err, context.Canceled) {
				return nil // Ctrl-C before the end
			}
			return err
		}
		if err := w.summary(gctx, out, began, producing, metricsAddr, o.keepRunning); err != nil {
			return err
		}
		if o.keepRunning {
			fmt.Fprintln(out, "\nThe worker keeps running (--keep-running); Ctrl-C stops it.")
			<-wctx.Done()
			return nil
		}
		stopWorker()
		return nil
	})
	err = g.Wait()
	if errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

func rateText(rate float64) string {
	if rate == 0 {
		return "full speed"
	}
	return fmt.Sprintf("%.0f/s", rate)
}

// devWatch follows a dev run to its end; see dev's help for the condition.
type devWatch struct {
	cfg  *config
	ch   driver.Conn
	pg   *pgxpool.Pool
	adm  *kadm.Client
	db   string
	want int64

	produced atomic.Int64 // acknowledged by the broker
	start    time.Time    // acks processed from here on are this run's
	base     map[string]map[int32]int64
	pending  string // what the last check waited for
	outcome  outcomes
}

type outcomes struct{ records, accepted, duplicates, dead, retried int64 }

// processing is the topics whose batches ingest_acks records.
func (w *devWatch) processing() []string {
	if w.cfg.partitioned() {
		return []string{w.cfg.get("kafka.byid_topic")}
	}
	return []string{w.cfg.get("kafka.events_topic"), w.cfg.get("kafka.retry_topic")}
}

// baseline takes the processing topics' end offsets before anything is
// produced: what arrives past them is this run's.
func (w *devWatch) baseline(ctx context.Context) error {
	w.start = time.Now().Add(-time.Second).Truncate(time.Second)
	w.base = map[string]map[int32]int64{}
	for _, t := range w.processing() {
		ends, err := w.ends(ctx, t)
		if err != nil {
			return err
		}
		w.base[t] = ends
	}
	return nil
}

func (w *devWatch) ends(ctx context.Context, topic string) (map[int32]int64, error) {
	lo, err := w.adm.ListEndOffsets(ctx, topic)
	if err != nil {
		return nil, fmt.Errorf("end offsets of %s: %w", topic, err)
	}
	out := map[int32]int64{}
	var terr error
	lo.Each(func(o kadm.ListedOffset) {
		if o.Err != nil {
			terr = fmt.Errorf("end offsets of %s: %w", topic, o.Err)
		}
		out[o.Partition] = max(o.Offset, 0)
	})
	return out, terr
}

// check reports whether the run is done; otherwise w.pending says what it
// waits for.
func (w *devWatch) check(ctx context.Context) (bool, error) {
	if p := w.produced.Load(); p < w.want {
		w.pending = fmt.Sprintf("producing (%d of %d events acknowledged by the broker)", p, w.want)
		return false, nil
	}
	if w.cfg.partitioned() {
		group := w.cfg.get("kafka.group") + ".router"
		committed, err := w.adm.FetchOffsets(ctx, group)
		if err != nil {
			return false, fmt.Errorf("offsets of %s: %w", group, err)
		}
		for _, t := range []string{w.cfg.get("kafka.events_topic"), w.cfg.get("kafka.retry_topic")} {
			ends, err := w.ends(ctx, t)
			if err != nil {
				return false, err
			}
			for p, end := range ends {
				if c, ok := committed.Lookup(t, p); end > 0 && (!ok || c.At < end) {
					w.pending = fmt.Sprintf("routing %s into %s (partition %d)", t, w.cfg.get("kafka.byid_topic"), p)
					return false, nil
				}
			}
		}
	}
	var sum outcomes
	covered := true
	w.pending = ""
	for _, t := range w.processing() {
		ends, err := w.ends(ctx, t)
		if err != nil {
			return false, err
		}
		got := map[int32]int64{}
		rows, err := w.ch.Query(ctx, fmt.Sprintf(`
			SELECT partition, first_offset, any(last_offset), any(records), any(accepted), any(duplicates), any(dead_lettered), any(retried)
			FROM %s.ingest_acks
			WHERE topic = ? AND processed_at >= toDateTime(%d)
			GROUP BY partition, first_offset`, w.db, w.start.Unix()), t)
		if err != nil {
			return false, fmt.Errorf("read ingest_acks: %w", err)
		}
		for rows.Next() {
			var (
				p                   int32
				first, last         int64
				rec, acc, dup, dead uint32
				retried             uint32
			)
			if err := rows.Scan(&p, &first, &last, &rec, &acc, &dup, &dead, &retried); err != nil {
				rows.Close()
				return false, err
			}
			b, end := w.base[t][p], ends[p]
			if last < b {
				continue // an earlier run's
			}
			got[p] += min(last, end-1) - max(first, b) + 1
			sum.records += int64(rec)
			sum.accepted += int64(acc)
			sum.duplicates += int64(dup)
			sum.dead += int64(dead)
			sum.retried += int64(retried)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return false, err
		}
		var have, need int64
		for p, end := range ends {
			have, need = have+min(got[p], end-w.base[t][p]), need+end-w.base[t][p]
			if got[p] < end-w.base[t][p] {
				covered = false
			}
		}
		if !covered && w.pending == "" {
			w.pending = fmt.Sprintf("ingesting %s (%d of %d records acknowledged)", t, have, need)
		}
	}
	w.outcome = sum
	if !covered {
		return false, nil
	}
	var done, latest int64
	if err := w.pg.QueryRow(ctx, `select restated_through,
		(select coalesce(max(seq), 0) from canopy.entity_history) from canopy.restate_state`).Scan(&done, &latest); err != nil {
		return false, fmt.Errorf("read restate state: %w", err)
	}
	if done < latest {
		w.pending = fmt.Sprintf("restating hierarchy changes (through %d of %d)", done, latest)
		return false, nil
	}
	w.pending = ""
	return true, nil
}

// wait checks every second until the run is done, printing a line whenever
// the numbers or what it waits for changed.
func (w *devWatch) wait(ctx context.Context, out io.Writer) error {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	var last string
	lastAt, lastAccepted := time.Now(), int64(0)
	for {
		done, err := w.check(ctx)
		if err != nil && ctx.Err() == nil {
			fmt.Fprintln(os.Stderr, "dev: check failed (retrying):", err)
		}
		if done {
			return nil
		}
		line := fmt.Sprintf("produced %d/%d  accepted %d  duplicates %d  dead letters %d  — %s",
			w.produced.Load(), w.want, w.outcome.accepted, w.outcome.duplicates, w.outcome.dead, w.pending)
		if line != last {
			rate := float64(w.outcome.accepted-lastAccepted) / time.Since(lastAt).Seconds()
			fmt.Fprintf(out, "%s  %s  (%.0f accepted/s)\n", time.Now().Format("15:04:05"), line, rate)
			last, lastAt, lastAccepted = line, time.Now(), w.outcome.accepted
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
	}
}

// devTables are the tables the summary counts, each with the key that
// identifies a row once merges have run (SummingMergeTree sums a key's
// rows into one and drops it when every sum is 0; ReplacingMergeTree keeps
// one row per key).
var devTables = []struct{ name, key, having string }{
	{schema.TableEvents, "", ""},
	{schema.TableRollupHourly, "entity_id, bucket, depth, type", "sum(events) != 0"},
	{schema.TableRollupDaily, "entity_id, bucket, depth, type", "sum(events) != 0"},
	{schema.TableRollupAsIs, "entity_id, bucket, depth, type", "sum(events) != 0"},
	{schema.TableEntities, "id", ""},
	{schema.TableAcks, "topic, partition, first_offset", ""},
	{schema.TableFailures, "source_topic, source_partition, source_offset", ""},
}

func (w *devWatch) summary(ctx context.Context, out io.Writer, began, producing time.Time, metricsAddr string, keep bool) error {
	took, ingest := time.Since(began), time.Since(producing)
	o := w.outcome
	classes, err := w.deadClasses(ctx)
	if err != nil {
		return err
	}
	line := func(key string, n any, rest string) { fmt.Fprintf(out, "  %-22s %10v%s\n", key, n, rest) }
	fmt.Fprintf(out, "\ndone in %s: every produced event is accepted, a duplicate or dead-lettered, and the rollups are written\n",
		took.Round(100*time.Millisecond))
	line("produced", w.want, "")
	line("accepted", o.accepted, fmt.Sprintf("   %.0f events/s over %s of producing and ingesting", float64(o.accepted)/ingest.Seconds(), ingest.Round(100*time.Millisecond)))
	line("duplicates", o.duplicates, "")
	line("dead letters", o.dead, classes)
	fmt.Fprintf(out, "rows in ClickHouse database %s (distinct keys, as after merges):\n", w.db)
	for _, t := range devTables {
		q := fmt.Sprintf("SELECT count() FROM %s.%s", w.db, t.name)
		if t.key != "" {
			q = fmt.Sprintf("SELECT count() FROM (SELECT 1 FROM %s.%s GROUP BY %s", w.db, t.name, t.key)
			if t.having != "" {
				q += " HAVING " + t.having
			}
			q += ")"
		}
		var n uint64
		if err := w.ch.QueryRow(ctx, q).Scan(&n); err != nil {
			return fmt.Errorf("count %s: %w", t.name, err)
		}
		line(t.name, n, "")
	}
	return w.nextSteps(ctx, out, metricsAddr, keep)
}

// deadClasses renders this run's dead letters by error class.
func (w *devWatch) deadClasses(ctx context.Context) (string, error) {
	rows, err := w.ch.Query(ctx, fmt.Sprintf(`
		SELECT error_class, count() FROM (
			SELECT source_topic, source_partition, source_offset, any(error_class) AS error_class
			FROM %s.ingest_failures WHERE last_failure >= toDateTime(%d) AND resolution = ''
			GROUP BY source_topic, source_partition, source_offset)
		GROUP BY error_class ORDER BY error_class`, w.db, w.start.Unix()))
	if err != nil {
		return "", fmt.Errorf("read ingest_failures: %w", err)
	}
	defer rows.Close()
	var parts []string
	for rows.Next() {
		var class string
		var n uint64
		if err := rows.Scan(&class, &n); err != nil {
			return "", err
		}
		parts = append(parts, fmt.Sprintf("%s %d", class, n))
	}
	if len(parts) == 0 {
		return "", rows.Err()
	}
	return "   by class: " + strings.Join(parts, ", "), rows.Err()
}

// nextSteps prints commands to try against what is running, with real ids.
func (w *devWatch) nextSteps(ctx context.Context, out io.Writer, metricsAddr string, keep bool) error {
	canopy := "canopy"
	if strings.Contains(os.Args[0], "go-build") {
		canopy = "go run ./cmd/canopy"
	}
	// A root with the most downline events, and a first-level entity of
	// another tree to move under it.
	var root, moved uint64
	var rootName, movedName string
	_ = w.ch.QueryRow(ctx, fmt.Sprintf(`
		SELECT id, name FROM (
			SELECT entity_id AS id, sum(events) AS n FROM %[1]s.rollup_daily WHERE depth > 0 GROUP BY entity_id
		) ANY INNER JOIN (SELECT id, name, level, status FROM %[1]s.entities FINAL) USING id
		WHERE level = 0 AND status = 'active'
		ORDER BY n DESC, id LIMIT 1`, w.db)).Scan(&root, &rootName)
	if root != 0 {
		_ = w.ch.QueryRow(ctx, fmt.Sprintf(`
			SELECT id, name FROM %s.entities FINAL
			WHERE level = 1 AND status = 'active' AND NOT has(path, toUInt64(%d))
			ORDER BY id LIMIT 1`, w.db, root)).Scan(&moved, &movedName)
	}
	fmt.Fprintln(out, "\nWhat to try next")
	if !keep {
		fmt.Fprintln(out, "(the worker has stopped; run dev again with --keep-running to keep one up, then try these in another terminal)")
	}
	step := 0
	say := func(what string, cmds ...string) {
		step++
		fmt.Fprintf(out, "\n%d. %s\n", step, what)
		for _, c := range cmds {
			fmt.Fprintf(out, "   %s\n", c)
		}
	}
	if root != 0 {
		say(fmt.Sprintf("An entity in the terminal: %s (%d), its chain, own vs downline, events per day, top children:", rootName, root),
			fmt.Sprintf("%s show %d", canopy, root))
	}
	if root != 0 && moved != 0 {
		say(fmt.Sprintf("Move %s (%d) and its subtree under %s (%d); the as-is view (rollup_daily_current) restates within seconds, the as-was view keeps history:",
			movedName, moved, rootName, root),
			fmt.Sprintf("%s hierarchy move %d %d", canopy, moved, root),
			fmt.Sprintf("%s show %d --as-is     # %d's whole history now counts under %d", canopy, root, moved, root),
			fmt.Sprintf("%s show %d             # as-was: unchanged", canopy, root))
	}
	id := root
	if id == 0 {
		id = 1
	}
	say("The rollups with SQL:", w.clickhouseClient(fmt.Sprintf(
		"SELECT depth, sum(events) AS events FROM %s.rollup_daily WHERE entity_id = %d GROUP BY depth ORDER BY depth", w.db, id)))
	say("The hierarchy, plain SQL on PostgreSQL:", w.psql(fmt.Sprintf(
		"select id, parent_id, status, name from canopy.entities where parent_id = %d order by id limit 10", id)))
	if keep {
		say("The worker's metrics (while it runs):", "curl -s http://"+metricsAddr+"/metrics | grep ^canopy_records_total")
	}
	return nil
}

// clickhouseClient is a clickhouse-client command line for the configured
// ClickHouse: host, port and user of clickhouse.dsn; the password never
// printed, only where it is.
func (w *devWatch) clickhouseClient(query string) string {
	opts, err := clickHouseOptions(w.cfg, "", "")
	if err != nil || len(opts.Addr) == 0 {
		return "clickhouse-client -q " + shellQuote(query)
	}
	host, port, _ := net.SplitHostPort(opts.Addr[0])
	cmd := fmt.Sprintf("clickhouse-client --host %s --port %s --user %s", host, port, shellQuote(cmp.Or(opts.Auth.Username, "default")))
	if opts.TLS != nil {
		cmd += " --secure"
	}
	if opts.Auth.Password != "" {
		cmd += " " + passwordFrom(w.cfg.byKey["clickhouse.password"], "--password", "the password in clickhouse.dsn")
	}
	return cmd + " -q " + shellQuote(query)
}

// psql is a psql command line for postgres.dsn.
func (w *devWatch) psql(query string) string {
	dsn := w.cfg.byKey["postgres.dsn"]
	if dsn.src == "env "+dsn.env() {
		return fmt.Sprintf("psql \"$%s\" -c %s", dsn.env(), shellQuote(query))
	}
	pc, err := pgx.ParseConfig(dsn.val)
	if err != nil {
		return "psql -c " + shellQuote(query)
	}
	cmd := fmt.Sprintf("psql -h %s -p %d -U %s -d %s -c %s", pc.Host, pc.Port, shellQuote(pc.User), shellQuote(pc.Database), shellQuote(query))
	if pw := w.cfg.byKey["postgres.password"]; pw.val != "" {
		if from := passwordFrom(pw, "", ""); !strings.HasPrefix(from, "#") {
			return "PGPASSWORD=" + from + " " + cmd
		}
		return cmd + "   # psql asks for the password: postgres.password from " + pw.src
	}
	if pc.Password != "" {
		cmd += "   # psql asks for the password: the one in postgres.dsn (" + dsn.src + ")"
	}
	return cmd
}

// passwordFrom renders where a password setting comes from, never its
// value: its file, its environment variable, or else a note.
func passwordFrom(s *setting, flag, inDSN string) string {
	prefix := ""
	if flag != "" {
		prefix = flag + " "
	}
	switch {
	case s == nil || s.val == "":
		return "# password: " + inDSN
	case strings.Contains(s.src, "(file "):
		file := s.src[strings.Index(s.src, "(file ")+len("(file ") : len(s.src)-1]
		return prefix + "\"$(cat " + shellQuote(file) + ")\""
	case strings.HasPrefix(s.src, "env "):
		return prefix + "\"$" + strings.TrimPrefix(s.src, "env ") + "\""
	}
	return "# password: " + s.key + " from " + s.src
}

// shellQuote quotes s for a POSIX shell unless it needs none.
func shellQuote(s string) string {
	safe := s != ""
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("_-./:=@,", r)) {
			safe = false
			break
		}
	}
	if safe {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
