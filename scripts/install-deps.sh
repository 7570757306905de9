#!/usr/bin/env bash
# Installs what mllm needs on a Debian bookworm host: QEMU 10.0 from
# bookworm-backports (7.2 loses dirty pages under TCG, see docs/), the
# Debian packages the guest image is built from (busybox, and debootstrap
# with e2fsprogs for the optional Debian root disk), and tools used by tests.
set -euo pipefail

if [ "$(id -u)" -ne 0 ]; then
  echo "install-deps.sh must run as root (it uses apt-get)" >&2
  exit 1
fi

backports=/etc/apt/sources.list.d/mllm-bookworm-backports.sources
if [ ! -f "$backports" ]; then
  cat >"$backports" <<'SRC'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
fi

need_install=0
if ! command -v qemu-system-x86_64 >/dev/null 2>&1; then need_install=1; fi
if ! qemu-system-x86_64 --version 2>/dev/null | grep -q 'version 10\.'; then need_install=1; fi
for pkg in busybox-static cpio zstd debootstrap e2fsprogs; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need_install=1
done

if [ "$need_install" -eq 1 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q -t bookworm-backports qemu-system-x86 qemu-utils
  apt-get install -y -q busybox-static cpio zstd debootstrap e2fsprogs
fi
qemu-system-x86_64 --version | head -1

# .ci/run checks formatting and lints before the tests.
if command -v rustup >/dev/null 2>&1; then
  for component in rustfmt clippy; do
    rustup component list --installed | grep -q "^$component" || rustup component add "$component"
  done
fi
