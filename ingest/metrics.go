package ingest

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the pipeline's Prometheus metrics. A nil *Metrics records
// nothing, so tests need not build one.
type Metrics struct {
	records      *prometheus.CounterVec // by outcome
	rollupRows   *prometheus.CounterVec // by table
	batchSeconds prometheus.Histogram
	batchErrors  *prometheus.CounterVec // by kind
	lag          *prometheus.GaugeVec   // by topic, partition
	hierarchyVer prometheus.Gauge
	dedupIDs     prometheus.Gauge
	dedupBytes   prometheus.Gauge
	restores     prometheus.Histogram // partitioned dedup: rebuilding a partition's state
	restoredRecs prometheus.Counter
	restoreLeft  prometheus.Gauge       // summed over the partitions restoring
	routed       prometheus.Counter     // records the router copied to the by-id topic
	buffered     prometheus.Gauge       // bytes fetched, not processed yet
	paused       prometheus.Gauge       // partitions paused at the fetch
	deadByClass  *prometheus.CounterVec // dead letters by class
}

// NewMetrics registers the pipeline metrics with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		records: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "canopy_records_total", Help: "Source records by outcome (accepted, duplicate, dead_lettered, retried).",
		}, []string{"outcome"}),
		rollupRows: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "canopy_rows_written_total", Help: "Rows written to ClickHouse by table, after in-batch aggregation.",
		}, []string{"table"}),
		batchSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "canopy_batch_write_seconds", Help: "Time to write one batch to ClickHouse and mark it done.",
			Buckets: prometheus.ExponentialBuckets(0.005, 2, 12),
		}),
		batchErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "canopy_batch_errors_total", Help: "Failed batch attempts by kind (transient, fenced, overlap, paused, replay_mismatch, permanent).",
		}, []string{"kind"}),
		lag: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "canopy_consumer_lag", Help: "Records between the end of a partition and the last processed offset.",
		}, []string{"topic", "partition"}),
		hierarchyVer: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "canopy_hierarchy_version", Help: "Newest hierarchy change applied in memory.",
		}),
		dedupIDs: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "canopy_dedup_state_ids", Help: "Event ids held for deduplication within the horizon (PostgreSQL's estimate, or the local state's count).",
		}),
		dedupBytes: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "canopy_dedup_state_bytes", Help: "Disk taken by the event ids held for deduplication, indexes included.",
		}),
		restores: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "canopy_dedup_restore_seconds", Help: "Time to rebuild a partition's local event-id state from the by-id topic (ingest.dedup=partitioned).",
			Buckets: prometheus.ExponentialBuckets(0.01, 2, 14),
		}),
		restoredRecs: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "canopy_dedup_restored_records_total", Help: "By-id records read to rebuild local event-id state, counted as they are read.",
		}),
		restoreLeft: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "canopy_dedup_restore_remaining_records",
			Help: "Offsets of the by-id topic still to read, over the partitions whose local event-id state is being rebuilt (their batches wait meanwhile); 0 when none is.",
		}),
		routed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "canopy_routed_records_total", Help: "Records the router copied to the by-id topic (ingest.dedup=partitioned).",
		}),
		buffered: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "canopy_buffered_bytes", Help: "Bytes of records fetched and waiting for their batch (bounded by ingest.max_buffered_bytes).",
		}),
		paused: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "canopy_paused_partitions", Help: "Partitions whose fetching is paused because their batches cannot keep up or keep failing.",
		}),
		deadByClass: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "canopy_dead_letters_total", Help: "Records given up by error class; class unpublishable: refused by the dead-letter topic, kept in ingest_failures only.",
		}, []string{"class"}),
	}
	reg.MustRegister(m.records, m.rollupRows, m.batchSeconds, m.batchErrors, m.lag, m.hierarchyVer, m.dedupIDs, m.dedupBytes,
		m.restores, m.restoredRecs, m.restoreLeft, m.routed, m.buffered, m.paused, m.deadByClass)
	// Every series exists from the start, at 0, so dashboards and alerts see
	// "none yet" rather than "no data".
	for _, o := range []string{"accepted", "duplicate", "dead_lettered", "retried"} {
		m.records.WithLabelValues(o)
	}
	for _, t := range []string{"events", "rollup_hourly", "rollup_daily", "rollup_daily_current"} {
		m.rollupRows.WithLabelValues(t)
	}
	for _, k := range []string{"transient", "fenced", "overlap", "paused", "replay_mismatch", "permanent"} {
		m.batchErrors.WithLabelValues(k)
	}
	return m
}

func (m *Metrics) observeBatch(b *Batch, dead []Failure, retried int, d time.Duration) {
	if m == nil {
		return
	}
	m.records.WithLabelValues("accepted").Add(float64(b.Counts.Accepted))
	m.records.WithLabelValues("duplicate").Add(float64(b.Counts.Duplicates))
	m.records.WithLabelValues("dead_lettered").Add(float64(len(dead)))
	for _, f := range dead {
		m.deadByClass.WithLabelValues(string(f.Class)).Inc()
	}
	m.records.WithLabelValues("retried").Add(float64(retried))
	m.rollupRows.WithLabelValues("events").Add(float64(len(b.Events)))
	m.rollupRows.WithLabelValues("rollup_hourly").Add(float64(b.Hourly.Len()))
	m.rollupRows.WithLabelValues("rollup_daily").Add(float64(b.Daily.Len()))
	m.rollupRows.WithLabelValues("rollup_daily_current").Add(float64(b.AsIs.Len()))
	for _, c := range b.Coarser {
		m.rollupRows.WithLabelValues(c.Grain.Table).Add(float64(c.Rollup.Len()))
	}
	m.batchSeconds.Observe(d.Seconds())
}

// SetDedupState records the size of the event-id deduplication state.
func (m *Metrics) SetDedupState(ids, bytes int64) {
	if m == nil {
		return
	}
	m.dedupIDs.Set(float64(ids))
	m.dedupBytes.Set(float64(bytes))
}

// restoreRead counts n records read to rebuild a partition's state, whose
// offsets left to read changed by dLeft.
func (m *Metrics) restoreRead(n int, dLeft int64) {
	if m == nil {
		return
	}
	m.restoredRecs.Add(float64(n))
	m.restoreLeft.Add(float64(dLeft))
}

func (m *Metrics) restoreFinished(d time.Duration) {
	if m == nil {
		return
	}
	m.restores.Observe(d.Seconds())
}

func (m *Metrics) addRouted(n int) {
	if m == nil {
		return
	}
	m.routed.Add(float64(n))
}

func (m *Metrics) setBuffered(bytes, paused int) {
	if m == nil {
		return
	}
	m.buffered.Set(float64(bytes))
	m.paused.Set(float64(paused))
}

func (m *Metrics) batchError(kind string) {
	if m == nil {
		return
	}
	m.batchErrors.WithLabelValues(kind).Inc()
}

func (m *Metrics) setLag(topic, partition string, lag int64) {
	if m == nil {
		return
	}
	m.lag.WithLabelValues(topic, partition).Set(float64(lag))
}

// SetHierarchyVersion records the in-memory hierarchy version.
func (m *Metrics) SetHierarchyVersion(v int64) {
	if m == nil {
		return
	}
	m.hierarchyVer.Set(float64(v))
}
