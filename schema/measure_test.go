package schema

import (
	"errors"
	"fmt"
	"strings"
	"testing"
)

func TestMeasuresValidateLimits(t *testing.T) {
	many := func(n int) Measures {
		ms := make(Measures, n)
		for i := range ms {
			ms[i] = Measure{Name: fmt.Sprintf("m%d", i), Kind: KindInt64}
		}
		return ms
	}
	tests := []struct {
		name string
		ms   Measures
		want string // "" = valid
	}{
		{"default", DefaultMeasures(), ""},
		{"64 measures", many(MaxMeasures), ""},
		{"65 measures", many(MaxMeasures + 1), "at most 64"},
		{"none", Measures{}, "at least one"},
		{"pending_version", Measures{{Name: "pending_version", Kind: KindInt64}}, "reserved"},
		{"ingest_unit", Measures{{Name: "ingest_unit", Kind: KindInt64}}, "reserved"},
		{"events", Measures{{Name: "events", Kind: KindInt64}}, "reserved"},
		{"duplicate", Measures{{Name: "a", Kind: KindInt64}, {Name: "a", Kind: KindInt64}}, "twice"},
		{"bad name", Measures{{Name: "A-b", Kind: KindInt64}}, "must match"},
		{"bad scale", Measures{{Name: "a", Kind: KindDecimal, Scale: 12}}, "scale"},
		{"bad type", Measures{{Name: "a", Kind: "float"}}, "decimal or int64"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.ms.Validate()
			if tt.want == "" {
				if err != nil {
					t.Fatalf("Validate = %v, want nil", err)
				}
				return
			}
			if !errors.Is(err, ErrBadMeasures) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Validate = %v, want ErrBadMeasures mentioning %q", err, tt.want)
			}
		})
	}
}

// TestReservedCoversColumns: no measure may share a name with a column the
// events or rollup tables hold besides the measures (a measure named
// pending_version broke migrate).
func TestReservedCoversColumns(t *testing.T) {
	var c ClickHouse
	for _, cols := range [][]Column{c.EventColumns(), c.RollupColumns("Date"), c.RollupColumns("DateTime('UTC')"), c.AsIsColumns()} {
		for _, col := range cols {
			if !reserved[col.Name] {
				t.Errorf("column %s is not reserved", col.Name)
			}
		}
	}
}
