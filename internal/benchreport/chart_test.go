package benchreport

import (
	"bytes"
	"image/png"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestPercentile(t *testing.T) {
	ten := []float64{7, 3, 10, 1, 9, 2, 8, 5, 6, 4} // 1..10, unsorted
	hundred := make([]float64, 100)
	for i := range hundred {
		hundred[i] = float64(100 - i) // 100..1
	}
	tests := []struct {
		name    string
		samples []float64
		p       float64
		want    float64
	}{
		{"none", nil, 50, 0},
		{"one p0", []float64{42}, 0, 42},
		{"one p50", []float64{42}, 50, 42},
		{"one p99", []float64{42}, 99, 42},
		{"one p100", []float64{42}, 100, 42},
		{"ten p0", ten, 0, 1},
		{"ten p10", ten, 10, 1},  // rank ceil(1.0) = 1
		{"ten p11", ten, 11, 2},  // rank ceil(1.1) = 2
		{"ten p50", ten, 50, 5},  // rank ceil(5.0) = 5
		{"ten p99", ten, 99, 10}, // rank ceil(9.9) = 10
		{"ten p100", ten, 100, 10},
		{"ten p above 100", ten, 150, 10},
		{"ten p below 0", ten, -5, 1},
		{"hundred p50", hundred, 50, 50},
		{"hundred p99", hundred, 99, 99},
		{"hundred p99.5", hundred, 99.5, 100}, // rank ceil(99.5) = 100
		{"hundred p100", hundred, 100, 100},
		{"duplicates p50", []float64{3, 1, 3, 3}, 50, 3}, // sorted 1,3,3,3; rank 2
	}
	for _, tt := range tests {
		if got := Percentile(tt.samples, tt.p); got != tt.want {
			t.Errorf("%s: Percentile(%v, %v) = %v, want %v", tt.name, tt.samples, tt.p, got, tt.want)
		}
	}
}

func TestPercentileDoesNotMutate(t *testing.T) {
	samples := []float64{5, 1, 4, 2, 3}
	orig := slices.Clone(samples)
	_ = Percentile(samples, 50)
	if !slices.Equal(samples, orig) {
		t.Errorf("Percentile modified its input: got %v, want %v", samples, orig)
	}
}

func TestFormatValue(t *testing.T) {
	tests := map[float64]string{
		0:        "0",
		7:        "7",
		999:      "999",
		1000:     "1,000",
		31402:    "31,402",
		31402.6:  "31,403",
		1234567:  "1,234,567",
		-1234567: "-1,234,567",
		12.345:   "12.3",
		0.0423:   "0.0423",
	}
	for v, want := range tests {
		if got := formatValue(v); got != want {
			t.Errorf("formatValue(%v) = %q, want %q", v, got, want)
		}
	}
}

// checkPNG asserts that path holds an 800x450 PNG and returns its bytes.
func checkPNG(t *testing.T, path string) []byte {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(data) == 0 {
		t.Fatalf("%s is empty", path)
	}
	img, err := png.Decode(bytes.NewReader(data))
	if err != nil {
		t.Fatalf("%s does not decode as PNG: %v", path, err)
	}
	if b := img.Bounds(); b.Dx() != chartWidth || b.Dy() != chartHeight {
		t.Errorf("%s is %dx%d px, want %dx%d", path, b.Dx(), b.Dy(), chartWidth, chartHeight)
	}
	return data
}

func TestBarChart(t *testing.T) {
	bars := []Bar{{"Canopy", 31402}, {"CTE", 27.5}, {"Closure table", 1200}}
	for _, logScale := range []bool{false, true} {
		path := filepath.Join(t.TempDir(), "bars.png")
		if err := BarChart(path, "Writes per second", "ops/s", bars, logScale); err != nil {
			t.Fatalf("BarChart(logScale=%v): %v", logScale, err)
		}
		first := checkPNG(t, path)

		// Rendering is deterministic.
		again := filepath.Join(t.TempDir(), "again.png")
		if err := BarChart(again, "Writes per second", "ops/s", bars, logScale); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(first, checkPNG(t, again)) {
			t.Errorf("BarChart(logScale=%v) output differs between identical runs", logScale)
		}
	}
}

func TestBarChartSingleBar(t *testing.T) {
	path := filepath.Join(t.TempDir(), "one.png")
	if err := BarChart(path, "One", "ms", []Bar{{"only", 100}}, true); err != nil {
		t.Fatal(err)
	}
	checkPNG(t, path)
}

func TestGroupedBarChart(t *testing.T) {
	groups := []string{"depth 1", "depth 4", "depth 16", "depth 64"}
	series := []Series{
		{"Canopy p50", []float64{0.21, 0.23, 0.25, 0.3}},
		{"Canopy p99", []float64{0.9, 1.1, 1.2, 1.6}},
		{"CTE p50", []float64{0.4, 2.5, 12, 55}},
		{"CTE p99", []float64{1.5, 9, 48, 310}},
	}
	for _, logScale := range []bool{false, true} {
		path := filepath.Join(t.TempDir(), "grouped.png")
		if err := GroupedBarChart(path, "Read latency by depth", "latency (ms)", groups, series, logScale); err != nil {
			t.Fatalf("GroupedBarChart(logScale=%v): %v", logScale, err)
		}
		checkPNG(t, path)
	}
}

func TestChartErrors(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "err.png")
	groups := []string{"a", "b"}
	tests := []struct {
		name    string
		run     func() error
		wantErr string
	}{
		{"no bars", func() error {
			return BarChart(path, "t", "y", nil, false)
		}, "at least one bar"},
		{"zero on log scale", func() error {
			return BarChart(path, "t", "y", []Bar{{"a", 10}, {"b", 0}}, true)
		}, `bar "b": value 0 is not > 0`},
		{"negative on log scale", func() error {
			return BarChart(path, "t", "y", []Bar{{"a", -1}}, true)
		}, "log-scale"},
		{"NaN", func() error {
			return BarChart(path, "t", "y", []Bar{{"a", math.NaN()}}, false)
		}, "not finite"},
		{"no groups", func() error {
			return GroupedBarChart(path, "t", "y", nil, []Series{{"s", nil}}, false)
		}, "at least one group"},
		{"no series", func() error {
			return GroupedBarChart(path, "t", "y", groups, nil, false)
		}, "at least one series"},
		{"series length mismatch", func() error {
			return GroupedBarChart(path, "t", "y", groups, []Series{{"ok", []float64{1, 2}}, {"short", []float64{1}}}, false)
		}, `series "short" has 1 values, want one per group (2)`},
		{"grouped zero on log scale", func() error {
			return GroupedBarChart(path, "t", "y", groups, []Series{{"s", []float64{1, 0}}}, true)
		}, `series "s", group "b": value 0 is not > 0`},
		{"unwritable path", func() error {
			return BarChart(filepath.Join(dir, "missing", "x.png"), "t", "y", []Bar{{"a", 1}}, false)
		}, "no such file"},
	}
	for _, tt := range tests {
		err := tt.run()
		if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
			t.Errorf("%s: got error %v, want one containing %q", tt.name, err, tt.wantErr)
		}
	}
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Errorf("a failed call left %s behind (stat: %v)", path, err)
	}
}

func TestLogAxis(t *testing.T) {
	for _, tt := range []struct {
		values []float64
		want   float64
	}{
		{[]float64{31402, 5, 27.5}, 1},
		{[]float64{300, 100}, 10}, // smallest is a power of ten: one decade lower, so its bar shows
		{[]float64{0.21, 310}, 0.1},
	} {
		if got := yBase(tt.values, true); got != tt.want {
			t.Errorf("yBase(%v, true) = %v, want %v", tt.values, got, tt.want)
		}
	}
	if got := yBase([]float64{5}, false); got != 0 {
		t.Errorf("yBase on a linear scale = %v, want 0", got)
	}

	var labels []string
	minor := 0
	for _, tk := range (logTicks{}).Ticks(0.1, 1000) {
		if tk.Value < 0.1 || tk.Value > 1000 {
			t.Errorf("tick %v outside [0.1, 1000]", tk.Value)
		}
		if tk.IsMinor() {
			minor++
		} else {
			labels = append(labels, tk.Label)
		}
	}
	if want := []string{"0.1", "1", "10", "100", "1,000"}; !slices.Equal(labels, want) {
		t.Errorf("major tick labels = %q, want %q", labels, want)
	}
	if minor != 4*8 {
		t.Errorf("got %d minor ticks, want %d", minor, 4*8)
	}
}
