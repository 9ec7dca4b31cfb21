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
			Name: "canopy_batch_errors_total", Help: "Failed batch attempts by kind (transient, fenced, overlap, paused).",
		}, []string{"kind"}),
		lag: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "canopy_consumer_lag", Help: "Records between the end of a partition and the last processed offset.",
		}, []string{"topic", "partition"}),
		hierarchyVer: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "canopy_hierarchy_version", Help: "Newest hierarchy change applied in memory.",
		}),
		dedupIDs: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "canopy_dedup_state_ids", Help: "Event ids held for deduplication within the horizon (PostgreSQL's estimate).",
		}),
		dedupBytes: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "canopy_dedup_state_bytes", Help: "Disk taken by the event ids held for deduplication, indexes included.",
		}),
	}
	reg.MustRegister(m.records, m.rollupRows, m.batchSeconds, m.batchErrors, m.lag, m.hierarchyVer, m.dedupIDs, m.dedupBytes)
	// Every series exists from the start, at 0, so dashboards and alerts see
	// "none yet" rather than "no data".
	for _, o := range []string{"accepted", "duplicate", "dead_lettered", "retried"} {
		m.records.WithLabelValues(o)
	}
	for _, t := range []string{"events", "rollup_hourly", "rollup_daily"} {
		m.rollupRows.WithLabelValues(t)
	}
	for _, k := range []string{"transient", "fenced", "overlap", "paused", "replay_mismatch"} {
		m.batchErrors.WithLabelValues(k)
	}
	return m
}

func (m *Metrics) observeBatch(b *Batch, dead, retried int, d time.Duration) {
	if m == nil {
		return
	}
	m.records.WithLabelValues("accepted").Add(float64(b.Counts.Accepted))
	m.records.WithLabelValues("duplicate").Add(float64(b.Counts.Duplicates))
	m.records.WithLabelValues("dead_lettered").Add(float64(dead))
	m.records.WithLabelValues("retried").Add(float64(retried))
	m.rollupRows.WithLabelValues("events").Add(float64(len(b.Events)))
	m.rollupRows.WithLabelValues("rollup_hourly").Add(float64(b.Hourly.Len()))
	m.rollupRows.WithLabelValues("rollup_daily").Add(float64(b.Daily.Len()))
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
