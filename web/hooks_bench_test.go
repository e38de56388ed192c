package web

import (
	"fmt"
	"testing"
)

// BenchmarkJoin measures a join and a leave over a real WebSocket, without
// and with a join hook answered by a backend on loopback: the difference
// is the hook's cost per join.
func BenchmarkJoin(b *testing.B) {
	backend := newHookBackend(nil, func(hookCall) (int, string) { return 200, `{}` })
	defer backend.Close()
	for _, tc := range []struct {
		name string
		cfg  Config
	}{
		{"no-hook", Config{}},
		{"hook", Config{Hooks: HookConfig{JoinURL: backend.URL}}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			cfg := tc.cfg
			cfg.FramesPerSecond = 1e9
			e := newEnv(b, "", &cfg)
			c := e.dial()
			i := 0
			for b.Loop() {
				g := fmt.Sprintf("g%d", i%2)
				i++
				c.Join(g)
				c.Call(map[string]any{"type": "leave", "group": g})
			}
		})
	}
}
