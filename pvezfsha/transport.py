"""The wire between two nodes: one ssh session per peer per cycle.

The session runs `pvezfsha receive` on the peer and speaks a line protocol
over its stdin/stdout: a JSON request line, optionally followed by a raw
send stream, answered by one JSON reply line. Dataset and snapshot names
travel inside the JSON, so they never reach a shell on either side.

A stream is produced by `lzc_send` in a thread writing into a pipe; the pump
here moves it to ssh (splice, no copy through Python), counts bytes, applies
the bandwidth limit and watches for stalls. Both ends are killable: a stall
or an error kills ssh, which gives the sender EPIPE and the receiver EOF, so
no hung receive is left behind and an interrupted receive keeps its resume
token. When both sides fail, the receiver's error is the one reported; the
sender's EPIPE is only its consequence.
"""

from __future__ import annotations

import fcntl
import json
import os
import select
import shlex
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Callable

from pvezfsha.errors import TransportError, ZfsError

PROTOCOL = 1
CHUNK = 1 << 20
REPLY_LIMIT = 256 << 20   # a state reply grows with the snapshot count
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


def ssh_argv(address: str, *, user: str = "root", port: int = 22, connect_timeout: float = 10,
             remote: tuple[str, ...] = ("pvezfsha", "receive")) -> list[str]:
    if not address or address.startswith("-"):
        # The address may come from .members as well as the config: never let
        # it become an ssh option such as -oProxyCommand=.
        raise TransportError(f"{address!r} is not a host name or address")
    ssh = os.environ.get("PVEZFSHA_SSH", "ssh")
    return [ssh, "-T", "-o", "BatchMode=yes", "-o", f"ConnectTimeout={max(1, int(connect_timeout))}",
            "-o", "ServerAliveInterval=10", "-o", "ServerAliveCountMax=3",
            "-o", "StrictHostKeyChecking=yes" if os.environ.get("PVEZFSHA_SSH_STRICT") else "LogLevel=ERROR",
            "-p", str(port), "-l", user, address, "--", *remote]


def receive_command(config_path: str) -> tuple[str, ...]:
    """The peer's `pvezfsha receive`, reading its own config from the path
    ours has (as `transfer` does): it receives only what that config names.
    ssh joins the words into a shell line, so each is quoted."""
    return tuple(shlex.quote(w) for w in ("pvezfsha", "--config", config_path, "receive"))


# -- framing, shared by both ends ----------------------------------------------

def read_line(fd: int, limit: int = 1 << 20) -> bytes | None:
    """One line from a raw fd, byte by byte: the send stream follows it on
    the same fd, so nothing past the newline may be consumed."""
    buf = bytearray()
    while True:
        b = os.read(fd, 1)
        if not b:
            return bytes(buf) if buf else None
        if b == b"\n":
            return bytes(buf)
        buf += b
        if len(buf) > limit:
            raise TransportError("protocol line too long")


def write_json(fd: int, obj: dict) -> None:
    data = (json.dumps(obj, separators=(",", ":")) + "\n").encode()
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def enlarge_pipe(fd: int) -> None:
    # Only while the pipe is empty: resizing a full pipe can deadlock
    # (kernel bug 212295, openzfs/zfs#13232).
    try:
        fcntl.fcntl(fd, F_SETPIPE_SZ, CHUNK)
    except OSError:
        pass


class RemoteError(ZfsError):
    """An error reported by the peer's `pvezfsha receive`."""


@dataclass
class StreamResult:
    bytes: int
    seconds: float
    reply: dict


class Session:
    """One ssh connection to a peer's `pvezfsha receive`."""

    def __init__(self, argv: list[str], peer: str, *, stall_timeout: float = 300, reply_timeout: float = 600,
                 wait: bool = True):
        """Start ssh and send `hello`. With `wait=False` the answer is read
        on first use, so the ssh handshake and the peer's start (python and
        pyzfs imports: seconds on a slow node) overlap the caller's own
        work, such as taking the snapshot."""
        self.peer = peer
        self.stall_timeout = stall_timeout
        self.reply_timeout = reply_timeout
        self._err = tempfile.TemporaryFile()
        try:
            self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=self._err, bufsize=0, start_new_session=True)
        except OSError as e:
            self._err.close()
            raise TransportError(f"{peer}: cannot start {argv[0]}: {e}") from None
        self._in = self.proc.stdin.fileno()
        self._out = self.proc.stdout.fileno()
        self._buf = bytearray()
        enlarge_pipe(self._in)
        self._hello: dict | None = None
        self._failed: TransportError | None = None
        try:
            self._write("hello", {"op": "hello", "protocol": PROTOCOL})
        except TransportError as e:   # reported on first use, like any other failure to come up
            self._failed = e
        if wait:
            self.ready()

    def ready(self) -> dict:
        """The peer's answer to `hello`; raises if it never came up."""
        if self._failed is not None:
            raise self._failed
        if self._hello is None:
            self._hello = self._reply(max(30.0, self.stall_timeout))
        return self._hello

    @property
    def hello(self) -> dict:
        return self.ready()

    # -- plumbing --------------------------------------------------------------

    def stderr_text(self) -> str:
        if self._err.closed:
            return ""
        self._err.seek(0)
        return self._err.read().decode(errors="replace").strip()

    def _dead(self, what: str) -> TransportError:
        self.kill()
        err = self.stderr_text().splitlines()
        detail = err[-1] if err else f"exit status {self.proc.returncode}"
        return TransportError(f"{self.peer}: {what}: {detail}")

    def _reply(self, timeout: float) -> dict:
        # Replies are JSON lines and nothing else (streams only go the other
        # way), so they are read in blocks: a state reply listing many
        # snapshots would otherwise cost a syscall per byte.
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            ready, _, _ = select.select([self._out], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                raise self._dead(f"no answer within {timeout:.0f} s")
            chunk = os.read(self._out, 1 << 16)
            if not chunk:
                self.proc.wait()
                raise self._dead("connection closed")
            self._buf += chunk
            if len(self._buf) > REPLY_LIMIT:
                raise self._dead(f"reply longer than {REPLY_LIMIT} bytes")
        line, _, rest = bytes(self._buf).partition(b"\n")
        self._buf = bytearray(rest)
        try:
            reply = json.loads(line)
        except ValueError:
            raise self._dead(f"unexpected output {line[:80]!r}") from None
        if not reply.get("ok"):
            raise RemoteError(f"{self.peer}: {reply.get('error', 'unknown error')}",
                              kind=reply.get("kind", ""), errno=reply.get("errno", 0))
        return reply

    def _write(self, op: str, obj: dict) -> None:
        try:
            write_json(self._in, obj)
        except OSError:
            raise self._dead(f"{op}: connection lost") from None

    def request(self, op: str, *, timeout: float | None = None, **args) -> dict:
        self.ready()
        self._write(op, {"op": op, **args})
        return self._reply(self.reply_timeout if timeout is None else timeout)

    @property
    def alive(self) -> bool:
        return self._failed is None and self.proc.poll() is None

    def ping(self, timeout: float = 15) -> dict:
        """A warm session's heartbeat: the peer's receive answers `hello` again."""
        return self.request("hello", timeout=timeout, protocol=PROTOCOL)

    def clear_stderr(self) -> None:
        """A warm session lives for many cycles: keep only the current one's messages."""
        if not self._err.closed:
            self._err.seek(0)
            self._err.truncate()

    # -- streams -----------------------------------------------------------------

    def send_stream(self, header: dict, produce: Callable[[int], None], *, rate_limit: int = 0,
                    progress: Callable[[int], None] | None = None) -> StreamResult:
        """Write `header`, then what `produce(fd)` writes to fd, then read the reply."""
        self.ready()
        self._write("stream", header)
        r, w = os.pipe()
        enlarge_pipe(w)
        send_error: list[BaseException] = []

        def run_sender():
            try:
                produce(w)
            except BaseException as e:  # reported after the receiver's error
                send_error.append(e)
            finally:
                os.close(w)

        t0 = time.monotonic()
        sender = threading.Thread(target=run_sender, name="lzc_send", daemon=True)
        sender.start()
        sent = 0
        last = [time.monotonic()]
        stalled = threading.Event()
        done = threading.Event()

        def watchdog():
            while not done.wait(1.0):
                if time.monotonic() - last[0] > self.stall_timeout:
                    stalled.set()
                    self.kill()
                    return

        threading.Thread(target=watchdog, name="stall-watchdog", daemon=True).start()
        broken = False
        try:
            chunk = CHUNK if not rate_limit else max(64 << 10, min(CHUNK, rate_limit // 4))
            while True:
                n = _move(r, self._in, chunk)
                if n == 0:
                    break
                sent += n
                last[0] = time.monotonic()
                if progress:
                    progress(sent)
                if rate_limit:
                    ahead = sent / rate_limit - (time.monotonic() - t0)
                    if ahead > 0:
                        time.sleep(ahead)
        except (BrokenPipeError, ConnectionResetError):
            broken = True
        finally:
            done.set()
            os.close(r)  # a sender still writing gets EPIPE and returns
            sender.join()
        seconds = time.monotonic() - t0

        if stalled.is_set():
            raise TransportError(f"{self.peer}: no progress for {self.stall_timeout:.0f} s; connection killed "
                                 f"after {sent} bytes")
        if send_error and not broken:
            # The receiver is waiting for the rest of a stream that will not
            # come: end the session so it sees EOF and keeps a resume token.
            self.close()
            err = send_error[0]
            raise err if isinstance(err, ZfsError) else ZfsError(f"send failed: {err}")
        try:
            reply = self._reply(self.reply_timeout)
        except RemoteError:
            raise
        except TransportError:
            if send_error:
                err = send_error[0]
                raise (err if isinstance(err, ZfsError) else ZfsError(str(err))) from None
            raise
        return StreamResult(sent, seconds, reply)

    def close(self, timeout: float = 10) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self.proc.stdout.close()
        self._err.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, 9)
            except OSError:
                self.proc.kill()
            self.proc.wait()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _move(src: int, dst: int, count: int) -> int:
    """Move up to `count` bytes between pipes, without copying through Python."""
    try:
        return os.splice(src, dst, count)
    except (AttributeError, OSError) as e:
        if isinstance(e, OSError) and e.errno not in (22, 38):  # EINVAL/ENOSYS: no splice here
            raise
    data = os.read(src, count)
    view = memoryview(data)
    while view:
        view = view[os.write(dst, view):]
    return len(data)
