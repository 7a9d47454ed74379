#!/bin/sh
# Build pvezfsha_<version>_all.deb into build/ (make deb), then lintian it.
#
# The source tree handed to dpkg-buildpackage is a copy of the work tree
# (tracked and untracked files, not ignored ones) with packaging/debian as
# debian/, so the build never writes into the checkout. Build dependencies
# are installed when missing (root). The PATH is Debian's own: dh-python
# must build with /usr/bin/python3, not a python from pyenv or a venv.
set -eu
cd "$(dirname "$0")/.."
PATH=/usr/sbin:/usr/bin:/sbin:/bin
export PATH DEBIAN_FRONTEND=noninteractive

deps="git build-essential debhelper dh-python python3-all python3-setuptools lintian dpkg-dev fakeroot"
missing=""
for p in $deps; do
  dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed' || missing="$missing $p"
done
if [ -n "$missing" ]; then
  [ "$(id -u)" = 0 ] || { echo "build-deb: need root to install:$missing" >&2; exit 1; }
  echo "build-deb: installing$missing" >&2
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

version=$(dpkg-parsechangelog -l packaging/debian/changelog -S Version)
out=build
src=$out/pvezfsha-$version
rm -rf "$out"/pvezfsha-* "$out"/pvezfsha_*
mkdir -p "$src"
# Copy with tar so modes (the hookscript's 0755) are kept.
git ls-files -co --exclude-standard -z \
  | grep -zv -e '^build/' -e '/__pycache__/' -e '\.pyc$' \
  | tar --null -T - -cf - | tar -xf - -C "$src"
cp -r packaging/debian "$src/debian"
(cd "$src" && dpkg-buildpackage -us -uc -b) > "$out/build.log" 2>&1 || {
  tail -40 "$out/build.log" >&2; echo "build-deb: dpkg-buildpackage failed (log: $out/build.log)" >&2; exit 1; }
deb="$out/pvezfsha_${version}_all.deb"
echo "build-deb: built $deb" >&2
# lintian: 0 errors, 0 warnings; overrides are in debian/pvezfsha.lintian-overrides with reasons.
lintian --fail-on error,warning --info "$deb" > "$out/lintian.txt" 2>&1 && rc=0 || rc=$?
cat "$out/lintian.txt" >&2
echo "build-deb: lintian: $(grep -c '^E:' "$out/lintian.txt" || true) errors, $(grep -c '^W:' "$out/lintian.txt" || true) warnings" >&2
[ "$rc" = 0 ] || exit "$rc"
echo "$deb"
