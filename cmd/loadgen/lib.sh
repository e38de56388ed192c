# lib.sh — shell functions compare.sh and multi.sh share; source it.
# They use $server_pid (the server being measured) and $mode.

# stop_server: stop $server_pid and wait for it.
stop_server() {
	stop_pid "$server_pid"
	server_pid=""
	sleep 1
}

# stop_pid PID: SIGTERM, and wait.
stop_pid() {
	kill -TERM "$1" 2>/dev/null || true
	wait "$1" 2>/dev/null || true
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

# wait_quiet: wait (QUIET_WAIT seconds at most, default 300) until the machine
# has been under 5 % busy for 3 s, so other work does not skew the figures.
wait_quiet() {
	local deadline=$((SECONDS + ${QUIET_WAIT:-300})) a b
	while :; do
		a=$(busy_ticks); sleep 3; b=$(busy_ticks)
		# 3 s of 2 cores at 100 Hz is 600 ticks; 5 % of that is 30.
		if ((b - a < 30)); then return 0; fi
		if ((SECONDS >= deadline)); then
			echo "warning: the machine is busy ($((b - a)) ticks in 3 s); figures will be noisy" >&2
			return 0
		fi
	done
}

# field NAME FILE: a number from the JSON line loadgen printed.
field() { grep -o "\"$1\":[-0-9.e+]*" "$2" | head -1 | cut -d: -f2; }

# noisy FILE: whether other processes used more than NOISE_PCT % of the
# server's CPU during the measurement.
noisy() {
	local other srv
	other=$(field other_cpu_s "$1")
	if [[ $mode == connect ]]; then
		srv=$(grep -o '"server_cpu_s":[-0-9.e+]*' "$1" | cut -d: -f2 | awk '{ s += $1 } END { print s + 0 }')
	else
		srv=$(field server_cpu_s "$1")
	fi
	awk -v o="$other" -v s="$srv" -v p="${NOISE_PCT:-3}" 'BEGIN { exit !(o > 0.02 && o > s * p / 100) }'
}


# build_bins DIR: prints the directory holding groupcast and loadgen:
# $BIN_DIR when set, else DIR after building both into it (run from the
# repository root).
build_bins() {
	if [[ -n ${BIN_DIR:-} ]]; then
		echo "$BIN_DIR"
		return
	fi
	echo "building ./app and ./cmd/loadgen" >&2
	go build -o "$1/groupcast" ./app
	go build -o "$1/loadgen" ./cmd/loadgen
	echo "$1"
}
