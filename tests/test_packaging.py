"""The Debian packaging agrees with the code: version, dependencies,
installed files, and the man page and completion cover every command."""

import re
from pathlib import Path

from pvezfsha import __version__
from pvezfsha.cli import parser

ROOT = Path(__file__).resolve().parents[1]
DEBIAN = ROOT / "packaging" / "debian"


def commands() -> set[str]:
    sub = next(a for a in parser()._actions if a.dest == "command")
    return set(sub.choices)


def test_changelog_version_is_the_package_version():
    first = (DEBIAN / "changelog").read_text().splitlines()[0]
    assert re.match(r"^pvezfsha \(([^)]+)\)", first).group(1) == __version__


def test_depends_are_the_ones_the_issue_names():
    control = (DEBIAN / "control").read_text()
    deps = re.search(r"^Depends:(.*?)(?=^\S)", control, re.S | re.M).group(1)
    names = [d.strip() for d in deps.replace("\n", " ").split(",") if d.strip()]
    assert [n for n in names if not n.startswith("${")] == [
        "python3 (>= 3.11)", "python3-pyzfs", "python3-loguru", "python3-proxmoxer", "zfsutils-linux",
        "openssh-client"]


def test_every_installed_source_file_exists():
    for line in (DEBIAN / "pvezfsha.install").read_text().splitlines():
        src = line.split()[0]
        assert (ROOT / src).is_file(), src
    assert (ROOT / "hookscripts/pvezfsha-hook").stat().st_mode & 0o111


def test_man_page_and_completion_cover_every_command():
    man = (ROOT / "packaging/pvezfsha.8").read_text()
    completion = (ROOT / "packaging/bash-completion/pvezfsha").read_text()
    documented = {c.replace("\\-", "-") for c in re.findall(r"^\.BR? ((?:\w|\\-)+)", man, re.M)}
    assert commands() <= documented, commands() - documented
    listed = set(re.search(r'commands="([^"]+)"', completion).group(1).split())
    assert commands() == listed


def test_vendored_inotify_simple_ships_with_its_licence():
    vendor = ROOT / "pvezfsha/_vendor"
    assert "Chris Billington" in (vendor / "LICENSE.inotify_simple").read_text()
    from pvezfsha._vendor import inotify_simple
    assert inotify_simple.__version__ == "2.0.1"
    assert "inotify_simple.py" in (DEBIAN / "copyright").read_text()
