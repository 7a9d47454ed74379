"""Configuration: what a valid file gives, and the one-line error every
mistake gets (file, key, what is wrong)."""

import pytest

from pvezfsha import config
from pvezfsha.errors import ConfigError
from zfsnames import NAMES

GOOD = """
[defaults]
interval = "5m"
keep = 10
bandwidth_limit = "50M"

[[container]]
ctid = 103
datasets = ["tank/media", { name = "tank/files", on = { pve2 = "usb/files" } }]
nodes = ["pve1", "pve2"]
on_stale = "warn"
"""


def error(text):
    with pytest.raises(ConfigError) as e:
        config.parse(text, "/etc/pvezfsha/pvezfsha.toml")
    msg = str(e.value)
    assert msg.startswith("/etc/pvezfsha/pvezfsha.toml: ") and "\n" not in msg
    return msg


def test_valid_file_is_parsed_with_units_and_overrides():
    cfg = config.parse(GOOD, "f")
    ct = cfg.containers[103]
    assert cfg.interval == 300 and ct.options.keep == 10 and ct.options.bandwidth_limit == 50 << 20
    assert ct.options.on_stale == "warn" and cfg.defaults.on_stale == "refuse"
    assert [d.on("pve1") for d in ct.datasets] == ["tank/media", "tank/files"]
    assert [d.on("pve2") for d in ct.datasets] == ["tank/media", "usb/files"]


def test_shipped_example_file_is_valid():
    from pathlib import Path
    path = Path(__file__).resolve().parents[1] / "packaging" / "pvezfsha.toml"
    assert config.parse(path.read_text(), str(path)).containers == {}


def test_durations_and_rates():
    assert config.parse_duration("90s") == 90 and config.parse_duration("2h") == 7200
    assert config.parse_duration(30) == 30
    assert config.parse_rate("") == 0 and config.parse_rate("1.5K") == 1536 and config.parse_rate("2MiB") == 2 << 20


def test_toml_syntax_error():
    assert "not valid TOML" in error("[defaults\n")


def test_unknown_key_names_the_key():
    assert "defaults.intervall: unknown key" in error("[defaults]\nintervall = '5m'\n")


def test_bad_duration_names_the_key():
    assert "defaults.max_staleness: 'soon' is not a duration" in error("[defaults]\nmax_staleness = 'soon'\n")


def test_bad_policy():
    assert "on_stale: 'ignore' is not one of" in error(
        "[[container]]\nctid=100\ndatasets=['tank/a']\nnodes=['a','b']\non_stale='ignore'\n")


def test_dataset_name_that_is_not_a_dataset():
    msg = error("[[container]]\nctid=100\ndatasets=['tank/a; rm -rf /']\nnodes=['a','b']\n")
    assert "container[ctid=100].datasets[0]" in msg


def test_snapshot_name_is_not_a_dataset():
    assert "datasets[0]" in error("[[container]]\nctid=100\ndatasets=['tank/a@snap']\nnodes=['a','b']\n")


def test_single_node_group():
    assert "nodes: must list at least two" in error("[[container]]\nctid=100\ndatasets=['tank/a']\nnodes=['a']\n")


def test_container_defined_twice():
    block = "[[container]]\nctid=100\ndatasets=['tank/a']\nnodes=['a','b']\n"
    assert "defined twice" in error(block + block)


def test_dataset_in_two_containers():
    msg = error("[[container]]\nctid=100\ndatasets=['tank/a']\nnodes=['a','b']\n"
                "[[container]]\nctid=101\ndatasets=['tank/a']\nnodes=['a','b']\n")
    assert "already protected for container 100" in msg


def test_override_for_a_node_outside_the_group():
    assert "on.pve9: not one of" in error(
        "[[container]]\nctid=100\ndatasets=[{name='tank/a', on={pve9='x/a'}}]\nnodes=['a','b']\n")


def test_unknown_send_flag():
    assert "send_flags" in error("[defaults]\nsend_flags=['dedup']\n")


def test_sanoids_snapshots_are_carried_by_default_and_a_container_can_choose_others():
    cfg = config.parse(GOOD + "replicate_snapshots = ['autosnap_*_daily', 'manual-*']\n", "t.toml")
    assert config.parse(GOOD, "t.toml").defaults.replicate_snapshots == ("autosnap_*",)
    assert cfg.containers[103].options.replicate_snapshots == ("autosnap_*_daily", "manual-*")
    assert config.parse(GOOD + "replicate_snapshots = []\n", "t.toml").containers[103].options.replicate_snapshots == ()


def test_a_snapshot_pattern_that_is_not_a_name_is_refused():
    assert "replicate_snapshots: 'tank/a@x*' is not a snapshot name pattern" in error(
        "[defaults]\nreplicate_snapshots=['tank/a@x*']\n")
    assert "must be a list" in error("[defaults]\nreplicate_snapshots='autosnap_*'\n")
    assert "must be a list" in error("[defaults]\nreplicate_snapshots=[1]\n")


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        config.load(str(tmp_path / "nope.toml"))


def test_environment_variable_selects_the_file(tmp_path, monkeypatch):
    f = tmp_path / "c.toml"
    f.write_text(GOOD)
    monkeypatch.setenv("PVEZFSHA_CONFIG", str(f))
    assert config.load().path == str(f)


@pytest.mark.parametrize("name,accepted", NAMES)
def test_dataset_names_are_checked_as_zfs_checks_them(name, accepted):
    if accepted:
        assert config.check_dataset_name(name) == name
    else:
        with pytest.raises(ValueError, match="is not a ZFS dataset name"):
            config.check_dataset_name(name)


def test_dataset_with_a_space_in_its_name_is_configured():
    cfg = config.parse("[[container]]\nctid=100\ndatasets=['tank/my data']\nnodes=['a','b']\n")
    assert cfg.containers[100].datasets[0].name == "tank/my data"


def test_dataset_name_with_a_trailing_newline_is_refused():
    assert "datasets[0]" in error('[[container]]\nctid=100\ndatasets=["tank/a\\n"]\nnodes=["a","b"]\n')


def test_node_name_with_a_trailing_newline_is_refused():
    assert "is not a node name" in error('[[container]]\nctid=100\ndatasets=["tank/a"]\nnodes=["a","b\\n"]\n')


def test_snapshot_prefix_with_a_trailing_newline_is_refused():
    assert "snapshot_prefix" in error('[defaults]\nsnapshot_prefix = "zz\\n"\n')


def test_address_that_would_be_an_ssh_option_is_refused():
    assert "nodes.pve2.address" in error('[nodes.pve2]\naddress = "-vvv"\n')


def test_address_with_a_trailing_newline_is_refused():
    assert "nodes.pve2.address" in error('[nodes.pve2]\naddress = "10.0.0.2\\n"\n')


# -- continuous mode ----------------------------------------------------------------

_CT = '[[container]]\nctid = 103\ndatasets = ["tank/media"]\nnodes = ["pve1", "pve2"]\n'


def test_continuous_mode_is_off_unless_asked_and_has_documented_defaults():
    o = config.parse(_CT).containers[103].options
    assert (o.continuous, o.quiet, o.max_delay, o.min_interval) == (False, 2.0, 5.0, 3.0)


def test_continuous_mode_is_set_per_container_with_its_own_pace():
    o = config.parse(_CT + 'continuous = true\nquiet = "1s"\nmax_delay = "1m"\n').containers[103].options
    assert (o.continuous, o.quiet, o.max_delay) == (True, 1.0, 60.0)


def test_continuous_must_be_a_boolean():
    with pytest.raises(ConfigError, match=r"container\[ctid=103\]\.continuous: 'yes' is not true or false"):
        config.parse(_CT + 'continuous = "yes"\n')


def test_a_quiet_period_longer_than_max_delay_is_refused():
    with pytest.raises(ConfigError, match="quiet: 30 s is longer than max_delay"):
        config.parse('[defaults]\nquiet = "30s"\nmax_delay = "10s"\n' + _CT)
