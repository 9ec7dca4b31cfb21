package e2e

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/canopyhq/canopy/internal/testenv"
)

// The services' ClickHouse users (scripts/services, users section): a writer
// and a reader confined to Canopy's databases. ClickHouse 18.16 names those
// databases exactly (allow_databases), so the tests that log in as them
// migrate into one fixed database, CANOPY_TEST_CLICKHOUSE_PRIVILEGE_DB, one
// test at a time.
type confinedUsers struct {
	db             string
	writerDSN      string
	writerPassword string
	readerPassword string
}

var confinedMu sync.Mutex

func needConfinedUsers(t testing.TB) confinedUsers {
	t.Helper()
	u := confinedUsers{db: os.Getenv("CANOPY_TEST_CLICKHOUSE_PRIVILEGE_DB"), writerDSN: os.Getenv("CANOPY_TEST_CLICKHOUSE_WRITER_DSN")}
	read := func(env string) string {
		name := os.Getenv(env)
		if name == "" {
			return ""
		}
		b, err := os.ReadFile(name)
		if err != nil {
			t.Fatalf("%s: %v", env, err)
		}
		return strings.TrimSpace(string(b))
	}
	u.writerPassword = read("CANOPY_TEST_CLICKHOUSE_WRITER_PASSWORD_FILE")
	u.readerPassword = read("CANOPY_TEST_CLICKHOUSE_READER_PASSWORD_FILE")
	if u.db == "" || u.writerDSN == "" || u.writerPassword == "" || u.readerPassword == "" {
		testenv.Unavailable(t, "CANOPY_TEST_CLICKHOUSE_{PRIVILEGE_DB,WRITER_DSN,WRITER_PASSWORD_FILE,READER_PASSWORD_FILE} are not set")
	}
	return u
}

// newConfinedEnv is newEnv moved to the database the services' writer and
// reader may use, migrated afresh with their passwords, so that migrate
// provides (18.16: checks) both users. other is the env's first database:
// Canopy's tables in a database neither user may touch.
func newConfinedEnv(t testing.TB, partitions int32) (e *env, u confinedUsers, other string) {
	t.Helper()
	u = needConfinedUsers(t)
	confinedMu.Lock()
	t.Cleanup(confinedMu.Unlock) // runs last: after the env is closed
	e = newEnv(t, partitions)
	other = e.chDB
	t.Cleanup(func() {
		if !t.Failed() {
			_ = e.ch.Exec(context.Background(), "DROP DATABASE IF EXISTS "+other)
		}
	})
	// A database kept by an earlier failed run goes first.
	if err := e.ch.Exec(context.Background(), "DROP DATABASE IF EXISTS "+u.db); err != nil {
		t.Fatal(err)
	}
	e.chDB = u.db
	e.vars = append(e.vars,
		"CANOPY_CLICKHOUSE_DATABASE="+u.db,
		"CANOPY_CLICKHOUSE_WRITER_PASSWORD="+u.writerPassword,
		"CANOPY_CLICKHOUSE_READER_PASSWORD="+u.readerPassword,
	)
	out := e.run("migrate")
	for _, want := range []string{"writer user ready", "read-only user ready"} {
		if !strings.Contains(out, want) {
			t.Fatalf("migrate did not say %q:\n%s", want, out)
		}
	}
	for _, pw := range []string{u.writerPassword, u.readerPassword} {
		if strings.Contains(out, pw) {
			t.Fatalf("migrate printed a password:\n%s", out)
		}
	}
	return e, u, other
}

// login opens a connection as user to db.
func login(t testing.TB, dsn, db, user, password string) driver.Conn {
	t.Helper()
	opts, err := clickhouse.ParseDSN(dsn)
	if err != nil {
		t.Fatal(err)
	}
	opts.Auth = clickhouse.Auth{Database: db, Username: user, Password: password}
	conn, err := clickhouse.Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	if err := conn.Ping(context.Background()); err != nil {
		t.Fatalf("%s cannot log in to %s: %v", user, db, err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

// ClickHouse error codes a refusal may carry: 18.16's (users.xml profiles and
// allow_databases) and current releases' (GRANT).
const (
	codeReadonly          = 164 // READONLY
	codeDatabaseDenied    = 291 // DATABASE_ACCESS_DENIED
	codeQueryProhibited   = 392 // QUERY_IS_PROHIBITED (allow_ddl = 0)
	codeSettingConstraint = 452 // SETTING_CONSTRAINT_VIOLATION
	codeAccessDenied      = 497 // ACCESS_DENIED (not enough privileges)
)

// refused checks that q failed with one of codes.
func refused(t testing.TB, conn driver.Conn, who, q string, codes ...int32) {
	t.Helper()
	err := conn.Exec(context.Background(), q)
	var ex *clickhouse.Exception
	switch {
	case err == nil:
		t.Errorf("%s ran %q", who, q)
	case !errors.As(err, &ex):
		t.Errorf("%s %q: %v, want a server refusal with code %v", who, q, err, codes)
	default:
		for _, c := range codes {
			if ex.Code == c {
				return
			}
		}
		t.Errorf("%s %q: code %d (%v), want one of %v", who, q, ex.Code, err, codes)
	}
}

func hasRBAC(t testing.TB, conn driver.Conn) bool {
	t.Helper()
	var n uint64
	if err := conn.QueryRow(context.Background(), "SELECT count() FROM system.tables WHERE database = 'system' AND name = 'users'").Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n > 0
}

// tables lists db's tables, as the admin sees them.
func (e *env) tables(db string) string {
	e.t.Helper()
	var names []string
	if err := e.ch.QueryRow(context.Background(), "SELECT groupArray(name) FROM (SELECT name FROM system.tables WHERE database = ? ORDER BY name)", db).Scan(&names); err != nil {
		e.t.Fatal(err)
	}
	return strings.Join(names, ",")
}

// TestWriterPrivileges runs the worker and reconcile as the writer user over
// a real pipeline (the rollups must match the oracle exactly), then checks
// that the writer cannot DROP, ALTER, TRUNCATE or CREATE in Canopy's
// database nor read or write another database.
func TestWriterPrivileges(t *testing.T) {
	e, u, other := newConfinedEnv(t, 2)
	seed := seedFromEnv(t)
	t.Logf("seed %d (set CANOPY_TEST_SEED to replay)", seed)
	sc := e.setUp(seed, 1000, 20000)
	keys, values := sc.records()
	e.produce(keys, values)

	// From here on ClickHouse is reached as the writer only.
	e.vars = append(e.vars, "CANOPY_CLICKHOUSE_DSN="+u.writerDSN)
	w := e.startWorker(1)
	e.waitAcked(uint64(len(values)), 5*time.Minute)
	w.stop(t)
	e.verify(sc)
	if out := e.run("reconcile"); strings.Contains(out, "level=ERROR") {
		t.Errorf("reconcile as the writer logged an error:\n%s", out)
	}
	if b, err := os.ReadFile(w.log); err != nil {
		t.Fatal(err)
	} else if s := strings.ToLower(string(b)); strings.Contains(s, "code: 291") || strings.Contains(s, "code: 392") || strings.Contains(s, "code: 497") {
		t.Errorf("the worker was refused something it does:\n%s", s)
	}

	opts, err := clickhouse.ParseDSN(u.writerDSN)
	if err != nil {
		t.Fatal(err)
	}
	writer := login(t, u.writerDSN, u.db, opts.Auth.Username, u.writerPassword)
	before := e.tables(u.db)
	db := u.db
	for _, q := range []string{
		"DROP TABLE " + db + ".rollup_daily",
		"TRUNCATE TABLE " + db + ".events",
		"ALTER TABLE " + db + ".rollup_daily DELETE WHERE 1 = 1",
		"ALTER TABLE " + db + ".rollup_daily ADD COLUMN x UInt8",
		"ALTER TABLE " + db + ".rollup_daily DROP PARTITION 202610",
		"RENAME TABLE " + db + ".rollup_daily TO " + db + ".gone",
		"CREATE TABLE " + db + ".writer_table (a UInt8) ENGINE = Memory",
		"OPTIMIZE TABLE " + db + ".rollup_daily FINAL",
		"DROP DATABASE " + db,
		"SET allow_ddl = 1",
	} {
		refused(t, writer, "the writer", q, codeQueryProhibited, codeAccessDenied)
	}
	for _, q := range []string{
		"SELECT count() FROM " + other + ".rollup_daily",
		"INSERT INTO " + other + ".entities (id, parent_id, name) VALUES (1, 0, 'x')",
	} {
		refused(t, writer, "the writer", q, codeDatabaseDenied, codeAccessDenied)
	}
	refused(t, writer, "the writer", "DROP TABLE "+other+".rollup_daily", codeDatabaseDenied, codeQueryProhibited, codeAccessDenied)
	if after := e.tables(u.db); after != before {
		t.Errorf("tables changed under the writer: %s, were %s", after, before)
	}
	// After all that, the rollups are still the oracle's.
	e.verify(sc)

	if !hasRBAC(t, e.ch) {
		// Documented limit (docs/security.md): 18.16 checks allow_ddl = 0
		// against SET, not against a setting sent with the query.
		if err := e.ch.Exec(context.Background(), "CREATE TABLE "+db+".scratch (a UInt8) ENGINE = Memory"); err != nil {
			t.Fatal(err)
		}
		ctx := clickhouse.Context(context.Background(), clickhouse.WithSettings(clickhouse.Settings{"allow_ddl": 1}))
		if err := writer.Exec(ctx, "DROP TABLE "+db+".scratch"); err == nil {
			t.Logf("known ClickHouse 18.16 limit: a client that sends allow_ddl=1 with its query lifts the writer's allow_ddl=0")
		}
	}
}

// TestReaderPrivileges checks the read-only user: it reads Canopy's rollups,
// is refused writes, DDL and other databases, logs in only with its own
// password, and, where the server has settings constraints, cannot raise
// its limits nor read raw payloads.
func TestReaderPrivileges(t *testing.T) {
	e, u, other := newConfinedEnv(t, 1)
	reader := login(t, e.svc.chDSN, u.db, "canopy_reader", u.readerPassword)
	ctx := context.Background()
	db := u.db
	var n uint64
	for _, table := range []string{"rollup_daily", "rollup_hourly", "entities", "ingest_acks"} {
		if err := reader.QueryRow(ctx, "SELECT count() FROM "+db+"."+table).Scan(&n); err != nil {
			t.Errorf("the reader cannot read %s: %v", table, err)
		}
	}
	if err := reader.QueryRow(ctx, "SELECT count() FROM "+db+".ingest_failures FINAL WHERE resolution = ''").Scan(&n); err != nil {
		t.Errorf("the reader cannot read ingest_failures as the dashboard does: %v", err)
	}
	for _, q := range []string{
		"INSERT INTO " + db + ".rollup_daily (entity_id, bucket, depth, type, events, ingest_unit) SELECT toUInt64(1), today(), toUInt8(0), 'x', toInt64(1), 'reader'",
		"DROP TABLE " + db + ".rollup_daily",
		"CREATE TABLE " + db + ".reader_table (a UInt8) ENGINE = Memory",
		"ALTER TABLE " + db + ".rollup_daily DELETE WHERE 1 = 1",
		"SET readonly = 0",
	} {
		refused(t, reader, "the reader", q, codeReadonly, codeAccessDenied)
	}
	refused(t, reader, "the reader", "SELECT count() FROM "+other+".rollup_daily", codeDatabaseDenied, codeAccessDenied)
	// A client that sends readonly = 0 with its query stays read-only.
	lift := clickhouse.Context(ctx, clickhouse.WithSettings(clickhouse.Settings{"readonly": 0}))
	if err := reader.Exec(lift, "INSERT INTO "+db+".entities (id, parent_id, name) VALUES (1, 0, 'x')"); err == nil {
		t.Error("the reader inserted with readonly = 0 sent as a query setting")
	}

	// Its password is not its name.
	opts, err := clickhouse.ParseDSN(e.svc.chDSN)
	if err != nil {
		t.Fatal(err)
	}
	opts.Auth = clickhouse.Auth{Database: db, Username: "canopy_reader", Password: "canopy_reader"}
	if c, err := clickhouse.Open(opts); err == nil {
		if err := c.Ping(ctx); err == nil {
			t.Error("the reader logs in with its name as password")
		}
		_ = c.Close()
	}

	var limit string
	if err := reader.QueryRow(ctx, "SELECT value FROM system.settings WHERE name = 'max_execution_time'").Scan(&limit); err != nil {
		t.Fatal(err)
	}
	if limit == "0" {
		t.Errorf("the reader has no max_execution_time")
	}
	if !hasRBAC(t, e.ch) {
		t.Logf("ClickHouse 18.16 has no settings constraints nor table grants: the reader (readonly = 2) may SET its limits higher and read every table of %s", db)
		return
	}
	for _, q := range []string{
		"SET max_execution_time = 100000",
		"SET max_memory_usage = 100000000000",
		"SET max_result_rows = 0",
	} {
		refused(t, reader, "the reader", q, codeSettingConstraint)
	}
	refused(t, reader, "the reader", "SELECT count() FROM "+db+".events", codeAccessDenied)
	refused(t, reader, "the reader", fmt.Sprintf("SELECT raw FROM %s.ingest_failures", db), codeAccessDenied)
}
