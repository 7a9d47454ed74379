"""`make demo`: replicate a container's dataset from pve1 to pve2 on real
OpenZFS, and show what happened. Runs inside lab guest pve1."""

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from labnode import Group, checksums, replication_name, sh, snapshots  # noqa: E402


def show(title: str, text: str = "") -> None:
    print(f"\n=== {title}")
    if text.strip():
        print(text.rstrip())


def main() -> int:
    Group(ctid=103, names=["tank/media"], create=False).cleanup()   # a previous demo's, holds included
    g = Group(ctid=103, names=["tank/media"], keep=144)
    show("config /var/tmp/pvezfsha-103.toml on both nodes", sh("pve1", ["cat", g.config]).stdout)
    print("primary (owner in .vmlist): pve1; standby: pve2")

    g.write("movie.mkv", 64)
    sh("pve1", f"mkdir -p {g.mnt}/photos && for i in 1 2 3; do head -c 300000 /dev/urandom > {g.mnt}/photos/$i.jpg; done")
    show("cycle 1: pvezfsha sync 103 (first, full send)", g.sync().stderr)

    for i in range(3):
        g.write(f"episode{i}.mkv", 8)
        sh("pve1", ["zfs", "snapshot", f"{g.ds}@{replication_name(i)}"])
    g.write("notes.txt", 1)
    show("cycle 2: three intermediate snapshots and new writes (incremental chain)", g.sync().stderr)
    show("cycle 3: nothing changed", g.sync().stderr)

    src, dst = snapshots("pve1", g.ds), snapshots("pve2", g.ds)
    show("snapshots (name, guid) on pve1 / pve2",
         "\n".join(f"  {a[0]:48} {a[1]:>20}   {'same guid on pve2' if a in dst else 'MISSING on pve2'}"
                   for a in src))
    same = checksums("pve1", g.ds) == checksums("pve2", g.ds)
    show("files by sha256", f"{len(checksums('pve1', g.ds))} files, identical on pve2: {same}")
    show("standby properties on pve2",
         sh("pve2", ["zfs", "get", "-H", "-o", "property,value", "readonly,canmount,mounted", g.ds]).stdout)
    time.sleep(1)
    show("pvezfsha status 103 (on pve1)", g.run("status", "103", check=True).stdout)
    show("pvezfsha status 103 (on pve2)", g.run("status", "103", node="pve2", check=True).stdout)
    return 0 if same and src == dst else 1


if __name__ == "__main__":
    sys.exit(main())
