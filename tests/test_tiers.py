"""`make test`'s runner (tests/tiers.sh): a fresh .test-out every run, and a
tier that wrote no log says `not run (<why>)`, never an earlier run's count."""

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Stands in for make: deps and the fast tier succeed, the package tier fails
# in its `deb` prerequisite (as make reports it) before it writes pkg.log.
FAKE_MAKE = r"""#!/bin/sh
for a; do case $a in -*) ;; *) target=$a ;; esac; done
case $target in
  deps) [ -z "$FAIL_DEPS" ] || { echo "make[1]: *** [Makefile:27: deps] Error 1"; exit 2; }; echo deps ok ;;
  test-fast) echo "===== 7 passed in 0.50s =====" | tee "$OUT/fast.log" ;;
  test-pkg) echo "build-deb: dpkg-buildpackage failed"; echo "make[1]: *** [Makefile:37: deb] Error 1"; exit 2 ;;
  test-lab) echo "lab: cannot boot"; exit 1 ;;
esac
"""


def run(tmp_path, *tiers, **env):
    make = tmp_path / "make"
    make.write_text(FAKE_MAKE)
    make.chmod(0o755)
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    for name in ("fast", "pkg", "lab", "failover"):   # an earlier run's logs
        (out / f"{name}.log").write_text("===== 99 passed in 1s =====\npkg: 99 passed, 0 failed\n")
    p = subprocess.run([str(ROOT / "tests/tiers.sh"), *tiers], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "MAKE": str(make), "OUT": str(out), **env})
    return p, p.stdout[p.stdout.index("== summary =="):].splitlines()[1:]


def test_a_tier_that_wrote_no_log_is_not_run_with_the_failed_step(tmp_path):
    p, summary = run(tmp_path)
    assert p.returncode == 1
    assert summary == [
        "fast tier (this machine): 7 passed in 0.50s",
        "package tier (bookworm, trixie roots): not run (make deb failed)",
        "lab tier (real OpenZFS, in pve1): not run (exit 1 before writing its log)",
        "lab failover tier (real OpenZFS, host-driven, power cuts): not run (exit 1 before writing its log)",
        "fault suite (real OpenZFS, 3 nodes, emulated pmxcfs, HA simulator): not run (exit 1 before writing its log)",
    ]
    assert "99" not in p.stdout


def test_tiers_left_out_say_so(tmp_path):
    p, summary = run(tmp_path, "fast")
    assert p.returncode == 0
    assert summary[0] == "fast tier (this machine): 7 passed in 0.50s"
    assert summary[1:] == [s + ": not run (not selected: TIERS=fast)" for s in (
        "package tier (bookworm, trixie roots)", "lab tier (real OpenZFS, in pve1)",
        "lab failover tier (real OpenZFS, host-driven, power cuts)",
        "fault suite (real OpenZFS, 3 nodes, emulated pmxcfs, HA simulator)")]


def test_failed_deps_runs_no_tier(tmp_path):
    p, summary = run(tmp_path, "fast", "pkg", FAIL_DEPS="1")
    assert p.returncode == 1
    assert summary[:2] == ["fast tier (this machine): not run (make deps failed)",
                           "package tier (bookworm, trixie roots): not run (make deps failed)"]


def test_the_makefile_runs_make_test_through_tiers_sh():
    makefile = (ROOT / "Makefile").read_text()
    recipe = makefile[makefile.index("\ntest:") + 1:].splitlines()[1]
    assert "tests/tiers.sh $(TIERS)" in recipe


def test_no_step_pip_installs_and_every_tier_runs_with_debians_python():
    pip = "pip" + " install"   # not spelled out, so this file does not match itself
    for path in [ROOT / "Makefile", *(ROOT / ".ci").rglob("*"), *(ROOT / "tests").rglob("*")]:
        if path.is_file() and path.suffix not in (".pyc", ".tar", ".img"):
            assert pip not in path.read_text(errors="replace"), path
    makefile = (ROOT / "Makefile").read_text()
    assert "\nPYTHON  = /usr/bin/python3\n" in makefile   # `=`, not `?=`: no PYTHON from the environment
    assert "tests/lab/host-deps.sh $(PYTHON) $(TIERS)" in makefile
    deps = (ROOT / "tests/lab/host-deps.sh").read_text()
    assert "python3-pytest python3-loguru" in deps


def test_an_explicit_python_without_pytest_is_told_and_nothing_is_installed(tmp_path):
    # A developer's own interpreter is checked, never installed into.
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\nexit 1\n")
    fake.chmod(0o755)
    p = subprocess.run([str(ROOT / "tests/lab/host-deps.sh"), str(fake), "fast"], capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 1
    assert f"host-deps: {fake} cannot import pytest, loguru, jsonschema and prometheus_client" in p.stderr
    assert "installing" not in p.stderr


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = text[text.index("```sh\n") + 6:]
    block = block[:block.index("```")]
    return [line.split("#")[0].strip() for line in block.splitlines() if line.strip()]


def test_the_readme_commands_run_in_a_root_shell_without_sudo():
    first, second = readme_commands()
    assert "sudo" not in first + second
    assert first.startswith("apt-get update && apt-get install -y make git")
    assert first.endswith(" && make demo") and second == "make test"   # what tests/fresh/run.sh expects
    intro = (ROOT / "README.md").read_text().split("```sh")[0]
    assert "as root" in intro and "sudo -s" in intro and "minutes" in intro


def test_ci_runs_the_fresh_root_test_after_make_test():
    ci = (ROOT / ".ci/run").read_text()
    assert ci.index("make test ||") < ci.index("make test-fresh ||")
