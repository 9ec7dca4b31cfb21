package main

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"go.yaml.in/yaml/v3"

	"github.com/canopyhq/canopy/ingest"
	"github.com/canopyhq/canopy/schema"
)

// setting is one configuration value. Precedence: flag > CANOPY_* environment
// variable > canopy.yaml > default. This file is the only place that reads
// the environment and the config file.
type setting struct {
	key  string // dotted path in canopy.yaml, e.g. "kafka.brokers"
	def  string
	help string
	val  string
}

func (s *setting) flag() string { return strings.NewReplacer(".", "-", "_", "-").Replace(s.key) }
func (s *setting) env() string {
	return "CANOPY_" + strings.ToUpper(strings.NewReplacer(".", "_", "-", "_").Replace(s.key))
}

// config holds every resolved setting.
type config struct {
	file     string
	settings []*setting
	byKey    map[string]*setting
	measures schema.Measures
}

// The settings. Environment names are derived from keys: kafka.brokers →
// CANOPY_KAFKA_BROKERS, postgres.dsn → CANOPY_POSTGRES_DSN, and so on.
func newConfig() *config {
	c := &config{byKey: map[string]*setting{}}
	add := func(key, def, help string) {
		s := &setting{key: key, def: def, help: help}
		c.settings = append(c.settings, s)
		c.byKey[key] = s
	}
	add("kafka.brokers", "127.0.0.1:9092", "Kafka bootstrap brokers, comma-separated")
	add("kafka.events_topic", "canopy.events", "topic of business events")
	add("kafka.hierarchy_topic", "canopy.hierarchy", "topic of hierarchy changes")
	add("relay.outbox_retention", "168h", "how long the relay keeps relayed rows of canopy.outbox before purging them (0: keep them forever)")
	add("kafka.retry_topic", "canopy.events.retry", "topic of events waiting for a retry")
	add("kafka.dlq_topic", "canopy.events.dlq", "dead-letter topic")
	add("kafka.byid_topic", "canopy.events.byid", "topic of events keyed by event_id (ingest.dedup=partitioned)")
	add("kafka.group", "canopy", "consumer group of the workers")
	add("postgres.dsn", "postgres://canopy:canopy@127.0.0.1:5432/canopy?sslmode=disable", "PostgreSQL connection string")
	add("clickhouse.dsn", "clickhouse://default@127.0.0.1:9000/canopy", "ClickHouse native-protocol DSN")
	add("clickhouse.database", "canopy", "ClickHouse database")
	add("clickhouse.reader_user", "canopy_reader", "read-only ClickHouse user for Grafana and analysts (created by migrate)")
	add("clickhouse.reader_password", "canopy_reader", "its password")
	add("ingest.dedup_horizon", "168h", "how long a repeated event_id counts as the same event")
	add("ingest.dedup", "partitioned", "partitioned|postgres: where event ids are claimed: local state per partition of the by-id topic, or one PostgreSQL table (docs/exactly-once.md)")
	add("ingest.state_dir", "canopy-state", "directory of the workers' local event-id state (ingest.dedup=partitioned); each worker process takes a free slot in it")
	add("ingest.replay_verify_after", "5m", "age past which replaying an unfinished batch asks ClickHouse which of its parts are written instead of relying on its deduplication window (0: never)")
	add("ingest.suspended_ancestors", "include", "include|skip: whether suspended ancestors receive downline rollups")
	add("ingest.max_poll_records", "50000", "records taken per poll, and the most a new batch takes")
	add("ingest.max_batch_mb", "32", "MiB of record values a new batch takes at most")
	add("ingest.max_types_per_batch", "1000", "distinct event types a batch accepts; events of further types are dead-lettered as too_many_types (-1: no cap)")
	add("ingest.max_buffered_records", "200000", "records a partition may hold fetched but unprocessed before its fetching pauses")
	add("ingest.max_buffered_mb", "256", "MiB all partitions together may hold fetched but unprocessed before fetching pauses")
	add("ingest.session_timeout", "10s", "consumer group session timeout")
	add("ingest.retry_attempts", "8", "attempts of an event whose entity is unknown, the first included, before it is dead-lettered")
	add("ingest.retry_backoff", "1s", "wait before the first retry of such an event, doubling each time")
	add("ingest.retry_max_backoff", "1m", "longest wait between retries")
	add("ingest.retry_max_age", "1h", "dead-letter such an event this long after its first failure")
	add("http.addr", ":9464", "address of /metrics, /healthz, /readyz")
	add("log.level", "info", "debug|info|warn|error")
	add("log.format", "text", "text|json")
	return c
}

// register adds one persistent flag per setting to the root command.
func (c *config) register(fs *pflag.FlagSet) {
	fs.StringVar(&c.file, "config", "", "path of canopy.yaml (default ./canopy.yaml if present; env CANOPY_CONFIG)")
	for _, s := range c.settings {
		fs.StringVar(&s.val, s.flag(), "", fmt.Sprintf("%s (env %s, default %q)", s.help, s.env(), s.def))
	}
}

// resolve applies the precedence rules. It must run after flag parsing.
func (c *config) resolve(cmd *cobra.Command) error {
	file := c.file
	if file == "" {
		file = os.Getenv("CANOPY_CONFIG")
	}
	explicit := file != ""
	if file == "" {
		file = "canopy.yaml"
	}
	doc := map[string]any{}
	data, err := os.ReadFile(file)
	switch {
	case err == nil:
		if err := yaml.Unmarshal(data, &doc); err != nil {
			return usageError{fmt.Errorf("config %s: %w", file, err)}
		}
	case explicit || !errors.Is(err, os.ErrNotExist):
		return usageError{fmt.Errorf("config: %w", err)}
	}
	for _, s := range c.settings {
		switch {
		case cmd.Flags().Changed(s.flag()):
		case os.Getenv(s.env()) != "":
			s.val = os.Getenv(s.env())
		default:
			if v, ok := lookup(doc, s.key); ok {
				s.val = v
			} else {
				s.val = s.def
			}
		}
	}
	c.measures = schema.DefaultMeasures()
	if raw, ok := doc["measures"]; ok {
		b, _ := yaml.Marshal(raw)
		var ms schema.Measures
		if err := yaml.Unmarshal(b, &ms); err != nil {
			return usageError{fmt.Errorf("config %s: measures: %w", file, err)}
		}
		c.measures = ms
	}
	if err := c.measures.Validate(); err != nil {
		return usageError{fmt.Errorf("config %s: %w", file, err)}
	}
	for _, k := range []string{"ingest.dedup_horizon", "ingest.session_timeout", "ingest.replay_verify_after"} {
		if _, err := time.ParseDuration(c.get(k)); err != nil {
			return usageError{fmt.Errorf("%s: %w", k, err)}
		}
	}
	if _, err := c.suspendedPolicy(); err != nil {
		return usageError{err}
	}
	if d := c.get("ingest.dedup"); d != "postgres" && d != "partitioned" {
		return usageError{fmt.Errorf("ingest.dedup must be postgres or partitioned, not %q", d)}
	}
	if c.partitioned() && c.get("ingest.state_dir") == "" {
		return usageError{errors.New("ingest.state_dir must name a directory when ingest.dedup is partitioned")}
	}
	return nil
}

// partitioned reports whether event ids are claimed in local state per
// partition of the by-id topic (ingest.dedup=partitioned).
func (c *config) partitioned() bool { return c.get("ingest.dedup") == "partitioned" }

// lookup finds a dotted key in a YAML document; lists become comma lists.
func lookup(doc map[string]any, key string) (string, bool) {
	parts := strings.Split(key, ".")
	var cur any = doc
	for _, p := range parts {
		m, ok := cur.(map[string]any)
		if !ok {
			return "", false
		}
		if cur, ok = m[p]; !ok {
			return "", false
		}
	}
	switch v := cur.(type) {
	case []any:
		s := make([]string, len(v))
		for i, x := range v {
			s[i] = fmt.Sprint(x)
		}
		return strings.Join(s, ","), true
	case nil:
		return "", false
	default:
		return fmt.Sprint(v), true
	}
}

func (c *config) get(key string) string { return c.byKey[key].val }

func (c *config) duration(key string) time.Duration {
	d, _ := time.ParseDuration(c.get(key))
	return d
}

func (c *config) int(key string) int {
	var n int
	_, _ = fmt.Sscan(c.get(key), &n)
	return n
}

func (c *config) brokers() []string {
	var out []string
	for _, b := range strings.Split(c.get("kafka.brokers"), ",") {
		if b = strings.TrimSpace(b); b != "" {
			out = append(out, b)
		}
	}
	return out
}

func (c *config) suspendedPolicy() (ingest.SuspendedPolicy, error) {
	switch c.get("ingest.suspended_ancestors") {
	case "include", "":
		return ingest.SuspendedInclude, nil
	case "skip":
		return ingest.SuspendedSkip, nil
	}
	return 0, fmt.Errorf("ingest.suspended_ancestors must be include or skip, not %q", c.get("ingest.suspended_ancestors"))
}

func (c *config) chSchema() (schema.ClickHouse, error) {
	s := schema.ClickHouse{Database: c.get("clickhouse.database"), Measures: c.measures}
	return s, s.Validate()
}

func (c *config) logger() *slog.Logger {
	var level slog.Level
	_ = level.UnmarshalText([]byte(c.get("log.level")))
	opts := &slog.HandlerOptions{Level: level}
	if c.get("log.format") == "json" {
		return slog.New(slog.NewJSONHandler(os.Stderr, opts))
	}
	return slog.New(slog.NewTextHandler(os.Stderr, opts))
}

// usageError marks an error as bad usage or configuration: exit code 2.
type usageError struct{ error }

func (e usageError) Unwrap() error { return e.error }
