package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"

	"github.com/canopyhq/canopy/schema"
)

// clearEnv hides the caller's CANOPY_* settings from a test.
func clearEnv(t *testing.T) {
	for _, s := range newConfig().settings {
		t.Setenv(s.env(), "")
	}
	t.Setenv("CANOPY_CONFIG", "")
}

func TestConfigPrecedence(t *testing.T) {
	clearEnv(t)
	dir := t.TempDir()
	file := filepath.Join(dir, "canopy.yaml")
	if err := os.WriteFile(file, []byte(`
kafka:
  brokers: [a:1, b:2]
  group: from-file
clickhouse:
  database: from_file
measures:
  - {name: amount, type: decimal, scale: 2}
  - {name: units, type: int64}
`), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("CANOPY_KAFKA_GROUP", "from-env")
	t.Setenv("CANOPY_CLICKHOUSE_DATABASE", "from_env")

	root := &cobra.Command{Use: "canopy"}
	cfg := newConfig()
	cfg.register(root.PersistentFlags())
	if err := root.ParseFlags([]string{"--config", file, "--clickhouse-database", "from_flag"}); err != nil {
		t.Fatal(err)
	}
	if err := cfg.resolve(root); err != nil {
		t.Fatal(err)
	}
	tests := []struct{ key, want string }{
		{"kafka.brokers", "a:1,b:2"},            // file
		{"kafka.group", "from-env"},             // env over file
		{"clickhouse.database", "from_flag"},    // flag over env
		{"kafka.events_topic", "canopy.events"}, // default
	}
	for _, tt := range tests {
		if got := cfg.get(tt.key); got != tt.want {
			t.Errorf("%s = %q, want %q", tt.key, got, tt.want)
		}
	}
	want := schema.Measures{{Name: "amount", Kind: schema.KindDecimal, Scale: 2}, {Name: "units", Kind: schema.KindInt64}}
	if len(cfg.measures) != 2 || cfg.measures[0] != want[0] || cfg.measures[1] != want[1] {
		t.Errorf("measures = %+v, want %+v", cfg.measures, want)
	}
}

func TestConfigErrorsAreUsageErrors(t *testing.T) {
	clearEnv(t)
	dir := t.TempDir()
	tests := []struct {
		name string
		yaml string
		args []string
	}{
		{"missing explicit file", "", []string{"--config", filepath.Join(dir, "nope.yaml")}},
		{"bad yaml", "kafka: [", nil},
		{"bad measure", "measures: [{name: events, type: int64}]", nil},
		{"bad duration", "", []string{"--ingest-dedup-horizon", "soon"}},
		{"bad policy", "", []string{"--ingest-suspended-ancestors", "maybe"}},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			args := tt.args
			if tt.yaml != "" {
				file := filepath.Join(dir, "c"+string(rune('a'+i))+".yaml")
				if err := os.WriteFile(file, []byte(tt.yaml), 0o600); err != nil {
					t.Fatal(err)
				}
				args = append(args, "--config", file)
			}
			root := &cobra.Command{Use: "canopy"}
			cfg := newConfig()
			cfg.register(root.PersistentFlags())
			if err := root.ParseFlags(args); err != nil {
				t.Fatal(err)
			}
			err := cfg.resolve(root)
			var u usageError
			if !errors.As(err, &u) || exitCode(err) != 2 {
				t.Fatalf("resolve = %v, want a usage error (exit 2)", err)
			}
		})
	}
}

// runRoot runs the real root command in-process, as main does, with the
// caller's CANOPY_* settings hidden, and returns its output and exit code.
func runRoot(t *testing.T, env map[string]string, args ...string) (string, int, error) {
	t.Helper()
	clearEnv(t)
	for k, v := range env {
		t.Setenv(k, v)
	}
	root := newRoot()
	var out strings.Builder
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs(args)
	err := root.ExecuteContext(context.Background())
	return out.String(), exitCode(err), err
}

// writeConfig writes a canopy.yaml for one test case.
func writeConfig(t *testing.T, text string) string {
	t.Helper()
	file := filepath.Join(t.TempDir(), "canopy.yaml")
	if err := os.WriteFile(file, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return file
}

// TestBadSettingsRefused: settings used to be parsed where they were read,
// with the error dropped, so --ingest-retry-backoff="5 minutes" and
// --ingest-max-poll-records=lots ran with 0 s and 0 and exit code 0, a 65th
// measure was decoded as 0 and a measure named pending_version broke
// migrate. Each bad setting must now stop every command with exit code 2
// and a message naming the setting, where it came from and what is accepted.
func TestBadSettingsRefused(t *testing.T) {
	var many strings.Builder
	many.WriteString("measures:\n")
	for i := range 65 {
		fmt.Fprintf(&many, "  - {name: m%d, type: int64}\n", i)
	}
	tests := []struct {
		name string
		yaml string
		env  map[string]string
		args []string
		want []string // substrings of the error
	}{
		{"shards without a cluster", "", nil, []string{"--clickhouse-shards=a:9000"},
			[]string{"clickhouse.shards", "without clickhouse.cluster"}},
		{"cluster without shards", "", map[string]string{"CANOPY_CLICKHOUSE_CLUSTER": "c"}, nil,
			[]string{"clickhouse.shards", "empty while clickhouse.cluster is \"c\""}},
		{"cluster not an identifier", "", nil, []string{"--clickhouse-cluster=c-1", "--clickhouse-shards=a:9000"},
			[]string{"clickhouse.cluster", "not a plain identifier"}},
		{"replica without a port", "", nil, []string{"--clickhouse-cluster=c", "--clickhouse-shards=a:9000,b;c:9000"},
			[]string{"clickhouse.shards", "has \"b\", not a host:port"}},
		{"duration with words", "", nil, []string{"--ingest-retry-backoff=5 minutes"},
			[]string{"ingest.retry_backoff", "flag --ingest-retry-backoff", "a duration such as"}},
		{"number not a number", "", nil, []string{"--ingest-max-poll-records=lots"},
			[]string{"ingest.max_poll_records", "flag --ingest-max-poll-records", "a whole number from 1"}},
		{"negative size", "", nil, []string{"--ingest-max-buffered-mb=-1"},
			[]string{"ingest.max_buffered_mb", "out of range"}},
		{"zero head batch", "", map[string]string{"CANOPY_INGEST_HEAD_BATCH_MB": "0"}, nil,
			[]string{"ingest.head_batch_mb", "env CANOPY_INGEST_HEAD_BATCH_MB", "out of range"}},
		{"zero type cap", "", nil, []string{"--ingest-max-types-per-batch=0"},
			[]string{"ingest.max_types_per_batch", "from -1 to", "not 0"}},
		{"negative duration", "", nil, []string{"--relay-outbox-retention=-1h"},
			[]string{"relay.outbox_retention", "0 or more"}},
		{"zero session timeout", "", nil, []string{"--ingest-session-timeout=0"},
			[]string{"ingest.session_timeout", "greater than 0"}},
		{"zero attempts", "", map[string]string{"CANOPY_INGEST_RETRY_ATTEMPTS": "0"}, nil,
			[]string{"ingest.retry_attempts", "env CANOPY_INGEST_RETRY_ATTEMPTS"}},
		{"dedup from env", "", map[string]string{"CANOPY_INGEST_DEDUP": "kafka"}, nil,
			[]string{"ingest.dedup", "env CANOPY_INGEST_DEDUP", "one of partitioned, postgres"}},
		{"policy from file", "ingest:\n  suspended_ancestors: maybe\n", nil, nil,
			[]string{"ingest.suspended_ancestors", "canopy.yaml key ingest.suspended_ancestors", "one of include, skip"}},
		{"duration from file", "ingest:\n  dedup_horizon: 7 days\n", nil, nil,
			[]string{"ingest.dedup_horizon", "canopy.yaml key ingest.dedup_horizon"}},
		{"float from file", "ingest:\n  max_batch_mb: 1.5\n", nil, nil,
			[]string{"ingest.max_batch_mb", "canopy.yaml key ingest.max_batch_mb"}},
		{"mapping for a value", "http:\n  addr: {host: x}\n", nil, nil,
			[]string{"http.addr", "canopy.yaml key http.addr", "mapping"}},
		{"log level", "", nil, []string{"--log-level=verbose"},
			[]string{"log.level", "one of debug, info, warn, error"}},
		{"log format", "", map[string]string{"CANOPY_LOG_FORMAT": "xml"}, nil,
			[]string{"log.format", "env CANOPY_LOG_FORMAT", "one of text, json"}},
		{"address without port", "", nil, []string{"--http-addr=9464"},
			[]string{"http.addr", "host:port"}},
		{"pprof not a bool", "", map[string]string{"CANOPY_HTTP_PPROF": "yes please"}, nil,
			[]string{"http.pprof", "env CANOPY_HTTP_PPROF", "true or false"}},
		{"database not an identifier", "", nil, []string{"--clickhouse-database=a;drop"},
			[]string{"clickhouse.database", "plain identifier"}},
		{"instance id with a space", "", map[string]string{"CANOPY_KAFKA_INSTANCE_ID": "worker 1"}, nil,
			[]string{"kafka.instance_id", "env CANOPY_KAFKA_INSTANCE_ID", "not a name Kafka accepts", "1 to 249"}},
		{"instance id dot", "kafka:\n  instance_id: ..\n", nil, nil,
			[]string{"kafka.instance_id", "key kafka.instance_id", "not a name Kafka accepts"}},
		{"instance id too long", "", nil, []string{"--kafka-instance-id=" + strings.Repeat("w", 250)},
			[]string{"kafka.instance_id", "flag --kafka-instance-id", "not a name Kafka accepts"}},
		{"empty brokers", "", nil, []string{"--kafka-brokers="},
			[]string{"kafka.brokers", "empty"}},
		{"unknown key", "kafka:\n  broker: [a:1]\n", nil, nil,
			[]string{"unknown key kafka.broker"}},
		{"unknown section", "ingst:\n  dedup: postgres\n", nil, nil,
			[]string{"unknown key ingst"}},
		{"65 measures", many.String(), nil, nil,
			[]string{"65 measures", "at most 64", "canopy.yaml key measures"}},
		{"unknown grain", "rollup:\n  grains: [hourly, daily, monthly]\n", nil, nil,
			[]string{"rollup.grains", `"monthly"`, "canopy.yaml key rollup.grains", "hourly,daily,weekly"}},
		{"grains without daily", "", map[string]string{"CANOPY_ROLLUP_GRAINS": "hourly,weekly"}, nil,
			[]string{"rollup.grains", "env CANOPY_ROLLUP_GRAINS", "must include daily"}},
		{"reserved measure", "measures: [{name: pending_version, type: int64}]\n", nil, nil,
			[]string{`"pending_version" is reserved`}},
		{"events column as measure", "measures: [{name: src_offset, type: int64}]\n", nil, nil,
			[]string{`"src_offset" is reserved`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			args := append([]string{"config", "--config", writeConfig(t, tt.yaml)}, tt.args...)
			out, code, err := runRoot(t, tt.env, args...)
			var u usageError
			if code != 2 || !errors.As(err, &u) {
				t.Fatalf("exit %d, err %v, want a usage error (exit 2)", code, err)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
			if out != "" {
				t.Errorf("printed %q before refusing", out)
			}
		})
	}
}

func TestGoodSettingsAccepted(t *testing.T) {
	file := writeConfig(t, "ingest:\n  max_types_per_batch: -1\n  retry_backoff: 250ms\nhttp:\n  pprof: true\n")
	out, code, err := runRoot(t, map[string]string{"CANOPY_INGEST_DEDUP": "POSTGRES", "CANOPY_KAFKA_INSTANCE_ID": "canopy-worker-0." + strings.Repeat("w", 232)},
		"config", "--config", file, "--ingest-max-poll-records", "100", "--http-addr", ":0")
	if code != 0 {
		t.Fatalf("exit %d: %v", code, err)
	}
	for _, w := range []string{
		"ingest.max_types_per_batch  = -1  (" + file + " key ingest.max_types_per_batch)",
		"ingest.retry_backoff        = 250ms  (",
		"http.pprof                  = true  (" + file + " key http.pprof)",
		"ingest.dedup                = postgres  (env CANOPY_INGEST_DEDUP)",
		"ingest.max_poll_records     = 100  (flag --ingest-max-poll-records)",
		"http.addr                   = :0  (flag --http-addr)",
		"kafka.group                 = canopy  (default)",
		"kafka.instance_id           = canopy-worker-0." + strings.Repeat("w", 232) + "  (env CANOPY_KAFKA_INSTANCE_ID)",
	} {
		if !strings.Contains(squeeze(out), squeeze(w)) {
			t.Errorf("canopy config lacks %q:\n%s", w, out)
		}
	}

	root := &cobra.Command{Use: "canopy"}
	cfg := newConfig()
	cfg.register(root.PersistentFlags())
	if err := root.ParseFlags([]string{"--config", file, "--http-pprof"}); err != nil {
		t.Fatal(err)
	}
	if err := cfg.resolve(root); err != nil {
		t.Fatal(err)
	}
	if err := root.ParseFlags([]string{"--clickhouse-cluster", "c", "--clickhouse-shards", " a:1 , b:2 ;c:3"}); err != nil {
		t.Fatal(err)
	}
	if err := cfg.resolve(root); err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprint(cfg.shards); got != "[[a:1 b:2] [c:3]]" {
		t.Errorf("clickhouse.shards parsed as %s", got)
	}
	if !cfg.bool("http.pprof") || cfg.int("ingest.max_types_per_batch") != -1 || cfg.duration("ingest.retry_backoff") != 250*time.Millisecond {
		t.Errorf("typed values: pprof %v, max types %d, backoff %v", cfg.bool("http.pprof"),
			cfg.int("ingest.max_types_per_batch"), cfg.duration("ingest.retry_backoff"))
	}
}

// TestConfigRedacts: canopy config, --help and connection errors never show
// a password, whether it is a setting of its own or part of a DSN.
func TestConfigRedacts(t *testing.T) {
	secrets := []string{"pgS3cret", "chS3cret", "readerS3cret"}
	file := writeConfig(t, "clickhouse:\n  reader_password: readerS3cret\n")
	out, code, err := runRoot(t, map[string]string{"CANOPY_CLICKHOUSE_DSN": "clickhouse://writer:chS3cret@ch:9000/canopy"},
		"config", "--config", file, "--postgres-dsn", "postgres://canopy:pgS3cret@db:5432/canopy?sslmode=disable")
	if code != 0 {
		t.Fatalf("exit %d: %v", code, err)
	}
	for _, s := range secrets {
		if strings.Contains(out, s) {
			t.Errorf("canopy config prints %s:\n%s", s, out)
		}
	}
	for _, w := range []string{
		"postgres.dsn                = postgres://canopy:xxxxx@db:5432/canopy?sslmode=disable  (flag --postgres-dsn)",
		"clickhouse.dsn              = clickhouse://writer:xxxxx@ch:9000/canopy  (env CANOPY_CLICKHOUSE_DSN)",
		"clickhouse.reader_password  = xxxxx  (" + file + " key clickhouse.reader_password)",
	} {
		if !strings.Contains(squeeze(out), squeeze(w)) {
			t.Errorf("canopy config lacks %q:\n%s", w, out)
		}
	}

	for _, tt := range []struct{ in, want string }{
		{"host=db user=canopy password=kvS3cret dbname=canopy", "host=db user=canopy password=xxxxx dbname=canopy"},
		{"host=db password='kv S3cret' dbname=canopy", "host=db password=xxxxx dbname=canopy"},
		{"postgres://db/canopy?password=qS3cret&sslmode=disable", "postgres://db/canopy?password=xxxxx&sslmode=disable"},
		{"clickhouse://default@ch:9000/canopy", "clickhouse://default@ch:9000/canopy"},
	} {
		if got := redactDSN(tt.in); got != tt.want {
			t.Errorf("redactDSN(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}

	// A DSN that does not parse is quoted whole by net/url's error.
	for _, dsn := range []string{"clickhouse://w:urlS3cret@ch:port/canopy", "postgres://w:urlS3cret@db:port/canopy"} {
		var err error
		if strings.HasPrefix(dsn, "clickhouse") {
			_, err = openClickHouse(context.Background(), resolved(t, nil, "--clickhouse-dsn", dsn))
		} else {
			_, err = openPostgres(context.Background(), resolved(t, nil, "--postgres-dsn", dsn))
		}
		if err == nil || strings.Contains(err.Error(), "urlS3cret") {
			t.Errorf("open %s: error %v shows the password", redactDSN(dsn), err)
		}
	}
}
