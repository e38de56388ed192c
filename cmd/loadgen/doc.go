// Command loadgen measures WebSocket fan-out: how much server CPU and memory a
// group broadcast costs per delivery and per idle connection, for groupcast
// and, as the no-application-layer reference, for nats-server's own WebSocket
// listener.
//
// Usage:
//
//	loadgen serve-nats-ws [-addr 127.0.0.1:8090] [-log]
//	loadgen fanout -target groupcast|nats-ws [flags]
//
// serve-nats-ws runs an in-process nats-server whose only client listener is
// a plain WebSocket listener (no TLS, no auth, no compression; the NATS client
// port is not opened) until SIGINT or SIGTERM. It runs as its own process so
// it can be pinned to a core and measured with -pid.
//
// fanout opens -conns WebSocket connections at -connect-rate per second and
// joins them all to -group (groupcast: a join frame answered by an ack;
// nats-ws: CONNECT, SUB and PING answered by PONG). After -settle it samples
// the server's RSS (the "memory per idle connection" figure compares it with
// the RSS before connecting), then publishes -rate payloads per second for
// -duration, open loop (groupcast: POST /api/groups/<group>/messages to
// -api, up to 8 requests in flight over keep-alive connections; nats-ws: PUB
// over one more WebSocket connection); "worst start lag" shows how far
// publishing fell behind its schedule.
// Each payload is JSON, {"seq":N,"t":<unix ns>,"pad":"xxx…"}, padded to -size
// bytes. Receivers record latency (receive time minus t) in a fixed-size
// histogram and mark each seq in a per-connection bitset to count loss and
// duplicates. After publishing it waits up to -drain for stragglers and
// reports deliveries, loss, duplicates, throughput, latency percentiles, the
// server's CPU (utime+stime of -pid from /proc over the publishing window,
// plus the drain) and µs of server CPU per delivery, and the loader's own CPU:
// if the loader nears 100 % of a core, it, not the server, is the bottleneck.
// It also reports the CPU that other processes used meanwhile (noise: run on
// an otherwise idle machine) and the irq/softirq time, loopback TCP work the
// kernel charges to no process and so to neither CPU figure.
// With -json the summary goes to stderr and stdout gets one JSON line.
//
// Typical runs on a 2-core machine, server on core 0, loader on core 1:
//
//	taskset -c 0 ./groupcast &          # PORT=8080, NATS_URL unset
//	taskset -c 1 loadgen fanout -target groupcast -conns 5000 -rate 10 -pid $!
//
//	taskset -c 0 loadgen serve-nats-ws -addr 127.0.0.1:8090 &
//	taskset -c 1 loadgen fanout -target nats-ws -url ws://127.0.0.1:8090 -conns 5000 -rate 10 -pid $!
//
// cmd/loadgen/compare.sh RATE [fanout flags] does both, one server at a time,
// and prints the ratio of server CPU per delivery.
//
// The loader raises RLIMIT_NOFILE to its hard limit. Past about 25,000
// connections to a loopback URL it dials from several source addresses
// (127.0.0.1, 127.0.0.2, …) so that ephemeral ports do not run out.
package main
