#!/bin/sh
# Host packages for the lab and the tests; installs only what is missing.
set -e
missing=""
for pair in mmdebstrap:mmdebstrap qemu-system-x86_64:qemu-system-x86 qemu-img:qemu-utils mkfs.ext4:e2fsprogs \
            zstd:zstd ssh:openssh-client; do
  cmd=${pair%%:*}; pkg=${pair#*:}
  command -v "$cmd" >/dev/null 2>&1 || missing="$missing $pkg"
done
if [ -n "$missing" ]; then
  [ "$(id -u)" = 0 ] || { echo "host-deps: need root to install:$missing" >&2; exit 1; }
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    $missing ca-certificates debian-archive-keyring >/dev/null
fi
python3 -c 'import pytest, loguru' 2>/dev/null || python3 -m pip install -q pytest loguru
