#!/usr/bin/env bash
# compare.sh — server CPU per delivery: groupcast against nats-server's own
# WebSocket listener (the no-application-layer reference), same load.
#
# usage: cmd/loadgen/compare.sh [RATE] [more loadgen fanout flags...]
#   e.g. cmd/loadgen/compare.sh 10
#        cmd/loadgen/compare.sh 50 -conns 5000 -duration 20s -size 64
#
# Builds ./app and ./cmd/loadgen, then, one server at a time so core 0 stays
# quiet: starts the server pinned to core 0 (groupcast on :8080 with the
# embedded NATS, then loadgen serve-nats-ws on :8090), runs loadgen fanout
# pinned to core 1 against it with -pid of the server binary, and stops it.
# Prints both summaries and the ratio of server CPU per delivery. Needs 2
# cores, taskset, and ports 8080 and 8090 free. Keep the machine otherwise
# idle: the summaries' "other processes" figure shows how much it was not.
set -euo pipefail

rate=${1:-10}
if [[ $# -gt 0 ]]; then shift; fi
root=$(cd "$(dirname "$0")/../.." && pwd)
tmp=$(mktemp -d)
server_pid=""

cleanup() {
	if [[ -n $server_pid ]] && kill -0 "$server_pid" 2>/dev/null; then
		kill -TERM "$server_pid" 2>/dev/null || true
		wait "$server_pid" 2>/dev/null || true
	fi
	rm -rf "$tmp"
}
trap cleanup EXIT

stop_server() {
	kill -TERM "$server_pid"
	wait "$server_pid" || true
	server_pid=""
	sleep 1
}

# wait_http URL: until it answers 200 (10 s at most).
wait_http() {
	for _ in $(seq 100); do
		if curl -fsS -o /dev/null --max-time 1 "$1" 2>/dev/null; then return 0; fi
		kill -0 "$server_pid" 2>/dev/null || { echo "server exited" >&2; return 1; }
		sleep 0.1
	done
	echo "$1 not ready" >&2
	return 1
}

# wait_tcp PORT: until something listens on 127.0.0.1:PORT (10 s at most).
wait_tcp() {
	for _ in $(seq 100); do
		if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
		kill -0 "$server_pid" 2>/dev/null || { echo "server exited" >&2; return 1; }
		sleep 0.1
	done
	echo "port $1 not listening" >&2
	return 1
}

# busy_ticks: CPU ticks (user+nice+system+irq+softirq) used so far, all cores.
busy_ticks() { awk '/^cpu /{print $2+$3+$4+$7+$8; exit}' /proc/stat; }

# wait_quiet: wait (QUIET_WAIT seconds at most, default 120) until the machine
# has been under 10 % busy for 2 s, so other work does not skew the figures.
wait_quiet() {
	local deadline=$((SECONDS + ${QUIET_WAIT:-120})) a b
	while :; do
		a=$(busy_ticks); sleep 2; b=$(busy_ticks)
		# 2 s of 2 cores at 100 Hz is 400 ticks; 10 % of that is 40.
		if ((b - a < 40)); then return 0; fi
		if ((SECONDS >= deadline)); then
			echo "warning: the machine is busy ($((b - a)) ticks in 2 s); figures will be noisy" >&2
			return 0
		fi
	done
}

# field NAME FILE: a number from the JSON line loadgen printed.
field() { grep -o "\"$1\":[-0-9.e+]*" "$2" | head -1 | cut -d: -f2; }

cd "$root"
echo "building ./app and ./cmd/loadgen" >&2
go build -o "$tmp/groupcast" ./app
go build -o "$tmp/loadgen" ./cmd/loadgen

wait_quiet
echo "== groupcast (core 0) at $rate publishes/s" >&2
env -u NATS_URL -u API_KEY PORT=8080 taskset -c 0 "$tmp/groupcast" 2>"$tmp/groupcast.log" &
server_pid=$!
wait_http http://127.0.0.1:8080/readyz
taskset -c 1 "$tmp/loadgen" fanout -target groupcast -url ws://127.0.0.1:8080/ws \
	-api http://127.0.0.1:8080 -rate "$rate" -pid "$server_pid" -json -quiet "$@" \
	>"$tmp/groupcast.json" 2>"$tmp/groupcast.txt" || { cat "$tmp/groupcast.txt" >&2; exit 1; }
stop_server

wait_quiet
echo "== nats-server WebSocket listener (core 0) at $rate publishes/s" >&2
taskset -c 0 "$tmp/loadgen" serve-nats-ws -addr 127.0.0.1:8090 >/dev/null &
server_pid=$!
wait_tcp 8090
taskset -c 1 "$tmp/loadgen" fanout -target nats-ws -url ws://127.0.0.1:8090 \
	-rate "$rate" -pid "$server_pid" -json -quiet "$@" \
	>"$tmp/nats.json" 2>"$tmp/nats.txt" || { cat "$tmp/nats.txt" >&2; exit 1; }
stop_server

echo "--- groupcast"
cat "$tmp/groupcast.txt"
echo "--- nats-ws"
cat "$tmp/nats.txt"
echo "--- json"
cat "$tmp/groupcast.json" "$tmp/nats.json"
g=$(field server_us_per_delivery "$tmp/groupcast.json")
n=$(field server_us_per_delivery "$tmp/nats.json")
gk=$(field server_kib_per_conn "$tmp/groupcast.json")
nk=$(field server_kib_per_conn "$tmp/nats.json")
echo "---"
awk -v g="$g" -v n="$n" -v gk="$gk" -v nk="$nk" 'BEGIN {
	printf "server CPU per delivery: groupcast %.2f µs, nats-ws %.2f µs, ratio %.2f\n", g, n, (n > 0 ? g / n : 0)
	printf "RSS per idle connection: groupcast %.1f KiB, nats-ws %.1f KiB, ratio %.2f\n", gk, nk, (nk > 0 ? gk / nk : 0)
}'
