package ingest

import (
	"context"
	"fmt"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/canopyhq/canopy/schema"
)

// EntityRow is one row of the ClickHouse tables entities and
// entities_by_parent: an entity as of a hierarchy version, with its depth
// and its path from the root. The restater derives it from
// hierarchy.EntityRow, the PostgreSQL row (no level, no path), which stays
// hierarchy's.
type EntityRow struct {
	ID       int64
	ParentID int64 // 0 = root
	Name     string
	Status   string
	Level    uint8
	Path     []int64 // root … self
}

// WriteEntities inserts rows at the given hierarchy version into entities
// and entities_by_parent; both are ReplacingMergeTree(version), so the
// newest version of each id wins in entities. A crash between the two
// inserts is repaired by the caller's retry, which writes both again.
func WriteEntities(ctx context.Context, conn driver.Conn, s schema.ClickHouse, version int64, rows []EntityRow) error {
	for _, table := range []string{schema.TableEntities, schema.TableEntitiesByParent} {
		if err := writeEntities(ctx, conn, s, table, version, rows); err != nil {
			return err
		}
	}
	return nil
}

func writeEntities(ctx context.Context, conn driver.Conn, s schema.ClickHouse, table string, version int64, rows []EntityRow) error {
	const chunk = 200000
	for start := 0; start < len(rows); start += chunk {
		end := min(start+chunk, len(rows))
		batch, err := conn.PrepareBatch(ctx, s.Insert(table, s.EntityColumns()))
		if err != nil {
			return fmt.Errorf("prepare insert into %s: %w", table, err)
		}
		for _, r := range rows[start:end] {
			path := make([]uint64, len(r.Path))
			for i, id := range r.Path {
				path[i] = uint64(id) //nolint:gosec // ids >= 1
			}
			if err := batch.Append(uint64(r.ID), uint64(r.ParentID), r.Name, r.Status, r.Level, path, uint64(version)); err != nil { //nolint:gosec // ids, versions >= 0
				_ = batch.Abort()
				return fmt.Errorf("insert into %s: %w", table, err)
			}
		}
		if err := batch.Send(); err != nil {
			return fmt.Errorf("insert into %s: %w", table, err)
		}
	}
	return nil
}
