#!/usr/bin/env bash
# The floor under the Redis store's scripts: Redis's CPU per callback for the bare commands the
# stored shape needs (the accept's HSETNX, HSET and two ZADDs; the outcomes' HMGET, HSET, ZREM
# and ZADD), sent as plain pipelines with no Lua at all (example load-floor, benches/load/floor.rs).
# A script can only add to this; not part of `cargo test`.
#
#   bash benches/load/floor.sh               # every case, 3 runs each (~1.5 min)
#   RUNS=1 CASES="everysec-1000" bash benches/load/floor.sh
#
# It builds the example (`cargo build --release --example load-floor`), then for each run of
# each case starts a redis-server of its own (127.0.0.1:$PORT, a fresh temp folder, `--save ''`,
# AOF as the case says), runs load-floor against it and shuts it down. A case is named
# <AOF>-<callbacks per round trip>[@<callbacks/s>]: AOF everysec, always (appendfsync always) or
# off; without @ the callbacks go back to back (saturated), with it they are paced. The cases:
# everysec-1, everysec-16, everysec-1000, always-1000, off-1000, and everysec-1@2000 (one round
# trip each for the accept and the outcomes at 2,000 callbacks/s: Redis sleeps between them, as
# at a moderate load; CALLBACKS/2000 s a run). Runs alternate between cases (run 1 of each, then run 2…), so a
# noisy stretch of a shared machine hits every case alike. Nothing is pinned: Redis's CPU is
# read from its /proc stat (every thread, AOF's fsync thread too), whatever core it ran on.
# Prints the raw FLOOR lines, then a markdown table of each case's median µs of Redis CPU per
# callback (user and system: those of the median run).
#
# Environment: RUNS (default 3), CALLBACKS (per run, default 20000), BODY (body bytes, default
# 540, like a longer text message; empty: the corpus body as is, ~477), PORT (default 16410),
# CASES (a subset of the cases above, space-separated), KEEP=1 (keep the temp folder).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/examples/load-floor
RUNS=${RUNS:-3}
CALLBACKS=${CALLBACKS:-20000}
BODY=${BODY-540}
PORT=${PORT:-16410}
CASES=${CASES:-everysec-1 everysec-16 everysec-1000 always-1000 off-1000 everysec-1@2000}
KEEP=${KEEP:-0}
CLK_TCK=$(getconf CLK_TCK)

command -v redis-server >/dev/null || { echo "redis-server is not installed" >&2; exit 1; }
(cd "$ROOT" && cargo build --release --example load-floor)

TMP=$(mktemp -d -t floor.XXXXXX)
REDIS_PID=
cleanup() {
    if [[ -n $REDIS_PID ]]; then
        kill "$REDIS_PID" 2>/dev/null || true
        wait "$REDIS_PID" 2>/dev/null || true
    fi
    if [[ $KEEP == 1 ]]; then echo "kept $TMP"; else rm -rf "$TMP"; fi
}
trap cleanup EXIT

# A case's redis-server AOF arguments, from its name.
case_aof() {
    case ${1%%-*} in
        everysec) echo "--appendonly yes --appendfsync everysec" ;;
        always) echo "--appendonly yes --appendfsync always" ;;
        off) echo "--appendonly no" ;;
        *) echo "unknown case $1" >&2; exit 1 ;;
    esac
}

start_redis() {
    local dir=$1 aof
    read -ra aof <<<"$(case_aof "$2")"
    mkdir -p "$dir"
    redis-server --port "$PORT" --bind 127.0.0.1 --save '' --dir "$dir" "${aof[@]}" \
        --logfile "$dir/redis.log" &
    REDIS_PID=$!
    for _ in $(seq 100); do
        redis-cli -p "$PORT" ping >/dev/null 2>&1 && return 0
        sleep 0.05
    done
    echo "redis-server did not start (see $dir/redis.log)" >&2
    exit 1
}

stop_redis() {
    redis-cli -p "$PORT" shutdown nosave >/dev/null 2>&1 || kill "$REDIS_PID"
    wait "$REDIS_PID" 2>/dev/null || true
    REDIS_PID=
}

body_arg=()
[[ -n $BODY ]] && body_arg=(--body "$BODY")

RAW=$TMP/floor.txt
for run in $(seq "$RUNS"); do
    for c in $CASES; do
        batch=${c#*-}
        rate=()
        [[ $batch == *@* ]] && rate=(--rate "${batch#*@}")
        start_redis "$TMP/$c-$run" "$c"
        line=$("$BIN" --redis "127.0.0.1:$PORT" --callbacks "$CALLBACKS" --batch "${batch%@*}" \
            --clk-tck "$CLK_TCK" "${rate[@]}" "${body_arg[@]}")
        stop_redis
        echo "case=$c run=$run $line" | tee -a "$RAW"
    done
done

echo
echo "Redis CPU per callback, bare commands, no Lua (median of $RUNS runs of $CALLBACKS callbacks;" \
    "$(redis-server --version | awk '{print $3}'); $(nproc) cores, nothing pinned; callbacks/s: paced" \
    "where the case names a rate, else as fast as one connection goes)"
echo
echo "| case | AOF | callbacks per round trip | commands per callback | µs per callback | user µs | system µs | callbacks/s |"
echo "|---|---|---:|---:|---:|---:|---:|---:|"
for c in $CASES; do
    # The case's runs sorted by µs per callback; the median run's line (the lower middle one
    # for an even count).
    grep "^case=$c " "$RAW" |
        awk '{ for (i = 1; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
               print v["redis_us_per_callback"], v["user_us"], v["system_us"],
                     v["commands_per_callback"], v["callbacks_per_s"], v["batch"] }' |
        sort -n | awk -v c="$c" '{ r[NR] = $0 } END {
            split(r[int((NR + 1) / 2)], m, " ")
            aof = c; sub(/-.*/, "", aof)
            printf "| %s | %s | %s | %.3f | %.1f | %.1f | %.1f | %d |\n", c, aof, m[6], m[4], m[1], m[2], m[3], m[5] }'
done
