package schema

import (
	"fmt"
	"regexp"
	"strings"
)

// Table names in the ClickHouse database.
const (
	TableEvents       = "events"
	TableRollupHourly = "rollup_hourly"
	TableRollupDaily  = "rollup_daily"
	TableRollupAsIs   = "rollup_daily_current"
	TableEntities     = "entities"
	// TableEntitiesByParent holds the same rows as entities sorted by
	// parent, so a dashboard finds an entity's children without scanning
	// the hierarchy. A row there may be stale (the entity moved on): check
	// the child's newest version in entities.
	TableEntitiesByParent = "entities_by_parent"
	TableAcks             = "ingest_acks"
	TableFailures         = "ingest_failures"
)

// Column is one ClickHouse column.
type Column struct {
	Name string
	Type string
}

// Table is one ClickHouse table as Canopy wants it.
type Table struct {
	Name    string
	Columns []Column
	// Engine, partition, order and settings clauses, after the column list.
	Tail string
}

// Engine is how the tables deduplicate a re-inserted block.
type Engine int

const (
	// EngineReplicated uses Replicated* engines, which deduplicate blocks
	// through ZooKeeper or ClickHouse Keeper; the only way on 18.16.
	EngineReplicated Engine = iota
	// EngineDedupWindow uses plain engines with
	// non_replicated_deduplication_window, on releases that have it and no
	// Keeper.
	EngineDedupWindow
	// EnginePlain uses plain engines: no deduplication, so a batch replayed
	// after a crash can be counted twice. Only for a server with neither.
	EnginePlain
)

func (e Engine) String() string {
	return [...]string{"replicated", "dedup-window", "plain"}[e]
}

// ClickHouse derives Canopy's ClickHouse tables from the measures.
//
// By default every table uses a Replicated* engine: on ClickHouse 18.16 that
// is the only engine that deduplicates a re-inserted identical block, which
// is what makes a replayed batch harmless (see docs/exactly-once.md). A
// single server with ZooKeeper (or ClickHouse Keeper) and the {shard} and
// {replica} macros is enough.
type ClickHouse struct {
	Database string   // default "canopy"
	Measures Measures // validated
	Engine   Engine   // default EngineReplicated
	// ZooKeeperPrefix is the replication path prefix; default
	// "/clickhouse/tables/{shard}". The database and table names are appended.
	ZooKeeperPrefix string
	// Replica is the replica name; default "{replica}".
	Replica string
	// DedupWindow is replicated_deduplication_window: how many recent blocks a
	// table remembers for deduplication. Default 100000.
	DedupWindow int
	// Grains are the as-was rollup grains, finest first (ParseGrains);
	// default DefaultGrains: rollup_hourly and rollup_daily.
	Grains []Grain
	// Cluster is the cluster of remote_servers the tables are sharded over
	// (clickhouse.cluster); "" for one server. On a cluster each sharded
	// table (Sharded: the events and the rollups) is a Replicated* table
	// named with LocalSuffix on every node, under a per-shard ZooKeeper
	// path, read through a Distributed table of the usual name sharded by
	// entity_id; the other tables (entities, acks, failures) are
	// replicated to every node whole, under one ZooKeeper path, so each
	// shard joins with its own copy. The engine must be EngineReplicated.
	Cluster string
}

// LocalSuffix ends the name of a sharded table's local part on a cluster.
const LocalSuffix = "_local"

// Sharded reports whether table's rows are spread over a cluster's shards
// by entity_id: the events and every rollup table. The others are whole
// on every node.
func (c ClickHouse) Sharded(table string) bool {
	if table == TableEvents || table == TableRollupAsIs {
		return true
	}
	_, ok := c.Grain(table)
	return ok
}

// Local is the table a writer inserts table's rows into: on a cluster, a
// sharded table's local part on the row's shard; else table itself.
func (c ClickHouse) Local(table string) string {
	if c.Cluster != "" && c.Sharded(table) {
		return table + LocalSuffix
	}
	return table
}

var identifier = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]{0,63}$`)

// CheckIdentifier returns an error naming setting unless value is a plain
// ClickHouse identifier: a letter or _, then letters, digits or _, at most
// 64 characters. Names that Canopy writes into SQL (the database, the
// read-only user) must be; it never quotes them.
func CheckIdentifier(setting, value string) error {
	if !identifier.MatchString(value) {
		return fmt.Errorf("%s: %q is not a plain identifier (accepted: [A-Za-z_][A-Za-z0-9_]*, at most 64 characters)", setting, value)
	}
	return nil
}

// Validate fills defaults and checks names.
func (c *ClickHouse) Validate() error {
	if c.Database == "" {
		c.Database = "canopy"
	}
	if err := CheckIdentifier("clickhouse.database", c.Database); err != nil {
		return fmt.Errorf("schema: %w", err)
	}
	if c.ZooKeeperPrefix == "" {
		c.ZooKeeperPrefix = "/clickhouse/tables/{shard}"
	}
	if c.Replica == "" {
		c.Replica = "{replica}"
	}
	if c.DedupWindow == 0 {
		c.DedupWindow = 100000
	}
	if len(c.Grains) == 0 {
		c.Grains = DefaultGrains()
	}
	if c.Cluster != "" {
		if err := CheckIdentifier("clickhouse.cluster", c.Cluster); err != nil {
			return fmt.Errorf("schema: %w", err)
		}
	}
	return c.Measures.Validate()
}

func (c ClickHouse) engine(kind, table, args string) string {
	if c.Engine != EngineReplicated {
		return kind + "(" + args + ")"
	}
	prefix, replica := c.ZooKeeperPrefix, c.Replica
	if c.Cluster != "" && !c.Sharded(strings.TrimSuffix(table, LocalSuffix)) {
		// Whole on every node: one replica set across the cluster, each
		// node a replica named by its shard and replica macros.
		prefix, replica = "/clickhouse/tables/all", "{shard}-{replica}"
	}
	path := strings.TrimSuffix(prefix, "/") + "/" + c.Database + "/" + table
	e := fmt.Sprintf("Replicated%s('%s', '%s'", kind, path, replica)
	if args != "" {
		e += ", " + args
	}
	return e + ")"
}

func (c ClickHouse) settings() string {
	switch c.Engine {
	case EngineReplicated:
		return fmt.Sprintf("SETTINGS index_granularity = 8192, replicated_deduplication_window = %d", c.DedupWindow)
	case EngineDedupWindow:
		return fmt.Sprintf("SETTINGS index_granularity = 8192, non_replicated_deduplication_window = %d", c.DedupWindow)
	}
	return "SETTINGS index_granularity = 8192"
}

// EventColumns is the column order of the events table and of its INSERT.
func (c ClickHouse) EventColumns() []Column {
	cols := []Column{
		{"event_id", "String"},
		{"entity_id", "UInt64"},
		{"occurred_at", "DateTime('UTC')"},
		{"type", "String"},
	}
	for _, m := range c.Measures {
		cols = append(cols, Column{m.Name, m.EventType()})
	}
	return append(cols,
		Column{"ingested_at", "DateTime('UTC')"},
		Column{"src_topic", "String"},
		Column{"src_partition", "Int32"},
		Column{"src_offset", "Int64"},
		Column{"hierarchy_version", "Int64"},
	)
}

// RollupColumns is the column order of rollup_hourly and rollup_daily and of
// their INSERTs. bucketType is DateTime('UTC') for hourly, Date for daily.
//
// ingest_unit is not a measure and not part of the key: it makes the block of
// one batch unique, so that two different batches that happen to produce the
// same rows are never mistaken for a replay by block deduplication. The
// first row of each month (partition) of a block carries it, the others
// hold "". It is a String so SummingMergeTree does not sum it; after merges
// it holds any one contributing value and means nothing.
func (c ClickHouse) RollupColumns(bucketType string) []Column {
	cols := []Column{
		{"entity_id", "UInt64"},
		{"bucket", bucketType},
		{"depth", "UInt8"},
		{"type", "String"},
		{"events", "Int64"}, // signed: restatements subtract
	}
	for _, m := range c.Measures {
		cols = append(cols, Column{m.Name, m.SumType()})
	}
	return append(cols, Column{"ingest_unit", "String"})
}

// AsIsColumns is the column order of rollup_daily_current: the daily rollup
// columns plus pending_version, part of the key. It is 0 for rows whose
// attribution is settled; a batch that ran while a hierarchy change was still
// being restated writes its hierarchy version there, so the restater can
// tell the rows attributed before the change from those attributed after it
// (docs/hierarchy.md). Read with sum(...) GROUP BY without it.
func (c ClickHouse) AsIsColumns() []Column {
	cols := c.RollupColumns("Date")
	n := len(cols)
	return append(cols[:n-1:n-1], Column{"pending_version", "UInt64"}, cols[n-1])
}

// RollupTableColumns is the column order of one of the rollup tables (a
// configured grain's or the as-is one) and of its INSERT; ok is false for
// any other table.
func (c ClickHouse) RollupTableColumns(table string) (cols []Column, ok bool) {
	if table == TableRollupAsIs {
		return c.AsIsColumns(), true
	}
	for _, g := range c.grains() {
		if g.Table == table {
			return c.RollupColumns(g.BucketType), true
		}
	}
	return nil, false
}

// grains are the configured grains, the default before Validate.
func (c ClickHouse) grains() []Grain {
	if len(c.Grains) == 0 {
		return DefaultGrains()
	}
	return c.Grains
}

// Grain returns the configured grain of a table.
func (c ClickHouse) Grain(table string) (Grain, bool) {
	for _, g := range c.grains() {
		if g.Table == table {
			return g, true
		}
	}
	return Grain{}, false
}

// ConfiguredGrains are the configured grains, finest first.
func (c ClickHouse) ConfiguredGrains() []Grain { return c.grains() }

// AckColumns is the column order of ingest_acks.
func (c ClickHouse) AckColumns() []Column {
	return []Column{
		{"topic", "String"},
		{"partition", "Int32"},
		{"first_offset", "Int64"},
		{"last_offset", "Int64"},
		{"records", "UInt32"},
		{"accepted", "UInt32"},
		{"duplicates", "UInt32"},
		{"dead_lettered", "UInt32"},
		{"retried", "UInt32"},
		{"hierarchy_version", "Int64"},
		{"processed_at", "DateTime('UTC')"},
		// Kafka's id of the topic the range was read from: a topic deleted
		// and created again reuses its name and offsets. "" for files,
		// PostgreSQL queries, and rows written before the column existed.
		{"topic_id", "String"},
	}
}

// FailureColumns is the column order of ingest_failures.
func (c ClickHouse) FailureColumns() []Column {
	return []Column{
		{"source_topic", "String"},
		{"source_partition", "Int32"},
		{"source_offset", "Int64"},
		{"event_id", "String"},
		{"entity_id", "UInt64"},
		{"raw", "String"},
		{"error_class", "String"},
		{"error_message", "String"},
		{"attempts", "UInt32"},
		{"first_failure", "DateTime('UTC')"},
		{"last_failure", "DateTime('UTC')"},
		{"resolution", "String"},
	}
}

// EntityColumns is the column order of the entities table.
func (c ClickHouse) EntityColumns() []Column {
	return []Column{
		{"id", "UInt64"},
		{"parent_id", "UInt64"}, // 0 for a root
		{"name", "String"},
		{"status", "String"},
		{"level", "UInt8"},        // root = 0
		{"path", "Array(UInt64)"}, // root … self
		{"version", "UInt64"},
	}
}

// Tables returns every table in creation order: the events, one as-was
// rollup per configured grain, the as-is rollup, then the rest. On a
// cluster each sharded table comes as its local part (Local), then the
// Distributed table of the usual name over it.
func (c ClickHouse) Tables() []Table {
	var ts []Table
	sharded := func(name string, cols []Column, engine, tail string) {
		local := c.Local(name)
		ts = append(ts, Table{local, cols, "ENGINE = " + c.engine(engine, local, "") + " " + tail + " " + c.settings()})
		if local != name {
			ts = append(ts, Table{name, cols, fmt.Sprintf("ENGINE = Distributed(%s, %s, %s, entity_id)", c.Cluster, c.Database, local)})
		}
	}
	sharded(TableEvents, c.EventColumns(), "MergeTree", "PARTITION BY toYYYYMM(occurred_at) ORDER BY (entity_id, occurred_at, event_id)")
	for _, g := range c.grains() {
		sharded(g.Table, c.RollupColumns(g.BucketType), "SummingMergeTree", "PARTITION BY toYYYYMM(bucket) ORDER BY (entity_id, bucket, depth, type)")
	}
	sharded(TableRollupAsIs, c.AsIsColumns(), "SummingMergeTree", "PARTITION BY toYYYYMM(bucket) ORDER BY (entity_id, bucket, depth, type, pending_version)")
	return append(ts, []Table{
		{TableEntities, c.EntityColumns(), "ENGINE = " + c.engine("ReplacingMergeTree", TableEntities, "version") +
			" ORDER BY id " + c.settings()},
		{TableEntitiesByParent, c.EntityColumns(), "ENGINE = " + c.engine("ReplacingMergeTree", TableEntitiesByParent, "version") +
			" ORDER BY (parent_id, id) " + c.settings()},
		{TableAcks, c.AckColumns(), "ENGINE = " + c.engine("ReplacingMergeTree", TableAcks, "") +
			" ORDER BY (topic, partition, first_offset) " + c.settings()},
		{TableFailures, c.FailureColumns(), "ENGINE = " + c.engine("ReplacingMergeTree", TableFailures, "last_failure") +
			" ORDER BY (source_topic, source_partition, source_offset) " + c.settings()},
	}...)
}

// CreateDatabase is the statement that creates the database.
func (c ClickHouse) CreateDatabase() string {
	return "CREATE DATABASE IF NOT EXISTS " + c.Database
}

// Create is the CREATE TABLE IF NOT EXISTS statement of t.
func (c ClickHouse) Create(t Table) string {
	var b strings.Builder
	fmt.Fprintf(&b, "CREATE TABLE IF NOT EXISTS %s.%s (\n", c.Database, t.Name)
	for i, col := range t.Columns {
		sep := ","
		if i == len(t.Columns)-1 {
			sep = ""
		}
		fmt.Fprintf(&b, "    %s %s%s\n", col.Name, col.Type, sep)
	}
	b.WriteString(") " + t.Tail)
	return b.String()
}

// AddColumn is the ALTER that adds a column missing from an existing table
// (a measure declared after the table was created). Existing rows read 0.
func (c ClickHouse) AddColumn(t Table, col Column, after string) string {
	return fmt.Sprintf("ALTER TABLE %s.%s ADD COLUMN %s %s AFTER %s", c.Database, t.Name, col.Name, col.Type, after)
}

// Insert is the INSERT statement of a table with every column named, as
// ClickHouse 18.16 requires from clickhouse-go.
func (c ClickHouse) Insert(table string, cols []Column) string {
	return fmt.Sprintf("INSERT INTO %s.%s (%s)", c.Database, table, ColumnList(cols))
}

// ColumnList is "a, b, c": the column names of an INSERT or a SELECT.
func ColumnList(cols []Column) string {
	names := make([]string, len(cols))
	for i, col := range cols {
		names[i] = col.Name
	}
	return strings.Join(names, ", ")
}
