#!/usr/bin/env bash
# multi.sh — groupcast instances behind one external NATS: one instance,
# then two, same load, to show what a second instance costs each and that
# each message crosses NATS once per instance.
#
# usage: cmd/loadgen/multi.sh [fanout|rooms] [more loadgen flags...]
#   e.g. cmd/loadgen/multi.sh fanout -conns 5000 -rate 10
#
# Builds ./app and ./cmd/loadgen (or uses BIN_DIR's), starts loadgen
# serve-nats (NATS on 127.0.0.1:4222, monitoring on :8222) pinned to core 0,
# then, each run retried while noisy (see compare.sh):
#   one: groupcast on :8080 with NATS_URL, core 0; loadgen on core 1;
#   two: groupcast on :8080 and :8081 with NATS_URL, both on core 0; the
#        connections are spread over both, publishes go through each in turn.
# Prints both summaries, each instance's server CPU per delivery against the
# single instance's, and the NATS messages out per publish (2 with two
# instances: once per instance). OUT=dir keeps the results.
set -euo pipefail

mode=fanout
case ${1:-} in
fanout | rooms) mode=$1; shift ;;
esac
root=$(cd "$(dirname "$0")/../.." && pwd)
tmp=$(mktemp -d)
out=${OUT:-$tmp}
mkdir -p "$out"
server_pid=""
nats_pid=""
pids=()

cleanup() {
	for p in "${pids[@]}" "$nats_pid"; do
		if [[ -n $p ]] && kill -0 "$p" 2>/dev/null; then stop_pid "$p"; fi
	done
	rm -rf "$tmp"
}
trap cleanup EXIT

# shellcheck source=cmd/loadgen/lib.sh
. "$(dirname "$0")/lib.sh"

cd "$root"
bin=$(build_bins "$tmp")

taskset -c 0 "$bin/loadgen" serve-nats -addr 127.0.0.1:4222 -http 127.0.0.1:8222 >/dev/null &
nats_pid=$!
server_pid=$nats_pid
wait_tcp 4222

# run NAME N [flags]: N instances (1 or 2), one measurement, retried while noisy.
run() {
	local name=$1 n=$2 attempt i args
	shift 2
	for attempt in $(seq "${RETRIES:-3}"); do
		wait_quiet
		echo "== $name: $n instance(s), attempt $attempt" >&2
		pids=()
		args=()
		for ((i = 0; i < n; i++)); do
			env -u API_KEY PORT=$((8080 + i)) NATS_URL=nats://127.0.0.1:4222 NODE_ID="gc$i" \
				taskset -c 0 "$bin/groupcast" 2>"$out/$name-$i.log" &
			pids+=($!)
			server_pid=$!
			wait_http "http://127.0.0.1:$((8080 + i))/readyz"
			args+=(-url "ws://127.0.0.1:$((8080 + i))/ws" -api "http://127.0.0.1:$((8080 + i))" -pid "$server_pid")
		done
		taskset -c 1 "$bin/loadgen" "$mode" -target groupcast "${args[@]}" -broker-pid "$nats_pid" \
			-nats-monitor http://127.0.0.1:8222 -json -quiet "$@" \
			>"$out/$name.json" 2>"$out/$name.txt" || { cat "$out/$name.txt" >&2; exit 1; }
		for p in "${pids[@]}"; do stop_pid "$p"; done
		pids=()
		sleep 1
		if ! noisy "$out/$name.json"; then return 0; fi
		echo "   noisy: other processes used $(field other_cpu_s "$out/$name.json")s of CPU; again" >&2
	done
	echo "warning: $name stayed noisy after ${RETRIES:-3} attempts" >&2
}

run one 1 "$@"
run two 2 "$@"
stop_pid "$nats_pid"
nats_pid=""

for name in one two; do
	echo "--- $name"
	cat "$out/$name.txt"
done
echo "--- json"
cat "$out/one.json" "$out/two.json"
echo "---"
one=$(field server_us_per_delivery "$out/one.json")
grep -o '"us_per_delivery":[-0-9.e+]*' "$out/two.json" | cut -d: -f2 | awk -v one="$one" '{
	printf "instance %d of two: %.2f µs/delivery, %.2fx the single instance (%.2f µs)\n", NR - 1, $1, (one > 0 ? $1 / one : 0), one
}'
awk -v a="$(field nats_out_per_publish "$out/one.json")" -v b="$(field nats_out_per_publish "$out/two.json")" 'BEGIN {
	printf "NATS messages out per publish: one instance %.2f, two instances %.2f\n", a, b
}'
