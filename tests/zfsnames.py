"""Dataset names as OpenZFS's zfs_namecheck.c judges them: (name, accepted).

Shared by the fast test of config.check_dataset_name and the lab test that
checks the `tank/` rows against a real `zfs create` (tests/lab/test_names.py).
The `tank/` rows that are accepted are single, unusual components under the
pool, so `zfs create` needs no parent and meets no existing dataset; the
other rows are about pool names, which `zfs create` cannot test without
creating pools.
"""

NAMES = [
    ("tank/nm-media", True),
    ("tank/nm my data", True),              # a space is a valid character
    ("tank/nm_b-c:d.e", True),
    ("tank/ nm lead and trail ", True),
    ("tank/...", True),                     # only "." and ".." are reserved
    ("tank/nm" + "y" * 248, True),          # 255 characters: the longest name
    ("tank/nm" + "y" * 249, False),         # 256 with the NUL: too long
    ("tank/nm-media\n", False),
    ("tank/nm\tb", False),
    ("tank/nm@snap", False),
    ("tank/nm#mark", False),
    ("tank/nm%b", False),
    ("tank/nm;b", False),
    ("tank/nm\u00e9", False),               # isalnum in the C locale: ASCII only
    ("tank//nm", False),
    ("tank/nm/", False),
    ("/tank/nm", False),
    ("tank/.", False),
    ("tank/..", False),
    ("tank/./nm", False),
    ("", False),
    ("logs/a", True),
    ("Tank", True),
    ("1tank/a", False),                     # a pool name begins with a letter
    ("_tank", False),
    ("mirror/a", False),                    # reserved by zpool
    ("raidz2/a", False),
    ("draid1/a", False),
    ("spare/a", False),
    ("log/a", False),
    ("c0t0d0/a", False),                    # looks like a Solaris disk
    ("c/a", True),
    ("p" * 239 + "/a", True),               # a pool name leaves room for $ORIGIN
    ("p" * 240 + "/a", False),
]
