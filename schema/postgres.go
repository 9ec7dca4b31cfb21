package schema

import (
	"embed"
	"fmt"
	"io/fs"
	"path"
	"sort"
	"strconv"
	"strings"
)

// postgresFS holds the PostgreSQL migrations. A file is named
// NNNN_name.sql; NNNN is its version. Files are never edited once released:
// a change to the schema is a new file.
//
//go:embed postgres/*.sql
var postgresFS embed.FS

// Migration is one versioned PostgreSQL schema change. The runner applies
// each migration once, in version order, in its own transaction.
type Migration struct {
	Version int
	Name    string
	SQL     string
}

// PostgresMigrations returns the embedded PostgreSQL migrations sorted by
// version. It panics if a file name does not follow NNNN_name.sql or two files
// share a version, since that is a build defect, not a runtime condition.
func PostgresMigrations() []Migration {
	migs, err := loadMigrations(postgresFS, "postgres")
	if err != nil {
		panic(err)
	}
	return migs
}

func loadMigrations(fsys fs.FS, dir string) ([]Migration, error) {
	entries, err := fs.ReadDir(fsys, dir)
	if err != nil {
		return nil, err
	}
	var migs []Migration
	seen := map[int]string{}
	for _, e := range entries {
		if e.IsDir() || !strings.HasSuffix(e.Name(), ".sql") {
			continue
		}
		base := strings.TrimSuffix(e.Name(), ".sql")
		num, name, ok := strings.Cut(base, "_")
		v, err := strconv.Atoi(num)
		if !ok || err != nil || v <= 0 || name == "" {
			return nil, fmt.Errorf("schema: migration file %q is not named NNNN_name.sql", e.Name())
		}
		if prev, dup := seen[v]; dup {
			return nil, fmt.Errorf("schema: migrations %q and %q share version %d", prev, e.Name(), v)
		}
		seen[v] = e.Name()
		b, err := fs.ReadFile(fsys, path.Join(dir, e.Name()))
		if err != nil {
			return nil, err
		}
		migs = append(migs, Migration{Version: v, Name: name, SQL: string(b)})
	}
	sort.Slice(migs, func(i, j int) bool { return migs[i].Version < migs[j].Version })
	return migs, nil
}
