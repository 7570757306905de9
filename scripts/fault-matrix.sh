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
# Faults that need real agent processes (a killed and restarted agent) are
# the daemon's tests; each appends its row.
MLLM_FAULT_MATRIX_ROWS="$table" \
    cargo test --release -p mllm-daemon --test daemon a_source_agent_killed -- --nocapture

source scripts/lib/splice-doc.sh
splice_table docs/reliability.md fault-matrix "Recorded $(date -u +%Y-%m-%d) at commit $(git rev-parse --short HEAD) with \`scripts/fault-matrix.sh\`:" "$table"
