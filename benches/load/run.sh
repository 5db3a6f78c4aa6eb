#!/usr/bin/env bash
# Load benchmark of wechat-fanout (issue "Measured speed"); not part of `cargo test`.
#
#   bash benches/load/run.sh              # every scenario, 3 runs of 10 s each (~20 min)
#   QUICK=1 bash benches/load/run.sh      # smoke run: 1 run of 3 s each, small safe-mode pool
#   BACKLOG=1 bash benches/load/run.sh    # adds the 1,000,000-callback backlog (memory) scenario
#   SCENARIOS="fast down" bash benches/load/run.sh   # a subset of: bare nginx fast fast-h2 fast-pipe events
#                                     #   slow down safe rate redis-always redis-everysec redis-two redis-rate
#                                     #   redis-rate-everysec redis-min1-rate redis-lanes redis-lanes-rate
#                                     #   redis-replica redis-min1 (a name may repeat: ABBA orders)
#   BACKLOG=1 SCENARIOS= bash benches/load/run.sh    # the backlog scenario alone
#   CORES=2 bash benches/load/run.sh      # two-core mode: the proxy gets both cores (see below)
#
# It installs what the chosen scenarios lack (wrk, curl, jq; nginx-light and
# libnginx-mod-http-echo for nginx; redis-server for the Redis ones; apt-get, as root), builds
# the release binary and the helpers (examples load-sink, load-bare, load-gen), then runs each
# scenario with the server side (proxy or reference, both sinks, and redis-server) pinned to
# core 0 and the load generator to core 1 (when there are two cores), all on 127.0.0.1. CORES=2
# (the two-core mode) gives the server two cores instead: on a machine with exactly two, nothing
# is pinned and the server (proxy or reference), redis-server, both sinks and the load generator
# (wrk, load-gen) all share cores 0 and 1, so the proxy gets what the others leave; on a larger
# machine the server and redis-server are pinned to cores 0-1, the sinks and the load generator
# to cores 2 and up. The report's header line names the layout used. Either mode reports per
# scenario the server's CPU in cores (its CPU seconds over the load's wall seconds), callbacks/s
# per proxy core (accepted callbacks per CPU second of the proxy: comparable between the modes),
# and the proxy's CPU per callback by thread (/proc/PID/task/*/stat: the SQLite store-writer
# thread, tokio's threads, the rest). fast-h2 is fast with `http2 = true` on both targets (h2c,
# HTTP/2 with prior knowledge; the sinks take HTTP/1.1 and h2c on one port), fast-pipe with
# `pipelining = true` on both (HTTP/1.1 pipelining), each checked with `wechat-fanout
# check-config` before any run. events is fast-pipe with events that carry no MsgId (CLICK, a
# distinct EventKey each), which the proxy keys by a digest of the whole message.
# Runs alternate between scenarios (run 1 of each, then run 2 of each…), so that a noisy stretch of a
# shared machine hits every scenario alike. Every run gets a fresh store (SQLite file, or a
# redis-server of its own in the run's folder) and fresh sinks; after the load the script waits
# (bounded) until both sinks hold every accepted callback, checks that each delivery was
# byte-identical, and reads the RSS of each proxy and of redis-server from /proc. It prints a markdown table (also written to $OUT/report.md, raw runs in
# $OUT/runs.jsonl). Knobs (environment): DURATION (s), RUNS, CONNS (wrk connections), RATE
# (latency scenario, callbacks/s), SAFE_POOL (distinct encrypted callbacks), LOG_FILTER (proxy
# log filter, default "warn": at "info" it logs a line per callback and per delivery), SYNC
# (store.synchronous, default "full"), DRAIN_TIMEOUT (s), PORT_BASE, PERF=1 (perf profile of the
# proxy during the first fast and fast-h2 runs, and of the proxy and redis-server during the first
# redis-always run; PERF_GRAPH="--call-graph dwarf" for call stacks through code without frame
# pointers, PERF_FREQ its sampling rate), OUT (results folder), KEEP=1 (keep the temp folder), ALT_BIN (another
# wechat-fanout binary, for an A/B in one run: a scenario named alt-<scenario>, e.g.
# alt-redis-always, runs <scenario> with it; ALT_LABEL names it in the report), MAIN_BIN (the
# binary of the other scenarios, instead of the one built from this checkout).
#
# Redis scenarios (installs Debian's redis-server when missing): one instance on a standalone
# redis-server with AOF and `appendfsync always` (redis-always) or `everysec` (redis-everysec);
# two instances sharing one redis-server (always), each with the same two targets (redis-two);
# the fixed rate on one instance (redis-rate; redis-rate-everysec with `everysec`: the moderate
# load Redis's cost per callback is judged at, small batches). For redis-two the load is two wrk processes, one
# per instance, with CONNS/2 connections each and disjoint callback numbers; their rates add up.
# (Not nginx as a round-robin balancer in front: it would run on the server core and take a
# share of it that neither proxy needs, so the two-instance figure would measure nginx too.)
# redis-replica and redis-min1: redis-always with a replica on the same machine (its own
# redis-server, AOF always too, with the server), `store.redis.min_replicas` 0 and 1: what waiting
# for the replica's acknowledgement (WAIT) costs. A replica on another machine adds one network
# round trip per WAIT on top; redis-min1-rate: redis-min1 at the fixed rate (its p99 answer).
# redis-lanes and redis-lanes-rate: redis-everysec and redis-rate-everysec with both targets
# `order = "per_user"` (each sender's callbacks delivered one at a time, in order: a lane per
# sender and target; the corpus has 1,000 senders), what lanes cost Redis.
# Redis's CPU in the report is the primary's alone.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
HERE=$ROOT/benches/load
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release
QUICK=${QUICK:-0}
if [[ $QUICK == 1 ]]; then
    DURATION=${DURATION:-3}
    RUNS=${RUNS:-1}
    SAFE_POOL=${SAFE_POOL:-60000}
else
    DURATION=${DURATION:-10}
    RUNS=${RUNS:-3}
    SAFE_POOL=${SAFE_POOL:-$((25000 * DURATION))}
fi
CONNS=${CONNS:-64}
RATE=${RATE:-2000}
SCENARIOS=${SCENARIOS-bare nginx fast slow down safe rate redis-always redis-everysec redis-two redis-rate}
BACKLOG=${BACKLOG:-0}
BACKLOG_TARGET=${BACKLOG_TARGET:-1000000}
BACKLOG_CHUNK=${BACKLOG_CHUNK:-10}
LOG_FILTER=${LOG_FILTER:-warn}
SYNC=${SYNC:-full}
DRAIN_TIMEOUT=${DRAIN_TIMEOUT:-180}
PORT_BASE=${PORT_BASE:-17100}
PERF=${PERF:-0}
PERF_FREQ=${PERF_FREQ:-999}
PERF_GRAPH=${PERF_GRAPH:--g}
ALT_BIN=${ALT_BIN:-}
MAIN_BIN=${MAIN_BIN:-}
ALT_LABEL=${ALT_LABEL:-ALT_BIN}
KEEP=${KEEP:-0}
CORES=${CORES:-1}
SLOW_MS=2000

P_BARE=$PORT_BASE
P_NGINX=$((PORT_BASE + 1))
P_PROXY=$((PORT_BASE + 2))
P_ADMIN=$((PORT_BASE + 3))
P_SINK_A=$((PORT_BASE + 4))
P_SINK_B=$((PORT_BASE + 5))
P_PROXY2=$((PORT_BASE + 6))
P_ADMIN2=$((PORT_BASE + 7))
P_REDIS=$((PORT_BASE + 8))
P_REPLICA=$((PORT_BASE + 9))
ECHO_MODULE=/usr/lib/nginx/modules/ngx_http_echo_module.so
# Bench-only credentials; the same as benches/load/corpus.rs.
TOKEN=fanoutLoadBench2024
APP_ID=wx5823bf96d3bd56c7
AES_KEY=jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C

WORK=$(mktemp -d "${TMPDIR:-/tmp}/wechat-fanout-load.XXXXXX")
chmod 755 "$WORK" # nginx's worker (nobody) must reach its folder
OUT=${OUT:-$WORK/results}
mkdir -p "$OUT"
RESULTS=$OUT/runs.jsonl
: >"$RESULTS"

log() { printf '[load %s] %s\n' "$(date +%T)" "$*" >&2; }

# --- processes: every one we start is recorded by name and stopped by its pid -------------------
declare -A PIDS=()

stop() {
    local name=$1 pid=${PIDS[$1]:-}
    [[ -n $pid ]] || return 0
    unset "PIDS[$name]"
    kill -TERM "$pid" 2>/dev/null || return 0
    for _ in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    local status=$? name
    for name in "${!PIDS[@]}"; do stop "$name"; done
    if [[ $KEEP == 1 || $status != 0 ]]; then
        # A failed run keeps its logs (runs/*/proxy.log, sink-*.log, nginx/error.log).
        log "kept $WORK"
    else
        # Results stay when OUT is outside the temp folder.
        rm -rf "$WORK/runs" "$WORK"/*.dat
        [[ $OUT == "$WORK"/* ]] || rm -rf "$WORK"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Starts a process under the pinning $1 (a taskset prefix, or empty); its output goes to $3.
start_on() {
    local cpu=$1 name=$2 logfile=$3
    shift 3
    $cpu "$@" >"$logfile" 2>&1 &
    PIDS[$name]=$!
}
# Starts a server-side process (server, reference, redis-server) on the server core(s).
start() { start_on "$SERVER_CPU" "$@"; }

wait_http() {
    local url=$1 name=$2
    for _ in $(seq 200); do
        if curl -s -o /dev/null "$url"; then return 0; fi
        if [[ -n ${PIDS[$name]:-} ]] && ! kill -0 "${PIDS[$name]}" 2>/dev/null; then
            log "$name exited during start"
            return 1
        fi
        sleep 0.05
    done
    log "$name did not answer at $url"
    return 1
}

port_free() {
    ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# --- setup ----------------------------------------------------------------------------------------
install_tools() {
    local missing=()
    command -v wrk >/dev/null || missing+=(wrk)
    if [[ " $SCENARIOS " == *" nginx "* ]]; then
        command -v nginx >/dev/null || missing+=(nginx-light)
        [[ -f $ECHO_MODULE ]] || missing+=(libnginx-mod-http-echo)
    fi
    command -v curl >/dev/null || missing+=(curl)
    command -v jq >/dev/null || missing+=(jq)
    command -v taskset >/dev/null || missing+=(util-linux)
    if [[ $PERF == 1 ]] && ! command -v perf >/dev/null; then missing+=(linux-perf); fi
    if [[ " $SCENARIOS " == *" redis-"* ]]; then
        command -v redis-server >/dev/null || missing+=(redis-server)
        command -v redis-cli >/dev/null || missing+=(redis-tools)
    fi
    ((${#missing[@]} == 0)) && return 0
    log "installing ${missing[*]}"
    if [[ $(id -u) != 0 ]]; then
        echo "run as root, or install: ${missing[*]}" >&2
        exit 1
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

install_tools
log "building release binaries"
(cd "$ROOT" && cargo build --release --locked --quiet --bin wechat-fanout \
    --example load-sink --example load-bare --example load-gen)

# Who runs where. SERVER_CPU: the proxy (or reference) and redis-server; SINK_CPU: both sinks;
# CLIENT_CPU: wrk, load-gen and perf. CORE_LINES: the /proc/stat lines of the cores whose time the
# report splits (SPAN cores); CLIENT_SHARED=1 when the load generator runs on those cores too.
NPROC=$(nproc)
CLIENT_SHARED=0
case $CORES in
    1)
        if ((NPROC >= 2)); then
            SERVER_CPU="taskset -c 0" SINK_CPU="taskset -c 0" CLIENT_CPU="taskset -c 1"
            PINNING="server side (server + sinks) on core 0, load generator on core 1"
            CORE_LINES=cpu0
        else
            SERVER_CPU="" SINK_CPU="" CLIENT_CPU=""
            PINNING="one core: not pinned, the load generator shares it"
            CORE_LINES=cpu CLIENT_SHARED=1
        fi
        SPAN=1
        ;;
    2)
        ((NPROC >= 2)) || { echo "CORES=2 needs two cores; this machine has $NPROC" >&2; exit 1; }
        if ((NPROC == 2)); then
            SERVER_CPU="" SINK_CPU="" CLIENT_CPU=""
            PINNING="two-core mode: nothing pinned; the server (proxy or reference), redis-server, both sinks and the load generator share cores 0-1"
            CLIENT_SHARED=1
        else
            SERVER_CPU="taskset -c 0,1" SINK_CPU="taskset -c 2-$((NPROC - 1))" CLIENT_CPU=$SINK_CPU
            PINNING="two-core mode: the server (proxy or reference) and redis-server on cores 0-1, sinks and load generator on cores 2-$((NPROC - 1))"
        fi
        CORE_LINES="cpu0 cpu1" SPAN=2
        ;;
    *) echo "CORES must be 1 or 2" >&2; exit 1 ;;
esac
for port in "$P_BARE" "$P_NGINX" "$P_PROXY" "$P_ADMIN" "$P_SINK_A" "$P_SINK_B" "$P_PROXY2" "$P_ADMIN2" \
    "$P_REDIS"; do
    port_free "$port" || { echo "port $port is in use (set PORT_BASE)" >&2; exit 1; }
done

PLAIN_DATA=$WORK/plain.dat
EVENT_DATA=$WORK/event.dat
SAFE_DATA=$WORK/safe.dat
"$BIN/examples/load-gen" wrk-data --scheme plain --out "$PLAIN_DATA"
"$BIN/examples/load-gen" wrk-data --scheme event --out "$EVENT_DATA"
if [[ " $SCENARIOS " == *" safe "* ]]; then
    log "sealing $SAFE_POOL distinct safe-mode callbacks"
    "$BIN/examples/load-gen" wrk-data --scheme safe --pool "$SAFE_POOL" --out "$SAFE_DATA"
fi

# --- measuring ------------------------------------------------------------------------------------
# wrk against $1 with data file $2 for $3 seconds (default DURATION), callback numbers shifted by
# $4 (default 0), with $5 connections (default CONNS); prints its JSON summary.
wrk_json() {
    local url=$1 data=$2 seconds=${3:-$DURATION} offset=${4:-0} conns=${5:-$CONNS} out
    out=$($CLIENT_CPU wrk -t1 -c"$conns" -d"${seconds}s" --timeout 10s \
        -s "$HERE/callbacks.lua" "$url" -- "$data" 1 "$offset")
    grep '^WRK ' <<<"$out" | cut -c5-
}

# Two wrk processes at once, CONNS/2 connections each: one against each instance ($1, $2), with
# disjoint callback numbers. Prints one summary: requests and rates added up, latencies the
# worse of the two, each process's own summary under "each".
wrk_two() {
    local data=$3 half=$((CONNS / 2)) one two
    one=$(mktemp "$WORK/wrk.XXXXXX")
    two=$(mktemp "$WORK/wrk.XXXXXX")
    wrk_json "$1" "$data" "$DURATION" 0 "$half" >"$one" &
    local first=$!
    wrk_json "$2" "$data" "$DURATION" 5000000000000 "$half" >"$two"
    wait "$first"
    jq -sc '{requests: (map(.requests) | add), duration_us: (map(.duration_us) | max),
        rps: (map(.requests / (.duration_us / 1e6)) | add),
        connect_errors: (map(.connect_errors) | add), read_errors: (map(.read_errors) | add),
        write_errors: (map(.write_errors) | add), status_errors: (map(.status_errors) | add),
        timeouts: (map(.timeouts) | add), p50_us: (map(.p50_us) | max), p90_us: (map(.p90_us) | max),
        p99_us: (map(.p99_us) | max), max_us: (map(.max_us) | max), each: .}' "$one" "$two"
    rm -f "$one" "$two"
}

sink_stats() { curl -s "http://127.0.0.1:$1/_sink/stats"; }
sink_unique() { sink_stats "$1" | jq -r .unique; }

# Sum of a proxy metric's samples whose labels contain $2, from admin port $3 (default P_ADMIN).
metric() {
    curl -s "http://127.0.0.1:${3:-$P_ADMIN}/metrics" |
        awk -v name="$1" -v want="$2" 'index($1, name) == 1 && index($0, want) { s += $NF } END { printf "%d\n", s }'
}
# Callbacks with outcome $1 counted by the instances behind admin ports $2... (default P_ADMIN);
# these counters are each instance's own, so several instances add up.
counted() {
    local outcome=$1 port n=0
    shift
    for port in "${@:-$P_ADMIN}"; do n=$((n + $(metric wechat_fanout_callbacks_total "outcome=\"$outcome\"" "$port"))); done
    echo "$n"
}
accepted() { counted accepted "$@"; }
duplicates() { counted duplicate "$@"; }

rss_kib() { awk -v f="$2" '$1 == f":" { print $2 }' "/proc/$1/status"; }

HZ=$(getconf CLK_TCK)

# CPU use, in clock ticks: "wall_ns cores_total cores_idle server store sink_a sink_b client",
# where cores_* add up the measured cores (CORE_LINES), server is the sum over the pids given
# (nginx: master and worker; two proxies), store is redis-server (0 without it) and client is
# what this script's finished children used (cutime + cstime of the script: during the load,
# that is the load generator, wrk or load-gen, and nothing else of note). "other" (the measured
# cores' busy time that none of these account for) shows interference from anything else on the
# machine.
cpu_snapshot() {
    local p server=0
    for p in "$@"; do server=$((server + $(proc_ticks "$p"))); done
    echo "$(date +%s%N)" \
        "$(awk -v lines=" $CORE_LINES " 'index(lines, " " $1 " ") { for (i = 2; i <= NF; i++) t += $i; idle += $5 + $6 }
            END { print t, idle }' /proc/stat)" \
        "$server $(proc_ticks "${PIDS[redis]:-}") $(proc_ticks "${PIDS[sink_a]:-}") $(proc_ticks "${PIDS[sink_b]:-}")" \
        "$(stat_fields $$ 16 17)"
}
# The sum of the fields $2... (numbered as in proc(5)) of /proc/$1/stat, or 0 when it is gone. The
# name (field 2) may hold spaces and parentheses: fields are counted after its last ")".
stat_fields() {
    local pid=$1 line
    shift
    line=$(cat "/proc/$pid/stat" 2>/dev/null) || { echo 0; return; }
    awk -v want="$*" '{ n = split(want, w, " "); s = 0; for (i = 1; i <= n; i++) s += $(w[i] - 2); print s }' <<<"${line##*) }"
}
proc_ticks() { # utime + stime of every thread of pid $1, exited ones included (0 when it is not running)
    if [[ -n $1 ]]; then stat_fields "$1" 14 15; else echo 0; fi
}
# $1, $2: snapshots before and after; prints shares of the measured cores in percent (of SPAN
# cores: 100 is all of them), and the raw ticks for figures per callback and per CPU second.
cpu_json() {
    local w0 t0 i0 s0 r0 a0 b0 c0 w1 t1 i1 s1 r1 a1 b1 c1
    read -r w0 t0 i0 s0 r0 a0 b0 c0 <<<"$1"
    read -r w1 t1 i1 s1 r1 a1 b1 c1 <<<"$2"
    jq -nc --argjson t $((t1 - t0)) --argjson idle $((i1 - i0)) --argjson s $((s1 - s0)) \
        --argjson store $((r1 - r0)) --argjson sinks $((a1 - a0 + b1 - b0)) \
        --argjson client $((c1 - c0)) --argjson shared "$CLIENT_SHARED" \
        --argjson span "$SPAN" --argjson hz "$HZ" --argjson wall_ns $((w1 - w0)) \
        'def pct: . * 1000 / ([$t, 1] | max) | round / 10;
         ($client * $shared) as $c
         | {server: ($s | pct), store: ($store | pct), sinks: ($sinks | pct), idle: ($idle | pct),
            client: (if $shared == 1 then $c | pct else null end),
            other: (([$t - $idle - $s - $store - $sinks - $c, 0] | max) | pct),
            span: $span, hz: $hz, wall_s: ($wall_ns / 1e9), server_ticks: $s, client_ticks: $client}'
}

# Per-thread CPU of the processes $1...: one line "tid kind ticks" per live thread, kind being
# writer (the SQLite store's writer thread), async (tokio's threads: the workers and the
# blocking pool, which tokio names alike) or other.
thread_ticks() {
    local p
    for p in "$@"; do
        cat "/proc/$p"/task/*/stat 2>/dev/null || true
    done | awk '{
        lp = index($0, "("); rp = lp
        while ((k = index(substr($0, rp + 1), ")")) > 0) rp += k
        name = substr($0, lp + 1, rp - lp - 1)
        split(substr($0, rp + 2), f, " ")
        kind = name == "store-writer" ? "writer" : name ~ /^tokio-/ ? "async" : "other"
        print $1, kind, f[12] + f[13]
    }'
}
# $1, $2: thread_ticks before and after; prints the ticks of each kind between them. Threads that
# ended in between are missing here (the process total keeps them: report.jq counts them as
# "other"); threads that started count from zero.
threads_json() {
    awk 'NR == FNR { before[$1] = $3; next }
        { used[$2] += $3 - before[$1] }
        END { printf "{\"writer\":%d,\"async\":%d,\"other\":%d}\n", used["writer"], used["async"], used["other"] }' \
        <(echo "$1") <(echo "$2")
}

# Waits until sinks $2... hold $1 distinct callbacks each; prints the seconds it took, or "timeout".
wait_drained() {
    local want=$1 started=$SECONDS port drained
    shift
    while ((SECONDS - started < DRAIN_TIMEOUT)); do
        drained=1
        for port in "$@"; do
            (($(sink_unique "$port") >= want)) || { drained=0; break; }
        done
        if ((drained)); then
            echo $((SECONDS - started))
            return 0
        fi
        sleep 0.5
    done
    echo timeout
}

start_sinks() { # $1: expect (plain|safe); $2: run folder; $3: which (ab|a); $4: delay of b in ms
    local pool=()
    [[ $1 == safe ]] && pool=(--pool "$SAFE_POOL")
    start_on "$SINK_CPU" sink_a "$2/sink-a.log" "$BIN/examples/load-sink" --listen "127.0.0.1:$P_SINK_A" --expect "$1" "${pool[@]}"
    wait_http "http://127.0.0.1:$P_SINK_A/_sink/stats" sink_a
    if [[ $3 == ab ]]; then
        start_sink_b "$1" "$2" "${4:-0}"
    fi
}

start_sink_b() {
    local pool=()
    [[ $1 == safe ]] && pool=(--pool "$SAFE_POOL")
    start_on "$SINK_CPU" sink_b "$2/sink-b.log" "$BIN/examples/load-sink" --listen "127.0.0.1:$P_SINK_B" --expect "$1" \
        --delay-ms "$3" "${pool[@]}"
    wait_http "http://127.0.0.1:$P_SINK_B/_sink/stats" sink_b
}

# A redis-server of the run's own, in its folder, with AOF on and appendfsync $1; with $3 = 1, a
# replica of it too (same settings, its own folder), waited for until it is in sync.
start_redis() { # $1: always|everysec; $2: run folder; $3: 1 for a replica
    mkdir -p "$2/redis"
    start redis "$2/redis/redis.log" redis-server --bind 127.0.0.1 --port "$P_REDIS" --dir "$2/redis" \
        --appendonly yes --appendfsync "$1" --save "" --maxmemory-policy noeviction --logfile "" \
        --latency-monitor-threshold 5
    wait_redis "$P_REDIS" redis || return 1
    [[ ${3:-0} == 1 ]] || return 0
    mkdir -p "$2/replica"
    start replica "$2/replica/redis.log" redis-server --bind 127.0.0.1 --port "$P_REPLICA" --dir "$2/replica" \
        --appendonly yes --appendfsync "$1" --save "" --maxmemory-policy noeviction --logfile "" \
        --replicaof 127.0.0.1 "$P_REDIS"
    wait_redis "$P_REPLICA" replica || return 1
    for _ in $(seq 200); do
        redis-cli -p "$P_REPLICA" info replication 2>/dev/null | grep -q '^master_link_status:up' && return 0
        sleep 0.05
    done
    log "the replica on port $P_REPLICA did not sync"
    return 1
}
wait_redis() { # $1: port; $2: its name in PIDS
    for _ in $(seq 200); do
        [[ $(redis-cli -p "$1" ping 2>/dev/null) == PONG ]] && return 0
        kill -0 "${PIDS[$2]}" 2>/dev/null || { log "redis-server ($2) exited during start"; return 1; }
        sleep 0.05
    done
    log "redis-server ($2) did not answer on port $1"
    return 1
}

# Prints a proxy's configuration. $1: mode (plaintext|safe); $2: run folder; $3: sqlite|redis;
# $4: instance (1|2); $5: how deliveries go: h1 (HTTP/1.1, the default), h2 (both targets speak
# HTTP/2 with prior knowledge, h2c) or pipe (HTTP/1.1 pipelining to both). ORDER (environment):
# the targets' `order` (per_user), none when empty.
proxy_config() {
    local dir=$2 key="" store listen=$P_PROXY admin=$P_ADMIN setting=""
    [[ $1 == safe ]] && key="encoding_aes_key = \"$AES_KEY\""
    [[ ${4:-1} == 2 ]] && listen=$P_PROXY2 admin=$P_ADMIN2
    case ${5:-h1} in
        h2) setting="http2 = true" ;;
        pipe) setting="pipelining = true" ;;
    esac
    [[ -n ${ORDER:-} ]] && setting="$setting
order = \"$ORDER\""
    if [[ ${3:-sqlite} == redis ]]; then
        store="backend = \"redis\"
[store.redis]
urls = [\"redis://127.0.0.1:$P_REDIS/0\"]
key_prefix = \"bench\"
min_replicas = ${MIN_REPLICAS:-0}"
    else
        store="path = \"$dir/store/fanout.db\"
synchronous = \"$SYNC\""
    fi
    cat <<EOF
[server]
listen = "127.0.0.1:$listen"
# The corpus is built once with fixed timestamps (benches/load/corpus.rs).
max_timestamp_skew_secs = 0
[admin]
listen = "127.0.0.1:$admin"
[log]
filter = "$LOG_FILTER"
[store]
$store
[target_defaults]
# No dead letters during a bench: the down target must get everything once it is back.
max_attempts = 50

[[accounts]]
id = "bench"
kind = "official_account"
token = "$TOKEN"
app_id = "$APP_ID"
$key
mode = "$1"
[[accounts.targets]]
name = "a"
url = "http://127.0.0.1:$P_SINK_A/wx"
$setting
[[accounts.targets]]
name = "b"
url = "http://127.0.0.1:$P_SINK_B/wx"
$setting
EOF
}

# How a proxy scenario's deliveries go (proxy_config's $5). $1: the scenario without alt-.
wire_of() {
    case $1 in
        fast-h2) echo h2 ;;
        fast-pipe | events) echo pipe ;;
        *) echo h1 ;;
    esac
}

start_proxy() { # the arguments of proxy_config
    local name=proxy admin=$P_ADMIN config=$2/fanout.toml
    [[ ${4:-1} == 2 ]] && name=proxy2 admin=$P_ADMIN2 config=$2/fanout2.toml
    mkdir -p "$2/store"
    proxy_config "$@" >"$config"
    start "$name" "$2/$name.log" "$PROXY_BIN" serve --config "$config" --log-format text
    wait_http "http://127.0.0.1:$admin/readyz" "$name"
}

# Appends one run's record to $RESULTS; $1 is a JSON object.
record() { jq -c . <<<"$1" >>"$RESULTS"; }

sink_json() { # $1: port; prints its stats, or nulls when it is not running
    sink_stats "$1" 2>/dev/null || echo '{"requests":null,"unique":null,"duplicates":null,"mismatched":null,"samples":[]}'
}

run_reference() { # $1: bare|nginx; $2: run number
    local kind=$1 i=$2 dir=$WORK/runs/$1-$2 w a b c0 cpu nginx_pids
    mkdir -p "$dir"
    if [[ $kind == bare ]]; then
        start bare "$dir/bare.log" "$BIN/examples/load-bare" --listen "127.0.0.1:$P_BARE"
        wait_http "http://127.0.0.1:$P_BARE/" bare
        c0=$(cpu_snapshot "${PIDS[bare]}")
        w=$(wrk_json "http://127.0.0.1:$P_BARE/wechat/bench" "$PLAIN_DATA")
        cpu=$(cpu_json "$c0" "$(cpu_snapshot "${PIDS[bare]}")")
        stop bare
        record "{\"scenario\":\"bare\",\"run\":$i,\"wrk\":$w,\"cpu\":$cpu}"
        return
    fi
    start_sinks plain "$dir" ab
    mkdir -p "$dir/nginx"
    sed -e "s|@DIR@|$dir/nginx|g" -e "s|@PORT@|$P_NGINX|g" -e "s|@SINK_A@|$P_SINK_A|g" \
        -e "s|@SINK_B@|$P_SINK_B|g" "$HERE/nginx.conf" >"$dir/nginx/nginx.conf"
    start nginx "$dir/nginx/stderr.log" nginx -p "$dir/nginx" -c "$dir/nginx/nginx.conf" -e "$dir/nginx/error.log"
    wait_http "http://127.0.0.1:$P_NGINX/" nginx
    nginx_pids="${PIDS[nginx]} $(pgrep -P "${PIDS[nginx]}" | tr '\n' ' ')"
    # shellcheck disable=SC2086 # one word per pid
    c0=$(cpu_snapshot $nginx_pids)
    w=$(wrk_json "http://127.0.0.1:$P_NGINX/wechat/bench" "$PLAIN_DATA")
    # shellcheck disable=SC2086
    cpu=$(cpu_json "$c0" "$(cpu_snapshot $nginx_pids)")
    local answered drain
    answered=$(jq .requests <<<"$w")
    # nginx answers after its mirrors finish, so the sinks hold every answered callback already.
    drain=$(wait_drained "$answered" "$P_SINK_A" "$P_SINK_B")
    a=$(sink_json "$P_SINK_A")
    b=$(sink_json "$P_SINK_B")
    stop nginx
    stop sink_a
    stop sink_b
    record "{\"scenario\":\"nginx\",\"run\":$i,\"wrk\":$w,\"cpu\":$cpu,\"accepted\":$answered,\"drain\":\"$drain\",\"a\":$a,\"b\":$b}"
}

# $1: fast|fast-h2|fast-pipe|events|slow|down|safe|rate|redis-always|redis-everysec|redis-two|redis-rate|redis-rate-everysec|
# redis-replica|redis-min1, or one of these
# prefixed with alt- (run with ALT_BIN); $2: run number
run_proxy() {
    local scenario=$1 i=$2 dir=$WORK/runs/$1-$2 expect=plain mode=plaintext data=$PLAIN_DATA
    local store=sqlite fsync="" two=0 admins=("$P_ADMIN") pids w acc dup rss hwm drain a b c0 cpu
    local replica=0 MIN_REPLICAS=0 ORDER=""
    # A scenario named twice in SCENARIOS (ABBA) runs twice per round: a folder each.
    while [[ -e $dir ]]; do dir=$dir+; done
    local t0 threads wire
    local store_hwm=null each=null base=${1#alt-}
    PROXY_BIN=${MAIN_BIN:-$BIN/wechat-fanout}
    [[ $base != "$scenario" ]] && PROXY_BIN=$ALT_BIN
    mkdir -p "$dir"
    if [[ $base == safe ]]; then expect=safe mode=safe data=$SAFE_DATA; fi
    if [[ $base == events ]]; then expect=event data=$EVENT_DATA; fi
    wire=$(wire_of "$base")
    case $base in
        redis-always | redis-rate) store=redis fsync=always ;;
        redis-rate-everysec) store=redis fsync=everysec ;;
        redis-everysec) store=redis fsync=everysec ;;
        redis-two) store=redis fsync=always two=1 admins+=("$P_ADMIN2") ;;
        redis-replica) store=redis fsync=always replica=1 ;;
        redis-min1 | redis-min1-rate) store=redis fsync=always replica=1 MIN_REPLICAS=1 ;;
        redis-lanes | redis-lanes-rate) store=redis fsync=everysec ORDER=per_user ;;
    esac
    case $base in
        slow) start_sinks "$expect" "$dir" ab "$SLOW_MS" ;;
        down) start_sinks "$expect" "$dir" a ;;
        *) start_sinks "$expect" "$dir" ab ;;
    esac
    [[ $store == redis ]] && start_redis "$fsync" "$dir" "$replica"
    start_proxy "$mode" "$dir" "$store" 1 "$wire"
    ((two)) && start_proxy "$mode" "$dir" "$store" 2 "$wire"
    pids=("${PIDS[proxy]}")
    ((two)) && pids+=("${PIDS[proxy2]}")
    if [[ $PERF == 1 && $i == 1 && ($base == fast || $base == fast-h2 || $base == fast-pipe || $base == redis-always) ]]; then
        local watched=${PIDS[proxy]}
        [[ $store == redis ]] && watched+=",${PIDS[redis]}"
        # shellcheck disable=SC2086 # PERF_GRAPH is one option or several words
        $CLIENT_CPU perf record -F "$PERF_FREQ" $PERF_GRAPH -p "$watched" -o "$OUT/perf-$scenario.data" -- sleep "$DURATION" \
            >"$dir/perf.log" 2>&1 &
        PIDS[perf]=$!
    fi
    t0=$(thread_ticks "${pids[@]}")
    c0=$(cpu_snapshot "${pids[@]}")
    if [[ $base == rate || $base == redis-rate || $base == redis-rate-everysec || $base == redis-min1-rate || $base == redis-lanes-rate ]]; then
        local r
        r=$($CLIENT_CPU "$BIN/examples/load-gen" rate --addr "127.0.0.1:$P_PROXY" --rate "$RATE" \
            --duration "$DURATION" | grep '^RATE ' | cut -c6-)
        w=$(jq -c '{requests: .ok, duration_us: 0, status_errors: .failed, p50_us, p90_us, p99_us,
            max_us, rps: .achieved_rps, pacer_late}' <<<"$r")
    elif ((two)); then
        w=$(wrk_two "http://127.0.0.1:$P_PROXY/wechat/bench" "http://127.0.0.1:$P_PROXY2/wechat/bench" "$data")
    else
        w=$(wrk_json "http://127.0.0.1:$P_PROXY/wechat/bench" "$data")
    fi
    cpu=$(cpu_json "$c0" "$(cpu_snapshot "${pids[@]}")")
    threads=$(threads_json "$t0" "$(thread_ticks "${pids[@]}")")
    if [[ -n ${PIDS[perf]:-} ]]; then
        wait "${PIDS[perf]}" 2>/dev/null || true
        unset "PIDS[perf]"
        {
            echo "# by process"
            perf report -i "$OUT/perf-$scenario.data" --no-children --sort comm --stdio -g none 2>/dev/null
            echo "# by symbol, self time"
            perf report -i "$OUT/perf-$scenario.data" --no-children --sort comm,dso,sym --stdio -g none \
                --percent-limit 0.7 2>/dev/null
            echo "# by symbol, including callees"
            perf report -i "$OUT/perf-$scenario.data" --children --sort comm,sym --stdio -g none \
                --percent-limit 3 2>/dev/null
        } | grep -v -E -e '^#($| [A-Z.(])' -e '^$' >"$OUT/perf-$scenario.txt" || true
    fi
    acc=$(accepted "${admins[@]}")
    dup=$(duplicates "${admins[@]}")
    rss=$(rss_kib "${PIDS[proxy]}" VmRSS)
    hwm=$(rss_kib "${PIDS[proxy]}" VmHWM)
    if ((two)); then
        each="[$hwm,$(rss_kib "${PIDS[proxy2]}" VmHWM)]"
        hwm=$(jq 'max' <<<"$each")
    fi
    # The slow or down target recovers; everything it missed must now arrive.
    case $base in
        slow) curl -s -X POST "http://127.0.0.1:$P_SINK_B/_sink/set?delay_ms=0" >/dev/null ;;
        down) start_sink_b "$expect" "$dir" 0 ;;
    esac
    drain=$(wait_drained "$acc" "$P_SINK_A" "$P_SINK_B")
    a=$(sink_json "$P_SINK_A")
    b=$(sink_json "$P_SINK_B")
    if [[ $store == redis ]]; then
        store_hwm=$(rss_kib "${PIDS[redis]}" VmHWM)
        # Redis's own stalls of 5 ms or more (e.g. aof-fsync-always: a slow fdatasync in its
        # main thread): event, time, latest ms, worst ms.
        redis-cli -p "$P_REDIS" latency latest 2>/dev/null | paste -sd' ' |
            sed "s/^/$scenario run $i: /" >>"$OUT/redis-latency.txt" || true
        # What Redis spent its time on, per command (scripts are EVALSHA), for the first run.
        if ((i == 1)); then
            redis-cli -p "$P_REDIS" info commandstats >"$OUT/redis-$scenario-commandstats.txt" 2>&1 || true
            redis-cli -p "$P_REDIS" info persistence >"$OUT/redis-$scenario-persistence.txt" 2>&1 || true
        fi
    fi
    stop proxy
    stop proxy2
    stop redis
    stop replica
    # A run's AOF (up to ~100 MB per server) is not kept unless asked: many runs fill a disk.
    [[ $KEEP == 1 ]] || rm -rf "$dir/redis/appendonlydir" "$dir/replica/appendonlydir"
    stop sink_a
    stop sink_b
    record "{\"scenario\":\"$scenario\",\"run\":$i,\"wrk\":$w,\"cpu\":$cpu,\"threads\":$threads,\"accepted\":$acc,\"duplicates\":$dup,
        \"rss_kib\":$rss,\"hwm_kib\":$hwm,\"hwm_each_kib\":$each,\"store_hwm_kib\":$store_hwm,
        \"drain\":\"$drain\",\"a\":$a,\"b\":$b}"
}

# The 1,000,000-callback backlog: target b is down while wrk sends in chunks; after each chunk,
# the proxy's RSS and the chunk's accepting rate. Then b comes back and the backlog drains.
run_backlog() {
    local dir=$WORK/runs/backlog pid acc=0 prev=0 chunk=0 w rate rss base drained rates=() fast
    mkdir -p "$dir"
    start_sinks plain "$dir" a
    PROXY_BIN=${MAIN_BIN:-$BIN/wechat-fanout}
    start_proxy plaintext "$dir"
    pid=${PIDS[proxy]}
    base=$(rss_kib "$pid" VmRSS)
    {
        echo "### Backlog: target b down, $BACKLOG_TARGET callbacks"
        echo
        echo "Proxy RSS at start: $((base / 1024)) MiB."
        echo
        echo "| chunk | backlog (accepted, undelivered to b) | accepted/s in chunk | resends | p99 answer | proxy RSS |"
        echo "|---:|---:|---:|---:|---:|---:|"
    } >"$OUT/backlog.md"
    while ((acc < BACKLOG_TARGET && chunk < 200)); do
        chunk=$((chunk + 1))
        # Each chunk numbers its callbacks from chunk × 10^10: new callbacks, never resends.
        w=$(wrk_json "http://127.0.0.1:$P_PROXY/wechat/bench" "$PLAIN_DATA" "$BACKLOG_CHUNK" "${chunk}0000000000")
        acc=$(accepted)
        rate=$(((acc - prev) / BACKLOG_CHUNK))
        prev=$acc
        rates+=("$rate")
        rss=$(rss_kib "$pid" VmRSS)
        printf '| %d | %d | %d | %d | %s ms | %d MiB |\n' "$chunk" "$acc" "$rate" "$(duplicates)" \
            "$(jq '.p99_us / 1000' <<<"$w")" "$((rss / 1024))" >>"$OUT/backlog.md"
        log "backlog: $acc accepted, $rate/s, RSS $((rss / 1024)) MiB"
    done
    start_sink_b plain "$dir" 0
    drained=$(DRAIN_TIMEOUT=$((DRAIN_TIMEOUT * 5)) wait_drained "$acc" "$P_SINK_A" "$P_SINK_B")
    {
        echo
        echo "Peak RSS (VmHWM): $(($(rss_kib "$pid" VmHWM) / 1024)) MiB. Target b back after" \
            "chunk $chunk: backlog drained in ${drained}s (bound $((DRAIN_TIMEOUT * 5))s);" \
            "sink b: $(sink_json "$P_SINK_B" | jq -c '{unique, duplicates, mismatched}')."
        # "Keeps accepting at full speed": the chunks' median rate against the fast scenario's.
        fast=$(jq -s '[.[] | select(.scenario == "fast") | .wrk.requests / (.wrk.duration_us / 1e6)]
            | sort | if length == 0 then 0 else .[length / 2 | floor] | round end' "$RESULTS")
        printf 'Accepting while the backlog grew: median %d/s over the chunks' \
            "$(printf '%s\n' "${rates[@]}" | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }')"
        if ((fast > 0)); then printf ' (fast scenario: %d/s).\n' "$fast"; else echo .; fi
    } >>"$OUT/backlog.md"
    stop proxy
    stop sink_a
    stop sink_b
}

# --- the runs ---------------------------------------------------------------------------------------
log "results in $OUT; $PINNING; $RUNS run(s) of ${DURATION}s, $CONNS connections"
for scenario in $SCENARIOS; do
    case ${scenario#alt-} in
        bare | nginx) [[ $scenario != alt-* ]] || { echo "alt- applies to the proxy's scenarios" >&2; exit 1; } ;;
        fast | fast-h2 | fast-pipe | events | slow | down | safe | rate | redis-always | redis-everysec | redis-two | redis-rate | redis-rate-everysec | redis-replica | redis-min1 | redis-min1-rate | redis-lanes | redis-lanes-rate) ;;
        *) echo "unknown scenario $scenario" >&2; exit 1 ;;
    esac
    if [[ $scenario == alt-* && ! -x $ALT_BIN ]]; then
        echo "$scenario needs ALT_BIN, an executable wechat-fanout" >&2
        exit 1
    fi
    # The targets' http2 and pipelining keys are checked before any run, not after the other
    # scenarios' runs.
    wire=$(wire_of "${scenario#alt-}")
    if [[ $wire != h1 ]]; then
        bin=${MAIN_BIN:-$BIN/wechat-fanout}
        [[ $scenario == alt-* ]] && bin=$ALT_BIN
        mkdir -p "$WORK/preflight"
        proxy_config plaintext "$WORK/preflight" sqlite 1 "$wire" >"$WORK/preflight/fanout.toml"
        if ! "$bin" check-config --config "$WORK/preflight/fanout.toml" >/dev/null 2>"$WORK/preflight/error"; then
            echo "$scenario: $bin does not take the targets' settings: $(cat "$WORK/preflight/error")" >&2
            exit 1
        fi
    fi
done
# Alternating: run 1 of every scenario, then run 2 of every scenario…
for i in $(seq "$RUNS"); do
    for scenario in $SCENARIOS; do
        log "$scenario, run $i/$RUNS"
        case $scenario in
            bare | nginx) run_reference "$scenario" "$i" ;;
            *) run_proxy "$scenario" "$i" ;;
        esac
    done
done
if [[ $BACKLOG == 1 ]]; then
    log "backlog scenario ($BACKLOG_TARGET callbacks, target b down)"
    run_backlog
fi

# --- the report ---------------------------------------------------------------------------------------
if [[ -s $RESULTS ]]; then {
    echo "## wechat-fanout load benchmark"
    echo
    echo "$(date -u +%F) · $(nproc) cores ($PINNING) · $RUNS run(s) × ${DURATION}s · wrk -t1 -c$CONNS ·" \
        "store.synchronous=$SYNC on $(df -T "$WORK" | awk 'NR==2 {print $2}') · log filter $LOG_FILTER ·" \
        "safe pool $SAFE_POOL · rate scenario $RATE/s (load-gen, open loop)"
    echo
    jq -rs --arg slow "$SLOW_MS" --arg alt "$ALT_LABEL" --argjson span "$SPAN" \
        --argjson shared "$CLIENT_SHARED" -f "$HERE/report.jq" "$RESULTS"
    echo
    echo "requests/s: answered callbacks (wrk; load-gen for the fixed rate), median of the runs;" \
        "p50/p99: median over runs of each run's answer latency (wrk: closed loop, $CONNS connections;" \
        "fixed rate: from each callback's scheduled send time). Deliveries: distinct callbacks each" \
        "sink received, summed over runs, after the backlog drained, against callbacks the proxy" \
        "accepted (nginx: answered; two instances: both proxies' accepted added up)." \
        "$(if ((SPAN == 2)); then
            echo "Cores 0-1 %: where the two cores' time went during the load (100 = both cores):"
        else
            echo "Core 0 %: where the server core's time went during the load:"
        fi) the server (proxy, both proxies, or the reference), redis-server, both sinks,$(
            ((CLIENT_SHARED)) && echo " the load generator,") anything else (kernel threads," \
        "other users of the machine: a high value marks a noisy run), idle; µs per callback: that" \
        "time per answered callback. Proxy CPU (cores): the server's CPU seconds (utime + stime of" \
        "all its threads) over the load's wall seconds; callbacks/s per proxy core: callbacks" \
        "accepted (bare: answered) per one of those CPU seconds, the figure to compare between a" \
        "CORES=1 and a CORES=2 report (bare, nginx: the reference server's). Proxy µs per callback," \
        "per accepted callback, by thread: writer (the SQLite store's writer thread) · async" \
        "(tokio's workers and blocking pool, which share a name) · other (the rest of the process:" \
        "its main thread, threads that ended during the load). Redis rows: redis-server with AOF" \
        "on, fsync as named, with the server; × SQLite: against the SQLite fast row of the same" \
        "run (runs alternate between scenarios); paired: each run's ratio to the SQLite run just" \
        "before it."
} | tee "$OUT/report.md"; fi
[[ -f $OUT/backlog.md ]] && { echo; cat "$OUT/backlog.md"; } | tee -a "$OUT/report.md"
for f in "$OUT"/perf-*.txt; do
    [[ -f $f ]] && echo "perf profile (run 1; by process, then by symbol): $f"
done
for f in "$OUT"/redis-*-commandstats.txt; do
    [[ -f $f ]] && echo "Redis command statistics (run 1): $f"
done
if [[ -s $OUT/redis-latency.txt ]]; then
    echo "Redis stalls ≥ 5 ms (LATENCY LATEST: event, when, latest ms, worst ms):"
    cat "$OUT/redis-latency.txt"
fi
