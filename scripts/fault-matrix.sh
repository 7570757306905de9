#!/usr/bin/env bash
# The whole fault matrix (docs/reliability.md): every fault the agents'
# tests know how to cause, with real QEMU guests, each case checking that
# exactly one guest runs afterwards with its memory (and disk) intact. The
# test suite runs the cases marked `in_ci`; this runs them all and writes the
# table into docs/reliability.md between its fault-matrix markers.
#
#   scripts/fault-matrix.sh
#
# Some cases mount a small tmpfs (a destination out of room): run as root.
set -euo pipefail
cd "$(dirname "$0")/.."

table=$(mktemp)
trap 'rm -f "$table"' EXIT
MLLM_FAULT_MATRIX=full MLLM_FAULT_MATRIX_OUT="$table" \
    cargo test --release -p mllm-agent --test migration fault_matrix -- --nocapture

doc=docs/reliability.md
start='<!-- fault-matrix:start -->'
end='<!-- fault-matrix:end -->'
grep -q "$start" "$doc" || { echo "$doc has no '$start' marker" >&2; exit 1; }
{
    sed "/$start/q" "$doc"
    echo
    echo "Recorded $(date -u +%Y-%m-%d) at commit $(git rev-parse --short HEAD) with \`scripts/fault-matrix.sh\`:"
    echo
    cat "$table"
    echo
    sed -n "/$end/,\$p" "$doc"
} > "$doc.new"
mv "$doc.new" "$doc"
echo "fault matrix written to $doc"
