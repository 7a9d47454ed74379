"""The session transport against a stand-in peer (a local process speaking
the same line protocol), so framing, counting, rate limiting and error
precedence are checked without ssh or ZFS."""

import os
import sys
import textwrap
import time

import pytest

from pvezfsha.errors import TransportError
from pvezfsha.transport import RemoteError, Session

PEER = textwrap.dedent("""
    import json, os, sys
    sys.path.insert(0, {root!r})
    from pvezfsha.transport import read_line, write_json
    while True:
        line = read_line(0)
        if line is None:
            break
        req = json.loads(line)
        if req["op"] == "hello":
            write_json(1, {{"ok": True, "node": "fake"}})
        elif req["op"] == "receive" and req.get("reject"):
            write_json(1, {{"ok": False, "error": "destination has been modified", "kind": "DestinationModified"}})
            sys.exit(1)
        elif req["op"] == "receive":
            left, total = req["size"], 0
            while left:
                chunk = os.read(0, min(left, 1 << 16))
                if not chunk:
                    sys.exit(3)
                left -= len(chunk); total += len(chunk)
            write_json(1, {{"ok": True, "got": total}})
        elif req["op"] == "big":
            # A long reply, written in pieces, as a state listing of many snapshots is.
            data = (json.dumps({{"ok": True, "items": ["x" * 100] * req["n"]}}) + "\\n").encode()
            for i in range(0, len(data), 4096):
                os.write(1, data[i:i + 4096])
        elif req["op"] == "hang":
            import time; time.sleep(60)
""")


@pytest.fixture
def peer(tmp_path):
    script = tmp_path / "peer.py"
    script.write_text(PEER.format(root=os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    return [sys.executable, str(script)]


def writer(size):
    def produce(fd):
        block = b"z" * 65536
        left = size
        while left:
            left -= os.write(fd, block[:min(left, len(block))])
    return produce


def test_hello_is_exchanged_on_connect(peer):
    with Session(peer, "fake") as s:
        assert s.hello["node"] == "fake"


def test_a_session_opened_without_waiting_returns_before_the_peer_is_up(peer):
    slow = [sys.executable, "-c", "import time, runpy, sys; time.sleep(1.5); "
            f"sys.argv = [{peer[1]!r}]; runpy.run_path({peer[1]!r})"]
    t0 = time.monotonic()
    s = Session(slow, "fake", wait=False)
    assert time.monotonic() - t0 < 1.0
    with s:
        # The hello answer is read on first use, before the request's own.
        assert s.send_stream({"op": "receive", "size": 10}, writer(10)).reply["got"] == 10
        assert s.hello["node"] == "fake"
    assert time.monotonic() - t0 >= 1.5


def test_a_peer_that_fails_to_start_is_reported_on_first_use():
    s = Session([sys.executable, "-c", "import sys; sys.exit(255)"], "ghost", wait=False)
    with pytest.raises(TransportError, match="connection (closed|lost)"):
        s.ready()


def test_stream_bytes_are_counted_and_the_reply_returned(peer):
    with Session(peer, "fake") as s:
        res = s.send_stream({"op": "receive", "size": 5_000_000}, writer(5_000_000))
        assert res.bytes == 5_000_000 and res.reply["got"] == 5_000_000
        # The session carries on: several streams on one connection.
        assert s.send_stream({"op": "receive", "size": 10}, writer(10)).reply["got"] == 10


def test_a_long_reply_in_pieces_is_read_whole_and_the_session_carries_on(peer):
    with Session(peer, "fake") as s:
        assert len(s.request("big", n=20_000)["items"]) == 20_000    # about 2 MiB
        assert len(s.request("big", n=1)["items"]) == 1


def test_bandwidth_limit_is_applied(peer):
    with Session(peer, "fake") as s:
        t0 = time.monotonic()
        s.send_stream({"op": "receive", "size": 1_000_000}, writer(1_000_000), rate_limit=2_000_000)
        assert time.monotonic() - t0 >= 0.45


def test_receiver_error_is_reported_rather_than_the_senders_broken_pipe(peer):
    with Session(peer, "fake") as s:
        with pytest.raises(RemoteError, match="destination has been modified") as e:
            s.send_stream({"op": "receive", "reject": True}, writer(50_000_000))
        assert e.value.kind == "DestinationModified"


def test_sender_failure_ends_the_session_so_the_receiver_sees_eof(peer):
    def failing(fd):
        os.write(fd, b"x" * 1000)
        raise OSError(5, "I/O error in lzc_send")
    s = Session(peer, "fake")
    with pytest.raises(Exception, match="I/O error"):
        s.send_stream({"op": "receive", "size": 10_000}, failing)
    assert s.proc.wait(5) == 3   # the peer saw a truncated stream


def test_unreachable_peer_is_a_transport_error(tmp_path):
    with pytest.raises(TransportError, match="connection (closed|lost)"):
        Session([sys.executable, "-c", "import sys; sys.exit(255)"], "ghost")


def test_silent_peer_times_out_and_is_killed(peer):
    s = Session(peer, "fake", reply_timeout=1)
    with pytest.raises(TransportError, match="no answer within 1 s"):
        s.request("hang")
    assert s.proc.poll() is not None


def test_an_address_that_ssh_would_read_as_an_option_is_refused():
    from pvezfsha.transport import ssh_argv
    with pytest.raises(TransportError, match="'-oProxyCommand=x' is not a host"):
        ssh_argv("-oProxyCommand=x")
    argv = ssh_argv("10.0.0.2")
    assert argv[argv.index("--") - 1] == "10.0.0.2"
