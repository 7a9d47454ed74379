"""systemd's notify protocol: one datagram per message, nothing outside systemd."""

import socket

from pvezfsha import sdnotify


def test_a_message_reaches_the_notify_socket(tmp_path, monkeypatch):
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind(path)
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        assert sdnotify.notify("READY=1")
        assert s.recv(100) == b"READY=1"


def test_outside_systemd_a_message_costs_nothing(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sdnotify.notify("WATCHDOG=1") is False


def test_the_watchdog_is_fed_at_half_its_period(monkeypatch):
    monkeypatch.setenv("WATCHDOG_USEC", "60000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    assert sdnotify.watchdog_interval() == 30.0


def test_a_watchdog_meant_for_another_process_is_not_ours(monkeypatch):
    monkeypatch.setenv("WATCHDOG_USEC", "60000000")
    monkeypatch.setenv("WATCHDOG_PID", "1")
    assert sdnotify.watchdog_interval() is None
