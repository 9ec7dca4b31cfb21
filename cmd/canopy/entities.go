package main

import (
	"context"
	"fmt"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/canopyhq/canopy/hierarchy"
	"github.com/canopyhq/canopy/ingest"
	"github.com/canopyhq/canopy/schema"
)

// syncEntities rewrites the ClickHouse entities table from PostgreSQL (names)
// and the tree (levels and paths) unless it already holds this version.
func syncEntities(ctx context.Context, store *hierarchy.Store, tree *hierarchy.Tree, ch driver.Conn, chs schema.ClickHouse) error {
	version := tree.Version()
	var have uint64
	if err := ch.QueryRow(ctx, fmt.Sprintf("SELECT max(version) FROM %s.%s", chs.Database, schema.TableEntities)).Scan(&have); err != nil {
		return fmt.Errorf("read entities version: %w", err)
	}
	if int64(have) >= version && version > 0 { //nolint:gosec // versions are small
		return nil
	}
	var rows []ingest.EntityRow
	err := store.EntityRows(ctx, func(e hierarchy.EntityRow) error {
		path := tree.Path(e.ID)
		rows = append(rows, ingest.EntityRow{
			ID: e.ID, ParentID: e.ParentID, Name: e.Name, Status: e.Status.String(),
			Level: uint8(max(len(path)-1, 0)), Path: path, //nolint:gosec // depth <= 255
		})
		return nil
	})
	if err != nil {
		return err
	}
	return ingest.WriteEntities(ctx, ch, chs, version, rows)
}
