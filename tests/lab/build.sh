#!/usr/bin/env bash
# Build (or reuse) the real-OpenZFS lab image: Debian trixie guest, zfs-dkms
# module built for its exact kernel, pyzfs, sshd. The image is cached outside
# the clone, keyed by a hash of this recipe, so a second run costs nothing.
# Recipe: ../shared/research/zfslab.md (proven on these machines).
#
# Prints the cache directory on stdout. Needs root (mmdebstrap, chroot).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
cache_root=${PVEZFSHA_LAB_CACHE:-/var/cache/pvezfsha-lab}
mirror=${PVEZFSHA_LAB_MIRROR:-http://deb.debian.org/debian}
key=$(cat "$here/build.sh" "$here/guest-init" | sha256sum | cut -c1-16)
out="$cache_root/$key"

log() { echo "lab-build: $*" >&2; }

if [[ -f "$out/ready" ]]; then
  log "reusing image $out"
  echo "$out"
  exit 0
fi

need=(mmdebstrap qemu-system-x86_64 mkfs.ext4 ssh-keygen)
missing=()
for t in "${need[@]}"; do command -v "$t" >/dev/null || missing+=("$t"); done
if ((${#missing[@]})); then
  log "installing host tools (missing: ${missing[*]})"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    mmdebstrap qemu-system-x86 e2fsprogs zstd ca-certificates debian-archive-keyring \
    openssh-client >&2
fi

work=$(mktemp -d "${cache_root}/build.XXXXXX" 2>/dev/null || { mkdir -p "$cache_root"; mktemp -d "${cache_root}/build.XXXXXX"; })
trap 'rm -rf "$work"' EXIT
t0=$(date +%s)

# Packages of the guest. Recommends off, or zfsutils-linux drags zfs-dkms and a
# compiler into the image. sanoid (syncoid), mbuffer and pv are the baselines
# the benchmarks compare against.
pkgs=linux-image-cloud-amd64,zfsutils-linux,python3-pyzfs,python3,python3-pytest
pkgs+=,python3-loguru,python3-proxmoxer,openssh-server,openssh-client,iproute2
pkgs+=,kmod,procps,sanoid,mbuffer,pv,util-linux,psmisc

log "1/4 guest rootfs"
mmdebstrap --quiet --variant=minbase --components=main,contrib \
  --aptopt='APT::Install-Recommends "false"' --include="$pkgs" \
  trixie "$work/runtime" "$mirror" >&2
kver=$(ls "$work/runtime/lib/modules" | sort -V | tail -1)
zfsver=$(chroot "$work/runtime" dpkg-query -W -f='${Version}' zfsutils-linux)
log "kernel $kver, zfs $zfsver"

modcache="$cache_root/modules/$kver-$zfsver"
if ! ls "$modcache"/zfs.ko* >/dev/null 2>&1; then
  log "2/4 building zfs module (pinned to $kver / $zfsver)"
  # Pinned to the exact kernel and zfs version so a mirror update between the
  # two mmdebstrap runs cannot give a module with the wrong vermagic.
  mmdebstrap --quiet --variant=minbase --components=main,contrib \
    --aptopt='APT::Install-Recommends "false"' \
    --include="linux-headers-$kver,zfs-dkms=$zfsver,dkms,build-essential" \
    --customize-hook="chroot \"\$1\" sh -c 'ls /lib/modules/$kver/updates/dkms/zfs.ko* || dkms autoinstall -k $kver'" \
    trixie "$work/builder" "$mirror" >&2
  mkdir -p "$modcache"
  cp "$work/builder/lib/modules/$kver/updates/dkms/"*.ko* "$modcache/"
  rm -rf "$work/builder"
else
  log "2/4 zfs module cached in $modcache"
fi

log "3/4 modules, init, keys"
r="$work/runtime"
mkdir -p "$r/lib/modules/$kver/updates/dkms"
cp "$modcache"/*.ko* "$r/lib/modules/$kver/updates/dkms/"
chroot "$r" depmod -a "$kver"
chroot "$r" modinfo -k "$kver" -F vermagic zfs >&2
install -m 0755 "$here/guest-init" "$r/sbin/lab-init"
# One lab key: the host drives the guests with it and the guests use it
# between themselves, as the nodes of a PVE cluster share root's key.
ssh-keygen -q -t ed25519 -N '' -C pvezfsha-lab -f "$work/id_lab"
install -d -m 0700 "$r/root/.ssh"
install -m 0600 "$work/id_lab" "$r/root/.ssh/id_ed25519"
install -m 0644 "$work/id_lab.pub" "$r/root/.ssh/id_ed25519.pub"
install -m 0600 "$work/id_lab.pub" "$r/root/.ssh/authorized_keys"
printf 'Host *\n  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n  LogLevel ERROR\n' > "$r/root/.ssh/config"
chroot "$r" ssh-keygen -A >/dev/null
printf 'UseDNS no\nPermitRootLogin prohibit-password\nMaxStartups 100\nMaxSessions 100\n' > "$r/etc/ssh/sshd_config.d/lab.conf"
rm -f "$r/etc/hostname"
cp "$r/boot/vmlinuz-$kver" "$work/vmlinuz"
cp "$r/boot/initrd.img-$kver" "$work/initrd.img"

log "4/4 disk image"
# Sparse and roomy: the pools are file vdevs on the root disk.
truncate -s 8G "$work/root.img"
mkfs.ext4 -q -F -E root_owner=0:0 -d "$r" "$work/root.img"
rm -rf "$r"

mkdir -p "$out"
mv "$work/root.img" "$work/vmlinuz" "$work/initrd.img" "$work/id_lab" "$work/id_lab.pub" "$out/"
echo "kernel=$kver zfs=$zfsver built=$(date -u +%FT%TZ)" > "$out/ready"
log "done in $(( $(date +%s) - t0 )) s: $out"
echo "$out"
