"""The sync command: the timer's pace."""


def test_a_container_is_due_once_its_interval_has_passed(tmp_path, monkeypatch):
    from pvezfsha.sync import due, mark_cycle
    monkeypatch.setenv("PVEZFSHA_RUN_DIR", str(tmp_path))
    assert due(103, 600, now=1000)            # never ran on this node
    mark_cycle(103, 1000)
    assert not due(103, 600, now=1300)
    assert due(103, 600, now=1580)            # 30 s slack for a 1-minute timer


def test_a_container_whose_cycle_raised_is_counted_and_the_next_still_runs(tmp_path, monkeypatch):
    from pvezfsha import config, observe, sync
    from pvezfsha.errors import PvezfshaError
    monkeypatch.setenv("PVEZFSHA_RUN_DIR", str(tmp_path))
    cfg = config.parse('[[container]]\nctid = 103\ndatasets = ["tank/a"]\nnodes = ["pve1", "pve2"]\n'
                       '[[container]]\nctid = 104\ndatasets = ["tank/b"]\nnodes = ["pve1", "pve2"]\n')

    class Done:
        rc = 0

    ran, failed, recorded = [], [], []

    def cycle(ctx, ct, wait=0):
        ran.append(ct.ctid)
        if ct.ctid == 103:
            raise PvezfshaError("cannot snapshot tank/a: out of space")
        return Done()

    monkeypatch.setattr(sync, "sync_container", cycle)
    monkeypatch.setattr(observe, "after_error", lambda ctx, ct, err: failed.append((ct.ctid, err)))
    monkeypatch.setattr(observe, "after_cycle", lambda ctx, ct, c: recorded.append(ct.ctid))
    assert sync.run(cfg, [], cluster=object()) == 1
    assert ran == [103, 104]
    assert failed == [(103, "cannot snapshot tank/a: out of space")] and recorded == [104]
    assert (tmp_path / "last-cycle" / "104").exists() and not (tmp_path / "last-cycle" / "103").exists()
