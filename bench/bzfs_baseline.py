#!/usr/bin/env python3
"""Put the bzfs baseline into the lab guests: PyPI's wheel (pure Python),
checked against the sha256 PyPI publishes, unpacked into /var/tmp/bzfs on
every node. Stdlib only; the wheel is cached in /tmp."""

from __future__ import annotations

import hashlib
import html
import re
import sys
import urllib.parse
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "lab"))

import lab  # noqa: E402

VERSION = "1.25.0"
CACHE = Path(f"/tmp/bzfs-{VERSION}-py3-none-any.whl")


def wheel() -> bytes:
    """From PyPI's simple index (PEP 503): the link carries the sha256."""
    name = f"bzfs-{VERSION}-py3-none-any.whl"
    page = urllib.request.urlopen("https://pypi.org/simple/bzfs/", timeout=60).read().decode()
    m = re.search(r'href="([^"#]+/' + re.escape(name) + r')#sha256=([0-9a-f]{64})"', page)
    if m is None:
        raise SystemExit(f"{name} is not on https://pypi.org/simple/bzfs/")
    url, digest = html.unescape(m.group(1)), m.group(2)
    if not CACHE.exists() or hashlib.sha256(CACHE.read_bytes()).hexdigest() != digest:
        data = urllib.request.urlopen(urllib.parse.urljoin("https://pypi.org/simple/bzfs/", url), timeout=120).read()
        if hashlib.sha256(data).hexdigest() != digest:
            raise SystemExit(f"{name}: the download does not match PyPI's sha256")
        CACHE.write_bytes(data)
    return CACHE.read_bytes()


def main() -> int:
    data = wheel()
    lab_ = lab.Lab()
    script = ("rm -rf /var/tmp/bzfs && mkdir -p /var/tmp/bzfs && cat > /var/tmp/bzfs.whl && "
              "python3 -c 'import zipfile; zipfile.ZipFile(\"/var/tmp/bzfs.whl\").extractall(\"/var/tmp/bzfs\")'")
    for node in lab_.nodes:
        lab_.ssh(node, script, input=data, check=True)
        print(f"bzfs {VERSION}: unpacked into {node}:/var/tmp/bzfs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
