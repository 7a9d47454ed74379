#!/bin/sh
# Host packages for the tests and the lab (make deps), from Debian's archive
# only: nothing is ever pip-installed into the system Python. Installs only
# what is missing.
#
#   tests/lab/host-deps.sh PYTHON [TIER...]    TIERs: fast pkg lab (default: all)
#
# The tests run with PYTHON, /usr/bin/python3 unless `make PYTHON=...` chose
# another interpreter (pyenv, a venv). For /usr/bin/python3 pytest and loguru
# come from python3-pytest and python3-loguru; another interpreter must
# already have them, and is told so if it does not.
set -e
python=${1:-/usr/bin/python3}
[ $# -gt 0 ] && shift
tiers=${*:-fast pkg lab}
export DEBIAN_FRONTEND=noninteractive

has() { case " $tiers " in *" $1 "*) return 0 ;; esac; return 1; }
installed() { dpkg-query -W -f='${Status}\n' "$1" 2>/dev/null | grep -q '^install ok installed'; }

missing=""
if [ "$python" = /usr/bin/python3 ]; then
  # The fast tier and the host-driven lab scripts import pytest and loguru
  # (the rest is the standard library; proxmoxer and libzfs_core are faked).
  # The status tests check the JSON schema and parse the metrics file as
  # Prometheus would: python3-jsonschema, python3-prometheus-client.
  for pkg in python3 python3-pytest python3-loguru python3-jsonschema python3-prometheus-client; do
    installed "$pkg" || missing="$missing $pkg"
  done
fi
pairs=""
if has pkg || has lab; then pairs="mmdebstrap:mmdebstrap"; fi
if has lab; then
  pairs="$pairs qemu-system-x86_64:qemu-system-x86 qemu-img:qemu-utils mkfs.ext4:e2fsprogs zstd:zstd ssh:openssh-client"
fi
for pair in $pairs; do
  cmd=${pair%%:*}; pkg=${pair#*:}
  command -v "$cmd" >/dev/null 2>&1 || missing="$missing $pkg"
done
# The fault suite's pmxcfs is shared over virtiofs: qemu 7 (bookworm) ships
# virtiofsd in qemu-system-common, later releases in package virtiofsd.
if has lab && [ ! -x /usr/lib/qemu/virtiofsd ] && [ ! -x /usr/libexec/virtiofsd ]; then
  missing="$missing virtiofsd"
fi
if [ -n "$missing" ]; then
  [ "$(id -u)" = 0 ] || { echo "host-deps: need root to install:$missing" >&2; exit 1; }
  echo "host-deps: installing$missing" >&2
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends $missing ca-certificates debian-archive-keyring >/dev/null
fi
"$python" -c 'import pytest, loguru, jsonschema, prometheus_client' 2>/dev/null || {
  echo "host-deps: $python cannot import pytest, loguru, jsonschema and prometheus_client; install them into" \
       "that interpreter yourself, or leave PYTHON unset to use /usr/bin/python3 with Debian's python3-pytest" \
       "python3-loguru python3-jsonschema python3-prometheus-client" >&2
  exit 1
}
