#!/bin/bash
# make test-fresh: the README's two commands, as root, in a clean Debian
# bookworm root made by mmdebstrap (minbase, main and contrib: no sudo, no
# python3, no make, nothing of the project's), so no step can depend on what
# this machine happens to have installed.
#
# What runs inside, from /root/pvezfsha (a clone of this work tree with its
# uncommitted and untracked files):
#   the README's first command without its final `&& make demo`
#   the README's second command with TIERS="fast pkg": `make deps`, the fast
#   tier, `make deb` and the package tier (itself mmdebstrap roots, nested);
#   the lab is left out (qemu belongs to `make test` on the host).
# /proc, /sys and /dev are bind-mounted; commands read from README.md, so a
# README that changes them is what is tested.
#
# The base root is cached as a tarball under /var/cache/pvezfsha-fresh keyed
# by the hash of its mmdebstrap recipe (rebuilt after 7 days); each run
# unpacks a fresh copy. apt's downloaded .debs are kept in the cache, and the
# package tier's base tarballs are shared with the host's (/var/cache/
# pvezfsha-lab/pkg); what is installed is installed anew every time.
set -uo pipefail
cd "$(dirname "$0")/../.."
[ "$(id -u)" = 0 ] || { echo "fresh: needs root (mmdebstrap, chroot)" >&2; exit 1; }
command -v mmdebstrap >/dev/null || tests/lab/host-deps.sh /usr/bin/python3 pkg
command -v git >/dev/null || { echo "fresh: needs git on this machine to clone the work tree" >&2; exit 1; }
t0=$SECONDS
cache=${PVEZFSHA_FRESH_CACHE:-/var/cache/pvezfsha-fresh}
pkgcache=${PVEZFSHA_LAB_CACHE:-/var/cache/pvezfsha-lab}/pkg
mirror=${PVEZFSHA_MIRROR:-http://deb.debian.org/debian}
recipe=(--variant=minbase --components=main,contrib bookworm)
key=$(printf '%s\n' "${recipe[@]}" "$mirror" | sha256sum | cut -c1-12)
tar=$cache/bookworm-$key.tar
mkdir -p "$cache/archives/partial" "$pkgcache"
work=$(mktemp -d /var/tmp/pvezfsha-fresh.XXXXXX)
root=$work/root
mounts=()
cleanup() {
  local m
  for ((i = ${#mounts[@]} - 1; i >= 0; i--)); do umount -l "${mounts[i]}" 2>/dev/null; done
  # Anything still mounted below $work (a nested run stopped halfway) goes too;
  # if it cannot, $work is kept rather than removed through a mount.
  for m in $(awk -v w="$work/" 'index($2, w) == 1 {print $2}' /proc/self/mounts | sort -r); do umount -l "$m"; done
  if awk -v w="$work/" 'index($2, w) == 1 {found = 1} END {exit !found}' /proc/self/mounts; then
    echo "fresh: mounts left under $work; not removing it" >&2
  else
    rm -rf --one-file-system "$work"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The README's commands: the first sh block's two lines, comments dropped.
mapfile -t cmds < <(awk '/^```sh$/ {on = 1; next} on && /^```/ {exit} on' README.md | sed 's/ *#.*$//')
first=${cmds[0]:-} second=${cmds[1]:-}
[ "${first% && make demo}" != "$first" ] && [ "$second" = "make test" ] || {
  echo "fresh: README's commands are not '... && make demo' and 'make test': update tests/fresh/run.sh" >&2
  printf '  %s\n' "${cmds[@]}" >&2; exit 1; }
first=${first% && make demo}
second="$second TIERS=\"fast pkg\""

if [ -z "$(find "$tar" -mtime -7 2>/dev/null)" ]; then
  echo "fresh: building the bookworm base root (mmdebstrap ${recipe[*]}, cached as $tar)"
  mmdebstrap --quiet "${recipe[@]}" "$cache/.bookworm-$key.tmp.tar" "$mirror" \
    && mv "$cache/.bookworm-$key.tmp.tar" "$tar" || { echo "fresh: mmdebstrap failed"; exit 1; }
fi
mkdir -p "$root"
tar -xf "$tar" -C "$root" || { echo "fresh: cannot unpack $tar"; exit 1; }
for tool in sudo make git python3 pytest; do
  chroot "$root" sh -c "command -v $tool" >/dev/null && { echo "fresh: the base root already has $tool"; exit 1; }
done
# The source: a clone of this work tree plus its uncommitted and untracked
# (not ignored) files, so `make deb` (git ls-files) sees what is here.
git clone --quiet --no-hardlinks "$PWD" "$root/root/pvezfsha" || exit 1
git ls-files -co --exclude-standard -z | tar --null -T - -cf - | tar -xf - -C "$root/root/pvezfsha" || exit 1
cp /etc/resolv.conf "$root/etc/resolv.conf"
for m in proc sys dev; do mount --rbind "/$m" "$root/$m" && mounts+=("$root/$m") || exit 1; done
mount --bind "$cache/archives" "$root/var/cache/apt/archives" && mounts+=("$root/var/cache/apt/archives") || exit 1
mkdir -p "$root/var/cache/pvezfsha-lab/pkg"
mount --bind "$pkgcache" "$root/var/cache/pvezfsha-lab/pkg" && mounts+=("$root/var/cache/pvezfsha-lab/pkg") || exit 1

echo "fresh: in a clean bookworm root, as root, in /root/pvezfsha:"
echo "fresh: \$ $first"
echo "fresh: \$ $second"
# A root login's environment; stdin is no terminal, so debconf asks nothing.
chroot "$root" /usr/bin/env -i HOME=/root USER=root LOGNAME=root SHELL=/bin/sh TERM=dumb \
  PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive \
  /bin/sh -c "cd /root/pvezfsha && { $first; } && { $second; }" </dev/null
rc=$?
chroot "$root" /bin/sh -c "command -v pip pip3" >/dev/null && echo "fresh: note: pip is installed in the root"
echo "fresh: README commands in a clean bookworm root: $([ $rc = 0 ] && echo ok || echo "FAILED (exit $rc)") in $((SECONDS - t0)) s"
exit $rc
