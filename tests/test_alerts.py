"""alerts.py: once when it starts, again after `repeat`, a recovery notice
when it clears; events once per hour; delivered by sendmail or a webhook."""
import threading

import pytest

from pvezfsha import alerts, config
from pvezfsha.alerts import Alert, budget, conditions, event_step, step
from tests.webhook import webhook_sink

DAY = 86400.0
A = Alert("failing/103/tank/a/pve2", 103, "critical", "CT 103: failing", "body")
B = Alert("lagging/104/tank/b/pve2", 104, "critical", "CT 104: lagging", "body")


def test_a_new_condition_fires_once_and_not_again_before_repeat():
    sent, mem = step({}, [A], {103}, 0.0, DAY)
    assert sent == [("firing", A)]
    for t in (60.0, 3600.0, DAY - 1):
        sent, mem = step(mem, [A], {103}, t, DAY)
        assert sent == []


def test_a_lasting_condition_is_sent_again_after_repeat():
    _, mem = step({}, [A], {103}, 0.0, DAY)
    sent, mem = step(mem, [A], {103}, DAY, DAY)
    assert sent == [("repeat", A)]
    assert step(mem, [A], {103}, DAY + 60, DAY)[0] == []


def test_a_cleared_condition_sends_one_recovery_notice():
    _, mem = step({}, [A], {103}, 0.0, DAY)
    sent, mem = step(mem, [], {103}, 600.0, DAY)
    assert sent == [("resolved", A)]
    assert step(mem, [], {103}, 1200.0, DAY)[0] == []


def test_a_primary_that_is_moved_away_hands_its_condition_over_and_never_says_resolved():
    _, mem = step({}, [A], {103}, 0.0, DAY, primary_of={103})
    sent, mem = step(mem, [], {103}, 600.0, DAY, primary_of=set())
    assert sent == [("handed-over", A)] and mem == {}


def test_a_kept_divergence_is_resolved_on_any_node_not_handed_over():
    kept = Alert("diverged/103/tank/a-pvezfsha-diverged-20261203T101500Z", 103, "warning", "kept", "body")
    _, mem = step({}, [kept], {103}, 0.0, DAY, primary_of=set())
    assert step(mem, [], {103}, 600.0, DAY, primary_of=set())[0] == [("resolved", kept)]


def test_a_kept_copy_of_a_dataset_that_could_not_be_read_is_not_resolved():
    kept = Alert("diverged/103/tank/a-pvezfsha-diverged-20261203T101500Z", 103, "warning", "kept", "body")
    _, mem = step({}, [kept], {103}, 0.0, DAY)
    assert step(mem, [], {103}, 600.0, DAY, unjudged=("diverged/103/tank/a-",)) == ([], mem)


def test_a_cycle_of_one_container_does_not_resolve_anothers():
    _, mem = step({}, [A, B], {103, 104}, 0.0, DAY)
    sent, mem = step(mem, [A], {103}, 60.0, DAY)
    assert sent == [] and B.key in mem


def test_an_event_is_sent_once_an_hour_however_often_ha_retries():
    ok, mem = event_step({}, A, 0.0)
    assert ok
    for t in (10.0, 600.0, 3599.0):
        ok, mem = event_step(mem, A, t)
        assert not ok
    assert event_step(mem, A, 3600.0)[0]


def test_events_are_never_resolved_by_a_cycle():
    _, mem = event_step({}, A, 0.0)
    assert step(mem, [], {103}, 60.0, DAY)[0] == []


def test_a_node_sends_at_most_twenty_messages_an_hour():
    log = []
    allowed = 0
    for i in range(30):
        ok, log = budget(log, float(i))
        allowed += ok
    assert allowed == alerts.MAX_PER_HOUR
    assert budget(log, 3600.0 + 20)[0]


def status_doc(state="error", severity=2, primary="pve1", kept=None):
    return {"node": "pve1", "time": 0.0, "containers": [
        {"ctid": 103, "primary": primary, "error": None, "datasets": [
            {"dataset": "tank/a", "local": "tank/a", "kept": kept or {}, "standbys": [
                {"node": "pve2", "state": state, "severity": severity, "detail": "last held everything 2h ago",
                 "failures": 3, "last_error": "cannot reach pve2", "common": "s1"}]}]}]}


def test_conditions_are_the_primarys_failing_and_lagging_standbys_and_this_nodes_kept_copies():
    assert [a.key for a in conditions(status_doc())] == ["failing/103/tank/a/pve2"]
    assert [a.key for a in conditions(status_doc("error", 1))] == []          # not yet after_failures
    assert [a.key for a in conditions(status_doc("lagging"))] == ["lagging/103/tank/a/pve2"]
    assert conditions(status_doc(primary="pve2")) == []                      # pve2 reports its standbys
    kept = conditions(status_doc("ok", 0, primary="pve2", kept={"tank/a-pvezfsha-diverged-1": "x"}))
    assert [a.key for a in kept] == ["diverged/103/tank/a-pvezfsha-diverged-1"]
    a = conditions(status_doc())[0]
    assert "cannot reach pve2" in a.body and "pvezfsha status 103" in a.body and "lose" in a.body


# -- delivery --------------------------------------------------------------------

@pytest.fixture
def sinks(tmp_path, monkeypatch):
    with webhook_sink() as (port, got):
        yield from _sinks(tmp_path, monkeypatch, port, got)


def _sinks(tmp_path, monkeypatch, port, got):
    mailbox = tmp_path / "mail"
    sendmail = tmp_path / "sendmail"
    sendmail.write_text(f"#!/bin/sh\necho \"ARGS: $*\" >> {mailbox}\ncat >> {mailbox}\n")
    sendmail.chmod(0o755)
    monkeypatch.setattr(alerts, "SENDMAIL", str(sendmail))
    monkeypatch.setenv("PVEZFSHA_STATE_DIR", str(tmp_path / "state"))
    cfg = config.parse(f'[alerts]\nwebhook = "http://127.0.0.1:{port}/hook"\n', "t.toml")
    yield cfg, got, mailbox


def test_review_mails_root_and_posts_the_webhook_once_then_the_recovery(sinks):
    cfg, got, mailbox = sinks
    alerts.review(cfg, status_doc(), now=0.0)
    alerts.review(cfg, status_doc(), now=60.0)
    mail = mailbox.read_text()
    assert mail.count("ARGS: -oi -- root") == 1 and "Subject: [pvezfsha pve1] CT 103: replication of" in mail
    assert [(g["kind"], g["severity"]) for g in got] == [("firing", "critical")]
    alerts.review(cfg, status_doc("ok", 0), now=120.0)
    assert [(g["kind"], g["severity"]) for g in got] == [("firing", "critical"), ("resolved", "ok")]
    assert "RESOLVED" in mailbox.read_text()


def test_after_a_move_the_old_primary_hands_over_and_does_not_claim_a_recovery(sinks):
    cfg, got, mailbox = sinks
    alerts.review(cfg, status_doc(), now=0.0)
    alerts.review(cfg, status_doc(primary="pve2"), now=60.0)     # pve1 is a standby now
    assert [(g["kind"], g["severity"]) for g in got] == [("firing", "critical"), ("handed-over", "info")]
    mail = mailbox.read_text()
    assert "RESOLVED" not in mail and "HANDED OVER" in mail and "This is not a recovery" in mail


def test_a_dead_webhook_or_no_mail_system_is_a_journal_line_not_a_failure(sinks, monkeypatch):
    cfg, _, _ = sinks
    monkeypatch.setattr(alerts, "SENDMAIL", "/nonexistent/sendmail")
    cfg = config.parse('[alerts]\nwebhook = "http://127.0.0.1:9/hook"\n', "t.toml")
    alerts.review(cfg, status_doc(), now=0.0)     # no exception


def test_a_hostile_mail_to_is_refused_by_the_config():
    with pytest.raises(Exception, match="mail_to"):
        config.parse('[alerts]\nmail_to = "-C/tmp/evil root"\n', "t.toml")


def test_a_garbage_or_slow_webhook_is_bounded_and_never_raises(sinks, monkeypatch):
    import socket
    import time as _t
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)

    def answer():
        while True:
            c, _ = srv.accept()
            c.recv(65536)
            c.sendall(b"garbage\r\n")        # not HTTP: http.client raises BadStatusLine
            c.close()
    threading.Thread(target=answer, daemon=True).start()
    alerts.webhook(f"http://127.0.0.1:{srv.getsockname()[1]}/", {"x": 1})   # no exception
    slow = socket.socket()
    slow.bind(("127.0.0.1", 0))
    slow.listen(4)                                                          # accepts, never answers
    monkeypatch.setattr(alerts, "WEBHOOK_DEADLINE", 1.0)
    t0 = _t.monotonic()
    alerts.webhook(f"http://127.0.0.1:{slow.getsockname()[1]}/", {"x": 1})
    assert _t.monotonic() - t0 < 2


def test_a_failing_delivery_still_counts_as_sent(sinks, monkeypatch):
    cfg, got, mailbox = sinks
    monkeypatch.setattr(alerts, "SENDMAIL", "/bin/false")
    for i in range(30):
        alerts.review(cfg, status_doc(), now=float(i))
    assert len(got) == 1


def test_what_the_hourly_cap_holds_back_is_sent_later(sinks, monkeypatch):
    cfg, got, _ = sinks
    monkeypatch.setattr(alerts, "MAX_PER_HOUR", 0)
    alerts.review(cfg, status_doc(), now=0.0)
    assert got == []
    monkeypatch.setattr(alerts, "MAX_PER_HOUR", 20)
    alerts.review(cfg, status_doc(), now=60.0)
    assert [g["kind"] for g in got] == ["firing"]


def test_a_damaged_memory_is_started_afresh(sinks, tmp_path):
    cfg, got, _ = sinks
    (tmp_path / "state").mkdir(exist_ok=True)
    (tmp_path / "state" / "alerts.json").write_text('{"alerts": {"event/x": {"alert": {}}}, "sent": []}')
    alerts.review(cfg, status_doc(), now=0.0)
    assert [g["kind"] for g in got] == ["firing"]


def test_the_hooks_events_are_queued_then_sent_once_by_notify(sinks):
    cfg, got, mailbox = sinks
    ev = Alert("refused/103/pve2", 103, "critical", "CT 103: start on pve2 refused", "why")
    alerts.queue(ev, "pve2")
    alerts.queue(ev, "pve2")            # HA's retry
    assert got == []                    # queuing sends nothing
    alerts.notify(cfg, now=0.0)
    alerts.queue(ev, "pve2")
    alerts.notify(cfg, now=60.0)
    assert [(g["kind"], g["node"]) for g in got] == [("event", "pve2")]
    assert mailbox.read_text().count("Subject: [pvezfsha pve2] CT 103: start on pve2 refused") == 1
