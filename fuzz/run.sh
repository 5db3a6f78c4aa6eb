#!/usr/bin/env bash
# Runs every fuzz target for $1 seconds each (default 60), starting from the committed seeds.
#
#   fuzz/run.sh          # 60 s per target
#   fuzz/run.sh 600      # 10 min per target
#   TARGETS="decrypt" fuzz/run.sh 30
#
# Needs the nightly toolchain (sanitizers); installs cargo-fuzz when it is missing. The corpus that
# libFuzzer grows goes to fuzz/corpus/<target>/ and crashes to fuzz/artifacts/<target>/ (both
# git-ignored); the seeds in fuzz/seeds/<target>/ are only read (regenerate them with
# `cargo run --manifest-path fuzz/Cargo.toml --example seeds`). Exits non-zero on the first crash.
#
# Bounded: each target stops after $1 seconds, and a single input that runs longer than 10 s is
# reported as a hang (libFuzzer's default would wait 20 minutes), so a CI step can rely on it.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${1:-60}"
targets="${TARGETS:-envelope decrypt callback answers}"
case "$seconds" in
    '' | *[!0-9]*) echo "usage: fuzz/run.sh [SECONDS]" >&2; exit 64 ;;
esac

if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

# Fuzz the dependency versions the server ships with: start the fuzz workspace's lockfile from the
# main one (cargo then only adds libfuzzer and friends), and start again whenever the main one
# changes. fuzz/Cargo.lock is therefore derived, not committed.
if [ ! -f fuzz/Cargo.lock ] || [ Cargo.lock -nt fuzz/Cargo.lock ]; then
    cp Cargo.lock fuzz/Cargo.lock
fi

for target in $targets; do
    mkdir -p "fuzz/corpus/$target"
    echo "--- fuzz $target for ${seconds}s"
    # The first corpus directory is where new inputs are written; the seeds stay untouched.
    cargo +nightly fuzz run "$target" "fuzz/corpus/$target" "fuzz/seeds/$target" -- \
        -max_total_time="$seconds" -timeout=10 -print_final_stats=1
done
