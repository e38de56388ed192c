#!/usr/bin/env bash
# compare.sh — groupcast against nats-server's own WebSocket listener (the
# no-application-layer reference), the floor (loadgen serve-floor: one
# write(2) per delivery and nothing else, the limit) and, when asked, the
# seed system (Django Channels), same load, one server at a time.
#
# usage: cmd/loadgen/compare.sh MODE [more loadgen MODE flags...]
#        cmd/loadgen/compare.sh RATE [more loadgen fanout flags...]   (fanout at RATE/s)
#   MODE is fanout, rooms or connect, e.g.
#        cmd/loadgen/compare.sh fanout -conns 5000 -rate 10
#        cmd/loadgen/compare.sh rooms -conns 5000 -rooms 500 -rate 2000 -churn 100
#        cmd/loadgen/compare.sh connect -conns 5000 -rounds 5
#        TARGETS="groupcast floor channels" cmd/loadgen/compare.sh fanout -conns 1000 -rate 5
#
# Builds ./app and ./cmd/loadgen (or uses BIN_DIR's groupcast and loadgen),
# then for each target: waits until the machine is quiet, starts the server
# pinned to core 0, runs loadgen pinned to core 1 against it with -pid, and
# stops it. The targets:
#   groupcast  ./app on :8080 with the embedded NATS;
#   nats-ws    loadgen serve-nats-ws on :8090;
#   floor      loadgen serve-floor on :8091;
#   channels   redis-server on :8093 and daphne serving cmd/loadgen/seed on
#              :8092 (access log off), both on core 0, redis-server's CPU and
#              RSS counted with daphne's (-with-pid). Debian's python3-daphne,
#              python3-channels-redis and redis-server are installed with
#              apt-get when missing; PYTHON (default /usr/bin/python3) runs it.
# A run in which other processes used more than NOISE_PCT % (default 3) of
# the server's CPU is repeated, up to RETRIES (default 3) times. Prints the
# summaries; groupcast's ratio to nats-ws of server CPU per delivery
# (connect: per connect-and-join) and of RSS per idle connection; and each
# target's figures as multiples of the floor's.
#
# Environment: OUT=dir keeps the JSON and summaries there; PLOT=1 writes
# <target>-<mode>.svg into OUT; PROFILE=1 starts groupcast with
# PPROF_ADDR=127.0.0.1:6060 and writes groupcast-<mode>.cpu.pprof (connect:
# the storms of rounds 2.., merged; fanout and rooms also .heap.pprof, the
# idle connections) into OUT (profiled runs are slower: do not take their
# figures); TARGETS (default "groupcast nats-ws floor") picks the targets.
# Needs 2 cores, taskset, curl, and the targets' ports (and 6060) free.
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
python=${PYTHON:-/usr/bin/python3}
server_pid=""
redis_pid=""

cleanup() {
	for p in "$server_pid" "$redis_pid"; do
		if [[ -n $p ]] && kill -0 "$p" 2>/dev/null; then
			kill -TERM "$p" 2>/dev/null || true
			wait "$p" 2>/dev/null || true
		fi
	done
	rm -rf "$tmp"
}
trap cleanup EXIT

# shellcheck source=cmd/loadgen/lib.sh
. "$(dirname "$0")/lib.sh"

# need_channels: installs Debian's daphne, channels_redis and redis-server
# when they are missing.
need_channels() {
	if command -v redis-server >/dev/null && "$python" -c 'import daphne, channels, channels_redis' 2>/dev/null; then
		return 0
	fi
	echo "installing python3-daphne python3-channels-redis redis-server (the seed system)" >&2
	local sudo=()
	if ((EUID != 0)); then sudo=(sudo); fi
	"${sudo[@]}" apt-get update -qq >&2
	DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq python3-daphne python3-channels-redis redis-server >&2
}

# start_target TARGET: starts TARGET's server (and helpers) pinned to core 0,
# waits until it is ready and sets target_args to the loadgen flags that
# reach it.
start_target() {
	case $1 in
	groupcast)
		local envs=(PORT=8080)
		if [[ -n ${PROFILE:-} ]]; then envs+=(PPROF_ADDR=127.0.0.1:6060); fi
		env -u NATS_URL -u API_KEY "${envs[@]}" taskset -c 0 "$bin/groupcast" 2>"$out/groupcast.log" &
		server_pid=$!
		wait_http http://127.0.0.1:8080/readyz
		target_args=(-url ws://127.0.0.1:8080/ws -api http://127.0.0.1:8080)
		;;
	nats-ws)
		taskset -c 0 "$bin/loadgen" serve-nats-ws -addr 127.0.0.1:8090 >/dev/null &
		server_pid=$!
		wait_tcp 8090
		target_args=(-url ws://127.0.0.1:8090)
		;;
	floor)
		taskset -c 0 "$bin/loadgen" serve-floor -addr 127.0.0.1:8091 >/dev/null &
		server_pid=$!
		wait_http http://127.0.0.1:8091/readyz
		target_args=(-url ws://127.0.0.1:8091/ws -api http://127.0.0.1:8091)
		;;
	channels)
		taskset -c 0 redis-server --port 8093 --bind 127.0.0.1 --save "" --appendonly no >"$out/redis.log" 2>&1 &
		redis_pid=$!
		server_pid=$redis_pid
		wait_tcp 8093
		PYTHONPATH="$root/cmd/loadgen/seed" REDIS_URL=redis://127.0.0.1:8093/0 \
			taskset -c 0 "$python" -m daphne -v 0 -b 127.0.0.1 -p 8092 seedsite:application >"$out/channels.log" 2>&1 &
		server_pid=$!
		wait_http http://127.0.0.1:8092/readyz
		target_args=(-url ws://127.0.0.1:8092/ws -api http://127.0.0.1:8092 -with-pid "$redis_pid")
		;;
	*)
		echo "unknown target $1 (groupcast, nats-ws, floor, channels)" >&2
		exit 2
		;;
	esac
}

cd "$root"
targets=${TARGETS:-groupcast nats-ws floor}
if [[ " $targets " == *" channels "* ]]; then need_channels; fi
bin=$(build_bins "$tmp")

# run_target TARGET: one measurement of TARGET, retried while noisy.
run_target() {
	local target=$1 attempt extra=() target_args=()
	for attempt in $(seq "${RETRIES:-3}"); do
		wait_quiet
		echo "== $target $mode (core 0), attempt $attempt: ${*:2}" >&2
		extra=()
		if [[ -n ${PLOT:-} ]]; then extra+=(-plot "$out/$target-$mode.svg"); fi
		if [[ $target == groupcast && -n ${PROFILE:-} ]]; then
			extra+=(-pprof http://127.0.0.1:6060 -cpu-profile "$out/groupcast-$mode.cpu.pprof")
			if [[ $mode != connect ]]; then extra+=(-heap-profile "$out/groupcast-$mode.heap.pprof"); fi
		fi
		start_target "$target"
		taskset -c 1 "$bin/loadgen" "$mode" -target "$target" "${target_args[@]}" \
			-pid "$server_pid" -json -quiet "${extra[@]}" "${@:2}" \
			>"$out/$target.json" 2>"$out/$target.txt" || { cat "$out/$target.txt" >&2; exit 1; }
		stop_server
		if [[ -n $redis_pid ]]; then
			stop_pid "$redis_pid"
			redis_pid=""
		fi
		if [[ $target == groupcast && -n ${PROFILE:-} && $mode == connect ]]; then
			go tool pprof -proto "$out/groupcast-connect.cpu.pprof".round* >"$out/groupcast-connect.cpu.pprof" 2>/dev/null &&
				rm -f "$out/groupcast-connect.cpu.pprof".round*
		fi
		if ! noisy "$out/$target.json"; then return 0; fi
		echo "   noisy: other processes used $(field other_cpu_s "$out/$target.json")s of CPU; again" >&2
	done
	echo "warning: $target stayed noisy after ${RETRIES:-3} attempts" >&2
}

for t in $targets; do run_target "$t" "$@"; done

for t in $targets; do
	echo "--- $t"
	cat "$out/$t.txt"
done
echo "--- json"
for t in $targets; do cat "$out/$t.json"; done
has() { [[ " $targets " == *" $1 "* ]]; }
if has groupcast && has nats-ws; then
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
if has floor; then
	metric=server_us_per_delivery what="server CPU per delivery"
	if [[ $mode == connect ]]; then metric=server_us_per_connect what="server CPU per connect-and-join (warm median)"; fi
	echo "--- against the floor: $what; RSS per idle connection"
	f=$(field "$metric" "$out/floor.json")
	fk=$(field server_kib_per_conn "$out/floor.json")
	for t in $targets; do
		awk -v t="$t" -v v="$(field "$metric" "$out/$t.json")" -v f="$f" \
			-v k="$(field server_kib_per_conn "$out/$t.json")" -v fk="$fk" 'BEGIN {
			printf "%-10s %9.2f µs, %6.2fx the floor; %7.1f KiB, %6.2fx the floor\n", t, v, (f > 0 ? v / f : 0), k, (fk > 0 ? k / fk : 0)
		}'
	done
fi
