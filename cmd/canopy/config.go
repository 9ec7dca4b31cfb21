package main

import (
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"net/url"
	"os"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"go.yaml.in/yaml/v3"

	"github.com/canopyhq/canopy/ingest"
	"github.com/canopyhq/canopy/schema"
)

// kind is how a setting's text is parsed and checked.
type kind int

const (
	kindString    kind = iota // any text, empty allowed unless nonEmpty
	kindDuration              // a Go duration within [minDur, ∞)
	kindInt                   // a decimal integer within [min, max], except skip
	kindBool                  // true|false
	kindEnum                  // one of enum
	kindAddr                  // host:port
	kindIdent                 // a plain SQL identifier
	kindKafkaName             // empty, or a name Kafka takes for a topic or a group instance
)

// setting is one configuration value. Precedence: flag > CANOPY_* environment
// variable > canopy.yaml > default. This file is the only place that reads
// settings from the environment and the config file (main.go reads one
// more variable, CANOPY_CPU_PROFILE, a profiling switch that is no
// setting). resolve parses every setting once;
// the getters return the parsed values.
type setting struct {
	key  string // dotted path in canopy.yaml, e.g. "kafka.brokers"
	def  string
	help string
	val  string // the flag's text before resolve; the resolved text after
	src  string // where val came from: "flag --x", "env CANOPY_X", "FILE key a.b" or "default"

	kind     kind
	nonEmpty bool
	minDur   time.Duration
	min, max int64
	skip     *int64 // an int refused although within [min, max]
	enum     []string
	secret   bool // a password: never printed

	dur time.Duration
	n   int
	b   bool
}

func (s *setting) flag() string { return strings.NewReplacer(".", "-", "_", "-").Replace(s.key) }
func (s *setting) env() string {
	return "CANOPY_" + strings.ToUpper(strings.NewReplacer(".", "_", "-", "_").Replace(s.key))
}

// Modifiers used by newConfig, each returning s for chaining.
func (s *setting) required() *setting { s.nonEmpty = true; return s }
func (s *setting) durationAtLeast(d time.Duration) *setting {
	s.kind, s.minDur = kindDuration, d
	return s
}
func (s *setting) intRange(lo, hi int64) *setting {
	s.kind, s.min, s.max = kindInt, lo, hi
	return s
}
func (s *setting) except(n int64) *setting { s.skip = &n; return s }
func (s *setting) oneOf(v ...string) *setting {
	s.kind, s.enum = kindEnum, v
	return s
}
func (s *setting) boolean() *setting   { s.kind = kindBool; return s }
func (s *setting) addr() *setting      { s.kind = kindAddr; return s }
func (s *setting) ident() *setting     { s.kind = kindIdent; return s }
func (s *setting) kafkaName() *setting { s.kind = kindKafkaName; return s }
func (s *setting) password() *setting {
	s.secret = true
	return s
}

// accepted describes the form a setting accepts, for error messages.
func (s *setting) accepted() string {
	switch s.kind {
	case kindDuration:
		form := "a duration such as 500ms, 30s, 5m or 1h30m"
		if s.minDur > 0 {
			return form + ", greater than 0"
		}
		return form + ", 0 or more"
	case kindInt:
		form := fmt.Sprintf("a whole number from %d to %d", s.min, s.max)
		if s.skip != nil {
			form += fmt.Sprintf(", not %d", *s.skip)
		}
		return form
	case kindBool:
		return "true or false"
	case kindEnum:
		return "one of " + strings.Join(s.enum, ", ")
	case kindAddr:
		return "host:port, such as 127.0.0.1:9464 (an empty host listens on every interface)"
	case kindIdent:
		return "a plain identifier: a letter or _, then letters, digits or _ (at most 64)"
	case kindKafkaName:
		return "empty, or 1 to 249 of letters, digits, '.', '_' and '-' (not . or ..)"
	}
	return "a non-empty value"
}

var plainIdent = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]{0,63}$`)

// kafkaName is what Kafka takes as a topic name or a group.instance.id.
var kafkaName = regexp.MustCompile(`^[A-Za-z0-9._-]{1,249}$`)

// parse checks s.val and sets the typed value.
func (s *setting) parse() error {
	v := strings.TrimSpace(s.val)
	s.val = v
	if v == "" {
		if s.nonEmpty || (s.kind != kindString && s.kind != kindKafkaName) {
			return s.invalid("is empty")
		}
		return nil
	}
	switch s.kind {
	case kindDuration:
		d, err := time.ParseDuration(v)
		if err != nil {
			return s.invalid("is not a duration")
		}
		if d < s.minDur || (s.minDur > 0 && d <= 0) {
			return s.invalid("is out of range")
		}
		s.dur = d
	case kindInt:
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return s.invalid("is not a whole number")
		}
		if n < s.min || n > s.max || (s.skip != nil && n == *s.skip) {
			return s.invalid("is out of range")
		}
		s.n = int(n)
	case kindBool:
		b, err := strconv.ParseBool(v)
		if err != nil {
			return s.invalid("is not a boolean")
		}
		s.b = b
		s.val = strconv.FormatBool(b)
	case kindEnum:
		for _, e := range s.enum {
			if strings.EqualFold(v, e) {
				s.val = e
				return nil
			}
		}
		return s.invalid("is not accepted")
	case kindAddr:
		if _, port, err := net.SplitHostPort(v); err != nil || port == "" {
			return s.invalid("is not an address")
		}
	case kindIdent:
		if !plainIdent.MatchString(v) {
			return s.invalid("is not a plain identifier")
		}
	case kindKafkaName:
		if !kafkaName.MatchString(v) || v == "." || v == ".." {
			return s.invalid("is not a name Kafka accepts")
		}
	}
	return nil
}

// invalid is the usage error of a bad value: the setting, its source, the
// value (unless secret) and the accepted form.
func (s *setting) invalid(what string) error {
	shown := strconv.Quote(s.val)
	if s.secret {
		shown = "the value"
	}
	return usageError{fmt.Errorf("setting %s: %s from %s %s; want %s", s.key, shown, s.src, what, s.accepted())}
}

// config holds every resolved setting.
type config struct {
	file        string
	settings    []*setting
	byKey       map[string]*setting
	measures    schema.Measures
	measuresSrc string
	grains      []schema.Grain // rollup.grains, parsed
	shards      [][]string     // clickhouse.shards, parsed: each shard's replicas
	sec         security       // built by resolve from the TLS and SASL settings
	// kafkaReached is set once awaitKafka got an answer with these settings
	// (kafkaOpts says what it changes).
	kafkaReached atomic.Bool
}

// The settings. Environment names are derived from keys: kafka.brokers →
// CANOPY_KAFKA_BROKERS, postgres.dsn → CANOPY_POSTGRES_DSN, and so on.
func newConfig() *config {
	c := &config{byKey: map[string]*setting{}}
	add := func(key, def, help string) *setting {
		s := &setting{key: key, def: def, help: help}
		c.settings = append(c.settings, s)
		c.byKey[key] = s
		return s
	}
	add("kafka.brokers", "127.0.0.1:9092", "Kafka bootstrap brokers, comma-separated").required()
	add("kafka.events_topic", "canopy.events", "topic of business events").required()
	add("kafka.hierarchy_topic", "canopy.hierarchy", "topic of hierarchy changes").required()
	add("relay.outbox_retention", "168h", "how long the relay keeps relayed rows of canopy.outbox before purging them (0: keep them forever)").durationAtLeast(0)
	add("kafka.retry_topic", "canopy.events.retry", "topic of events waiting for a retry").required()
	add("kafka.dlq_topic", "canopy.events.dlq", "dead-letter topic").required()
	add("kafka.byid_topic", "canopy.events.byid", "topic of events keyed by event_id (ingest.dedup=partitioned)").required()
	add("kafka.group", "canopy", "consumer group of the workers").required()
	add("kafka.instance_id", "", "static group membership for this worker: an ID unique among the workers and kept across its restarts (e.g. the pod's name), so a restart within ingest.session_timeout keeps its partitions, and their local event-id state, without a rebalance (empty: dynamic member)").kafkaName()
	// Connections (docs/security.md): one place builds every client's TLS and
	// authentication from these (secure.go).
	add("kafka.tls.enabled", "false", "connect to the brokers over TLS (SSL and SASL_SSL listeners)").boolean()
	add("kafka.tls.ca_file", "", "PEM file of the CA certificates that sign the brokers' certificates (empty: the system's)")
	add("kafka.tls.cert_file", "", "PEM client certificate, for brokers that require one (with kafka.tls.key_file)")
	add("kafka.tls.key_file", "", "PEM private key of kafka.tls.cert_file")
	add("kafka.tls.server_name", "", "name the brokers' certificates must carry (empty: each broker's host)")
	add("kafka.tls.insecure_skip_verify", "false", "do not verify the brokers' certificates (tests only; logs a warning)").boolean()
	add("kafka.sasl.mechanism", "none", "none|plain|scram-sha-256|scram-sha-512").oneOf("none", "plain", "scram-sha-256", "scram-sha-512")
	add("kafka.sasl.username", "", "SASL user (with kafka.sasl.mechanism)")
	add("kafka.sasl.password", "", "SASL password").password()
	add("postgres.dsn", "postgres://canopy:canopy@127.0.0.1:5432/canopy?sslmode=disable", "PostgreSQL connection string (TLS: sslmode=verify-full&sslrootcert=/path/ca.pem)").required()
	add("postgres.password", "", "password of postgres.dsn's user, replacing the DSN's").password()
	add("clickhouse.dsn", "clickhouse://default@127.0.0.1:9000/canopy", "ClickHouse native-protocol DSN").required()
	add("clickhouse.database", "canopy", "ClickHouse database").ident()
	add("clickhouse.password", "", "password of clickhouse.dsn's user, replacing the DSN's").password()
	add("clickhouse.tls.enabled", "false", "connect over TLS, to the server's secure native port (tcp_port_secure, usually 9440); the DSN's secure=true does too").boolean()
	add("clickhouse.tls.ca_file", "", "PEM file of the CA certificates that sign the server's certificate (empty: the system's)")
	add("clickhouse.tls.cert_file", "", "PEM client certificate, for servers that require one (with clickhouse.tls.key_file)")
	add("clickhouse.tls.key_file", "", "PEM private key of clickhouse.tls.cert_file")
	add("clickhouse.tls.server_name", "", "name the server's certificate must carry (empty: the DSN's host)")
	add("clickhouse.tls.insecure_skip_verify", "false", "do not verify the server's certificate (tests only; logs a warning)").boolean()
	add("clickhouse.writer_user", "canopy_writer", "ClickHouse user of the workers: INSERT and SELECT on clickhouse.database only (created by migrate, which runs as clickhouse.dsn's admin; docs/security.md)").ident()
	add("clickhouse.writer_password", "", "its password; migrate creates the writer only when it is set").password()
	add("clickhouse.reader_user", "canopy_reader", "read-only ClickHouse user for Grafana and analysts (created by migrate)").ident()
	add("clickhouse.reader_password", "", "its password; migrate creates the reader only when it is set, and never with the user's name as password").password()
	add("clickhouse.cluster", "", "cluster of the servers' remote_servers to shard the events and rollups over (empty: one server); needs clickhouse.shards (docs/scaling.md)")
	add("clickhouse.shards", "", "the cluster's shards in remote_servers order, separated by ';', each its replicas' native host:port separated by ',' (e.g. a1:9000,a2:9000;b1:9000); the login and TLS are clickhouse.dsn's")
	add("clickhouse.reader_raw", "false", "grant the reader the raw events table and ingest_failures.raw too (ClickHouse with GRANT only)").boolean()
	add("ingest.dedup_horizon", "168h", "how long a repeated event_id counts as the same event").durationAtLeast(time.Nanosecond)
	add("ingest.dedup", "partitioned", "partitioned|postgres: where event ids are claimed: local state per partition of the by-id topic, or one PostgreSQL table (docs/exactly-once.md)").oneOf("partitioned", "postgres")
	add("ingest.state_dir", "canopy-state", "directory of the workers' local event-id state (ingest.dedup=partitioned); each worker process takes a free slot in it")
	add("ingest.replay_verify_after", "5m", "age past which replaying an unfinished batch asks ClickHouse which of its parts are written instead of relying on its deduplication window (0: never)").durationAtLeast(0)
	add("ingest.suspended_ancestors", "include", "include|skip: whether suspended ancestors receive downline rollups").oneOf("include", "skip")
	add("ingest.max_poll_records", strconv.Itoa(ingest.DefaultMaxPollRecords), "records taken per poll, and the most a new batch takes").intRange(1, 10_000_000)
	add("ingest.max_batch_mb", "32", "MiB of record values a new batch takes at most").intRange(1, 4096)
	add("ingest.max_types_per_batch", "1000", "distinct event types a batch accepts; events of further types are dead-lettered as too_many_types (-1: no cap)").intRange(-1, 10_000_000).except(0)
	add("ingest.fetch_max_partition_mb", strconv.Itoa(ingest.DefaultFetchMaxPartitionBytes>>20), "MiB one fetch brings of one partition: a backlog's batches are about this large (docs/scaling.md)").intRange(1, 1024)
	add("ingest.head_batch_mb", strconv.Itoa(ingest.DefaultHeadBatchBytes>>20), "MiB of record values a new batch of a partition at its head takes at most; smaller acknowledges what arrives during a turn batch by batch, at the cost of more INSERTs under load (docs/scaling.md)").intRange(1, 4096)
	add("ingest.max_buffered_records", strconv.Itoa(ingest.DefaultMaxBufferedRecords), "records a partition may hold fetched but unprocessed before its fetching pauses").intRange(1, 100_000_000)
	add("ingest.max_buffered_mb", strconv.Itoa(ingest.DefaultMaxBufferedBytes>>20), "MiB all partitions together may hold fetched but unprocessed before fetching pauses").intRange(1, 1<<20)
	add("ingest.session_timeout", ingest.DefaultSessionTimeout.String(), "consumer group session timeout").durationAtLeast(time.Millisecond)
	add("ingest.retry_attempts", "8", "attempts of an event whose entity is unknown, the first included, before it is dead-lettered").intRange(1, 1000)
	add("ingest.retry_backoff", "1s", "wait before the first retry of such an event, doubling each time").durationAtLeast(time.Millisecond)
	add("ingest.retry_max_backoff", "1m", "longest wait between retries").durationAtLeast(time.Millisecond)
	add("ingest.retry_max_age", "1h", "dead-letter such an event this long after its first failure").durationAtLeast(time.Millisecond)
	add("rollup.grains", "hourly,daily", "as-was rollup grains, comma-separated: hourly and daily, plus weekly (ISO weeks from Monday, UTC; table rollup_weekly, created by canopy migrate)").required()
	add("http.addr", "127.0.0.1:9464", "address of /metrics, /healthz, /readyz (loopback by default; 0.0.0.0:9464 or :9464 to be scraped from other hosts)").addr()
	add("http.pprof", "false", "serve /debug/pprof/ on http.addr (profiles expose internals: keep http.addr on loopback or a trusted network)").boolean()
	add("log.level", "info", "debug|info|warn|error").oneOf("debug", "info", "warn", "error")
	add("log.format", "text", "text|json").oneOf("text", "json")
	c.addSecretFiles()
	return c
}

// register adds one persistent flag per setting to the root command.
func (c *config) register(fs *pflag.FlagSet) {
	fs.StringVar(&c.file, "config", "", "path of canopy.yaml (default ./canopy.yaml if present; env CANOPY_CONFIG)")
	for _, s := range c.settings {
		def := strconv.Quote(s.def)
		switch {
		case s.secret:
			def = "redacted"
		case strings.HasSuffix(s.key, ".dsn"):
			def = strconv.Quote(redactDSN(s.def))
		}
		fs.StringVar(&s.val, s.flag(), "", fmt.Sprintf("%s (env %s, default %s)", s.help, s.env(), def))
		if s.kind == kindBool {
			fs.Lookup(s.flag()).NoOptDefVal = "true"
		}
	}
}

// resolve applies the precedence rules and parses every setting; a bad
// value, an unknown key of canopy.yaml or bad measures are usage errors
// (exit 2) naming the setting and its source. It must run after flag parsing.
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
		if doc == nil {
			doc = map[string]any{}
		}
		if err := c.checkKeys(file, doc); err != nil {
			return err
		}
	case explicit || !errors.Is(err, os.ErrNotExist):
		return usageError{fmt.Errorf("config: %w", err)}
	}
	for _, s := range c.settings {
		switch {
		case cmd.Flags().Changed(s.flag()):
			s.src = "flag --" + s.flag()
		case os.Getenv(s.env()) != "":
			s.val, s.src = os.Getenv(s.env()), "env "+s.env()
		default:
			v, ok, err := lookup(doc, s.key)
			switch {
			case err != nil:
				return usageError{fmt.Errorf("setting %s: %s key %s %v; want %s", s.key, file, s.key, err, s.accepted())}
			case ok:
				s.val, s.src = v, file+" key "+s.key
			default:
				s.val, s.src = s.def, "default"
			}
		}
		if err := s.parse(); err != nil {
			return err
		}
	}
	if err := c.readSecretFiles(); err != nil {
		return err
	}
	if err := c.buildSecurity(); err != nil {
		return err
	}
	for _, w := range c.sec.warnings {
		c.logger().Warn("INSECURE: " + w)
	}
	g := c.byKey["rollup.grains"]
	gs, err := schema.ParseGrains("setting rollup.grains", strings.Split(g.val, ","))
	if err != nil {
		return usageError{fmt.Errorf("%w (from %s)", err, g.src)}
	}
	c.grains = gs
	c.measures, c.measuresSrc = schema.DefaultMeasures(), "default"
	if raw, ok := doc["measures"]; ok {
		b, _ := yaml.Marshal(raw)
		var ms schema.Measures
		if err := yaml.Unmarshal(b, &ms); err != nil {
			return usageError{fmt.Errorf("config %s: measures: %w", file, err)}
		}
		c.measures, c.measuresSrc = ms, file+" key measures"
	}
	if err := c.measures.Validate(); err != nil {
		return usageError{fmt.Errorf("measures (from %s): %w", c.measuresSrc, err)}
	}
	if err := c.parseShards(); err != nil {
		return err
	}
	if c.partitioned() && c.get("ingest.state_dir") == "" {
		st := c.byKey["ingest.state_dir"]
		return usageError{fmt.Errorf("setting ingest.state_dir: empty from %s; want a directory when ingest.dedup is partitioned", st.src)}
	}
	return nil
}

// checkKeys refuses a key of canopy.yaml that is no setting: a misspelt key
// would otherwise be ignored without a word. measures is its own section.
func (c *config) checkKeys(file string, doc map[string]any) error {
	sections := map[string]bool{}
	for _, s := range c.settings {
		parts := strings.Split(s.key, ".")
		for i := 1; i < len(parts); i++ {
			sections[strings.Join(parts[:i], ".")] = true
		}
	}
	var walk func(prefix string, m map[string]any) error
	walk = func(prefix string, m map[string]any) error {
		keys := make([]string, 0, len(m))
		for k := range m {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			key := prefix + k
			switch {
			case key == "measures":
			case c.byKey[key] != nil:
			case sections[key]:
				sub, ok := m[k].(map[string]any)
				if !ok && m[k] != nil {
					return usageError{fmt.Errorf("config %s: key %s must be a section (a mapping of settings)", file, key)}
				}
				if err := walk(key+".", sub); err != nil {
					return err
				}
			default:
				return usageError{fmt.Errorf("config %s: unknown key %s (canopy --help lists the settings: flag --a-b is key a.b)", file, key)}
			}
		}
		return nil
	}
	return walk("", doc)
}

// partitioned reports whether event ids are claimed in local state per
// partition of the by-id topic (ingest.dedup=partitioned).
func (c *config) partitioned() bool { return c.get("ingest.dedup") == "partitioned" }

// lookup finds a dotted key in a YAML document; lists of scalars become
// comma lists. A mapping where a value belongs is an error.
func lookup(doc map[string]any, key string) (string, bool, error) {
	parts := strings.Split(key, ".")
	var cur any = doc
	for _, p := range parts {
		m, ok := cur.(map[string]any)
		if !ok {
			return "", false, nil
		}
		if cur, ok = m[p]; !ok {
			return "", false, nil
		}
	}
	switch v := cur.(type) {
	case []any:
		s := make([]string, len(v))
		for i, x := range v {
			switch x.(type) {
			case map[string]any, []any:
				return "", false, errors.New("holds a nested list or mapping")
			}
			s[i] = fmt.Sprint(x)
		}
		return strings.Join(s, ","), true, nil
	case map[string]any:
		return "", false, errors.New("is a mapping, not a value")
	case float64:
		if v == math.Trunc(v) && math.Abs(v) < 1<<53 {
			return strconv.FormatInt(int64(v), 10), true, nil
		}
		return strconv.FormatFloat(v, 'g', -1, 64), true, nil
	case nil:
		return "", false, nil
	default:
		return fmt.Sprint(v), true, nil
	}
}

// get is the resolved text of a setting.
func (c *config) get(key string) string { return c.byKey[key].val }

// duration is a duration setting's parsed value.
func (c *config) duration(key string) time.Duration { return c.byKey[key].dur }

// int is an integer setting's parsed value.
func (c *config) int(key string) int { return c.byKey[key].n }

// bool is a boolean setting's parsed value.
func (c *config) bool(key string) bool { return c.byKey[key].b }

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

// parseShards reads clickhouse.cluster and clickhouse.shards: both or
// neither, a plain cluster name, and every replica a host:port.
func (c *config) parseShards() error {
	cluster, shards := c.byKey["clickhouse.cluster"], c.byKey["clickhouse.shards"]
	c.shards = nil
	switch {
	case cluster.val == "" && shards.val == "":
		return nil
	case cluster.val == "":
		return usageError{fmt.Errorf("setting clickhouse.shards: set from %s without clickhouse.cluster; want both or neither", shards.src)}
	case shards.val == "":
		return usageError{fmt.Errorf("setting clickhouse.shards: empty while clickhouse.cluster is %q (from %s); want the cluster's shards", cluster.val, cluster.src)}
	}
	if !plainIdent.MatchString(cluster.val) {
		return usageError{fmt.Errorf("setting clickhouse.cluster: %q from %s is not a plain identifier; want a cluster name of remote_servers: a letter or _, then letters, digits or _", cluster.val, cluster.src)}
	}
	for _, sh := range strings.Split(shards.val, ";") {
		var replicas []string
		for _, r := range strings.Split(sh, ",") {
			r = strings.TrimSpace(r)
			if host, port, err := net.SplitHostPort(r); err != nil || host == "" || port == "" {
				return usageError{fmt.Errorf("setting clickhouse.shards: %q from %s has %q, not a host:port; want shards separated by ';', each its replicas' host:port separated by ','", shards.val, shards.src, r)}
			}
			replicas = append(replicas, r)
		}
		c.shards = append(c.shards, replicas)
	}
	return nil
}

func (c *config) chSchema() (schema.ClickHouse, error) {
	s := schema.ClickHouse{Database: c.get("clickhouse.database"), Measures: c.measures, Grains: c.grains, Cluster: c.get("clickhouse.cluster")}
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

// display is a setting's resolved value as it may be printed: passwords
// redacted, and the password of any URL or key=value DSN.
func (s *setting) display() string {
	if s.secret {
		if s.val == "" {
			return ""
		}
		return redacted
	}
	return redactDSN(s.val)
}

const redacted = "xxxxx"

var kvPassword = regexp.MustCompile(`(?i)(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)`)

// redactDSN hides the password of a connection string: the password of a
// URL's userinfo, any query parameter whose name holds "password" or
// "secret", and password=… in a key=value DSN. Other text is returned as is.
func redactDSN(s string) string {
	if strings.Contains(s, "://") {
		parts := strings.Split(s, ",") // a comma list of URLs
		for i, p := range parts {
			u, err := url.Parse(strings.TrimSpace(p))
			if err != nil || u.Scheme == "" {
				parts[i] = kvPassword.ReplaceAllString(p, "${1}"+redacted)
				if at := strings.LastIndex(parts[i], "@"); at >= 0 { // unparsable: drop any userinfo
					if sch := strings.Index(parts[i], "://"); sch >= 0 && sch < at {
						parts[i] = parts[i][:sch+3] + redacted + parts[i][at:]
					}
				}
				continue
			}
			if _, has := u.User.Password(); has {
				u.User = url.UserPassword(u.User.Username(), redacted)
			}
			if u.RawQuery != "" {
				q := u.Query()
				for k := range q {
					if l := strings.ToLower(k); strings.Contains(l, "password") || strings.Contains(l, "secret") {
						q.Set(k, redacted)
					}
				}
				u.RawQuery = q.Encode()
			}
			parts[i] = u.String()
		}
		return strings.Join(parts, ",")
	}
	return kvPassword.ReplaceAllString(s, "${1}"+redacted)
}

// dsnPassword is the password a DSN carries, "" if none: what must never be
// printed.
func dsnPassword(s string) string {
	if u, err := url.Parse(s); err == nil && u.Scheme != "" {
		if p, ok := u.User.Password(); ok {
			return p
		}
		for k, v := range u.Query() {
			if strings.Contains(strings.ToLower(k), "password") && len(v) > 0 {
				return v[0]
			}
		}
		return ""
	}
	if m := kvPassword.FindStringSubmatch(s); m != nil {
		return strings.Trim(m[2], "'")
	}
	return ""
}

// scrub removes dsn's password from an error that may quote it (a URL parse
// error quotes the whole URL).
func scrub(err error, dsn string) error { return scrubSecret(err, dsnPassword(dsn)) }

// scrub removes from err's message every password the configuration holds:
// the password settings and the DSNs' passwords.
func (c *config) scrub(err error) error {
	if err == nil {
		return nil
	}
	for _, s := range c.settings {
		switch {
		case s.secret:
			err = scrubSecret(err, s.val)
		case strings.HasSuffix(s.key, ".dsn"):
			err = scrub(err, s.val)
		}
	}
	return err
}

// scrubSecret removes secret from err's message.
func scrubSecret(err error, secret string) error {
	if err == nil || secret == "" || !strings.Contains(err.Error(), secret) {
		return err
	}
	return scrubbedError{msg: strings.ReplaceAll(err.Error(), secret, redacted), err: err}
}

// scrubbedError is an error whose message had a password removed; it still
// unwraps to the original for errors.Is and errors.As.
type scrubbedError struct {
	msg string
	err error
}

func (e scrubbedError) Error() string { return e.msg }
func (e scrubbedError) Unwrap() error { return e.err }

// usageError marks an error as bad usage or configuration: exit code 2.
type usageError struct{ error }

func (e usageError) Unwrap() error { return e.error }
