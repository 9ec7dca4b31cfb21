package e2e

import (
	"context"
	"fmt"
	"math/big"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/shopspring/decimal"
)

// expandGrafana does to a panel's SQL what Grafana and the ClickHouse
// plugin do before the query reaches ClickHouse: Grafana interpolates the
// template variables ($var, ${var}, ${var:raw}, [[var]]) and
// $__searchFilter, then the plugin (pkg/macros of
// grafana-clickhouse-datasource) expands its macros for the time range.
func expandGrafana(sql string, vars map[string]string, from, to time.Time, interval time.Duration) string {
	sql = grafanaVar.ReplaceAllStringFunc(sql, func(m string) string {
		sub := grafanaVar.FindStringSubmatch(m)
		name := sub[1] + sub[3] + sub[4]
		if v, ok := vars[name]; ok {
			if sub[2] == "percentencode" {
				return percentEncode(v)
			}
			return v
		}
		return m // a macro: the plugin's
	})
	secs := max(int(interval.Seconds()), 1)
	dt := func(t time.Time) string { return fmt.Sprintf("toDateTime(%d)", t.Unix()) }
	date := func(t time.Time) string { return fmt.Sprintf("toDate('%s')", t.UTC().Format(time.DateOnly)) }
	sql = grafanaMacro.ReplaceAllStringFunc(sql, func(m string) string {
		sub := grafanaMacro.FindStringSubmatch(m)
		arg := strings.TrimSpace(sub[3])
		switch sub[1] {
		case "timeFilter":
			return fmt.Sprintf("%s >= %s AND %s <= %s", arg, dt(from), arg, dt(to))
		case "dateFilter":
			return fmt.Sprintf("%s >= %s AND %s <= %s", arg, date(from), arg, date(to))
		case "timeInterval":
			return fmt.Sprintf("toStartOfInterval(toDateTime(%s), INTERVAL %d second)", arg, secs)
		case "fromTime":
			return dt(from) + sub[2]
		case "toTime":
			return dt(to) + sub[2]
		case "interval_s":
			return strconv.Itoa(secs) + sub[2]
		}
		return m
	})
	return sql
}

var (
	grafanaVar   = regexp.MustCompile(`\$\{([A-Za-z0-9_]+)(?::(raw|percentencode))?\}|\[\[([A-Za-z0-9_]+)\]\]|\$([A-Za-z_][A-Za-z0-9_]*)`)
	grafanaMacro = regexp.MustCompile(`\$__(timeFilter|dateFilter|timeInterval|fromTime|toTime|interval_s)(\(([^()]*)\))?`)
)

// percentEncode is Grafana's percentencode variable format
// (encodeURIComponentStrict in its format registry): encodeURIComponent,
// then !'()* as %XX too. Every byte of the UTF-8 text but A-Z a-z 0-9 - _ .
// ~ becomes %XX, upper-case hex.
func percentEncode(v string) string {
	var b strings.Builder
	for i := 0; i < len(v); i++ {
		c := v[i]
		if 'A' <= c && c <= 'Z' || 'a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-' || c == '_' || c == '.' || c == '~' {
			b.WriteByte(c)
			continue
		}
		fmt.Fprintf(&b, "%%%02X", c)
	}
	return b.String()
}

// queryText runs sql and returns its column names and its rows as text:
// integers in decimal, decimals without trailing zeros, times as Unix
// seconds, arrays as [a b c].
func (e *env) queryText(sql string) ([]string, [][]string, error) {
	rows, err := e.ch.Query(context.Background(), sql)
	if err != nil {
		return nil, nil, err
	}
	defer rows.Close()
	cols := rows.Columns()
	types := rows.ColumnTypes()
	var out [][]string
	for rows.Next() {
		dest := make([]any, len(types))
		for i, ct := range types {
			dest[i] = reflect.New(ct.ScanType()).Interface()
		}
		if err := rows.Scan(dest...); err != nil {
			return nil, nil, err
		}
		row := make([]string, len(dest))
		for i, d := range dest {
			row[i] = textOf(reflect.ValueOf(d).Elem().Interface())
		}
		out = append(out, row)
	}
	return cols, out, rows.Err()
}

func textOf(v any) string {
	switch v := v.(type) {
	case decimal.Decimal:
		return v.String()
	case time.Time:
		return strconv.FormatInt(v.Unix(), 10)
	case *string:
		if v == nil {
			return ""
		}
		return *v
	}
	return fmt.Sprint(v)
}

// units renders an amount in 10^-4 units as the decimal text queryText
// gives.
func units(a *big.Int) string {
	if a == nil {
		return "0"
	}
	return decimal.NewFromBigInt(a, -4).String()
}
