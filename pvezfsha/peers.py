"""What a takeover asks of other nodes, each call bounded in time.

* `transfer`: run `pvezfsha transfer` on a node so it pushes to us (the old
  primary's final handover, or a catch-up from a fresher standby). The push
  is the same code as every sync cycle, in the other direction.
* `holdings`: which snapshots a node holds of each dataset, by GUID.

A dead node costs at most the ssh connect timeout, never a TCP hang: ssh
runs with ConnectTimeout and ServerAlive, and the whole call has a deadline
after which its process group is killed.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess

from pvezfsha.cluster import Cluster
from pvezfsha.config import Config, Container
from pvezfsha.errors import PvezfshaError, TransportError
from pvezfsha.log import logger
from pvezfsha.takeover import Holding
from pvezfsha.transport import Session, ssh_argv
from pvezfsha.versions import DatasetState


class Peers:
    def __init__(self, cfg: Config, cluster: Cluster):
        self.cfg = cfg
        self.cluster = cluster

    def _argv(self, node: str, ct: Container, remote: tuple[str, ...]) -> list[str]:
        # The remote side joins argv into a shell line: quote every word.
        return ssh_argv(self.cluster.address(node, self.cfg.addresses), user=self.cfg.ssh_user,
                        port=self.cfg.ssh_port, connect_timeout=ct.options.ssh_connect_timeout,
                        remote=tuple(shlex.quote(w) for w in remote))

    def transfer(self, node: str, ct: Container, to: str, *, final: bool, timeout: float) -> dict:
        argv = self._argv(node, ct, ("pvezfsha", "--config", self.cfg.path, "transfer", str(ct.ctid),
                                     "--to", to, *(["--final"] if final else [])))
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, start_new_session=True)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            # Our end of ssh is gone, but the transfer on `node` goes on until
            # it next writes, holding its locks and pushing into what we are
            # about to promote: stop it there, and say if that failed.
            stopped = self.stop_transfer(node, ct)
            raise TransportError(f"{node}: transfer did not finish within {timeout:.0f} s; "
                                 + ("stopped there" if stopped else "could NOT stop it there")) from None
        for line in err.splitlines():
            if line.strip():
                logger.info(f"  [{node}] {line.strip()}")
        result = None
        for line in reversed(out.splitlines()):
            try:
                result = json.loads(line)
                break
            except ValueError:
                continue
        if proc.returncode != 0 or not result or not result.get("ok"):
            last = next((ln for ln in reversed(err.splitlines()) if ln.strip()), f"exit status {proc.returncode}")
            raise TransportError(f"{node}: transfer failed: {last.strip()}")
        return result

    def stop_transfer(self, node: str, ct: Container) -> bool:
        argv = self._argv(node, ct, ("pvezfsha", "--config", self.cfg.path, "transfer", str(ct.ctid),
                                     "--to", node, "--stop"))
        try:
            p = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                               timeout=ct.options.ssh_connect_timeout + 30)
        except subprocess.TimeoutExpired:
            return False
        return p.returncode == 0

    def holdings(self, node: str, ct: Container) -> dict[str, Holding]:
        """Keyed by the dataset's configured name, so nodes compare."""
        argv = self._argv(node, ct, ("pvezfsha", "--config", self.cfg.path, "receive"))
        with Session(argv, node, stall_timeout=ct.options.ssh_connect_timeout * 3,
                     reply_timeout=ct.options.ssh_connect_timeout * 3) as s:
            out = {}
            for ds in ct.datasets:
                st = DatasetState.from_dict(s.request("state", dataset=ds.on(node), ctid=ct.ctid)["state"])
                out[ds.name] = Holding.of(st)
            return out


def try_holdings(peers: Peers, nodes: list[str], ct: Container) -> dict[str, dict[str, Holding]]:
    found = {}
    for node in nodes:
        try:
            found[node] = peers.holdings(node, ct)
        except PvezfshaError as e:
            logger.info(f"  {node}: not reachable ({e})")
    return found
