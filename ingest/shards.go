package ingest

// ShardOf is the shard, 0-based in remote_servers order, that holds
// entity's rows on a cluster of n shards of equal weight: what a
// Distributed table sharded by entity_id chooses, entity_id modulo the
// shards' total weight. A writer that inserts into each shard's local
// table itself (ClickHouseSink.Shards) must choose the same shard, so an
// entity's rows live on one shard whichever way they arrived.
func ShardOf(entity int64, n int) int {
	return int(uint64(entity) % uint64(n)) //nolint:gosec // ids are >= 1, n >= 1
}

// shard returns shard i's part of b (of n shards): its events and rollup
// rows in the batch's order, so that a replay's part is the same block as
// the first attempt's and the shard's deduplication drops it.
func (b *Batch) shard(i, n int) *Batch {
	if n == 1 {
		return b
	}
	out := *b
	out.Events = nil
	for _, e := range b.Events {
		if ShardOf(e.EntityID, n) == i {
			out.Events = append(out.Events, e)
		}
	}
	out.Hourly, out.Daily, out.AsIs = b.Hourly.shard(i, n), b.Daily.shard(i, n), b.AsIs.shard(i, n)
	if len(b.Coarser) > 0 {
		out.Coarser = make([]GrainRollup, len(b.Coarser))
		for c, g := range b.Coarser {
			out.Coarser[c] = GrainRollup{Grain: g.Grain, Rollup: g.Rollup.shard(i, n)}
		}
	}
	return &out
}

// shard returns r's rows of shard i of n, in order.
func (r *Rollup) shard(i, n int) *Rollup {
	return r.filter(func(k RollupKey) bool { return ShardOf(k.EntityID, n) == i })
}
