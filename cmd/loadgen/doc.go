// Command loadgen measures groupcast over real sockets with its real
// protocol: how much server CPU a delivery, a join and a connection cost,
// how much memory an idle connection holds, what latency and throughput
// come out, and how long a cold start takes. nats-server's own WebSocket
// listener, driven with the NATS protocol under the same load, is the
// no-application-layer reference; the floor (serve-floor) is the limit; the
// seed system (Django Channels with channels_redis, seed/seedsite.py) is what
// groupcast's users run today.
//
// Usage:
//
//	loadgen serve-nats-ws [-addr 127.0.0.1:8090] [-log]
//	loadgen serve-nats [-addr 127.0.0.1:4222] [-http 127.0.0.1:8222] [-log]
//	loadgen serve-floor [-addr 127.0.0.1:8091]
//	loadgen fanout  -target groupcast|nats-ws|floor|channels [flags]
//	loadgen rooms   -target groupcast|nats-ws|floor|channels [flags]
//	loadgen connect -target groupcast|nats-ws|floor|channels [flags]
//	loadgen coldstart -bin ./groupcast [-n 20] [-cpu 0] [-env K=V]...
//
// serve-nats-ws runs an in-process nats-server whose only client listener is
// a plain WebSocket listener (no TLS, no auth, no compression; the NATS client
// port is not opened) until SIGINT or SIGTERM. serve-nats runs one with a
// plain NATS client listener and monitoring (/varz), to be the external
// NATS (NATS_URL) of several groupcast instances. Both run as processes of
// their own so they can be pinned to a core and measured with -pid.
//
// serve-floor runs the floor: about the least a server can do to pass the
// loader's checks. It speaks the subset of groupcast's protocol a run uses
// (the welcome, join and leave answered by ack, ping by pong, deliveries,
// POST /api/groups/{group}/messages) over hand-written WebSocket framing,
// writes the welcome in the same write(2) as the 101, and writes each
// delivery with one write(2) straight from the publishing request's
// goroutine: no queue, no writer goroutine, no batching. Its CPU per delivery
// is the cost of the kernel writes, the physical limit for one write per
// delivery. Targets floor and channels (daphne serving seed/seedsite.py,
// with redis-server) are driven like groupcast: the groupcast protocol, -url
// and -api (defaults :8091 and :8092). -with-pid N counts another process of
// the system (channels: redis-server) with the first instance's CPU and RSS.
//
// fanout opens -conns WebSocket connections at -connect-rate per second and
// joins them all to -group (groupcast: a join frame answered by an ack;
// nats-ws: CONNECT, SUB and PING answered by PONG). After -settle it samples
// the server's RSS (the "memory per idle connection" figure compares it with
// the RSS before connecting), then publishes -rate payloads per second for
// -duration, open loop (groupcast: POST /api/groups/<group>/messages to
// -api, up to 8 requests in flight over keep-alive connections, or with
// -batch N, POST /api/messages with N messages a request, each waiting until
// its batch is full; nats-ws: PUB over one more WebSocket connection);
// "worst start lag" shows how far publishing fell behind its schedule.
// -self-profile f writes a CPU profile of the loader itself.
// With -transport sse (groupcast, every mode) each connection is the
// fallback over plain HTTP instead: a GET /sse stream, whose welcome gives
// the secret, and its joins and leaves POSTed to /sse/{channel};
// deliveries and acks are read from its events. Run it next to the default (-transport ws) on the
// same load to compare CPU per delivery and memory per idle connection.
// Each payload is JSON, {"seq":N,"t":<unix ns>,"pad":"xxx…"}, padded to -size
// bytes. Receivers record latency (receive time minus t) in a fixed-size
// histogram, and over WebSockets also the latency to the kernel's receipt
// of the frame on the socket (SO_TIMESTAMPNS; "at socket"), which leaves
// out the time a frame waits for a busy loader to read it; they mark each
// seq in a per-connection bitset to count loss and duplicates. After publishing it waits up to -drain for stragglers and
// reports deliveries, loss, duplicates, throughput, latency percentiles, the
// server's CPU (utime+stime of -pid from /proc over the publishing window,
// plus the drain) and µs of server CPU per delivery, and the loader's own CPU:
// if the loader nears 100 % of a core, it, not the server, is the bottleneck.
// It also reports the CPU that other processes used meanwhile (noise: run on
// an otherwise idle machine) and the irq/softirq time, loopback TCP work the
// kernel charges to no process and so to neither CPU figure. Every run also
// reports the ramp: server CPU per connect-and-join and the connect latency
// (dial start to join ack).
//
// rooms is fanout over many small groups: connection i joins
// <group>.<i*rooms/conns> (-rooms groups of conns/rooms members), and
// publish n goes to <group>.<n mod rooms>. Meanwhile -churn times a second a
// connection visits another room: it joins it (nats-ws: SUB and PING), stays
// -churn-stay after the ack, and leaves (UNSUB and PING). Visits are checked
// against the protocol: a visitor must receive what was published after its
// join's ack and handed out (as a member's receipt on the same instance
// proves) before its leave was sent — those count in expected and lost —
// and nothing published after its leave's ack (a stray).
//
// connect is a reconnect storm, -rounds times: -conns clients dial and join
// all at once (-max-inflight at a time; 0: all), 3 (-verify) messages are
// published to prove every client is a member again, every client
// disconnects, and the loader waits for the server to go idle. It reports
// each round's server CPU per connect-and-join and connect latency; round 1
// meets a fresh process, and the median of the later rounds is the headline.
//
// Several instances: repeat -url (and, for groupcast, -api and -pid, in the
// same order). Connection i dials -url number i mod n; publishes go through
// each -api in turn. Figures are then sums, with one line per instance
// (its CPU per delivery, and the messages it received from NATS, from its
// /metrics), and with -broker-pid and -nats-monitor the shared nats-server's
// CPU and its messages out per publish (once per instance).
//
// -plot file.svg draws deliveries (and joins) per second and their latency
// p50/p99/p99.9 per second. -pprof http://127.0.0.1:6060 (groupcast's
// PPROF_ADDR) with -cpu-profile f writes a CPU profile of the publishing
// window (connect: -profile-seconds from round 2 on, storms going on till it
// ends) and with -heap-profile f a heap profile of the idle connections.
// With -json the summary goes to stderr and stdout gets one JSON line.
//
// coldstart starts -bin -n times (PORT free, NATS_URL unset, so with the
// embedded NATS), pinned to -cpu, and reports the time from exec to the
// first accepted connection and to the first 200 on /readyz (polled every
// millisecond): median, p90, min and max.
//
// Typical runs on a 2-core machine, server on core 0, loader on core 1:
//
//	taskset -c 0 ./groupcast &          # PORT=8080, NATS_URL unset
//	taskset -c 1 loadgen fanout -target groupcast -conns 5000 -rate 10 -pid $!
//
//	taskset -c 0 loadgen serve-nats-ws -addr 127.0.0.1:8090 &
//	taskset -c 1 loadgen fanout -target nats-ws -url ws://127.0.0.1:8090 -conns 5000 -rate 10 -pid $!
//
// cmd/loadgen/compare.sh MODE [flags] does both and the floor (TARGETS=...
// adds channels), one server at a time, retrying noisy runs, and prints the
// ratios, each figure also as a multiple of the floor's; cmd/loadgen/multi.sh runs one
// and then two groupcast instances behind one external NATS.
//
// The loader raises RLIMIT_NOFILE to its hard limit. Past about 25,000
// connections to a loopback URL it dials from several source addresses
// (127.0.0.1, 127.0.0.2, …) so that ephemeral ports do not run out.
package main
