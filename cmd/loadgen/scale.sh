#!/usr/bin/env bash
# scale.sh — cost against connections, groups and message size, side by side
# with the floor: runs compare.sh over a grid of points at one fixed delivery
# rate, collects every run's JSON summary into one file and makes the
# README's scale table and plot from it (loadgen scale-report).
#
# usage: cmd/loadgen/scale.sh [more loadgen flags for every point...]
#
# The grid (each list overridable through the environment; an empty list
# leaves its points out):
#   fanout: one group of each of FANOUT_CONNS (default "5000 18000")
#           connections, with payloads of each of SIZES bytes (default
#           "64 1024 16384");
#   rooms:  each of ROOMS_CONNS (default "5000 15000 18000") connections in
#           groups of ROOM_SIZE (default 3), so conns/ROOM_SIZE groups (1,666,
#           5,000 and 6,000 groups of 3), with payloads of ROOM_PAYLOADS
#           bytes (default "64"), CHURN visits a second (default 0: the
#           figure is the delivery's alone).
# Every point publishes for DURATION seconds (default 20) at DELIVERIES
# deliveries a second (default 10000): -rate is DELIVERIES/conns for one
# group and DELIVERIES*groups/conns in rooms, so every point does the same
# work a second and the figures differ only by what the point changes.
# 10,000/s keeps every process well under its core at 16 KiB: the servers
# spend 12-21 µs per 16 KiB delivery (a fifth of the core), and the loader,
# which reads and checks every delivery on the other core, 50-75 µs (over
# half of it; at 20,000/s it would be the bottleneck). A saturated process
# falls behind the schedule and a saturated server batches writes, so its
# CPU per delivery would no longer be the same load's (scale-report flags
# such points). Rooms in groups of 3 then take 3,333 publishes/s, a request
# each. Rooms runs keep the loader's per-connection bitsets under 256 MiB, so
# at 18,000 connections DURATION is cut to what fits (35 s at 10,000/s).
#
# Descriptors: each connection is one descriptor in the server and one in the
# loader, which both raise their soft limit to the hard one; a point needs
# conns + 500 under `ulimit -Hn` (20,000 here: 18,000 connections fit in one
# loader, and splitting the loader would not help the server, which holds
# as many), and groupcast runs with MAX_CONNECTIONS=conns+500 (its default
# is 10,000) unless MAX_CONNECTIONS is set. Every point dials from SOURCE_IPS loopback addresses (default 8,
# 127.0.0.1-8) so that the ports left in TIME_WAIT by the previous run do
# not run out.
#
# Environment: TARGETS (default "groupcast floor"; add nats-ws) picks
# compare.sh's targets; OUT=dir (default /tmp/groupcast-scale-<time>) gets one
# directory per point (compare.sh's OUT: <target>.json, <target>.txt,
# compare.txt), results.jsonl (every summary, grid order), table.md and
# scale.svg; DRY_RUN=1 prints each point's compare.sh command and runs
# nothing. compare.sh's BIN_DIR, RETRIES, NOISE_PCT, QUIET_WAIT and PLOT pass
# through. A point that fails is reported and the grid goes on; the exit
# status is then 1.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out=${OUT:-/tmp/groupcast-scale-$(date +%Y%m%d-%H%M%S)}
targets=${TARGETS:-groupcast floor}
deliveries=${DELIVERIES:-10000}
duration=${DURATION:-20}
source_ips=${SOURCE_IPS:-8}
room_size=${ROOM_SIZE:-3}
churn=${CHURN:-0}
max_bitsets=$((256 << 20)) # fanout.go's maxBitsetBytes
fd_headroom=500

for v in "$deliveries" "$duration" "$source_ips" "$room_size"; do
	if ! [[ $v =~ ^[1-9][0-9]*$ ]]; then
		echo "scale.sh: DELIVERIES, DURATION, SOURCE_IPS and ROOM_SIZE must be positive integers, got \"$v\"" >&2
		exit 2
	fi
done

fd_limit=$(ulimit -Hn)
# check_fds CONNS: whether one server and one loader can hold CONNS connections.
check_fds() {
	if [[ $fd_limit != unlimited ]] && (($1 + fd_headroom > fd_limit)); then
		echo "scale.sh: $1 connections need about $(($1 + fd_headroom)) descriptors per process; the hard limit is $fd_limit (ulimit -Hn)" >&2
		exit 2
	fi
}

# points: "name mode conns groups size rate duration", grid order.
points=()
for size in ${SIZES-64 1024 16384}; do
	for conns in ${FANOUT_CONNS-5000 18000}; do
		check_fds "$conns"
		rate=$(awk -v d="$deliveries" -v c="$conns" 'BEGIN { printf "%.6g", d / c }')
		points+=("fanout-s$size-c$conns fanout $conns 1 $size $rate $duration")
	done
done
for size in ${ROOM_PAYLOADS-64}; do
	for conns in ${ROOMS_CONNS-5000 15000 18000}; do
		check_fds "$conns"
		groups=$((conns / room_size))
		if ((groups < 1)); then
			echo "scale.sh: $conns connections make no group of $room_size" >&2
			exit 2
		fi
		rate=$(awk -v d="$deliveries" -v g="$groups" -v c="$conns" 'BEGIN { printf "%.6g", d * g / c }')
		# loadgen keeps conns bitsets of one bit per publish (and a spare word).
		dur=$(awk -v d="$duration" -v r="$rate" -v c="$conns" -v m="$max_bitsets" 'BEGIN {
			words = int(m / (8 * c)) - 2; fit = int(words * 64 / r)
			print (d < fit ? d : fit) }')
		if ((dur < 1)); then
			echo "scale.sh: rooms of $conns connections at $rate publishes/s do not fit loadgen's bitsets" >&2
			exit 2
		fi
		if ((dur < duration)); then
			echo "note: rooms at $conns connections publish for ${dur}s, not ${duration}s (loadgen's bitsets)" >&2
		fi
		points+=("rooms-s$size-c$conns-g$room_size rooms $conns $groups $size $rate $dur")
	done
done

# point_args MODE CONNS GROUPS SIZE RATE DURATION: compare.sh's arguments.
point_args() {
	args=("$1" -conns "$2" -size "$4" -rate "$5" -duration "${6}s" -source-ips "$source_ips")
	if [[ $1 == rooms ]]; then args+=(-rooms "$3" -churn "$churn"); fi
}

if [[ -n ${DRY_RUN:-} ]]; then
	for p in "${points[@]}"; do
		read -r name mode conns groups size rate dur <<<"$p"
		point_args "$mode" "$conns" "$groups" "$size" "$rate" "$dur"
		echo "TARGETS=\"$targets\" MAX_CONNECTIONS=${MAX_CONNECTIONS:-$((conns + fd_headroom))} OUT=$out/$name $here/compare.sh ${args[*]} $*"
	done
	exit 0
fi

mkdir -p "$out"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# shellcheck source=cmd/loadgen/lib.sh
. "$here/lib.sh"
cd "$root"
BIN_DIR=$(build_bins "$tmp")
export BIN_DIR

start=$SECONDS
failed=()
i=0
for p in "${points[@]}"; do
	i=$((i + 1))
	read -r name mode conns groups size rate dur <<<"$p"
	point_args "$mode" "$conns" "$groups" "$size" "$rate" "$dur"
	echo "=== point $i/${#points[@]} $name: ${args[*]} $* ($((SECONDS - start))s so far)" >&2
	mkdir -p "$out/$name"
	if ! TARGETS="$targets" MAX_CONNECTIONS="${MAX_CONNECTIONS:-$((conns + fd_headroom))}" OUT="$out/$name" "$here/compare.sh" "${args[@]}" "$@" >"$out/$name/compare.txt"; then
		echo "warning: point $name failed; see $out/$name" >&2
		failed+=("$name")
		continue
	fi
	sed -n '/^--- against the floor/,$p' "$out/$name/compare.txt" >&2
done

: >"$out/results.jsonl"
for p in "${points[@]}"; do
	read -r name _ <<<"$p"
	for t in $targets; do
		if [[ -s $out/$name/$t.json ]]; then cat "$out/$name/$t.json" >>"$out/results.jsonl"; fi
	done
done
if [[ -s $out/results.jsonl ]]; then
	"$BIN_DIR/loadgen" scale-report -in "$out/results.jsonl" -svg "$out/scale.svg" >"$out/table.md"
	cat "$out/table.md"
fi
echo "grid of ${#points[@]} points in $((SECONDS - start))s; results in $out (results.jsonl, table.md, scale.svg)" >&2
if ((${#failed[@]} > 0)); then
	echo "failed points: ${failed[*]}" >&2
	exit 1
fi
