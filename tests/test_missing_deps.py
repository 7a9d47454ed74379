"""From a source checkout on a machine without pvezfsha's Python
dependencies, a command says in one line which Debian package to install,
exits 1, and prints no traceback."""

import subprocess
import sys
from pathlib import Path

from pvezfsha import cli, log

ROOT = Path(__file__).resolve().parents[1]


def run_without(hidden: list[str], *args: str) -> subprocess.CompletedProcess:
    """`python3 -m pvezfsha ARGS` with the HIDDEN modules made unimportable."""
    code = ("import sys\n"
            f"for m in {hidden!r}: sys.modules[m] = None\n"
            "from pvezfsha.cli import main\n"
            "sys.exit(main())\n")
    return subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)})


def assert_one_line(p: subprocess.CompletedProcess, line: str) -> None:
    assert p.returncode == 1, (p.returncode, p.stderr)
    assert "Traceback" not in p.stderr + p.stdout
    assert p.stderr.splitlines() == [line], p.stderr
    assert p.stdout == ""


LOGURU = "pvezfsha: missing Python module loguru: install the Debian package python3-loguru"
PYZFS = "pvezfsha: missing Python module libzfs_core: install the Debian package python3-pyzfs"


def test_a_config_error_without_loguru_is_one_line_naming_python3_loguru(tmp_path):
    assert_one_line(run_without(["loguru"], "--config", str(tmp_path / "none.toml"), "status"), LOGURU)


def test_every_command_without_loguru_is_the_same_line(tmp_path):
    for args in (["sync", "-n"], ["doctor"], ["hook", "101", "pre-start"], ["init", "101", "-n"], ["receive"]):
        p = run_without(["loguru"], "--config", str(tmp_path / "none.toml"), *args)
        assert_one_line(p, LOGURU)


def test_a_zfs_command_without_libzfs_core_is_one_line_naming_python3_pyzfs(tmp_path):
    for args in (["sync"], ["receive"], ["promote", "101"]):
        p = run_without(["libzfs_core"], "--config", str(tmp_path / "none.toml"), *args)
        assert_one_line(p, PYZFS)


def test_status_and_diverged_need_no_libzfs_core(tmp_path):
    # They read through the zfs command: importing libzfs_core (cffi parsing
    # its C declarations) took longer than all the rest of a status.
    for args in (["status"], ["status", "--check"], ["diverged"]):
        p = run_without(["libzfs_core"], "--config", str(tmp_path / "none.toml"), *args)
        assert "missing Python module" not in p.stderr and "none.toml: no such file" in p.stderr, p.stderr
    p = subprocess.run([sys.executable, "-c", "import sys, pvezfsha.cli, pvezfsha.status; "
                        "print(sorted(m for m in sys.modules if m in ('pvezfsha.zfs', 'libzfs_core')))"],
                       capture_output=True, text=True, cwd=ROOT)
    assert p.stdout.strip() == "[]", p.stdout + p.stderr


def test_without_both_loguru_is_named_first(tmp_path):
    p = run_without(["loguru", "libzfs_core"], "--config", str(tmp_path / "none.toml"), "sync")
    assert_one_line(p, LOGURU)


def test_loguru_missing_at_its_lazy_import_is_still_one_line(tmp_path, monkeypatch, capsys):
    # The up-front check bypassed: the config error's logger.error is where
    # loguru is first imported, inside the error handler.
    monkeypatch.setattr(cli, "_require", lambda args: None)
    monkeypatch.setattr(log, "_loguru", None)
    monkeypatch.setitem(sys.modules, "loguru", None)
    assert cli.main(["--config", str(tmp_path / "none.toml"), "status"]) == 1
    err = capsys.readouterr().err
    assert err.splitlines() == [LOGURU]


def test_with_loguru_present_the_usual_error_comes_through(tmp_path):
    # hook needs no libzfs_core before its config: the config error is logged as before.
    p = run_without(["libzfs_core"], "--config", str(tmp_path / "none.toml"), "hook", "101", "pre-start")
    assert p.returncode == 1
    assert "Traceback" not in p.stderr and "missing Python module" not in p.stderr
    assert "none.toml: no such file" in p.stderr
