package e2e

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestHierarchyCLIErrors drives the hierarchy commands as a user would: a
// refused change exits 1 with the reason and changes nothing; bad usage exits 2.
func TestHierarchyCLIErrors(t *testing.T) {
	e := newEnv(t, 1)
	csv := filepath.Join(t.TempDir(), "h.csv")
	if err := os.WriteFile(csv, []byte("id,parent_id,status,name\n1,,active,a\n2,1,active,b\n3,2,active,c\n4,,closed,d\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	e.run("hierarchy", "import", csv)
	before := e.entitiesState()
	tests := []struct {
		name string
		args []string
		code int
		msg  string
	}{
		{"cycle", []string{"hierarchy", "move", "1", "3"}, 1, "cycle"},
		{"missing parent", []string{"hierarchy", "move", "3", "99"}, 1, "99"},
		{"closed parent", []string{"hierarchy", "move", "3", "4"}, 1, "closed"},
		{"unknown entity", []string{"hierarchy", "suspend", "77"}, 1, "77"},
		{"not an id", []string{"hierarchy", "move", "x", "1"}, 2, "not an entity id"},
		{"too few args", []string{"hierarchy", "move", "3"}, 2, "accepts 2 arg"},
		{"bad time", []string{"hierarchy", "suspend", "3", "--effective-at", "yesterday"}, 2, "effective-at"},
		{"unknown flag", []string{"worker", "--no-such-flag"}, 2, "unknown flag"},
		{"bad csv", []string{"hierarchy", "import", "/nonexistent/file.csv"}, 1, "no such file"},
		{"future time", []string{"hierarchy", "move", "3", "1", "--effective-at", "2999-01-01T00:00:00Z"}, 1, "future"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, err := e.runErr(tt.args...)
			var exit *exec.ExitError
			if !errors.As(err, &exit) || exit.ExitCode() != tt.code {
				t.Fatalf("canopy %s: %v, want exit %d\n%s", strings.Join(tt.args, " "), err, tt.code, out)
			}
			if !strings.Contains(out, tt.msg) {
				t.Fatalf("canopy %s said %q, want it to mention %q", strings.Join(tt.args, " "), out, tt.msg)
			}
		})
	}
	if after := e.entitiesState(); after != before {
		t.Fatalf("refused changes changed the hierarchy:\nbefore %s\nafter  %s", before, after)
	}
	e.run("hierarchy", "move", "3", "0") // 0 makes a root
	if got := e.entitiesState(); !strings.Contains(got, "3:0:active") {
		t.Fatalf("move to root: %s", got)
	}
}

// TestHierarchySQLErrors makes malformed and refused changes with plain SQL,
// the interface applications use: each fails with a clear message and
// leaves the entities, their history and the outbox untouched.
func TestHierarchySQLErrors(t *testing.T) {
	e := newEnv(t, 1)
	csv := filepath.Join(t.TempDir(), "h.csv")
	if err := os.WriteFile(csv, []byte("id,parent_id,status,name\n1,,active,a\n2,1,active,b\n3,2,active,c\n4,,closed,d\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	e.run("hierarchy", "import", csv)
	state := func() string {
		var h, o int64
		if err := e.pg.QueryRow(context.Background(), `select (select count(*) from canopy.entity_history),
			(select count(*) from canopy.outbox)`).Scan(&h, &o); err != nil {
			t.Fatal(err)
		}
		return fmt.Sprintf("%s history=%d outbox=%d", e.entitiesState(), h, o)
	}
	before := state()
	for _, tc := range []struct{ name, sql, msg string }{
		{"cycle", "update canopy.entities set parent_id = 3 where id = 1", "cycle"},
		{"missing parent", "update canopy.entities set parent_id = 99 where id = 3", "does not exist"},
		{"closed parent", "update canopy.entities set parent_id = 4 where id = 3", "closed"},
		{"unknown status", "update canopy.entities set status = 'gone' where id = 3", "status"},
		{"own parent", "update canopy.entities set parent_id = 3 where id = 3", "cycle"},
		{"id change", "update canopy.entities set id = 30 where id = 3", "cannot change"},
		{"delete", "delete from canopy.entities where id = 3", "close"},
		{"zero id", "insert into canopy.entities (id, parent_id) values (0, 1)", "check"},
		{"insert under missing parent", "insert into canopy.entities (id, parent_id) values (5, 99)", "does not exist"},
		{"future", "begin; set local canopy.effective_at = '2999-01-01'; update canopy.entities set parent_id = 1 where id = 3; commit", "future"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := e.pg.Exec(context.Background(), tc.sql)
			if err == nil || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("%s: error %v, want one mentioning %q", tc.sql, err, tc.msg)
			}
			_, _ = e.pg.Exec(context.Background(), "rollback")
		})
	}
	if after := state(); after != before {
		t.Fatalf("refused changes wrote:\nbefore %s\nafter  %s", before, after)
	}
}

func (e *env) entitiesState() string {
	e.t.Helper()
	var s string
	err := e.pg.QueryRow(context.Background(), `select string_agg(id || ':' || coalesce(parent_id, 0) || ':' || status, ',' order by id)
		from canopy.entities`).Scan(&s)
	if err != nil {
		e.t.Fatal(err)
	}
	return s
}
