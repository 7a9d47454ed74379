"""Dataset names on real OpenZFS: pvezfsha accepts a name exactly when
`zfs create` does, and a name with a space replicates like any other."""

import random
import sys
from pathlib import Path

import pytest

from labnode import checksums, sh, snapshots

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # tests/, for the shared table

from zfsnames import NAMES  # noqa: E402

from pvezfsha.config import check_dataset_name  # noqa: E402


def test_a_dataset_with_a_space_in_its_name_is_replicated(make_group):
    ctid = random.randint(1000, 999_999)
    g = make_group(ctid=ctid, names=[f"tank/t{ctid} my data"])
    g.write("a.bin", 4)
    sh("pve1", ["sh", "-c", 'echo hello > "$1/b c.txt"', "sh", g.mnt])
    g.sync()
    src = checksums("pve1", g.ds)
    assert len(src) == 2
    assert checksums("pve2", g.ds) == src
    assert snapshots("pve2", g.ds) == snapshots("pve1", g.ds)
    g.write("c.bin", 1)
    p = g.sync()
    assert " -> @" in p.stderr, p.stderr          # the next cycle is incremental
    assert checksums("pve2", g.ds) == checksums("pve1", g.ds)


def _checker_accepts(name: str) -> bool:
    try:
        check_dataset_name(name)
        return True
    except ValueError:
        return False


@pytest.mark.parametrize("name,accepted", [(n, ok) for n, ok in NAMES if n.startswith(("tank/", "/tank/"))],
                         ids=repr)
def test_a_name_is_accepted_exactly_when_zfs_create_accepts_it(name, accepted):
    assert _checker_accepts(name) == accepted      # the table is what the checker says
    assert sh("pve1", ["zfs", "list", "-H", "-o", "name", name], check=False).returncode != 0, \
        f"{name!r} exists already; the table must name datasets nobody has"
    # canmount=off: the name is what is tested, not whether it can be mounted.
    p = sh("pve1", ["zfs", "create", "-o", "canmount=off", name], check=False)
    try:
        assert (p.returncode == 0) == accepted, f"zfs create {name!r}: exit {p.returncode}: {p.stderr.strip()}"
    finally:
        if p.returncode == 0:
            sh("pve1", ["zfs", "destroy", name], check=False)
