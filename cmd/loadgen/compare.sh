#!/usr/bin/env bash
# compare.sh — groupcast against nats-server's own WebSocket listener (the
# no-application-layer reference), same load, one server at a time.
#
# usage: cmd/loadgen/compare.sh MODE [more loadgen MODE flags...]
#        cmd/loadgen/compare.sh RATE [more loadgen fanout flags...]   (fanout at RATE/s)
#   MODE is fanout, rooms or connect, e.g.
#        cmd/loadgen/compare.sh fanout -conns 5000 -rate 10
#        cmd/loadgen/compare.sh rooms -conns 5000 -rooms 500 -rate 2000 -churn 100
#        cmd/loadgen/compare.sh connect -conns 5000 -rounds 5
#
# Builds ./app and ./cmd/loadgen (or uses BIN_DIR's groupcast and loadgen),
# then for each target: waits until the machine is quiet, starts the server
# pinned to core 0 (groupcast on :8080 with the embedded NATS, then loadgen
# serve-nats-ws on :8090), runs loadgen pinned to core 1 against it with
# -pid, and stops it. A run in which other processes used more than
# NOISE_PCT % (default 3) of the server's CPU is repeated, up to RETRIES
# (default 3) times. Prints both summaries and the ratio of server CPU per
# delivery (connect: per connect-and-join) and of RSS per idle connection.
#
# Environment: OUT=dir keeps the JSON and summaries there; PLOT=1 writes
# <target>-<mode>.svg into OUT; PROFILE=1 starts groupcast with
# PPROF_ADDR=127.0.0.1:6060 and writes groupcast-<mode>.cpu.pprof (connect:
# the storms of rounds 2.., merged; fanout and rooms also .heap.pprof, the
# idle connections) into OUT (profiled runs are slower: do not take their
# figures); TARGETS="groupcast nats-ws" picks the targets.
# Needs 2 cores, taskset, curl, and ports 8080, 8090 (and 6060) free.
set -euo pipefail

mode=fanout
case ${1:-} in
fanout | rooms | connect) mode=$1; shift ;;
[0-9]*) set -- -rate "$1" "${@:2}" ;;
esac
root=$(cd "$(dirname "$0")/../.." && pwd)
tmp=$(mktemp -d)
out=${OUT:-$tmp}
mkdir -p "$out"
server_pid=""

cleanup() {
	if [[ -n $server_pid ]] && kill -0 "$server_pid" 2>/dev/null; then
		kill -TERM "$server_pid" 2>/dev/null || true
		wait "$server_pid" 2>/dev/null || true
	fi
	rm -rf "$tmp"
}
trap cleanup EXIT

# shellcheck source=cmd/loadgen/lib.sh
. "$(dirname "$0")/lib.sh"

cd "$root"
bin=$(build_bins "$tmp")

# run_target TARGET: one measurement of TARGET, retried while noisy.
run_target() {
	local target=$1 attempt extra=()
	for attempt in $(seq "${RETRIES:-3}"); do
		wait_quiet
		echo "== $target $mode (core 0), attempt $attempt: ${*:2}" >&2
		extra=()
		if [[ -n ${PLOT:-} ]]; then extra+=(-plot "$out/$target-$mode.svg"); fi
		if [[ $target == groupcast ]]; then
			local envs=(PORT=8080)
			if [[ -n ${PROFILE:-} ]]; then
				envs+=(PPROF_ADDR=127.0.0.1:6060)
				extra+=(-pprof http://127.0.0.1:6060 -cpu-profile "$out/groupcast-$mode.cpu.pprof")
				if [[ $mode != connect ]]; then extra+=(-heap-profile "$out/groupcast-$mode.heap.pprof"); fi
			fi
			env -u NATS_URL -u API_KEY "${envs[@]}" taskset -c 0 "$bin/groupcast" 2>"$out/groupcast.log" &
			server_pid=$!
			wait_http http://127.0.0.1:8080/readyz
			taskset -c 1 "$bin/loadgen" "$mode" -target groupcast -url ws://127.0.0.1:8080/ws \
				-api http://127.0.0.1:8080 -pid "$server_pid" -json -quiet "${extra[@]}" "${@:2}" \
				>"$out/$target.json" 2>"$out/$target.txt" || { cat "$out/$target.txt" >&2; exit 1; }
		else
			taskset -c 0 "$bin/loadgen" serve-nats-ws -addr 127.0.0.1:8090 >/dev/null &
			server_pid=$!
			wait_tcp 8090
			taskset -c 1 "$bin/loadgen" "$mode" -target nats-ws -url ws://127.0.0.1:8090 \
				-pid "$server_pid" -json -quiet "${extra[@]}" "${@:2}" \
				>"$out/$target.json" 2>"$out/$target.txt" || { cat "$out/$target.txt" >&2; exit 1; }
		fi
		stop_server
		if [[ $target == groupcast && -n ${PROFILE:-} && $mode == connect ]]; then
			go tool pprof -proto "$out/groupcast-connect.cpu.pprof".round* >"$out/groupcast-connect.cpu.pprof" 2>/dev/null &&
				rm -f "$out/groupcast-connect.cpu.pprof".round*
		fi
		if ! noisy "$out/$target.json"; then return 0; fi
		echo "   noisy: other processes used $(field other_cpu_s "$out/$target.json")s of CPU; again" >&2
	done
	echo "warning: $target stayed noisy after ${RETRIES:-3} attempts" >&2
}

targets=${TARGETS:-groupcast nats-ws}
for t in $targets; do run_target "$t" "$@"; done

for t in $targets; do
	echo "--- $t"
	cat "$out/$t.txt"
done
echo "--- json"
for t in $targets; do cat "$out/$t.json"; done
if [[ $targets == "groupcast nats-ws" ]]; then
	echo "---"
	if [[ $mode == connect ]]; then
		g=$(field server_us_per_connect "$out/groupcast.json")
		n=$(field server_us_per_connect "$out/nats-ws.json")
		gc=$(field cold_us_per_connect "$out/groupcast.json")
		nc=$(field cold_us_per_connect "$out/nats-ws.json")
		awk -v g="$g" -v n="$n" -v gc="$gc" -v nc="$nc" 'BEGIN {
			printf "server CPU per connect-and-join (warm median): groupcast %.1f µs, nats-ws %.1f µs, ratio %.2f\n", g, n, (n > 0 ? g / n : 0)
			printf "server CPU per connect-and-join (cold, round 1): groupcast %.1f µs, nats-ws %.1f µs, ratio %.2f\n", gc, nc, (nc > 0 ? gc / nc : 0)
		}'
	else
		g=$(field server_us_per_delivery "$out/groupcast.json")
		n=$(field server_us_per_delivery "$out/nats-ws.json")
		awk -v g="$g" -v n="$n" 'BEGIN {
			printf "server CPU per delivery: groupcast %.2f µs, nats-ws %.2f µs, ratio %.2f\n", g, n, (n > 0 ? g / n : 0)
		}'
	fi
	gk=$(field server_kib_per_conn "$out/groupcast.json")
	nk=$(field server_kib_per_conn "$out/nats-ws.json")
	awk -v gk="$gk" -v nk="$nk" 'BEGIN {
		printf "RSS per idle connection: groupcast %.1f KiB, nats-ws %.1f KiB, ratio %.2f\n", gk, nk, (nk > 0 ? gk / nk : 0)
	}'
fi
