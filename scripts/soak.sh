#!/usr/bin/env bash
# The soak (docs/reliability.md): one guest, writing its memory, moved back
# and forth between two `mllm agent` daemons MOVES times (default 24), checked
# after every move, with time and bytes per move and both agents' memory and
# open descriptors. The test suite runs 4 moves; this writes the table into
# docs/reliability.md between its soak markers.
#
#   scripts/soak.sh
#   MOVES=100 scripts/soak.sh
set -euo pipefail
cd "$(dirname "$0")/.."

moves=${MOVES:-24}
table=$(mktemp)
trap 'rm -f "$table"' EXIT
MLLM_SOAK_MOVES="$moves" MLLM_SOAK_OUT="$table" \
    cargo test --release -p mllm-daemon --test daemon a_guest_moves_back_and_forth -- --nocapture

source scripts/lib/splice-doc.sh
splice_table docs/reliability.md soak "Recorded $(date -u +%Y-%m-%d) at commit $(git rev-parse --short HEAD) with \`scripts/soak.sh\` ($moves moves):" "$table"
