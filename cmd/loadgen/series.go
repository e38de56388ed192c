package main

import (
	"bufio"
	"fmt"
	"html"
	"io"
	"math"
	"sync/atomic"
	"time"
)

// seriesSubBits sets the precision of the per-second histograms: 16 buckets
// per power of two (within 6 %), enough for a plot.
const seriesSubBits = 4

const seriesBuckets = (64 - seriesSubBits) << seriesSubBits

// maxSeriesSecs bounds a series: seconds past it are not kept.
const maxSeriesSecs = 3600

// secondHist is one second of a series: a count and a coarse latency
// histogram. It is allocated when the second sees its first event.
type secondHist struct {
	n      atomic.Uint64
	counts [seriesBuckets]atomic.Uint32
}

// series counts events (deliveries, or joins) and their latencies per
// second of wall time from an origin, for the time series that -plot draws.
// record is lock-free and, but for the first event of each second,
// allocation-free.
type series struct {
	origin int64 // unix ns
	secs   []atomic.Pointer[secondHist]
}

// newSeries returns a series of up to secs seconds from origin.
func newSeries(origin time.Time, secs int) *series {
	secs = min(max(secs, 1), maxSeriesSecs)
	return &series{origin: origin.UnixNano(), secs: make([]atomic.Pointer[secondHist], secs)}
}

// record counts one event at unix time now (ns) with latency lat (ns).
func (s *series) record(now, lat int64) {
	if s == nil {
		return
	}
	sec := (now - s.origin) / int64(time.Second)
	if sec < 0 || sec >= int64(len(s.secs)) {
		return
	}
	h := s.secs[sec].Load()
	if h == nil {
		h = new(secondHist)
		if !s.secs[sec].CompareAndSwap(nil, h) {
			h = s.secs[sec].Load()
		}
	}
	h.n.Add(1)
	h.counts[logIndex(max(lat, 0), seriesSubBits)].Add(1)
}

// SecondStat is one second of a time series: events in that second and
// the latency percentiles of those events, in milliseconds.
type SecondStat struct {
	Sec   int     `json:"s"` // seconds from the series' origin
	Count uint64  `json:"n"`
	P50   float64 `json:"p50_ms"`
	P99   float64 `json:"p99_ms"`
	P999  float64 `json:"p999_ms"`
}

// stats returns every second up to the last one with events. Call it once
// recording has stopped.
func (s *series) stats() []SecondStat {
	if s == nil {
		return nil
	}
	last := -1
	for i := range s.secs {
		if s.secs[i].Load() != nil {
			last = i
		}
	}
	out := make([]SecondStat, 0, last+1)
	for i := 0; i <= last; i++ {
		st := SecondStat{Sec: i}
		if h := s.secs[i].Load(); h != nil {
			st.Count = h.n.Load()
			st.P50, st.P99, st.P999 = h.quantileMS(0.5), h.quantileMS(0.99), h.quantileMS(0.999)
		}
		out = append(out, st)
	}
	return out
}

// quantileMS returns the midpoint of the bucket that holds the q-quantile,
// in milliseconds.
func (h *secondHist) quantileMS(q float64) float64 {
	n := h.n.Load()
	if n == 0 {
		return 0
	}
	rank := max(1, min(n, uint64(math.Ceil(q*float64(n)))))
	var seen uint64
	for i := range h.counts {
		seen += uint64(h.counts[i].Load())
		if seen >= rank {
			lo, hi := logBounds(i, seriesSubBits)
			return float64(lo+(hi-lo)/2) / 1e6
		}
	}
	return 0
}

// plotLine is one line of a plot panel.
type plotLine struct {
	label string
	color string
	pts   []float64 // one per second; NaN or <= 0 (on a log axis): no point
}

// writePlot draws an SVG of two panels sharing a time axis: events per
// second on top (linear) and latency percentiles below (log scale).
// rate and lat hold the lines of each panel; every line has one point per
// second. notes are printed under the title.
func writePlot(w io.Writer, title string, notes []string, rateLabel string, rate []plotLine, lat []plotLine) error {
	const (
		width, left, right = 960, 80, 150
		top, panelH, gap   = 60, 220, 60
	)
	top1 := top + 14*len(notes)
	top2 := top1 + panelH + gap
	height := top2 + panelH + 50
	plotW := float64(width - left - right)
	secs := 0
	for _, l := range append(append([]plotLine(nil), rate...), lat...) {
		secs = max(secs, len(l.pts))
	}
	secs = max(secs, 1)
	xOf := func(i int) float64 { return float64(left) + (float64(i)+0.5)*plotW/float64(secs) }

	bw := bufio.NewWriter(w)
	p := func(format string, a ...any) { fmt.Fprintf(bw, format, a...) }
	p(`<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="12">`+"\n",
		width, height, width, height)
	p(`<rect width="100%%" height="100%%" fill="white"/>` + "\n")
	p(`<text x="%d" y="24" font-size="16" font-weight="bold">%s</text>`+"\n", left, html.EscapeString(title))
	for i, n := range notes {
		p(`<text x="%d" y="%d" fill="#444">%s</text>`+"\n", left, 44+14*i, html.EscapeString(n))
	}

	// Top panel: linear scale from 0.
	yMax := 0.0
	for _, l := range rate {
		for _, v := range l.pts {
			if !math.IsNaN(v) {
				yMax = max(yMax, v)
			}
		}
	}
	yMax = niceCeil(yMax)
	yRate := func(v float64) float64 { return float64(top1+panelH) - v/yMax*float64(panelH) }
	p(`<text x="%d" y="%d" font-weight="bold">%s</text>`+"\n", left, top1-8, html.EscapeString(rateLabel))
	for i := 0; i <= 4; i++ {
		v := yMax * float64(i) / 4
		y := yRate(v)
		p(`<line x1="%d" x2="%d" y1="%.1f" y2="%.1f" stroke="#ddd"/>`+"\n", left, width-right, y, y)
		p(`<text x="%d" y="%.1f" text-anchor="end">%s</text>`+"\n", left-6, y+4, siLabel(v))
	}
	for _, l := range rate {
		drawLine(bw, l, xOf, yRate, func(v float64) bool { return !math.IsNaN(v) })
	}
	legend(bw, rate, width-right+12, top1+10)

	// Bottom panel: log scale over the decades the data spans.
	lo, hi := math.Inf(1), math.Inf(-1)
	for _, l := range lat {
		for _, v := range l.pts {
			if v > 0 {
				lo, hi = min(lo, v), max(hi, v)
			}
		}
	}
	if math.IsInf(lo, 1) {
		lo, hi = 0.1, 1
	}
	dLo, dHi := math.Floor(math.Log10(lo)), math.Ceil(math.Log10(hi))
	if dHi <= dLo {
		dHi = dLo + 1
	}
	yLat := func(v float64) float64 {
		return float64(top2+panelH) - (math.Log10(v)-dLo)/(dHi-dLo)*float64(panelH)
	}
	p(`<text x="%d" y="%d" font-weight="bold">latency, ms (publish to receipt; log scale)</text>`+"\n", left, top2-8)
	for d := dLo; d <= dHi; d++ {
		v := math.Pow(10, d)
		y := yLat(v)
		p(`<line x1="%d" x2="%d" y1="%.1f" y2="%.1f" stroke="#ddd"/>`+"\n", left, width-right, y, y)
		p(`<text x="%d" y="%.1f" text-anchor="end">%s</text>`+"\n", left-6, y+4, msLabel(v))
	}
	for _, l := range lat {
		drawLine(bw, l, xOf, yLat, func(v float64) bool { return v > 0 })
	}
	legend(bw, lat, width-right+12, top2+10)

	// Time axis, under both panels.
	step := max(1, niceStep(secs))
	for s := 0; s <= secs; s += step {
		x := float64(left) + float64(s)*plotW/float64(secs)
		for _, yb := range []int{top1 + panelH, top2 + panelH} {
			p(`<line x1="%.1f" x2="%.1f" y1="%d" y2="%d" stroke="#999"/>`+"\n", x, x, yb, yb+4)
			p(`<text x="%.1f" y="%d" text-anchor="middle">%d</text>`+"\n", x, yb+16, s)
		}
	}
	p(`<text x="%d" y="%d" text-anchor="middle">seconds</text>`+"\n", left+int(plotW/2), height-10)
	for _, yt := range []int{top1, top2} {
		p(`<rect x="%d" y="%d" width="%.0f" height="%d" fill="none" stroke="#999"/>`+"\n", left, yt, plotW, panelH)
	}
	p("</svg>\n")
	return bw.Flush()
}

// drawLine draws l as polylines, broken where ok(v) is false.
func drawLine(w io.Writer, l plotLine, x func(int) float64, y func(float64) float64, ok func(float64) bool) {
	var pts []byte
	flush := func() {
		if len(pts) > 0 {
			fmt.Fprintf(w, `<polyline fill="none" stroke="%s" stroke-width="1.5" points="%s"/>`+"\n", l.color, pts)
			pts = pts[:0]
		}
	}
	for i, v := range l.pts {
		if !ok(v) {
			flush()
			continue
		}
		pts = fmt.Appendf(pts, "%.1f,%.1f ", x(i), y(v))
		if len(l.pts) == 1 || (i > 0 && !ok(l.pts[i-1]) && (i+1 == len(l.pts) || !ok(l.pts[i+1]))) {
			fmt.Fprintf(w, `<circle cx="%.1f" cy="%.1f" r="2" fill="%s"/>`+"\n", x(i), y(v), l.color)
		}
	}
	flush()
}

func legend(w io.Writer, lines []plotLine, x, y int) {
	for i, l := range lines {
		yy := y + 18*i
		fmt.Fprintf(w, `<line x1="%d" x2="%d" y1="%d" y2="%d" stroke="%s" stroke-width="3"/>`+"\n", x, x+18, yy, yy, l.color)
		fmt.Fprintf(w, `<text x="%d" y="%d">%s</text>`+"\n", x+24, yy+4, html.EscapeString(l.label))
	}
}

// niceCeil rounds v up to 1, 2 or 5 times a power of ten (at least 1).
func niceCeil(v float64) float64 {
	if v <= 1 {
		return 1
	}
	e := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{1, 2, 5, 10} {
		if v <= m*e {
			return m * e
		}
	}
	return 10 * e
}

// niceStep returns a tick step giving about ten ticks over n seconds.
func niceStep(n int) int {
	for _, s := range []int{1, 2, 5, 10, 15, 30, 60, 120, 300, 600} {
		if n/s <= 12 {
			return s
		}
	}
	return 1200
}

func siLabel(v float64) string {
	switch {
	case v >= 1e6:
		return fmt.Sprintf("%gM", v/1e6)
	case v >= 1e3:
		return fmt.Sprintf("%gk", v/1e3)
	}
	return fmt.Sprintf("%g", v)
}

func msLabel(v float64) string {
	if v >= 1000 {
		return fmt.Sprintf("%gs", v/1000)
	}
	return fmt.Sprintf("%g", v)
}

// plotRun draws a run's per-second series: deliveries (and joins, when
// the run has them) per second, and their latency p50/p99/p99.9.
func plotRun(w io.Writer, title string, notes []string, deliv, joins []SecondStat) error {
	n := max(len(deliv), len(joins))
	pts := func(st []SecondStat, f func(SecondStat) float64) []float64 {
		out := make([]float64, n)
		for i := range out {
			out[i] = math.NaN()
			if i < len(st) && st[i].Count > 0 {
				out[i] = f(st[i])
			} else if i < len(st) {
				out[i] = 0
			}
		}
		return out
	}
	count := func(s SecondStat) float64 { return float64(s.Count) }
	var rate, lat []plotLine
	if len(deliv) > 0 {
		rate = append(rate, plotLine{"deliveries/s", "#1f77b4", pts(deliv, count)})
		lat = append(lat,
			plotLine{"delivery p50", "#1f77b4", pts(deliv, func(s SecondStat) float64 { return s.P50 })},
			plotLine{"delivery p99", "#d62728", pts(deliv, func(s SecondStat) float64 { return s.P99 })},
			plotLine{"delivery p99.9", "#9467bd", pts(deliv, func(s SecondStat) float64 { return s.P999 })})
	}
	if len(joins) > 0 {
		rate = append(rate, plotLine{"joins/s", "#2ca02c", pts(joins, count)})
		lat = append(lat,
			plotLine{"connect+join p50", "#2ca02c", pts(joins, func(s SecondStat) float64 { return s.P50 })},
			plotLine{"connect+join p99", "#ff7f0e", pts(joins, func(s SecondStat) float64 { return s.P99 })})
	}
	return writePlot(w, title, notes, "events per second", rate, lat)
}
