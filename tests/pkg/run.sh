#!/bin/bash
# Package tier (make test-pkg): install the built .deb into clean Debian
# roots, bookworm (PVE 8) and trixie (PVE 9), made with mmdebstrap from main
# and contrib, and run tests/pkg/checks.sh inside each.
#
# The minimal base roots are cached as tarballs under
# /var/cache/pvezfsha-lab/pkg/ (rebuilt when older than 7 days), and the
# .debs apt downloads are kept there too; each run still starts from a
# fresh copy of the base root, so apt resolves the dependencies every time.
set -uo pipefail
cd "$(dirname "$0")/../.."
deb=${1:?usage: tests/pkg/run.sh path/to/pvezfsha.deb}
[ "$(id -u)" = 0 ] || { echo "pkg tier: needs root (chroot)" >&2; exit 1; }
command -v mmdebstrap >/dev/null || tests/lab/host-deps.sh /usr/bin/python3 pkg
cache=${PVEZFSHA_LAB_CACHE:-/var/cache/pvezfsha-lab}/pkg
mirror=${PVEZFSHA_MIRROR:-http://deb.debian.org/debian}
mkdir -p "$cache"
work=$(mktemp -d /var/tmp/pvezfsha-pkg.XXXXXX)
mounts=()
cleanup() {
  for ((i = ${#mounts[@]} - 1; i >= 0; i--)); do umount -l "${mounts[i]}" 2>/dev/null; done
  rm -rf --one-file-system "$work"
}
trap cleanup EXIT

base() {  # base SUITE: path of the cached base tarball, built when missing or stale
  local suite=$1 tar=$cache/$1-base.tar
  if [ -z "$(find "$tar" -mtime -7 2>/dev/null)" ]; then
    echo "pkg tier: building the $suite base root (mmdebstrap, cached in $cache)" >&2
    mmdebstrap --quiet --variant=minbase --components=main,contrib \
      --aptopt='APT::Install-Recommends "false"' --include=init-system-helpers,python3 \
      "$suite" "$cache/.$suite-base.tmp.tar" "$mirror" >&2 && mv "$cache/.$suite-base.tmp.tar" "$tar" || return 1
  fi
  echo "$tar"
}

total_pass=0 total_fail=0 rc=0
for suite in bookworm trixie; do
  t0=$SECONDS
  tar=$(base "$suite") || { echo "FAIL $suite: mmdebstrap"; total_fail=$((total_fail + 1)); rc=1; continue; }
  root=$work/$suite
  mkdir -p "$root" "$cache/$suite-archives/partial"
  tar -xf "$tar" -C "$root" || { echo "FAIL $suite: cannot unpack $tar"; total_fail=$((total_fail + 1)); rc=1; continue; }
  mkdir -p "$root/tmp/pkg"
  cp -a tests/pkg/fixture/. "$root/tmp/pkg/"
  cp "$deb" "$root/tmp/pkg/pvezfsha.deb"
  cp tests/pkg/checks.sh "$root/tmp/pkg/checks.sh"
  cp /etc/resolv.conf "$root/etc/resolv.conf" 2>/dev/null
  for m in proc sys dev; do mount --rbind "/$m" "$root/$m" && mounts+=("$root/$m"); done
  mount --bind "$cache/$suite-archives" "$root/var/cache/apt/archives" && mounts+=("$root/var/cache/apt/archives")
  chroot "$root" apt-get update -qq >/dev/null 2>&1 || chroot "$root" apt-get update -q
  chroot "$root" /bin/sh /tmp/pkg/checks.sh "$suite" | tee "$work/$suite.log"
  last=$(tail -1 "$work/$suite.log")
  p=$(sed -n 's/.*: \([0-9]*\) passed.*/\1/p' <<<"$last"); f=$(sed -n 's/.* \([0-9]*\) failed$/\1/p' <<<"$last")
  total_pass=$((total_pass + ${p:-0})); total_fail=$((total_fail + ${f:-1}))
  [ "${f:-1}" = 0 ] || rc=1
  for ((i = ${#mounts[@]} - 1; i >= 0; i--)); do umount -l "${mounts[i]}" 2>/dev/null; done
  mounts=()
  echo "pkg tier: $suite done in $((SECONDS - t0)) s" >&2
done
echo "pkg: $total_pass passed, $total_fail failed"
exit $rc
