#!/usr/bin/env bash
# The long hostile-input run (docs/reliability.md): feeds every decoder fed
# from outside at least $RUNS inputs (default one million) under libFuzzer,
# with AddressSanitizer, debug assertions and overflow checks, one decoder at
# a time. A panic, a single allocation over 64 MiB, more than 1 GiB resident
# or an input taking over 10 s stops the run with the input in
# fuzz/artifacts/<target>/.
#
#   scripts/fuzz.sh                 every target
#   RUNS=100000 scripts/fuzz.sh trace
#
# Needs the nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`).
set -euo pipefail

RUNS=${RUNS:-1000000}
TARGETS=(wire_frames wire_bodies wire_handshake control_request hook_lines trace)
if [ $# -gt 0 ]; then
    TARGETS=("$@")
fi

cd "$(dirname "$0")/../fuzz"
cargo +nightly fuzz build --debug-assertions >/dev/null
# Valid encodings of each input, for the mutations to start from.
target/x86_64-unknown-linux-gnu/release/seeds
mkdir -p artifacts

printf '%-16s %12s %9s  %s\n' target inputs seconds result
failed=0
for target in "${TARGETS[@]}"; do
    log="artifacts/$target.log"
    start=$SECONDS
    status=0
    cargo +nightly fuzz run --debug-assertions "$target" -- \
        -runs="$RUNS" -max_len=16384 -malloc_limit_mb=64 -rss_limit_mb=1024 \
        -timeout=10 -print_final_stats=1 >"$log" 2>&1 || status=$?
    inputs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    if [ "$status" -eq 0 ]; then
        result="no crash, leak, oversized allocation or timeout"
    else
        result="FAILED ($status): see fuzz/$log"
        failed=1
    fi
    printf '%-16s %12s %9s  %s\n' "$target" "${inputs:-?}" "$((SECONDS - start))" "$result"
done
exit "$failed"
