#!/usr/bin/env bash
# The main job on the built-in default scenario: install QEMU 10 and the
# guest's Debian packages if missing, build everything, then migrate the demo
# guest with each method of scenarios/demo.toml and print them side by side.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -eq 0 ]; then bash scripts/install-deps.sh; else sudo bash scripts/install-deps.sh; fi
exec cargo run --release -q -p mllm-cli -- lab run scenarios/demo.toml --out "${1:-results/demo}"
