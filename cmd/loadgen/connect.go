package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"slices"
	"time"
)

// maxRounds bounds a connect run's rounds.
const maxRounds = 100

// ConnectConfig describes a reconnect storm: Rounds times, Base.Conns
// clients connect and join Base.Group all at once (Base.MaxInflight at a
// time, no rate limit), Verify messages are published to prove that every
// client is a member again, and every client disconnects.
type ConnectConfig struct {
	Base    Config // Target, URLs, APIs, PIDs, Conns, Group, Size, MaxInflight, SourceIPs, Joins, Log
	Rounds  int
	Verify  int           // publishes after each storm; default 3
	Quiesce time.Duration // bound on waiting for the servers to go idle between rounds; default 20s
	// ProfileSecs: with Base.Profile and Base.ProfileOut, each round from
	// round 2 on writes a CPU profile of this many seconds (default 1) from
	// its storm's start to Base.ProfileOut.round<N>, holding its
	// connections until it is written; merge them with
	// go tool pprof -proto <files> > merged.pprof.
	ProfileSecs int
}

// ConnectRound is one storm.
type ConnectRound struct {
	Round              int        `json:"round"`
	Secs               float64    `json:"secs"` // first dial to last join ack
	ServerCPUSecs      float64    `json:"server_cpu_s"`
	ServerUSPerConnect float64    `json:"server_us_per_connect"`
	LoaderCPUSecs      float64    `json:"loader_cpu_s"`
	OtherCPUSecs       float64    `json:"other_cpu_s"`
	ConnectLatency     Latency    `json:"connect_latency"`
	Verified           int64      `json:"verify_publishes"`
	Lost               int64      `json:"lost"`
	Duplicates         int64      `json:"duplicates"`
	Rejoined           bool       `json:"rejoined"` // every client got every verify publish
	QuiesceSecs        float64    `json:"quiesce_s"`
	Instances          []Instance `json:"instances,omitempty"`
}

// ConnectResult sums the rounds up. Round 1 hits a fresh process (cold);
// the later rounds reconnect to a warm one, and their median is the
// headline figure (round 1's when there is only one).
type ConnectResult struct {
	Mode               string         `json:"mode"`
	Target             string         `json:"target"`
	Transport          string         `json:"transport"`
	URL                string         `json:"url"`
	Conns              int            `json:"conns"`
	MaxInflight        int            `json:"max_inflight"`
	ColdUSPerConnect   float64        `json:"cold_us_per_connect"`
	ServerUSPerConnect float64        `json:"server_us_per_connect"` // median of rounds 2.. (or round 1)
	StormSecs          float64        `json:"storm_s"`               // median
	ConnectLatency     Latency        `json:"connect_latency"`       // of the median round
	AllRejoined        bool           `json:"all_rejoined"`
	OtherCPUSecs       float64        `json:"other_cpu_s"` // sum over the storms
	ServerKiBPerConn   float64        `json:"server_kib_per_conn"`
	FirstError         string         `json:"first_error,omitempty"`
	Profiles           []string       `json:"profiles,omitempty"` // CPU profiles written, one per round
	Rounds             []ConnectRound `json:"rounds"`             // last, so that scripts find the summary's fields first
}

// runConnect runs the storms. Between rounds it waits until the servers
// have gone idle, so that tearing down the last round's connections is not
// charged to the next.
func runConnect(ctx context.Context, cc ConnectConfig) (*ConnectResult, error) {
	if cc.Rounds < 1 || cc.Rounds > maxRounds {
		return nil, fmt.Errorf("-rounds must be 1..%d", maxRounds)
	}
	if cc.Verify <= 0 {
		cc.Verify = 3
	}
	if cc.Quiesce <= 0 {
		cc.Quiesce = 20 * time.Second
	}
	if cc.Base.Log == nil {
		cc.Base.Log = io.Discard
	}
	base := cc.Base
	base.Mode = modeFanout
	base.ConnectRate = math.Inf(1)
	if base.MaxInflight <= 0 {
		base.MaxInflight = base.Conns
	}
	base.Rate = 20
	base.Duration = time.Duration(cc.Verify) * time.Second / 20
	base.Settle = 200 * time.Millisecond
	base.Drain = 5 * time.Second
	base.Profile, base.ProfileOut, base.HeapOut = "", "", ""
	res := &ConnectResult{Mode: modeConnect, Target: base.Target, Conns: base.Conns, MaxInflight: base.MaxInflight, AllRejoined: true}
	res.Transport = cmp.Or(base.Transport, transportWS)

	for round := 1; round <= cc.Rounds; round++ {
		cfg := base
		if cc.Base.Profile != "" && cc.Base.ProfileOut != "" && (round > 1 || cc.Rounds == 1) {
			cfg.Profile = cc.Base.Profile
			cfg.ProfileOut = fmt.Sprintf("%s.round%d", cc.Base.ProfileOut, round)
			cfg.ProfileRamp = time.Duration(max(1, cc.ProfileSecs)) * time.Second
			res.Profiles = append(res.Profiles, cfg.ProfileOut)
		}
		r, err := runFanout(ctx, cfg)
		if err != nil {
			return nil, fmt.Errorf("round %d: %w", round, err)
		}
		res.URL = r.URL
		rd := ConnectRound{
			Round: round, Secs: r.RampSecs, ServerCPUSecs: r.RampServerCPUSecs,
			ServerUSPerConnect: r.ServerUSPerConnect, LoaderCPUSecs: r.RampLoaderCPUSecs,
			OtherCPUSecs: r.RampOtherCPUSecs, ConnectLatency: r.ConnectLatency,
			Verified: r.Publishes, Lost: r.Lost, Duplicates: r.Duplicates,
			Rejoined: r.Lost == 0 && r.Duplicates == 0 && r.Publishes == int64(cc.Verify) && r.Disconnects == 0,
		}
		if len(r.Instances) > 1 {
			rd.Instances = r.Instances
		}
		if round == 1 {
			res.ServerKiBPerConn = r.ServerKiBPerConn
		}
		if r.FirstError != "" && res.FirstError == "" {
			res.FirstError = fmt.Sprintf("round %d: %s", round, r.FirstError)
		}
		t := time.Now()
		if err := quiesce(ctx, append(slices.Clone(base.PIDs), base.WithPIDs...), cc.Quiesce); err != nil {
			if !errors.Is(err, errBusy) {
				return nil, err
			}
			if res.FirstError == "" {
				res.FirstError = fmt.Sprintf("round %d: %v", round, err)
			}
		}
		rd.QuiesceSecs = time.Since(t).Seconds()
		res.AllRejoined = res.AllRejoined && rd.Rejoined
		res.OtherCPUSecs += rd.OtherCPUSecs
		res.Rounds = append(res.Rounds, rd)
		fmt.Fprintf(base.Log, "round %d: %d joined in %.2fs, %.1f µs server CPU per connect, rejoined %v\n",
			round, base.Conns, rd.Secs, rd.ServerUSPerConnect, rd.Rejoined)
	}
	res.ColdUSPerConnect = res.Rounds[0].ServerUSPerConnect
	warm := res.Rounds
	if len(warm) > 1 {
		warm = warm[1:]
	}
	med := medianRound(warm)
	res.ServerUSPerConnect = med.ServerUSPerConnect
	res.StormSecs = med.Secs
	res.ConnectLatency = med.ConnectLatency
	return res, nil
}

// medianRound returns the round with the median CPU per connect.
func medianRound(rs []ConnectRound) ConnectRound {
	s := slices.Clone(rs)
	slices.SortFunc(s, func(a, b ConnectRound) int {
		switch {
		case a.ServerUSPerConnect < b.ServerUSPerConnect:
			return -1
		case a.ServerUSPerConnect > b.ServerUSPerConnect:
			return 1
		}
		return 0
	})
	return s[(len(s)-1)/2]
}

// errBusy reports servers that did not go idle in time.
var errBusy = errors.New("servers still busy")

// quiesce waits until the processes have used no CPU for three 100 ms
// windows running (within /proc's 10 ms resolution), or d passes.
func quiesce(ctx context.Context, pids []int, d time.Duration) error {
	if len(pids) == 0 {
		return sleepCtx(ctx, 500*time.Millisecond)
	}
	total := func() time.Duration {
		var t time.Duration
		for _, pid := range pids {
			c, _ := procCPU(pid)
			t += c
		}
		return t
	}
	deadline := time.Now().Add(d)
	quiet, last := 0, total()
	for quiet < 3 {
		if time.Now().After(deadline) {
			return fmt.Errorf("%w after %s", errBusy, d)
		}
		if err := sleepCtx(ctx, 100*time.Millisecond); err != nil {
			return err
		}
		now := total()
		if now-last <= 10*time.Millisecond {
			quiet++
		} else {
			quiet = 0
		}
		last = now
	}
	return nil
}
