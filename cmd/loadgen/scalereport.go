package main

import (
	"bufio"
	"cmp"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"html"
	"io"
	"math"
	"os"
	"slices"
	"strconv"
	"strings"
)

// Bounds on a scale-report input (scale.sh writes a few dozen lines).
const (
	maxScaleLineBytes = 1 << 20
	maxScaleLines     = 10_000
)

// scaleKey is the load of a grid point: what a scale run varies.
type scaleKey struct {
	mode               string
	conns, rooms, size int
}

// scaleSeries is a line of the grid: the loads that differ only by their
// connections (groups of the same size, payloads of the same size).
type scaleSeries struct {
	mode      string
	size      int
	groupSize float64 // members per group; 0: one group
}

// scalePoint is one grid point and each target's result under its load.
type scalePoint struct {
	scaleKey
	res map[string]*Result // by target
}

func (p *scalePoint) series() scaleSeries {
	s := scaleSeries{mode: p.mode, size: p.size}
	if p.mode == modeRooms {
		s.groupSize = math.Round(10*float64(p.conns)/float64(p.rooms)) / 10
	}
	return s
}

// label names the load, "one group, 64 B" or "rooms: 6,000 groups of 3, 64 B".
func (p *scalePoint) label() string {
	if p.mode == modeRooms {
		return fmt.Sprintf("rooms: %s groups of %g, %s", thousands(p.rooms), p.series().groupSize, sizeLabel(p.size))
	}
	return p.series().label()
}

// label names the line, "one group, 64 B" or "rooms in groups of 3, 64 B".
func (s scaleSeries) label() string {
	if s.mode == modeRooms {
		return fmt.Sprintf("rooms in groups of %g, %s", s.groupSize, sizeLabel(s.size))
	}
	return "one group, " + sizeLabel(s.size)
}

// deliveriesPS is the point's nominal delivery rate, its first target's
// publishes a second times the members of a group.
func (p *scalePoint) deliveriesPS() float64 {
	r := p.res[scaleTargets([]*scalePoint{p})[0]]
	return r.Rate * float64(p.conns) / float64(p.rooms)
}

// readScale reads fanout and rooms summaries (loadgen -json lines) into grid
// points, in the order their loads first appear. A later summary of a target
// under the same load replaces the earlier one.
func readScale(rd io.Reader) ([]*scalePoint, error) {
	sc := bufio.NewScanner(rd)
	sc.Buffer(make([]byte, 0, 64<<10), maxScaleLineBytes)
	var points []*scalePoint
	byKey := map[scaleKey]*scalePoint{}
	n := 0
	for sc.Scan() {
		n++
		line := strings.TrimSpace(sc.Text())
		if line == "" {
			continue
		}
		if n > maxScaleLines {
			return nil, fmt.Errorf("over %d lines", maxScaleLines)
		}
		r := new(Result)
		if err := json.Unmarshal([]byte(line), r); err != nil {
			return nil, fmt.Errorf("line %d: %w", n, err)
		}
		switch {
		case r.Mode != modeFanout && r.Mode != modeRooms:
			return nil, fmt.Errorf("line %d: mode %q: not a %s or %s summary", n, r.Mode, modeFanout, modeRooms)
		case defaultBases[r.Target] == [2]string{}:
			return nil, fmt.Errorf("line %d: unknown target %q", n, r.Target)
		case r.Conns < 1 || r.Rooms < 1 || r.Rooms > r.Conns || r.Size < 0 || !(r.Rate > 0):
			return nil, fmt.Errorf("line %d: conns %d, rooms %d, size %d, rate %g: not a run's figures", n, r.Conns, r.Rooms, r.Size, r.Rate)
		}
		k := scaleKey{mode: r.Mode, conns: r.Conns, rooms: r.Rooms, size: r.Size}
		p := byKey[k]
		if p == nil {
			p = &scalePoint{scaleKey: k, res: map[string]*Result{}}
			byKey[k] = p
			points = append(points, p)
		}
		p.res[r.Target] = r
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("line %d: %w", n+1, err)
	}
	if len(points) == 0 {
		return nil, errors.New("no summaries")
	}
	return points, nil
}

// scaleTargets returns the targets the points have: groupcast and the floor
// first, then the others in name order.
func scaleTargets(points []*scalePoint) []string {
	seen := map[string]bool{}
	for _, p := range points {
		for t := range p.res {
			seen[t] = true
		}
	}
	var out []string
	for _, t := range []string{targetGroupcast, targetFloor} {
		if seen[t] {
			out = append(out, t)
			delete(seen, t)
		}
	}
	var rest []string
	for t := range seen {
		rest = append(rest, t)
	}
	slices.Sort(rest)
	return append(out, rest...)
}

// writeScaleTable prints the points as a markdown table: groupcast's and the
// floor's server CPU per delivery and RSS per idle connection, their ratios,
// the latency p99, and any other target's CPU per delivery; then what a
// run's figures should be read with (loss, saturation, noise), and how each
// figure grows from a line's fewest connections to its most.
func writeScaleTable(w io.Writer, points []*scalePoint) {
	others := slices.DeleteFunc(scaleTargets(points), func(t string) bool { return t == targetGroupcast || t == targetFloor })
	rate := points[0].deliveriesPS()
	for _, p := range points {
		if math.Abs(p.deliveriesPS()-rate) > rate/100 {
			rate = 0
		}
	}
	at := "at each point's rate"
	if rate > 0 {
		at = fmt.Sprintf("at %s deliveries/s", thousands(int(math.Round(rate))))
	}
	fmt.Fprintf(w, "Server CPU per delivery and RSS per idle connection against connections, groups and payload size, %s (groupcast against the floor):\n\n", at)

	head := "| load | connections | groupcast CPU per delivery | floor CPU per delivery | ratio | groupcast RSS per connection | floor RSS per connection | ratio | latency p99, groupcast / floor |"
	rule := "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
	for _, t := range others {
		head += " " + t + " CPU per delivery (× floor) |"
		rule += " ---: |"
	}
	fmt.Fprintf(w, "%s\n%s\n", head, rule)
	var notes []string
	for _, p := range points {
		g, f := p.res[targetGroupcast], p.res[targetFloor]
		label := p.label()
		for _, t := range scaleTargets([]*scalePoint{p}) {
			if why := scaleCaveats(p.res[t]); why != "" {
				notes = append(notes, fmt.Sprintf("[%d] %s, %s connections, %s: %s", len(notes)+1, p.label(), thousands(p.conns), t, why))
				label += fmt.Sprintf(" [%d]", len(notes))
			}
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s | %s | %s | %s / %s |",
			label, thousands(p.conns),
			fig(g, usPerDelivery, "%.2f µs"), fig(f, usPerDelivery, "%.2f µs"), ratio(g, f, usPerDelivery),
			fig(g, kibPerConn, "%.1f KiB"), fig(f, kibPerConn, "%.1f KiB"), ratio(g, f, kibPerConn),
			fig(g, p99, "%.1f"), fig(f, p99, "%.1f ms"))
		for _, t := range others {
			if o := p.res[t]; o != nil {
				fmt.Fprintf(w, " %s (%s) |", fig(o, usPerDelivery, "%.2f µs"), ratio(o, f, usPerDelivery))
			} else {
				fmt.Fprint(w, " – |")
			}
		}
		fmt.Fprintln(w)
	}
	if len(notes) > 0 {
		fmt.Fprintf(w, "\n%s\n", strings.Join(notes, "\n"))
	}
	if growth := scaleGrowth(points); len(growth) > 0 {
		fmt.Fprintf(w, "\nFrom the fewest connections to the most, same load (flat is 1.00×):\n\n%s\n", strings.Join(growth, "\n"))
	}
}

// scaleGrowth returns, for each line of the grid with more than one point,
// how its fewest connections' figures grow at its most.
func scaleGrowth(points []*scalePoint) []string {
	var out []string
	var done []scaleSeries
	for _, p := range points {
		s := p.series()
		if slices.Contains(done, s) {
			continue
		}
		done = append(done, s)
		var line []*scalePoint
		for _, q := range points {
			if q.series() == s {
				line = append(line, q)
			}
		}
		lo := slices.MinFunc(line, func(a, b *scalePoint) int { return cmp.Compare(a.conns, b.conns) })
		hi := slices.MaxFunc(line, func(a, b *scalePoint) int { return cmp.Compare(a.conns, b.conns) })
		if lo == hi {
			continue
		}
		var parts []string
		for _, t := range scaleTargets([]*scalePoint{lo, hi}) {
			a, b := lo.res[t], hi.res[t]
			if a == nil || b == nil {
				continue
			}
			parts = append(parts, fmt.Sprintf("%s CPU per delivery %s, RSS per connection %s", t, ratio(b, a, usPerDelivery), ratio(b, a, kibPerConn)))
		}
		if len(parts) > 0 {
			out = append(out, fmt.Sprintf("- %s, %s → %s connections: %s", s.label(), thousands(lo.conns), thousands(hi.conns), strings.Join(parts, "; ")))
		}
	}
	return out
}

// scaleCaveats says why a result's figures should not be taken as they are,
// or returns "".
func scaleCaveats(r *Result) string {
	var why []string
	if r.Lost > 0 || r.Duplicates > 0 || r.Malformed > 0 {
		why = append(why, fmt.Sprintf("%d lost, %d duplicates, %d malformed", r.Lost, r.Duplicates, r.Malformed))
	}
	if r.PublishErrors > 0 || r.ErrorFrames > 0 || r.Disconnects > 0 {
		why = append(why, fmt.Sprintf("%d publish errors, %d error frames, %d disconnects", r.PublishErrors, r.ErrorFrames, r.Disconnects))
	}
	if r.PublishRate < 0.95*r.Rate {
		why = append(why, fmt.Sprintf("publishing fell behind, %.4g of %.4g publishes/s (worst lag %.0f ms): the load was not the point's", r.PublishRate, r.Rate, r.PublishLagMax))
	}
	if len(r.ServerPIDs) == 0 {
		why = append(why, "no server pid, so no CPU or RSS figures")
	}
	if r.ServerCPUUtil > 0.9 {
		why = append(why, fmt.Sprintf("server at %.0f%% of a core (saturated: it batches, so its CPU per delivery is not the same load's)", 100*r.ServerCPUUtil))
	}
	if r.LoaderCPUUtil > 0.9 {
		why = append(why, fmt.Sprintf("loader at %.0f%% of its core", 100*r.LoaderCPUUtil))
	}
	if srv := r.ServerCPUSecs + r.ServerCPUDrainSecs; r.OtherCPUSecs > 0.02 && r.OtherCPUSecs > 0.03*srv {
		why = append(why, fmt.Sprintf("other processes used %.2fs of CPU meanwhile (noise)", r.OtherCPUSecs))
	}
	if r.FirstError != "" {
		why = append(why, "first error: "+r.FirstError)
	}
	return strings.Join(why, "; ")
}

func usPerDelivery(r *Result) float64 { return r.ServerUSPerDeliv }
func kibPerConn(r *Result) float64    { return r.ServerKiBPerConn }
func p99(r *Result) float64           { return r.Latency.P99 }

// fig formats one figure of r, or "–" when r is missing.
func fig(r *Result, f func(*Result) float64, format string) string {
	if r == nil {
		return "–"
	}
	return fmt.Sprintf(format, f(r))
}

// ratio formats f(a)/f(b), or "–" when either is missing or b's is not positive.
func ratio(a, b *Result, f func(*Result) float64) string {
	if a == nil || b == nil || !(f(b) > 0) {
		return "–"
	}
	return fmt.Sprintf("%.2f×", f(a)/f(b))
}

// thousands formats n with comma separators: 18000 is "18,000".
func thousands(n int) string {
	s := strconv.Itoa(n)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	if neg {
		s = "-" + s
	}
	return s
}

// sizeLabel formats a payload size: "64 B", "1 KiB", "16 KiB".
func sizeLabel(n int) string {
	if n >= 1024 && n%1024 == 0 {
		return fmt.Sprintf("%d KiB", n/1024)
	}
	return fmt.Sprintf("%d B", n)
}

// scaleDash is each target's line style: groupcast solid, the floor dashed,
// any other dotted.
func scaleDash(target string) string {
	switch target {
	case targetGroupcast:
		return ""
	case targetFloor:
		return "6 4"
	}
	return "2 3"
}

// writeScalePlot draws an SVG of server CPU per delivery against
// connections: a line per load (payload size; rooms apart) and target,
// colored by load, styled by target (scaleDash).
func writeScalePlot(w io.Writer, points []*scalePoint) error {
	const (
		width, left, right = 960, 80, 260
		top, panelH        = 70, 360
	)
	height := top + panelH + 60
	plotW := float64(width - left - right)
	colors := []string{"#1f77b4", "#ff7f0e", "#d62728", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"} // one per load

	var conns []int
	var series []scaleSeries
	yMax := 0.0
	for _, p := range points {
		if !slices.Contains(conns, p.conns) {
			conns = append(conns, p.conns)
		}
		if !slices.Contains(series, p.series()) {
			series = append(series, p.series())
		}
		for _, r := range p.res {
			yMax = max(yMax, r.ServerUSPerDeliv)
		}
	}
	slices.Sort(conns)
	// The axis ends a little past the most connections, at a round number.
	xMax := 1.05 * float64(conns[len(conns)-1])
	e := math.Pow(10, math.Floor(math.Log10(xMax)))
	xMax = math.Ceil(xMax/e) * e
	yMax = niceCeil(yMax)
	xOfConns := func(c int) float64 { return float64(left) + float64(c)/xMax*plotW }
	yOf := func(v float64) float64 { return float64(top+panelH) - v/yMax*float64(panelH) }

	bw := bufio.NewWriter(w)
	pr := func(format string, a ...any) { fmt.Fprintf(bw, format, a...) }
	pr(`<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="12">`+"\n",
		width, height, width, height)
	pr(`<rect width="100%%" height="100%%" fill="white"/>` + "\n")
	pr(`<text x="%d" y="24" font-size="16" font-weight="bold">server CPU per delivery against connections</text>`+"\n", left)
	note := "groupcast solid, the floor (one write(2) per delivery) dashed, others dotted"
	if rate := points[0].deliveriesPS(); rate > 0 {
		note = fmt.Sprintf("%s deliveries/s (first point); %s", thousands(int(math.Round(rate))), note)
	}
	pr(`<text x="%d" y="44" fill="#444">%s</text>`+"\n", left, html.EscapeString(note))
	pr(`<text x="%d" y="%d" font-weight="bold">µs of server CPU per delivery</text>`+"\n", left, top-8)
	for i := 0; i <= 5; i++ {
		v := yMax * float64(i) / 5
		y := yOf(v)
		pr(`<line x1="%d" x2="%d" y1="%.1f" y2="%.1f" stroke="#ddd"/>`+"\n", left, width-right, y, y)
		pr(`<text x="%d" y="%.1f" text-anchor="end">%g</text>`+"\n", left-6, y+4, v)
	}
	yb := top + panelH
	lastX := math.Inf(-1)
	for _, c := range append([]int{0}, conns...) {
		x := xOfConns(c)
		if x-lastX < 30 {
			continue // too close to the last label
		}
		lastX = x
		pr(`<line x1="%.1f" x2="%.1f" y1="%d" y2="%d" stroke="#999"/>`+"\n", x, x, yb, yb+4)
		pr(`<text x="%.1f" y="%d" text-anchor="middle">%s</text>`+"\n", x, yb+16, siLabel(float64(c)))
	}
	pr(`<text x="%d" y="%d" text-anchor="middle">connections</text>`+"\n", left+int(plotW/2), height-14)
	pr(`<rect x="%d" y="%d" width="%.0f" height="%d" fill="none" stroke="#999"/>`+"\n", left, top, plotW, panelH)

	legendY := top + 10
	for _, t := range scaleTargets(points) {
		// A line per load: its points in the order of their connections.
		var lines []plotLine
		var xs [][]int
		for si, s := range series {
			var on []*scalePoint
			for _, p := range points {
				if p.res[t] != nil && p.series() == s {
					on = append(on, p)
				}
			}
			if len(on) == 0 {
				continue
			}
			slices.SortFunc(on, func(a, b *scalePoint) int { return cmp.Compare(a.conns, b.conns) })
			l := plotLine{label: t + ", " + s.label(), color: colors[si%len(colors)]}
			var x []int
			for _, p := range on {
				l.pts = append(l.pts, p.res[t].ServerUSPerDeliv)
				x = append(x, p.conns)
			}
			lines, xs = append(lines, l), append(xs, x)
		}
		dash := ""
		if d := scaleDash(t); d != "" {
			dash = fmt.Sprintf(` stroke-dasharray="%s"`, d)
		}
		pr(`<g class="%s"%s>`+"\n", html.EscapeString(t), dash)
		for i, l := range lines {
			xOf := func(j int) float64 { return xOfConns(xs[i][j]) }
			drawLine(bw, l, xOf, yOf, func(float64) bool { return true })
		}
		legend(bw, lines, width-right+12, legendY)
		pr("</g>\n")
		for i, l := range lines {
			for j, v := range l.pts {
				pr(`<circle cx="%.1f" cy="%.1f" r="3" fill="%s"/>`+"\n", xOfConns(xs[i][j]), yOf(v), l.color)
			}
		}
		legendY += 18*len(lines) + 8
	}
	pr("</svg>\n")
	return bw.Flush()
}

// cmdScaleReport reads scale.sh's results (loadgen -json summaries, one a
// line) and prints the markdown table, and with -svg writes the plot.
func cmdScaleReport(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("scale-report", flag.ContinueOnError)
	fs.SetOutput(stderr)
	in := fs.String("in", "", "fanout and rooms summaries (loadgen -json lines), as scale.sh collects them (required)")
	svg := fs.String("svg", "", "write an SVG plot of server CPU per delivery against connections to this file")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *in == "" || fs.NArg() > 0 {
		fmt.Fprintln(stderr, "scale-report: -in is required, and nothing else")
		return 2
	}
	f, err := os.Open(*in)
	if err != nil {
		fmt.Fprintf(stderr, "scale-report: %v\n", err)
		return 1
	}
	points, err := readScale(f)
	f.Close()
	if err != nil {
		fmt.Fprintf(stderr, "scale-report: %s: %v\n", *in, err)
		return 1
	}
	writeScaleTable(stdout, points)
	if *svg != "" {
		if err := saveScalePlot(*svg, points); err != nil {
			fmt.Fprintf(stderr, "scale-report: -svg: %v\n", err)
			return 1
		}
	}
	return 0
}

func saveScalePlot(path string, points []*scalePoint) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := writeScalePlot(f, points); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
