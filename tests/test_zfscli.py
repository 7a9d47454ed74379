"""zfscli.py: reading what the zfs command prints. The outputs below are
copied from OpenZFS 2.3 in the lab's guests."""
import os
import stat

import pytest

from pvezfsha import zfscli
from pvezfsha.errors import ZfsError

GET = ("tank\treadonly\toff\tdefault\n"
       "tank\treceive_resume_token\t-\t-\n"
       "tank\tpvezfsha:diverged\t-\t-\n"
       "tank/x1\treadonly\ton\tlocal\n"
       "tank/x1\treceive_resume_token\t-\t-\n"
       "tank/x1\tpvezfsha:diverged\ta\tb\tlocal\n")


def fake_zfs(tmp_path, monkeypatch, stdout="", stderr="", rc=0):
    (tmp_path / "out").write_text(stdout)
    (tmp_path / "err").write_text(stderr)
    script = tmp_path / "zfs"
    script.write_text(f"#!/bin/sh\necho \"$@\" > {tmp_path}/argv\ncat {tmp_path}/out\ncat {tmp_path}/err >&2\n"
                      f"exit {rc}\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")


PROPS = ["readonly", "receive_resume_token", "pvezfsha:diverged"]


def test_family_props_reads_each_parent_and_its_children_in_one_command(tmp_path, monkeypatch):
    fake_zfs(tmp_path, monkeypatch, GET)
    found, errors = zfscli.family_props(["tank"], PROPS)
    assert found["tank/x1"]["readonly"] == ("on", "local") and errors == {}
    assert (tmp_path / "argv").read_text().split() == [
        "get", "-Hp", "-d", "1", "-t", "filesystem,volume", "-o", "name,property,value,source",
        "readonly,receive_resume_token,pvezfsha:diverged", "tank"]


def test_a_value_with_a_tab_in_it_is_read_whole(tmp_path, monkeypatch):
    fake_zfs(tmp_path, monkeypatch, GET)
    assert zfscli.family_props(["tank"], PROPS)[0]["tank/x1"]["pvezfsha:diverged"] == ("a\tb", "local")


def test_a_parent_that_does_not_exist_is_absent_not_an_error(tmp_path, monkeypatch):
    fake_zfs(tmp_path, monkeypatch, GET, "cannot open 'nope': dataset does not exist\n", rc=1)
    found, errors = zfscli.family_props(["tank", "nope"], PROPS)
    assert set(found) == {"tank", "tank/x1"} and errors == {}


def test_a_parent_that_cannot_be_opened_is_an_error_of_its_own(tmp_path, monkeypatch):
    fake_zfs(tmp_path, monkeypatch, GET, "cannot open 'usb': I/O error\n", rc=1)
    found, errors = zfscli.family_props(["tank", "usb"], PROPS)
    assert errors == {"usb": "I/O error"} and "tank/x1" in found


def test_a_zfs_command_that_fails_outright_fails_every_parent_it_did_not_list(tmp_path, monkeypatch):
    fake_zfs(tmp_path, monkeypatch, "", "The ZFS modules are not loaded.\n", rc=1)
    assert zfscli.family_props(["tank"], PROPS) == ({}, {"tank": "The ZFS modules are not loaded."})


def test_no_zfs_command_is_a_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ZfsError, match="zfsutils-linux"):
        zfscli.family_props(["tank"], PROPS)


def test_a_property_value_with_a_line_break_cannot_forge_another_datasets_line(tmp_path, monkeypatch):
    forged = GET.replace("tank/x1\tpvezfsha:diverged\ta\tb\tlocal\n",
                         "tank/x1\tpvezfsha:diverged\tx\ntank/x1\treadonly\toff\tlocal\n"
                         "other/y\tpvezfsha:diverged\tforged\tlocal\n")
    fake_zfs(tmp_path, monkeypatch, forged)
    found, _ = zfscli.family_props(["tank"], PROPS)
    assert found["tank/x1"]["readonly"] == ("on", "local") and "other/y" not in found


def test_a_zfs_get_killed_without_a_word_leaves_its_parents_unknown_not_missing(tmp_path, monkeypatch):
    fake_zfs(tmp_path, monkeypatch, "", "", rc=137)
    assert zfscli.family_props(["tank"], PROPS) == ({}, {"tank": "zfs get exited 137"})


def test_a_missing_parent_stays_missing_when_zfs_also_says_something_else(tmp_path, monkeypatch):
    fake_zfs(tmp_path, monkeypatch, GET, "cannot open 'nope': dataset does not exist\nsomething odd\n", rc=1)
    found, errors = zfscli.family_props(["tank", "nope"], PROPS)
    assert "nope" not in errors and "tank/x1" in found
