package ingest

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/canopyhq/canopy/schema"
)

// MigrateClickHouse brings the ClickHouse database to the state schema
// describes: it creates what is missing and adds the columns of measures
// declared since the tables were created. It never drops or changes a
// column, so it is idempotent and safe to run while workers write.
func MigrateClickHouse(ctx context.Context, conn driver.Conn, s schema.ClickHouse) error {
	if err := conn.Exec(ctx, s.CreateDatabase()); err != nil {
		return fmt.Errorf("create database %s: %w", s.Database, err)
	}
	for _, t := range s.Tables() {
		if err := conn.Exec(ctx, s.Create(t)); err != nil {
			return fmt.Errorf("create table %s.%s: %w", s.Database, t.Name, err)
		}
		have, err := columns(ctx, conn, s.Database, t.Name)
		if err != nil {
			return err
		}
		for i, col := range t.Columns {
			typ, ok := have[col.Name]
			if ok {
				if typ == "UInt64" && col.Type == "Int64" && col.Name == "events" {
					// Rollups made before restatements existed counted
					// events unsigned.
					if err := conn.Exec(ctx, fmt.Sprintf("ALTER TABLE %s.%s MODIFY COLUMN events Int64", s.Database, t.Name)); err != nil {
						return fmt.Errorf("widen %s.%s.events: %w", s.Database, t.Name, err)
					}
					continue
				}
				if typ != col.Type && !sameType(typ, col.Type) {
					return fmt.Errorf("table %s.%s: column %s is %s, canopy.yaml wants %s; change it by hand or rename the measure",
						s.Database, t.Name, col.Name, typ, col.Type)
				}
				continue
			}
			if err := conn.Exec(ctx, s.AddColumn(t, col, t.Columns[i-1].Name)); err != nil {
				// On a cluster another replica's ALTER of the same
				// replicated table may have added it meanwhile.
				if now, rerr := columns(ctx, conn, s.Database, t.Name); rerr == nil && sameType(now[col.Name], col.Type) {
					continue
				}
				return fmt.Errorf("add column %s to %s.%s: %w", col.Name, s.Database, t.Name, err)
			}
		}
	}
	// entities_by_parent arrived after entities: fill it once from there.
	var have, want uint64
	q := "SELECT count() FROM %s.%s"
	if err := conn.QueryRow(ctx, fmt.Sprintf(q, s.Database, schema.TableEntitiesByParent)).Scan(&have); err != nil {
		return err
	}
	if err := conn.QueryRow(ctx, fmt.Sprintf(q, s.Database, schema.TableEntities)).Scan(&want); err != nil {
		return err
	}
	if have == 0 && want > 0 {
		fill := fmt.Sprintf("%s SELECT %s FROM %s.%s", s.Insert(schema.TableEntitiesByParent, s.EntityColumns()),
			schema.ColumnList(s.EntityColumns()), s.Database, schema.TableEntities)
		if err := conn.Exec(ctx, fill); err != nil {
			return fmt.Errorf("fill %s: %w", schema.TableEntitiesByParent, err)
		}
	}
	return nil
}

// ProbeEngine picks the strongest deduplicating engine the server offers:
// Replicated* when ZooKeeper or Keeper answers (with the {shard} and
// {replica} macros, or fixed names when they are not defined), else plain
// engines with non_replicated_deduplication_window where the release has it,
// else plain engines. s is returned with Engine and, if needed, the
// replication names set.
func ProbeEngine(ctx context.Context, conn driver.Conn, s schema.ClickHouse) schema.ClickHouse {
	var n uint64
	if err := conn.QueryRow(ctx, "SELECT count() FROM system.zookeeper WHERE path = '/'").Scan(&n); err == nil {
		s.Engine = schema.EngineReplicated
		var macros uint64
		err := conn.QueryRow(ctx, "SELECT count() FROM system.macros WHERE macro IN ('shard', 'replica')").Scan(&macros)
		if err != nil || macros < 2 {
			s.ZooKeeperPrefix, s.Replica = "/clickhouse/tables/canopy", "canopy"
		}
		return s
	}
	if err := conn.QueryRow(ctx, "SELECT count() FROM system.merge_tree_settings WHERE name = 'non_replicated_deduplication_window'").Scan(&n); err == nil && n > 0 {
		s.Engine = schema.EngineDedupWindow
		return s
	}
	s.Engine = schema.EnginePlain
	return s
}

func columns(ctx context.Context, conn driver.Conn, db, table string) (map[string]string, error) {
	rows, err := conn.Query(ctx, "SELECT name, type FROM system.columns WHERE database = ? AND table = ?", db, table)
	if err != nil {
		return nil, fmt.Errorf("read columns of %s.%s: %w", db, table, err)
	}
	defer rows.Close()
	out := map[string]string{}
	for rows.Next() {
		var name, typ string
		if err := rows.Scan(&name, &typ); err != nil {
			return nil, err
		}
		out[name] = typ
	}
	return out, rows.Err()
}

// sameType forgives spelling differences between what Canopy writes and what
// ClickHouse reports back ("Decimal(18, 4)" vs "Decimal(18,4)").
func sameType(a, b string) bool {
	strip := func(s string) string {
		out := make([]byte, 0, len(s))
		for i := 0; i < len(s); i++ {
			if s[i] != ' ' {
				out = append(out, s[i])
			}
		}
		return string(out)
	}
	return strip(a) == strip(b)
}

// UserStatus says how EnsureWriter or EnsureReader left a user.
type UserStatus string

const (
	UserCreated    UserStatus = "created or updated (CREATE USER … GRANT)"
	UserConfigured UserStatus = "declared in the server's users configuration"
	// UserConfiguredGrants: a server with SQL user management whose user
	// is declared in users.xml (read-only there: ALTER USER would fail),
	// checked for the grants Canopy would give it.
	UserConfiguredGrants UserStatus = "declared in the server's users configuration, grants checked"
)

// Reader is the read-only user of Grafana and analysts.
type Reader struct {
	User, Password string
	// Raw grants the raw events table and ingest_failures.raw as well.
	Raw bool
}

// Reader limits on servers with settings profiles: the values are also the
// maxima the reader may SET (Grafana sends settings with its queries, so
// readonly is 2, and the constraints keep it from raising these).
const (
	ReaderMaxMemory        = 2_000_000_000
	ReaderMaxExecutionTime = 60
	ReaderMaxResultRows    = 1_000_000
)

// hasRBAC reports whether the server manages users in SQL (CREATE USER,
// GRANT): 20.x and later. 18.16 declares users only in users.xml.
func hasRBAC(ctx context.Context, conn driver.Conn) (bool, error) {
	var n uint64
	err := conn.QueryRow(ctx, "SELECT count() FROM system.tables WHERE database = 'system' AND name = 'users'").Scan(&n)
	return n > 0, err
}

// inUsersXML reports whether user is declared in the server's users
// configuration (users.xml), an access storage SQL cannot change. Servers
// without a writable one (clickhouse-local, which the 26.9 test server
// runs) hold every user there.
func inUsersXML(ctx context.Context, conn driver.Conn, user string) (bool, error) {
	var n uint64
	err := conn.QueryRow(ctx, "SELECT count() FROM system.users WHERE name = ? AND storage IN "+
		"(SELECT name FROM system.user_directories WHERE type IN ('users_xml', 'users.xml'))", user).Scan(&n)
	return n > 0, err
}

// grant is one row of system.grants.
type grant struct {
	access, database, table, column string
	revoke                          bool
}

// grantsOf reads user's grants (the admin needs SHOW USERS, which
// access_management gives).
func grantsOf(ctx context.Context, conn driver.Conn, user string) ([]grant, error) {
	rows, err := conn.Query(ctx, "SELECT access_type, ifNull(database, ''), ifNull(table, ''), ifNull(column, ''), is_partial_revoke "+
		"FROM system.grants WHERE user_name = ?", user)
	if err != nil {
		return nil, fmt.Errorf("read the grants of %s: %w", user, err)
	}
	defer rows.Close()
	var out []grant
	for rows.Next() {
		var g grant
		var revoke uint8
		if err := rows.Scan(&g.access, &g.database, &g.table, &g.column, &revoke); err != nil {
			return nil, err
		}
		g.revoke = revoke != 0
		out = append(out, g)
	}
	return out, rows.Err()
}

// checkGrants checks a configured user's grants: nothing but the allowed
// access types, each on one database, and every one of need on all of db.
func checkGrants(ctx context.Context, conn driver.Conn, db, user string, allowed, need []string) error {
	gs, err := grantsOf(ctx, conn, user)
	if err != nil {
		return err
	}
	have := map[string]bool{}
	for _, g := range gs {
		if g.revoke {
			continue
		}
		ok := false
		for _, a := range allowed {
			ok = ok || g.access == a
		}
		if !ok || g.database == "" {
			on := g.database + "." + g.table
			if g.database == "" {
				on = "*.*"
			}
			return fmt.Errorf("user %s has %s on %s: want only %s, on Canopy's database", user, g.access, on, strings.Join(allowed, ", "))
		}
		if g.database == db && g.table == "" {
			have[g.access] = true
		}
	}
	for _, a := range need {
		if !have[a] {
			return fmt.Errorf("user %s lacks GRANT %s ON %s.*", user, a, db)
		}
	}
	return nil
}

// userHint says what to do when CREATE USER, ALTER USER or GRANT fails.
func userHint(err error) string {
	var ex *clickhouse.Exception
	if errors.As(err, &ex) && ex.Code == 514 { // ACCESS_STORAGE_FOR_INSERTION_NOT_FOUND
		return "this server keeps users only in its configuration (no local_directory in user_directories): declare the user in users.xml, and migrate checks it"
	}
	return "the migrating user needs access_management"
}

// quote is s as a single-quoted SQL string literal.
func quote(s string) string {
	s = strings.ReplaceAll(s, `\`, `\\`)
	return "'" + strings.ReplaceAll(s, `'`, `\'`) + "'"
}

// EnsureWriter makes the workers' ClickHouse user: INSERT and SELECT on
// Canopy's database, nothing else (no DDL, no other database). Servers with
// SQL user management get CREATE USER, ALTER USER (the password follows
// the setting) and GRANT INSERT, SELECT ON db.*; on ClickHouse 18.16 the
// user must be declared in users.xml (readonly = 0, allow_ddl = 0,
// allow_databases), and EnsureWriter checks that it logs in to db, may
// insert and may not run DDL. user must be a plain identifier.
func EnsureWriter(ctx context.Context, conn driver.Conn, login *clickhouse.Options, db, user, password string) (UserStatus, error) {
	rbac, err := hasRBAC(ctx, conn)
	if err != nil {
		return "", err
	}
	configured := false
	if rbac {
		if configured, err = inUsersXML(ctx, conn, user); err != nil {
			return "", err
		}
	}
	if rbac && configured {
		if _, err := loginSettings(ctx, login, db, user, password); err != nil {
			return "", fmt.Errorf("writer user %s is declared in the server's users.xml but cannot log in to %s with its password: %w", user, db, err)
		}
		if err := checkGrants(ctx, conn, db, user, []string{"INSERT", "SELECT"}, []string{"INSERT", "SELECT"}); err != nil {
			return "", fmt.Errorf("writer user %s (declared in users.xml, so migrate cannot change it): %w", user, err)
		}
		return UserConfiguredGrants, nil
	}
	if rbac {
		for _, q := range []string{
			fmt.Sprintf("CREATE USER IF NOT EXISTS %s IDENTIFIED WITH sha256_password BY %s", user, quote(password)),
			fmt.Sprintf("ALTER USER %s IDENTIFIED WITH sha256_password BY %s", user, quote(password)),
			fmt.Sprintf("GRANT INSERT, SELECT ON %s.* TO %s", db, user),
		} {
			if err := conn.Exec(ctx, q); err != nil {
				return "", fmt.Errorf("writer user %s: %w (%s)", user, scrubSecret(err, password), userHint(err))
			}
		}
		return UserCreated, nil
	}
	settings, err := loginSettings(ctx, login, db, user, password)
	if err != nil {
		return "", fmt.Errorf("writer user %s: this ClickHouse has no CREATE USER; declare it in users.xml with a profile of readonly 0 and allow_ddl 0 and allow_databases %s (docs/security.md): %w", user, db, err)
	}
	if settings["readonly"] != "0" {
		return "", fmt.Errorf("writer user %s: its profile has readonly = %s, so it cannot insert; want readonly 0 and allow_ddl 0", user, settings["readonly"])
	}
	if settings["allow_ddl"] != "0" {
		return "", fmt.Errorf("writer user %s: its profile allows DDL (allow_ddl = %s), so it could drop or alter Canopy's tables; set allow_ddl 0", user, settings["allow_ddl"])
	}
	return UserConfigured, nil
}

// EnsureReader makes the read-only ClickHouse user of Grafana and analysts.
// Servers with SQL user management get a settings profile whose limits the
// reader cannot raise, CREATE USER / ALTER USER with that profile, and
// SELECT on the rollup, entity, ack and failure tables (without
// ingest_failures.raw and the raw events table unless r.Raw). ClickHouse
// 18.16 has none of this: the user must be declared in users.xml with a
// readonly profile and allow_databases, and EnsureReader checks that it logs
// in to db and is read-only. r.User must be a plain identifier.
func EnsureReader(ctx context.Context, conn driver.Conn, login *clickhouse.Options, s schema.ClickHouse, r Reader) (UserStatus, error) {
	rbac, err := hasRBAC(ctx, conn)
	if err != nil {
		return "", err
	}
	db, user := s.Database, r.User
	configured := false
	if rbac {
		if configured, err = inUsersXML(ctx, conn, user); err != nil {
			return "", err
		}
	}
	if rbac && configured {
		settings, err := loginSettings(ctx, login, db, user, r.Password)
		if err != nil {
			return "", fmt.Errorf("read-only user %s is declared in the server's users.xml but cannot log in to %s with its password: %w", user, db, err)
		}
		if settings["readonly"] == "0" {
			return "", fmt.Errorf("read-only user %s (declared in users.xml): its profile has readonly = 0, so it could write; want readonly 2", user)
		}
		if err := checkGrants(ctx, conn, db, user, []string{"SELECT"}, []string{"SELECT"}); err != nil {
			return "", fmt.Errorf("read-only user %s (declared in users.xml, so migrate cannot change it): %w", user, err)
		}
		return UserConfiguredGrants, nil
	}
	if rbac {
		profile := user + "_limits"
		qs := []string{
			// MIN 1: 0 means no limit for each of these, and passes a MAX.
			fmt.Sprintf("CREATE SETTINGS PROFILE OR REPLACE %[1]s SETTINGS readonly = 2, "+
				"max_memory_usage = %[2]d MIN 1 MAX %[2]d, max_execution_time = %[3]d MIN 1 MAX %[3]d, max_result_rows = %[4]d MIN 1 MAX %[4]d, "+
				"result_overflow_mode = 'throw' CONST",
				profile, ReaderMaxMemory, ReaderMaxExecutionTime, ReaderMaxResultRows),
			fmt.Sprintf("CREATE USER IF NOT EXISTS %s IDENTIFIED WITH sha256_password BY %s SETTINGS PROFILE %s", user, quote(r.Password), quote(profile)),
			fmt.Sprintf("ALTER USER %s IDENTIFIED WITH sha256_password BY %s SETTINGS PROFILE %s", user, quote(r.Password), quote(profile)),
			// From scratch each time, so that turning Raw off takes the raw
			// tables away again.
			fmt.Sprintf("REVOKE ALL ON %s.* FROM %s", db, user),
		}
		if r.Raw {
			qs = append(qs, fmt.Sprintf("GRANT SELECT ON %s.* TO %s", db, user))
		} else {
			for _, t := range s.Tables() {
				switch t.Name {
				case schema.TableEvents:
				case schema.TableFailures:
					var cols []string
					for _, c := range t.Columns {
						if c.Name != "raw" {
							cols = append(cols, c.Name)
						}
					}
					qs = append(qs, fmt.Sprintf("GRANT SELECT(%s) ON %s.%s TO %s", strings.Join(cols, ", "), db, t.Name, user))
				default:
					qs = append(qs, fmt.Sprintf("GRANT SELECT ON %s.%s TO %s", db, t.Name, user))
				}
			}
		}
		for _, q := range qs {
			if err := conn.Exec(ctx, q); err != nil {
				return "", fmt.Errorf("read-only user %s: %w (%s)", user, scrubSecret(err, r.Password), userHint(err))
			}
		}
		return UserCreated, nil
	}
	settings, err := loginSettings(ctx, login, db, user, r.Password)
	if err != nil {
		return "", fmt.Errorf("read-only user %s: this ClickHouse has no CREATE USER; declare the user in users.xml with a readonly profile and allow_databases %s (scripts/services does): %w", user, db, err)
	}
	if settings["readonly"] == "0" {
		return "", fmt.Errorf("read-only user %s: its profile has readonly = 0, so it can write; want readonly 2", user)
	}
	return UserConfigured, nil
}

// loginSettings logs in as user to db, as the worker or Grafana would
// (login's addresses and TLS, its user replaced), and returns the values of
// readonly and allow_ddl it gets.
func loginSettings(ctx context.Context, login *clickhouse.Options, db, user, password string) (map[string]string, error) {
	o := *login
	o.Auth = clickhouse.Auth{Database: db, Username: user, Password: password}
	c, err := clickhouse.Open(&o)
	if err != nil {
		return nil, scrubSecret(err, password)
	}
	defer func() { _ = c.Close() }()
	rows, err := c.Query(ctx, "SELECT name, value FROM system.settings WHERE name IN ('readonly', 'allow_ddl')")
	if err != nil {
		return nil, scrubSecret(err, password)
	}
	defer rows.Close()
	out := map[string]string{}
	for rows.Next() {
		var k, v string
		if err := rows.Scan(&k, &v); err != nil {
			return nil, err
		}
		out[k] = v
	}
	return out, rows.Err()
}

// scrubSecret hides secret in an error that may quote the statement.
func scrubSecret(err error, secret string) error {
	if err == nil || secret == "" || !strings.Contains(err.Error(), secret) {
		return err
	}
	return errors.New(strings.ReplaceAll(err.Error(), secret, "xxxxx"))
}
