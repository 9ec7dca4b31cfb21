// Package schema holds what every other Canopy package agrees on: the measures
// declared in canopy.yaml, the time grains of the rollups (rollup.grains), the
// ClickHouse and PostgreSQL DDL derived from them,
// and the single source of truth for column order in INSERTs.
//
// schema does no I/O and imports no driver; the migration runners live with the
// code that owns each connection.
package schema

import (
	"errors"
	"fmt"
	"regexp"
)

// Kind is the type of a measure.
type Kind string

const (
	// KindDecimal is an exact decimal with a fixed scale. Events carry it as a
	// JSON number or string; Go holds it as an int64 count of 10^-scale units.
	KindDecimal Kind = "decimal"
	// KindInt64 is a signed 64-bit integer carried as a JSON number.
	KindInt64 Kind = "int64"
)

// MaxDecimalDigits is the precision of a decimal measure in the events table
// (Decimal(18, scale)); rollups sum into Decimal(38, scale).
const MaxDecimalDigits = 18

// Measure is one summed quantity of an event, declared in canopy.yaml.
type Measure struct {
	Name  string `yaml:"name"`
	Kind  Kind   `yaml:"type"`
	Scale int    `yaml:"scale,omitempty"` // decimals only; default 4
}

// Measures is the ordered list of declared measures. The order is the column
// order in every table and INSERT.
type Measures []Measure

// DefaultMeasures is what canopy.yaml declares when it declares nothing:
// amount (decimal, scale 4) and quantity (int64).
func DefaultMeasures() Measures {
	return Measures{
		{Name: "amount", Kind: KindDecimal, Scale: 4},
		{Name: "quantity", Kind: KindInt64},
	}
}

var measureName = regexp.MustCompile(`^[a-z][a-z0-9_]{0,62}$`)

// MaxMeasures is the most measures canopy.yaml may declare: the decoder
// tracks the measures seen in one record in a 64-bit set.
const MaxMeasures = 64

// reserved are names a measure cannot take: every column of the events and
// rollup tables that is not a measure (taken from their column lists, so a
// new column is reserved as soon as it exists) and a few more Canopy uses
// itself.
var reserved = func() map[string]bool {
	r := map[string]bool{
		"event_id": true, "entity_id": true, "occurred_at": true, "type": true,
		"bucket": true, "depth": true, "events": true, "ingested_at": true,
		"src_topic": true, "src_partition": true, "src_offset": true,
		"hierarchy_version": true, "ingest_unit": true, "pending_version": true,
	}
	var none ClickHouse
	for _, cols := range [][]Column{none.EventColumns(), none.RollupColumns("Date"), none.AsIsColumns()} {
		for _, c := range cols {
			r[c.Name] = true
		}
	}
	return r
}()

// ErrBadMeasures reports an invalid measure declaration.
var ErrBadMeasures = errors.New("schema: invalid measures")

// Validate checks names, kinds and scales, and fills the default scale.
func (ms Measures) Validate() error {
	if len(ms) == 0 {
		return fmt.Errorf("%w: at least one measure must be declared", ErrBadMeasures)
	}
	if len(ms) > MaxMeasures {
		return fmt.Errorf("%w: %d measures declared, at most %d are supported", ErrBadMeasures, len(ms), MaxMeasures)
	}
	seen := map[string]bool{}
	for i := range ms {
		m := &ms[i]
		if !measureName.MatchString(m.Name) {
			return fmt.Errorf("%w: name %q must match %s", ErrBadMeasures, m.Name, measureName)
		}
		if reserved[m.Name] {
			return fmt.Errorf("%w: name %q is reserved: it is a column of Canopy's events or rollup tables", ErrBadMeasures, m.Name)
		}
		if seen[m.Name] {
			return fmt.Errorf("%w: name %q declared twice", ErrBadMeasures, m.Name)
		}
		seen[m.Name] = true
		switch m.Kind {
		case KindDecimal:
			if m.Scale == 0 {
				m.Scale = 4
			}
			if m.Scale < 0 || m.Scale > 9 {
				return fmt.Errorf("%w: %s: scale %d must be between 1 and 9", ErrBadMeasures, m.Name, m.Scale)
			}
		case KindInt64:
			if m.Scale != 0 {
				return fmt.Errorf("%w: %s: an int64 measure has no scale", ErrBadMeasures, m.Name)
			}
		default:
			return fmt.Errorf("%w: %s: type %q must be decimal or int64", ErrBadMeasures, m.Name, m.Kind)
		}
	}
	return nil
}

// Names returns the measure names in order.
func (ms Measures) Names() []string {
	out := make([]string, len(ms))
	for i, m := range ms {
		out[i] = m.Name
	}
	return out
}

// EventType is the ClickHouse type of the measure in the events table.
func (m Measure) EventType() string {
	if m.Kind == KindDecimal {
		return fmt.Sprintf("Decimal(%d, %d)", MaxDecimalDigits, m.Scale)
	}
	return "Int64"
}

// SumType is the ClickHouse type of the measure's sum in the rollup tables.
func (m Measure) SumType() string {
	if m.Kind == KindDecimal {
		return fmt.Sprintf("Decimal(38, %d)", m.Scale)
	}
	return "Int64"
}
