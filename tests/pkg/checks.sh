#!/bin/sh
# Runs inside a clean Debian root (chroot) made by tests/pkg/run.sh, with
# the package's .deb at /tmp/pkg/pvezfsha.deb and the fixture at /tmp/pkg.
# Each check prints "ok NAME" or "FAIL NAME: why"; the last line is
# "<suite>: N passed, M failed".
set -u
suite=$1
pass=0 failed=0
check() {  # check NAME COMMAND...: passes when COMMAND exits 0
  name=$1; shift
  if out=$("$@" 2>&1); then pass=$((pass + 1)); echo "ok   $suite: $name"
  else failed=$((failed + 1)); echo "FAIL $suite: $name"; printf '%s\n' "$out" | sed 's/^/     | /' | tail -15; fi
}
mode_is() { [ "$(stat -c '%a %U:%G' "$1")" = "$2" ] || { stat -c '%a %U:%G %n' "$1"; false; }; }
tree_sum() { (cd /tank && find . -printf '%p %m %s %T@\n' | sort; find . -type f -exec sha256sum {} + | sort) | sha256sum; }

export DEBIAN_FRONTEND=noninteractive
PATH=/usr/sbin:/usr/bin:/sbin:/bin

# A fake dataset tree: what must survive install, init, doctor and purge untouched.
mkdir -p /tank/media/photos /tank/files
head -c 100000 /dev/urandom > /tank/media/photos/a.jpg
echo "report" > /tank/files/report.txt
before=$(tree_sum)

check "apt resolves the dependencies (main + contrib) and installs the .deb" \
  apt-get install -y -q --no-install-recommends /tmp/pkg/pvezfsha.deb
check "dpkg reports it installed" sh -c 'dpkg-query -W -f="\${Status}" pvezfsha | grep -qx "install ok installed"'
check "pvezfsha --version prints 0.1.0" sh -c '[ "$(pvezfsha --version)" = "pvezfsha 0.1.0" ]'
check "/usr/bin/pvezfsha is 0755 root" mode_is /usr/bin/pvezfsha "755 root:root"
check "/usr/bin/pvezfsha starts without importlib.metadata (a slow entry-point lookup)" sh -c \
  '! python3 -X importtime /usr/bin/pvezfsha --version 2>&1 | grep -q "importlib.metadata"'
check "hookscript snippet is 0755 root" mode_is /var/lib/vz/snippets/pvezfsha-hook "755 root:root"
check "example config is 0644 and a conffile" sh -c \
  'stat -c %a /etc/pvezfsha/pvezfsha.toml | grep -qx 644 && dpkg-query -W -f="\${Conffiles}" pvezfsha | grep -q " /etc/pvezfsha/pvezfsha.toml "'
check "man page pvezfsha(8) installed" test -s /usr/share/man/man8/pvezfsha.8.gz
check "man page covers every command" sh -c 'for c in sync status receive init doctor hook promote demote diverged is-primary transfer; do
  zcat /usr/share/man/man8/pvezfsha.8.gz | sed "s/\\\\-/-/g" | grep -q "^\.B.* $c\|^\.BR $c\|^\.B $c" || { echo "missing $c"; exit 1; }; done'
check "bash completion installed" test -s /usr/share/bash-completion/completions/pvezfsha
check "systemd units installed" test -s /lib/systemd/system/pvezfsha-sync.timer -a -s /lib/systemd/system/pvezfsha-sync.service
check "timer enabled" test -L /etc/systemd/system/timers.target.wants/pvezfsha-sync.timer
check "sync with no container configured is a quiet success" sh -c \
  'out=$(pvezfsha sync 2>&1) && [ -z "$out" ] || { echo "exit $? output: $out"; false; }'
check "a bad CTID is a one-line usage error, exit 2" sh -c \
  'out=$(pvezfsha init abc 2>&1); rc=$?; [ $rc = 2 ] && [ "$(printf "%s\n" "$out" | grep -c error)" = 1 ]'

# Against the prepared /etc/pve tree, with stand-ins for zfs and for ssh to pve2.
export PVEZFSHA_PVE_ROOT=/tmp/pkg/pve PATH=/tmp/pkg/bin:$PATH
check "init 103 maps mp0/mp1 to datasets and writes the config" sh -c \
  'pvezfsha init 103 > /tmp/init.out 2>&1 && cat /tmp/init.out &&
   grep -q "^+datasets = \[\"tank/media\", \"tank/files\"\]" /tmp/init.out &&
   grep -q "^ctid = 103" /etc/pvezfsha/pvezfsha.toml && grep -q "ha-manager set ct:103" /tmp/init.out'
check "init again changes nothing" sh -c 'pvezfsha init 103 | grep -q "nothing to change"'
check "the written config loads (sync --dry-run does not exit 2)" sh -c 'pvezfsha sync --dry-run 103 || [ $? = 1 ]'
check "doctor --json: parseable, per-check results as expected" python3 - <<'PY'
import json, subprocess
p = subprocess.run(["pvezfsha", "doctor", "--json", "103"], capture_output=True, text=True)
doc = json.loads(p.stdout)
got = {}
for c in doc["checks"]:
    got.setdefault(c["check"], set()).add(c["status"])
print(json.dumps(doc, indent=1))
want_ok = ["config", "quorum", "timer", "ssh", "clock", "snippet", "hookscript", "rootfs", "mountpoint", "datasets", "ha"]
bad = [k for k in want_ok if got.get(k) != {"ok"}]
assert not bad, f"not ok: {bad}"
# No ZFS module in a chroot: pyzfs cannot reach the pool, so doctor fails and says why.
assert got["pyzfs"] == {"FAIL"}, got["pyzfs"]
assert p.returncode == 1 and doc["ok"] is False, p.returncode
assert all(c["hint"] for c in doc["checks"] if c["status"] != "ok")
PY
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
unset PVEZFSHA_PVE_ROOT

mkdir -p /run/pvezfsha/locks && touch /run/pvezfsha/locks/tank%media.lock
check "purge succeeds" apt-get purge -y -q pvezfsha
check "purge removed pvezfsha's own state and files" sh -c \
  '! test -e /run/pvezfsha && ! test -e /etc/pvezfsha && ! test -e /var/lib/vz/snippets/pvezfsha-hook && ! test -e /usr/bin/pvezfsha &&
   ! test -e /etc/systemd/system/timers.target.wants/pvezfsha-sync.timer'
after=$(tree_sum)
check "nothing under the dataset directories was touched" test "$before" = "$after"
echo "$suite: $pass passed, $failed failed"
[ "$failed" = 0 ]
