// Package benchreport renders the PNG charts and summary statistics used by
// the benchmark report.
//
// Charts are drawn with gonum.org/v1/plot using its embedded Liberation
// fonts, so rendering needs no network access and is deterministic: the same
// input always produces the same PNG bytes.
package benchreport

import (
	"errors"
	"fmt"
	"math"
	"os"
	"slices"
	"strconv"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/font"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

// Image geometry. The canvas is rendered at 72 DPI, so one point is one
// pixel and every chart is exactly 800x450 px.
const (
	chartWidth  = 800
	chartHeight = 450
	chartDPI    = 72

	// barFill is the fraction of a category slot covered by its bar(s).
	barFill = 0.7
	// maxBarWidth caps single bars on charts with few categories.
	maxBarWidth = vg.Length(120)
)

// sans is the typeface used for all chart text.
var sans = font.Font{Typeface: "Liberation", Variant: "Sans"}

// Bar is one labelled value of a bar chart.
type Bar struct {
	Label string
	Value float64
}

// Series is one named set of values of a grouped bar chart, e.g. the p99
// read latency of one system: one value per group, in the same order as the
// groups.
type Series struct {
	Name   string
	Values []float64
}

// BarChart writes a PNG bar chart to path: one bar per item, in order, with
// the labels under the bars and each value printed above its bar (e.g.
// "31,402"). ylabel names the unit. If logScale, the Y axis is logarithmic,
// which is needed when bars differ by orders of magnitude; all values must
// then be > 0.
func BarChart(path, title, ylabel string, bars []Bar, logScale bool) error {
	if len(bars) == 0 {
		return errors.New("benchreport: bar chart needs at least one bar")
	}
	labels := make([]string, len(bars))
	values := make(plotter.Values, len(bars))
	for i, b := range bars {
		if err := checkValue(b.Value, logScale); err != nil {
			return fmt.Errorf("benchreport: bar %q: %w", b.Label, err)
		}
		labels[i], values[i] = b.Label, b.Value
	}

	p := newPlot(title, ylabel, labels)
	base := yBase(values, logScale)
	bc, err := newBars(values, base)
	if err != nil {
		return err
	}
	bc.Color = plotutil.Color(0)
	p.Add(bc)

	// Value labels, centred just above the top of each bar.
	xyl := plotter.XYLabels{XYs: make(plotter.XYs, len(bars)), Labels: make([]string, len(bars))}
	for i, v := range values {
		xyl.XYs[i] = plotter.XY{X: float64(i), Y: v}
		xyl.Labels[i] = formatValue(v)
	}
	vl, err := plotter.NewLabels(xyl)
	if err != nil {
		return fmt.Errorf("benchreport: %w", err)
	}
	for i := range vl.TextStyle {
		vl.TextStyle[i].Font = font.From(sans, 11)
		vl.TextStyle[i].XAlign = draw.XCenter
		vl.TextStyle[i].YAlign = draw.YBottom
	}
	vl.Offset = vg.Point{Y: 3}
	p.Add(vl)

	setRanges(p, len(bars), values, base, logScale)
	return render(p, path, func(slot vg.Length) {
		bc.Width = min(slot*barFill, maxBarWidth)
	})
}

// GroupedBarChart writes a PNG grouped bar chart to path: for each group
// label, one bar per series, each series in its own colour and named in the
// legend. It is used, for example, for p50/p99 read latency per depth of two
// systems. ylabel names the unit. If logScale, the Y axis is logarithmic and
// all values must be > 0. Every series must have one value per group.
func GroupedBarChart(path, title, ylabel string, groups []string, series []Series, logScale bool) error {
	if len(groups) == 0 {
		return errors.New("benchreport: grouped bar chart needs at least one group")
	}
	if len(series) == 0 {
		return errors.New("benchreport: grouped bar chart needs at least one series")
	}
	var all []float64
	for _, s := range series {
		if len(s.Values) != len(groups) {
			return fmt.Errorf("benchreport: series %q has %d values, want one per group (%d)",
				s.Name, len(s.Values), len(groups))
		}
		for i, v := range s.Values {
			if err := checkValue(v, logScale); err != nil {
				return fmt.Errorf("benchreport: series %q, group %q: %w", s.Name, groups[i], err)
			}
		}
		all = append(all, s.Values...)
	}

	p := newPlot(title, ylabel, groups)
	p.Legend.Top = true
	p.Legend.Left = true
	p.Legend.XOffs = 8
	p.Legend.YOffs = -4
	p.Legend.TextStyle.Font = font.From(sans, 12)
	p.Legend.Padding = 3

	base := yBase(all, logScale)
	charts := make([]*plotter.BarChart, len(series))
	for i, s := range series {
		bc, err := newBars(s.Values, base)
		if err != nil {
			return err
		}
		bc.Color = plotutil.Color(i)
		charts[i] = bc
		p.Add(bc)
		p.Legend.Add(s.Name, bc)
	}

	setRanges(p, len(groups), all, base, logScale)
	// Leave room at the top for the legend.
	if logScale {
		p.Y.Max *= 10
	} else if p.Y.Max > 0 {
		p.Y.Max *= 1.25
	}
	return render(p, path, func(slot vg.Length) {
		w := min(slot*barFill/vg.Length(len(series)), maxBarWidth)
		for i, bc := range charts {
			bc.Width = w
			bc.Offset = (vg.Length(i) - vg.Length(len(series)-1)/2) * w
		}
	})
}

// Percentile returns the p-th percentile (0..100) of samples using the
// nearest-rank method on a sorted copy, so samples is not modified. It
// returns 0 for no samples; p below 0 or above 100 is clamped.
func Percentile(samples []float64, p float64) float64 {
	if len(samples) == 0 {
		return 0
	}
	s := slices.Clone(samples)
	slices.Sort(s)
	rank := 1 // p <= 0 (or NaN) selects the smallest sample
	if p > 0 {
		rank = min(int(math.Ceil(p/100*float64(len(s)))), len(s))
	}
	return s[rank-1]
}

// checkValue reports whether v can be drawn as a bar.
func checkValue(v float64, logScale bool) error {
	switch {
	case math.IsNaN(v) || math.IsInf(v, 0):
		return fmt.Errorf("value %v is not finite", v)
	case logScale && v <= 0:
		return fmt.Errorf("value %v is not > 0, which a log-scale axis requires", v)
	}
	return nil
}

// newPlot returns a plot with the shared styling and one nominal X
// position per category label.
func newPlot(title, ylabel string, categories []string) *plot.Plot {
	p := plot.New()
	p.Title.Text = title
	p.Title.TextStyle.Font = font.From(sans, 16)
	p.Title.Padding = 10
	p.Y.Label.Text = ylabel
	p.Y.Label.TextStyle.Font = font.From(sans, 13)
	p.Y.Tick.Label.Font = font.From(sans, 11)
	p.X.Tick.Label.Font = font.From(sans, 12)
	p.NominalX(categories...)
	grid := plotter.NewGrid()
	grid.Vertical.Color = nil // horizontal lines only, drawn behind the bars
	p.Add(grid)
	return p
}

// yBase returns the bottom of the Y axis, where bars start: 0 on a linear
// scale, and on a log scale (which cannot show 0) the power of ten strictly
// below the smallest value, so that even the smallest bar is visible.
// Values must be > 0 on a log scale.
func yBase(values []float64, logScale bool) float64 {
	if !logScale {
		return 0
	}
	return math.Pow10(int(math.Ceil(math.Log10(slices.Min(values)))) - 1)
}

// newBars returns a bar chart of values with bars starting at base. A
// non-zero base is implemented by stacking the bars on an invisible bar
// chart of height base, which is never added to the plot.
func newBars(values plotter.Values, base float64) (*plotter.BarChart, error) {
	// The bar widths are set by render, once the data area is known.
	bc, err := plotter.NewBarChart(values, 1)
	if err != nil {
		return nil, fmt.Errorf("benchreport: %w", err)
	}
	bc.LineStyle.Width = 0
	if base == 0 {
		return bc, nil
	}
	under := &plotter.BarChart{Values: make(plotter.Values, len(values))}
	for i, v := range values {
		under.Values[i] = base
		bc.Values[i] = v - base
	}
	bc.StackOn(under)
	return bc, nil
}

// setRanges fixes the axis ranges: each of the n categories gets a slot of
// width 1 centred on its index, and the Y axis starts at base (see yBase).
// On a log scale it ends at the smallest power of ten not below the
// largest value.
func setRanges(p *plot.Plot, n int, values []float64, base float64, logScale bool) {
	p.X.Min, p.X.Max = -0.5, float64(n)-0.5
	p.Y.Min = min(base, slices.Min(values))
	if logScale {
		p.Y.Scale = plot.LogScale{}
		p.Y.Tick.Marker = logTicks{}
		p.Y.Max = math.Pow10(int(math.Ceil(math.Log10(slices.Max(values)))))
		return
	}
	p.Y.Tick.Marker = commaTicks{plot.DefaultTicks{}}
	p.Y.Max = max(0, slices.Max(values))
}

// render draws p onto an 800x450 px canvas and writes it to path as PNG.
// Before drawing, size is called with the width of one category slot in
// the data area so that bar widths can follow the number of categories.
func render(p *plot.Plot, path string, size func(slot vg.Length)) error {
	c := vgimg.NewWith(vgimg.UseWH(chartWidth, chartHeight), vgimg.UseDPI(chartDPI))
	dc := draw.New(c)
	size(p.DataCanvas(dc).Size().X / vg.Length(p.X.Max-p.X.Min))
	p.Draw(dc)

	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("benchreport: %w", err)
	}
	if _, err := (vgimg.PngCanvas{Canvas: c}).WriteTo(f); err != nil {
		f.Close()
		return fmt.Errorf("benchreport: writing %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("benchreport: %w", err)
	}
	return nil
}

// logTicks is a plot.Ticker for a log-scale axis: a labelled major tick at
// each power of ten and unlabelled minor ticks at its multiples 2..9.
// Unlike plot.LogTicks it also labels powers of ten below 1.
type logTicks struct{}

// Ticks implements plot.Ticker.
func (logTicks) Ticks(min, max float64) []plot.Tick {
	const eps = 1e-9 // tolerance for rounding in Log10 and Pow10
	var ticks []plot.Tick
	for e := int(math.Floor(math.Log10(min) + eps)); math.Pow10(e) <= max*(1+eps); e++ {
		decade := math.Pow10(e)
		for i := 1; i < 10; i++ {
			v := decade * float64(i)
			if v < min*(1-eps) || v > max*(1+eps) {
				continue
			}
			t := plot.Tick{Value: v}
			if i == 1 {
				t.Label = formatValue(v)
			}
			ticks = append(ticks, t)
		}
	}
	return ticks
}

// commaTicks relabels the ticks of a plot.Ticker with formatValue.
type commaTicks struct{ plot.Ticker }

// Ticks implements plot.Ticker.
func (t commaTicks) Ticks(min, max float64) []plot.Tick {
	ticks := t.Ticker.Ticks(min, max)
	for i := range ticks {
		if ticks[i].Label != "" {
			ticks[i].Label = formatValue(ticks[i].Value)
		}
	}
	return ticks
}

// formatValue formats v for display: whole numbers and values of 1,000 or
// more are rounded and grouped by thousands ("31,402"), smaller fractions
// keep three significant digits ("12.3", "0.042").
func formatValue(v float64) string {
	if math.Abs(v) >= 1e15 || (math.Abs(v) < 1000 && v != math.Trunc(v)) {
		return strconv.FormatFloat(v, 'g', 3, 64)
	}
	s := strconv.FormatInt(int64(math.Round(v)), 10)
	sign := ""
	if strings.HasPrefix(s, "-") {
		sign, s = "-", s[1:]
	}
	var b strings.Builder
	b.WriteString(sign)
	for i, r := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(r)
	}
	return b.String()
}
