"""The sync command: the timer's pace."""


def test_a_container_is_due_once_its_interval_has_passed(tmp_path, monkeypatch):
    from pvezfsha.sync import due, mark_cycle
    monkeypatch.setenv("PVEZFSHA_RUN_DIR", str(tmp_path))
    assert due(103, 600, now=1000)            # never ran on this node
    mark_cycle(103, 1000)
    assert not due(103, 600, now=1300)
    assert due(103, 600, now=1580)            # 30 s slack for a 1-minute timer
