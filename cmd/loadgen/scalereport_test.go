package main

import (
	"bytes"
	"encoding/json"
	"encoding/xml"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// scaleResult is a clean run's summary with the figures a scale report reads.
func scaleResult(target, mode string, conns, rooms, size int, us, kib, p99ms float64) Result {
	return Result{
		Mode: mode, Target: target, Conns: conns, Rooms: rooms, Size: size,
		Rate: 10000 * float64(rooms) / float64(conns), Duration: 15,
		ServerPIDs: []int{1}, ServerUSPerDeliv: us, ServerKiBPerConn: kib, Latency: Latency{P99: p99ms},
		ServerCPUSecs: 3, ServerCPUUtil: 0.2, LoaderCPUUtil: 0.3,
		PublishRate: 10000 * float64(rooms) / float64(conns),
	}
}

// scaleFixture is a small grid: one group at 64 B and 16 KiB, and rooms of
// 3, each at 5,000 and 18,000 connections; groupcast, the floor and nats-ws.
func scaleFixture(t *testing.T) string {
	t.Helper()
	rs := []Result{
		scaleResult(targetGroupcast, modeFanout, 5000, 1, 64, 8.71, 14.2, 47.3),
		scaleResult(targetFloor, modeFanout, 5000, 1, 64, 6.03, 18.9, 9.9),
		scaleResult(targetGroupcast, modeFanout, 18000, 1, 64, 9.58, 14.0, 120.5),
		scaleResult(targetFloor, modeFanout, 18000, 1, 64, 6.10, 19.1, 30.2),
		scaleResult(targetGroupcast, modeFanout, 5000, 1, 16384, 15.00, 14.2, 60),
		scaleResult(targetFloor, modeFanout, 5000, 1, 16384, 12.00, 18.9, 20),
		scaleResult(targetGroupcast, modeFanout, 18000, 1, 16384, 16.50, 14.1, 150),
		scaleResult(targetFloor, modeFanout, 18000, 1, 16384, 12.50, 19.0, 40),
		scaleResult(targetGroupcast, modeRooms, 5000, 1666, 64, 13.40, 14.5, 2.1),
		scaleResult(targetFloor, modeRooms, 5000, 1666, 64, 10.50, 19.0, 1.2),
		scaleResult(targetGroupcast, modeRooms, 18000, 6000, 64, 13.90, 14.4, 2.5),
		scaleResult(targetFloor, modeRooms, 18000, 6000, 64, 10.60, 19.2, 1.4),
		scaleResult(targetNATSWS, modeFanout, 5000, 1, 64, 12.06, 48, 80),
	}
	// A rerun of the floor's first point replaces the first summary; one
	// run lost deliveries.
	rs[8].Lost = 7
	rs[7].PublishRate, rs[7].PublishLagMax = rs[7].Rate/2, 1234
	stale := rs[1]
	stale.ServerUSPerDeliv = 99
	rs = append([]Result{stale}, rs...)
	var buf bytes.Buffer
	for _, r := range rs {
		b, err := json.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		buf.Write(b)
		buf.WriteString("\n")
	}
	buf.WriteString("\n") // blank lines are skipped
	path := filepath.Join(t.TempDir(), "results.jsonl")
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestScaleReport(t *testing.T) {
	in := scaleFixture(t)
	svg := filepath.Join(t.TempDir(), "scale.svg")
	var stdout, stderr bytes.Buffer
	if code := run(t.Context(), []string{"scale-report", "-in", in, "-svg", svg}, &stdout, &stderr); code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	table := stdout.String()
	t.Log(table)
	for _, want := range []string{
		"at 10,000 deliveries/s",
		"| nats-ws CPU per delivery (× floor) |",
		// ratios are groupcast's over the floor's; the rerun replaced the 99 µs
		"| one group, 64 B | 5,000 | 8.71 µs | 6.03 µs | 1.44× | 14.2 KiB | 18.9 KiB | 0.75× | 47.3 / 9.9 ms | 12.06 µs (2.00×) |",
		"| 18,000 | 16.50 µs | 12.50 µs | 1.32× | 14.1 KiB | 19.0 KiB | 0.74× | 150.0 / 40.0 ms | – |",
		"| rooms: 6,000 groups of 3, 64 B | 18,000 | 13.90 µs | 10.60 µs | 1.31× |",
		"| one group, 16 KiB [1] | 18,000 | 16.50 µs | 12.50 µs |",
		"[1] one group, 16 KiB, 18,000 connections, floor: publishing fell behind, 0.2778 of 0.5556 publishes/s (worst lag 1234 ms)",
		"| rooms: 1,666 groups of 3, 64 B [2] | 5,000 |",
		"[2] rooms: 1,666 groups of 3, 64 B, 5,000 connections, groupcast: 7 lost, 0 duplicates, 0 malformed",
		"- one group, 64 B, 5,000 → 18,000 connections: groupcast CPU per delivery 1.10×, RSS per connection 0.99×; floor CPU per delivery 1.01×, RSS per connection 1.01×",
		"- rooms in groups of 3, 64 B, 5,000 → 18,000 connections: groupcast CPU per delivery 1.04×",
	} {
		if !strings.Contains(table, want) {
			t.Errorf("table lacks %q", want)
		}
	}
	if strings.Contains(table, "99.00") || strings.Count(table, "\n| ") != 8 {
		t.Errorf("want a header, a rule and 6 rows, the stale summary replaced")
	}

	b, err := os.ReadFile(svg)
	if err != nil {
		t.Fatal(err)
	}
	lines := scalePlotLines(t, b)
	// A line per load and target: three loads for groupcast and the floor,
	// nats-ws's one point.
	want := map[string]int{"groupcast": 3, "floor": 3, "nats-ws": 1}
	for target, n := range want {
		if len(lines[target]) != n {
			t.Errorf("%s: %d lines, want %d (%v)", target, len(lines[target]), n, lines)
		}
	}
	for _, l := range lines["groupcast"] {
		if l.dash != "" || len(l.pts) != 2 {
			t.Errorf("groupcast line %+v: want solid, two points", l)
		}
	}
	for i, l := range lines["floor"] {
		if l.dash == "" || len(l.pts) != 2 {
			t.Errorf("floor line %+v: want dashed, two points", l)
		}
		g := lines["groupcast"][i]
		if l.color != g.color {
			t.Errorf("floor line %d colored %s, groupcast's %s: a load is one color", i, l.color, g.color)
		}
		// x is the connections, y grows downwards: groupcast costs more here.
		if g.pts[0][0] != l.pts[0][0] || g.pts[1][0] <= g.pts[0][0] || g.pts[0][1] >= l.pts[0][1] {
			t.Errorf("groupcast %v against floor %v", g.pts, l.pts)
		}
	}
	g := lines["groupcast"]
	if g[0].color == g[1].color || g[1].color == g[2].color {
		t.Errorf("loads share a color: %+v", g)
	}
	// 64 B at 18,000 costs 9.58 µs, under 16 KiB's 16.50 µs: higher on the plot.
	if g[0].pts[1][1] <= g[1].pts[1][1] {
		t.Errorf("64 B at y %v, 16 KiB at y %v", g[0].pts[1][1], g[1].pts[1][1])
	}
}

// scaleLine is a polyline of a scale plot: its target (the group it is
// drawn in), style and points.
type scaleLine struct {
	color, dash string
	pts         [][2]float64
}

// scalePlotLines parses b as XML and returns its polylines by target.
func scalePlotLines(t *testing.T, b []byte) map[string][]scaleLine {
	t.Helper()
	out := map[string][]scaleLine{}
	dec := xml.NewDecoder(bytes.NewReader(b))
	var target, dash string
	sawSVG := false
	for {
		tok, err := dec.Token()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("not XML: %v", err)
		}
		se, ok := tok.(xml.StartElement)
		if !ok {
			continue
		}
		attr := func(name string) string {
			for _, a := range se.Attr {
				if a.Name.Local == name {
					return a.Value
				}
			}
			return ""
		}
		switch se.Name.Local {
		case "svg":
			sawSVG = true
		case "g":
			target, dash = attr("class"), attr("stroke-dasharray")
		case "polyline":
			l := scaleLine{color: attr("stroke"), dash: dash}
			for _, xy := range strings.Fields(attr("points")) {
				x, y, _ := strings.Cut(xy, ",")
				fx, err1 := strconv.ParseFloat(x, 64)
				fy, err2 := strconv.ParseFloat(y, 64)
				if err1 != nil || err2 != nil {
					t.Fatalf("point %q", xy)
				}
				l.pts = append(l.pts, [2]float64{fx, fy})
			}
			out[target] = append(out[target], l)
		}
	}
	if !sawSVG {
		t.Fatal("no svg element")
	}
	return out
}

func TestScaleReportRejects(t *testing.T) {
	dir := t.TempDir()
	good, _ := json.Marshal(scaleResult(targetGroupcast, modeFanout, 10, 1, 64, 1, 1, 1))
	cases := map[string]string{
		"bad.jsonl":     string(good) + "\n{not json\n",
		"connect.jsonl": `{"mode":"connect","target":"groupcast","conns":10}` + "\n",
		"target.jsonl":  `{"mode":"fanout","target":"redis","conns":10,"rooms":1,"rate":1}` + "\n",
		"rooms.jsonl":   `{"mode":"rooms","target":"floor","conns":10,"rooms":11,"rate":1}` + "\n",
		"empty.jsonl":   "\n",
		"long.jsonl":    `{"mode":"` + strings.Repeat("x", maxScaleLineBytes) + `"}` + "\n",
	}
	want := map[string]string{
		"bad.jsonl": "line 2:", "connect.jsonl": `mode "connect"`, "target.jsonl": `unknown target "redis"`,
		"rooms.jsonl": "rooms 11", "empty.jsonl": "no summaries", "long.jsonl": "too long",
	}
	for name, body := range cases {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		var stdout, stderr bytes.Buffer
		code := run(t.Context(), []string{"scale-report", "-in", path}, &stdout, &stderr)
		if code != 1 || !strings.Contains(stderr.String(), want[name]) || stdout.Len() != 0 {
			t.Errorf("%s: exit %d, stderr %q, stdout %q; want 1 and %q", name, code, stderr.String(), stdout.String(), want[name])
		}
	}
	var stderr bytes.Buffer
	if code := run(t.Context(), []string{"scale-report"}, io.Discard, &stderr); code != 2 {
		t.Errorf("no -in: exit %d", code)
	}
}

// TestScaleScriptGrid checks scale.sh's grid without running it: the
// points, their rates at the fixed delivery rate, the rooms' duration cut to
// loadgen's bitsets, and the descriptor check.
func TestScaleScriptGrid(t *testing.T) {
	bash, err := exec.LookPath("bash")
	if err != nil {
		t.Skip("no bash")
	}
	script := func(env []string, pre string) (string, string, error) {
		cmd := exec.Command(bash, "-c", pre+`exec bash "$0"`, "scale.sh")
		cmd.Env = append(os.Environ(), append([]string{"DRY_RUN=1", "OUT=/o"}, env...)...)
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		return stdout.String(), stderr.String(), err
	}
	out, errOut, err := script(nil, "ulimit -n 19000 2>/dev/null || exit 3; ")
	if exitCode(err) == 3 {
		t.Skip("the hard descriptor limit is under 19,000")
	}
	if err != nil {
		t.Fatalf("%v: %s", err, errOut)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 9 {
		t.Fatalf("%d points, want 9:\n%s", len(lines), out)
	}
	for i, want := range []string{
		`TARGETS="groupcast floor" MAX_CONNECTIONS=5500 OUT=/o/fanout-s64-c5000 `,
		"compare.sh fanout -conns 18000 -size 64 -rate 0.555556 -duration 20s -source-ips 8",
		"compare.sh fanout -conns 5000 -size 1024 -rate 2 -duration 20s",
		"", "",
		"compare.sh fanout -conns 18000 -size 16384 -rate 0.555556 -duration 20s",
		"OUT=/o/rooms-s64-c5000-g3 ",
		"compare.sh rooms -conns 15000 -size 64 -rate 3333.33 -duration 20s -source-ips 8 -rooms 5000 -churn 0",
		// 6,000 groups of 3: 3,333 publishes/s.
		"compare.sh rooms -conns 18000 -size 64 -rate 3333.33 -duration 20s -source-ips 8 -rooms 6000 -churn 0",
	} {
		if !strings.Contains(lines[i], want) {
			t.Errorf("point %d: %q lacks %q", i, lines[i], want)
		}
	}
	// groupcast takes 10,000 connections unless told otherwise.
	if !strings.Contains(lines[1], "MAX_CONNECTIONS=18500 OUT=/o/fanout-s64-c18000 ") {
		t.Errorf("point 1: %q does not raise MAX_CONNECTIONS", lines[1])
	}
	// 18,000 bitsets of 40 s of 3,333 publishes/s are over 256 MiB.
	out, errOut, err = script([]string{"DURATION=40"}, "")
	if err != nil || !strings.Contains(errOut, "rooms at 18000 connections publish for 35s, not 40s") ||
		!strings.Contains(out, "-rooms 1666 -churn 0") || !strings.Contains(out, "-conns 18000 -size 64 -rate 3333.33 -duration 35s") {
		t.Errorf("DURATION=40: %v, %q", err, errOut)
	}
	out, errOut, err = script([]string{"SIZES=256", "FANOUT_CONNS=200", "ROOMS_CONNS=", "TARGETS=groupcast nats-ws floor"}, "")
	if err != nil || strings.TrimSpace(out) != `TARGETS="groupcast nats-ws floor" MAX_CONNECTIONS=700 OUT=/o/fanout-s256-c200 `+filepath.Join(mustAbs(t, "."), "compare.sh")+
		" fanout -conns 200 -size 256 -rate 50 -duration 20s -source-ips 8" {
		t.Errorf("one point: %v, %q, %q", err, out, errOut)
	}
	_, errOut, err = script(nil, "ulimit -n 5000 2>/dev/null || exit 3; ")
	if code := exitCode(err); code != 2 || !strings.Contains(errOut, "5000 connections need about 5500 descriptors per process; the hard limit is 5000") {
		t.Errorf("low descriptor limit: exit %d, %q", code, errOut)
	}
}

func mustAbs(t *testing.T, p string) string {
	t.Helper()
	a, err := filepath.Abs(p)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func exitCode(err error) int {
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode()
	}
	if err != nil {
		return -1
	}
	return 0
}

// FuzzScaleReport: whatever the input, readScale either refuses it or the
// table and a well-formed plot come out of it.
func FuzzScaleReport(f *testing.F) {
	for _, r := range []Result{
		scaleResult(targetGroupcast, modeFanout, 5000, 1, 64, 8.71, 14.2, 47.3),
		scaleResult(targetFloor, modeRooms, 18000, 6000, 1024, -1, 0, 0),
	} {
		b, _ := json.Marshal(r)
		f.Add(string(b) + "\n" + string(b))
	}
	f.Add(`{"mode":"rooms","target":"nats-ws","conns":3,"rooms":3,"rate":1e300,"server_us_per_delivery":1e308}`)
	f.Fuzz(func(t *testing.T, in string) {
		points, err := readScale(strings.NewReader(in))
		if err != nil {
			return
		}
		writeScaleTable(io.Discard, points)
		var svg bytes.Buffer
		if err := writeScalePlot(&svg, points); err != nil {
			t.Fatal(err)
		}
		dec := xml.NewDecoder(&svg)
		for {
			if _, err := dec.Token(); err == io.EOF {
				break
			} else if err != nil {
				t.Fatalf("not XML: %v", err)
			}
		}
	})
}
