package ingest

import (
	"math/rand/v2"
	"testing"
	"time"

	"github.com/canopyhq/canopy/schema"
)

// randomBatch is a batch of events over entities 1..50 in two months, with
// a rollup row per event (its own entity, its hour).
func randomShardBatch(rng *rand.Rand, n int) *Batch {
	b := &Batch{Hourly: NewRollup(1), Daily: NewRollup(1), AsIs: NewRollup(1)}
	start := time.Date(2026, 10, 25, 0, 0, 0, 0, time.UTC)
	for i := range n {
		e := Event{ID: string(rune('a' + i%26)), EntityID: 1 + rng.Int64N(50),
			OccurredAt: start.Add(time.Duration(rng.Int64N(int64(14 * 24 * time.Hour)))).Truncate(time.Second),
			Type:       "sale", Measures: []int64{rng.Int64N(1000)}}
		b.Events = append(b.Events, Accepted{Event: e, Offset: int64(i)})
		b.Hourly.Add(RollupKey{EntityID: e.EntityID, Bucket: e.OccurredAt.Truncate(time.Hour).Unix(), Type: e.Type}, e.Measures)
		b.Daily.Add(RollupKey{EntityID: e.EntityID, Bucket: e.OccurredAt.Truncate(24 * time.Hour).Unix(), Type: e.Type}, e.Measures)
	}
	return b
}

// TestShardPartsPartitionTheBatch checks that the shards' parts of a batch
// hold every row exactly once, each on the shard of its entity (entity_id
// modulo the shards, as a Distributed table sharded by entity_id places
// it), in the batch's order.
func TestShardPartsPartitionTheBatch(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 7))
	b := randomShardBatch(rng, 400)
	for _, n := range []int{1, 2, 3} {
		var events, hourly int
		for i := range n {
			p := b.shard(i, n)
			last := int64(-1)
			for _, e := range p.Events {
				if e.EntityID%int64(n) != int64(i) {
					t.Fatalf("%d shards: entity %d in shard %d", n, e.EntityID, i)
				}
				if e.Offset <= last {
					t.Fatalf("%d shards: shard %d's events out of the batch's order", n, i)
				}
				last = e.Offset
			}
			events += len(p.Events)
			row := 0 // the rows of p.Hourly appear in b.Hourly in order
			for j, k := range p.Hourly.Keys {
				if k.EntityID%int64(n) != int64(i) {
					t.Fatalf("%d shards: rollup row of entity %d in shard %d", n, k.EntityID, i)
				}
				for row < b.Hourly.Len() && b.Hourly.Keys[row] != k {
					row++
				}
				if row == b.Hourly.Len() || b.Hourly.Events[row] != p.Hourly.Events[j] || b.Hourly.Sums[0][row] != p.Hourly.Sums[0][j] {
					t.Fatalf("%d shards: shard %d's rollup row %v is not the batch's, in order", n, i, k)
				}
				row++
			}
			hourly += p.Hourly.Len()
		}
		if events != len(b.Events) || hourly != b.Hourly.Len() {
			t.Fatalf("%d shards: parts hold %d events and %d rows, the batch %d and %d", n, events, hourly, len(b.Events), b.Hourly.Len())
		}
	}
}

// TestWithoutDropsOnlyTheLandedShardParts checks that a replay keeps every
// row of a part that did not land on its shard and drops those that did.
func TestWithoutDropsOnlyTheLandedShardParts(t *testing.T) {
	rng := rand.New(rand.NewPCG(8, 8))
	b := randomShardBatch(rng, 300)
	l := Landed{Months: []map[string]map[int]bool{
		{schema.TableEvents: {202610: true}, schema.TableRollupHourly: {202611: true}},
		{},
	}}
	out := b.without(l)
	for _, e := range b.Events {
		landed := e.EntityID%2 == 0 && yyyymm(e.OccurredAt) == 202610
		kept := false
		for _, o := range out.Events {
			kept = kept || o.Offset == e.Offset
		}
		if kept == landed {
			t.Fatalf("event of entity %d at %v: landed %v, kept %v", e.EntityID, e.OccurredAt, landed, kept)
		}
	}
	want := 0
	for _, k := range b.Hourly.Keys {
		if !(k.EntityID%2 == 0 && yyyymm(time.Unix(k.Bucket, 0).UTC()) == 202611) {
			want++
		}
	}
	if out.Hourly.Len() != want || out.Daily.Len() != b.Daily.Len() {
		t.Fatalf("hourly rows kept %d, want %d; daily %d of %d", out.Hourly.Len(), want, out.Daily.Len(), b.Daily.Len())
	}
}
