package dashboards

import (
	"fmt"
	"strings"

	"github.com/canopyhq/canopy/schema"
)

// OverviewSQL builds the ClickHouse queries of the Entity overview
// dashboard. The dashboard fills it with Grafana's template variables and
// macros; `canopy show` fills it with literal values, so the terminal view
// reads the same tables with the same SQL. Every field is a SQL expression
// that the caller guarantees safe (the dashboard's are held to their allowed
// values, see lit and num; show's are numbers and dates it formats itself).
type OverviewSQL struct {
	Database string
	Measures schema.Measures
	// EntityID is the entity id, a UInt64 expression.
	EntityID string
	// View is the daily table read, a String expression whose value is
	// 'rollup_daily' (as-was) or 'rollup_daily_current' (as-is); any other
	// value reads nothing.
	View string
	// DateFilter is a condition on the Date column bucket (the days shown).
	DateFilter string
	// TimeFilter is a condition on the DateTime column bucket of
	// rollup_hourly (the hours shown when Hourly holds).
	TimeFilter string
	// Hourly is a condition: the as-was time series reads rollup_hourly
	// when it holds, rollup_daily otherwise.
	Hourly string
	// Weekly, if set (the weekly grain is configured), is a condition,
	// exclusive with Hourly: the time series then has a point a week, the
	// as-was one read from rollup_weekly, the as-is one summed by toMonday
	// from rollup_daily_current; DateFilter applies to the weeks' Mondays.
	Weekly string
}

// ViewTables are the daily tables of the as-was and as-is views, the values
// View may take.
var ViewTables = [2]string{viewOptions[0][1], viewOptions[1][1]}

// Columns is events and the declared measures: what every rollup sums.
func (q OverviewSQL) Columns() []string { return measureNames(q.Measures) }

// RankMeasure is the measure children are ranked by on the dashboard.
func (q OverviewSQL) RankMeasure() string { return rankMeasure(q.Measures) }

func (q OverviewSQL) rows(where string) string {
	var b strings.Builder
	cols := "entity_id, bucket, depth, type, " + strings.Join(q.Columns(), ", ")
	b.WriteString("(\n")
	for i, t := range ViewTables {
		if i > 0 {
			b.WriteString("    UNION ALL\n")
		}
		fmt.Fprintf(&b, "    SELECT %s FROM %s.%s\n    WHERE %s = '%s' AND %s\n", cols, q.Database, t, q.View, t, where)
	}
	b.WriteString(")")
	return b.String()
}

// Entity returns one row: id, name, status, level, parent_id and path
// (the ids root … self joined by " › ").
func (q OverviewSQL) Entity() string {
	return fmt.Sprintf(`
SELECT id, name, status, level, parent_id, arrayStringConcat(arrayMap(x -> toString(x), path), ' › ') AS path
FROM %s.entities FINAL
WHERE id = %s`, q.Database, q.EntityID)
}

// OwnDownline returns one row: the measure's sum over the entity's own
// events (depth 0) and over its downline's (depth > 0), in the view and
// days.
func (q OverviewSQL) OwnDownline(measure string) string {
	return fmt.Sprintf(`
SELECT sumIf(%[1]s, depth = 0) AS own, sumIf(%[1]s, depth > 0) AS downline
FROM %[2]s`, measure, q.rows("entity_id = "+q.EntityID+" AND "+q.DateFilter))
}

// Series returns rows (time, own, downline) of the measure in time order:
// hourly as-was when Hourly holds, weekly when Weekly is set and holds,
// else daily (the as-is view is daily or weekly).
func (q OverviewSQL) Series(measure string) string {
	if q.Weekly != "" {
		return q.seriesWeekly(measure)
	}
	return fmt.Sprintf(`
SELECT t AS time, sumIf(v, depth = 0) AS own, sumIf(v, depth > 0) AS downline
FROM (
    SELECT bucket AS t, depth, %[1]s AS v FROM %[2]s.rollup_hourly
    WHERE %[3]s = 'rollup_daily' AND %[5]s
      AND entity_id = %[4]s AND %[6]s
    UNION ALL
    SELECT toDateTime(bucket, 'UTC') AS t, depth, %[1]s AS v FROM %[2]s.rollup_daily
    WHERE %[3]s = 'rollup_daily' AND NOT %[5]s
      AND entity_id = %[4]s AND %[7]s
    UNION ALL
    SELECT toDateTime(bucket, 'UTC') AS t, depth, %[1]s AS v FROM %[2]s.rollup_daily_current
    WHERE %[3]s = 'rollup_daily_current'
      AND entity_id = %[4]s AND %[7]s
)
GROUP BY time
ORDER BY time`, measure, q.Database, q.View, q.EntityID, q.Hourly, q.TimeFilter, q.DateFilter)
}

// seriesWeekly is Series with the weekly grain configured.
func (q OverviewSQL) seriesWeekly(measure string) string {
	return fmt.Sprintf(`
SELECT t AS time, sumIf(v, depth = 0) AS own, sumIf(v, depth > 0) AS downline
FROM (
    SELECT bucket AS t, depth, %[1]s AS v FROM %[2]s.rollup_hourly
    WHERE %[3]s = 'rollup_daily' AND %[5]s
      AND entity_id = %[4]s AND %[6]s
    UNION ALL
    SELECT toDateTime(bucket, 'UTC') AS t, depth, %[1]s AS v FROM %[2]s.rollup_daily
    WHERE %[3]s = 'rollup_daily' AND NOT %[5]s AND NOT %[8]s
      AND entity_id = %[4]s AND %[7]s
    UNION ALL
    SELECT toDateTime(bucket, 'UTC') AS t, depth, %[1]s AS v FROM %[2]s.rollup_weekly
    WHERE %[3]s = 'rollup_daily' AND %[8]s
      AND entity_id = %[4]s AND %[7]s
    UNION ALL
    SELECT toDateTime(if(%[8]s, toMonday(bucket), bucket), 'UTC') AS t, depth, %[1]s AS v FROM %[2]s.rollup_daily_current
    WHERE %[3]s = 'rollup_daily_current'
      AND entity_id = %[4]s AND %[7]s
)
GROUP BY time
ORDER BY time`, measure, q.Database, q.View, q.EntityID, q.Hourly, q.TimeFilter, q.DateFilter, q.Weekly)
}

// Children returns the entity's direct children (found through
// entities_by_parent, kept only if their newest version still has this
// parent) with rows: id, name, own, downline and total of the rank measure,
// and events (all depths), ordered by orderBy (columns of those rows) and
// cut at limit (a literal: ClickHouse 18.16 takes no expression there).
func (q OverviewSQL) Children(orderBy string, limit int) string {
	db := q.Database
	return fmt.Sprintf(`
SELECT id, name, own, downline, own + downline AS total, events
FROM (
    SELECT id, argMax(name, version) AS name
    FROM %[2]s.entities
    WHERE id IN (SELECT id FROM %[2]s.entities_by_parent WHERE parent_id = %[3]s)
    GROUP BY id
    HAVING argMax(parent_id, version) = %[3]s
) AS c
ANY INNER JOIN (
    SELECT entity_id AS id, sumIf(%[1]s, depth = 0) AS own, sumIf(%[1]s, depth > 0) AS downline, sum(events) AS events
    FROM %[4]s
    GROUP BY entity_id
) AS r USING id
ORDER BY %[5]s
LIMIT %[6]d`, q.RankMeasure(), db, q.EntityID,
		q.rows(fmt.Sprintf("entity_id IN (SELECT id FROM %s.entities_by_parent WHERE parent_id = %s) AND %s", db, q.EntityID, q.DateFilter)),
		orderBy, limit)
}

// Chain returns rows (id, name) of the entity's current chain, root … self
// in any order (order them by the Entity query's path). Not a dashboard
// panel: the dashboard shows the path's ids.
func (q OverviewSQL) Chain() string {
	return fmt.Sprintf(`
SELECT id, name
FROM %[1]s.entities FINAL
WHERE id IN (SELECT arrayJoin(path) FROM %[1]s.entities FINAL WHERE id = %[2]s)`, q.Database, q.EntityID)
}
