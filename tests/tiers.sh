#!/bin/bash
# `make test`: install the host dependencies, run the selected tiers (make
# TIERS="fast pkg lab", the default), then print one summary line per tier.
#
# $OUT (.test-out) is cleared first, so no summary line can come from an
# earlier run. A tier that stopped before writing its log (make deps or
# make deb failed, say) shows `not run (<why>)`, the why taken from make's
# own error line.
#
#   tests/tiers.sh TIER...                  run the tiers, then the summary
#   tests/tiers.sh --summary TIER...        only the summary of what is in $OUT
set -uo pipefail
cd "$(dirname "$0")/.."
make=${MAKE:-make}
out=${OUT:-.test-out}
all="fast pkg lab"

logs() {  # the logs a tier writes
  case $1 in
    fast) echo fast ;; pkg) echo pkg ;; lab) echo "lab failover faults" ;;
    *) echo "tiers: unknown tier $1 (known: $all)" >&2; return 1 ;;
  esac
}

label() {
  case $1 in
    fast) echo "fast tier (this machine)" ;;
    pkg) echo "package tier (bookworm, trixie roots)" ;;
    lab) echo "lab tier (real OpenZFS, in pve1)" ;;
    failover) echo "lab failover tier (real OpenZFS, host-driven, power cuts)" ;;
    faults) echo "fault suite (real OpenZFS, 3 nodes, emulated pmxcfs, HA simulator)" ;;
  esac
}

result() {  # result LOG: the tier's own count line, or not run (why)
  local log=$1 f=$out/$1.log line
  if [ ! -e "$f" ]; then
    echo "not run ($(cat "$out/$log.why" 2>/dev/null || echo "not selected: TIERS=$selected"))"
    return
  fi
  if [ "$log" = pkg ]; then
    line=$(grep -E '^pkg: [0-9]+ passed' "$f" | tail -1)
  else
    line=$(grep -E '^=*.* (passed|failed|error)' "$f" | tail -1 | tr -d '\r=' | sed 's/^ *//; s/ *$//')
  fi
  echo "${line:-no count line in $f (see its output above)}"
}

summary() {
  echo; echo "== summary =="
  local tier log
  for tier in $all; do
    for log in $(logs "$tier"); do echo "$(label "$log"): $(result "$log")"; done
  done
}

why() {  # why MAKE-OUTPUT STATUS: the first target make reports as failed
  local target
  target=$(sed -n 's/^.*\*\*\* \[[^]]*: \([^] ]*\)\] Error.*$/\1/p' "$1" | head -1)
  if [ -n "$target" ]; then echo "make $target failed"
  elif [ "$2" != 0 ]; then echo "exit $2 before writing its log"
  else echo "no log written"
  fi
}

if [ "${1:-}" = --summary ]; then
  shift; selected=${*:-$all}; summary; exit 0
fi
selected=${*:-$all}
for tier in $selected; do logs "$tier" >/dev/null || exit 2; done

rm -rf "$out"
mkdir -p "$out"
rc=0
"$make" --no-print-directory deps 2>&1 | tee "$out/deps.out"
st=${PIPESTATUS[0]}
if [ "$st" != 0 ]; then
  rc=1
  for tier in $selected; do for log in $(logs "$tier"); do why "$out/deps.out" "$st" > "$out/$log.why"; done; done
else
  for tier in $selected; do
    "$make" --no-print-directory "test-$tier" 2>&1 | tee "$out/$tier.out"
    st=${PIPESTATUS[0]}
    [ "$st" = 0 ] || rc=1
    for log in $(logs "$tier"); do
      [ -e "$out/$log.log" ] || why "$out/$tier.out" "$st" > "$out/$log.why"
    done
  done
fi
summary
exit $rc
