"""`pvezfsha hook <vmid> <phase>`: what the Proxmox hookscript runs.

pre-start decides whether this node may take the container over, and if so
makes its replica the primary copy (takeover_engine.py, with the pure
decisions in takeover.py); it is the only phase whose failure stops
anything (PVE aborts the start).

post-start hands off a sync in the new direction and returns at once.
pre-stop and post-stop on the primary push a final snapshot, bounded in time.
`pvezfsha promote` / `demote` use the same code.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

from pvezfsha.cluster import Cluster
from pvezfsha.config import Config, Container
from pvezfsha.errors import PvezfshaError
from pvezfsha.handoff import agent_running, hand_off
from pvezfsha.log import logger
from pvezfsha.record_store import RecordStore
from pvezfsha.role import role_of
from pvezfsha.takeover_engine import LocalReplicas, Takeover

PHASES = ("pre-start", "post-start", "pre-stop", "post-stop")


# -- phases -------------------------------------------------------------------

def journal(message: str) -> None:
    """post-stop output reaches no task log; the journal keeps it."""
    try:
        import syslog
        syslog.openlog("pvezfsha", syslog.LOG_PID, syslog.LOG_DAEMON)
        syslog.syslog(syslog.LOG_INFO, message)
    except OSError:
        pass


def pre_start(cfg: Config, ct: Container, cluster: Cluster, force: bool = False) -> int:
    try:
        rep = Takeover(cfg, ct, cluster, force=force).run()
    except PvezfshaError as e:   # Refused, or a ZFS error on the way: the start is refused either way
        logger.error(str(e))
        journal(f"REFUSED: {e}")
        node = cluster.local_node()
        alert(cfg, node, f"refused/{ct.ctid}/{node}", ct.ctid, f"CT {ct.ctid}: start on {node} refused",
              f"pvezfsha refused to take CT {ct.ctid} over on {node}: {e}\n"
              f"The container does not run there; its data was not changed. HA may try another node.\n"
              f"Look further: pvezfsha status {ct.ctid}, and the task log of the start")
        return 1
    for line in rep.lines():
        print(line, flush=True)
        journal(line)
    if rep.stale:
        alert(cfg, rep.node, f"stale/{ct.ctid}/{rep.node}/{rep.epoch}", ct.ctid,
              f"CT {ct.ctid}: taken over on {rep.node} with a stale replica",
              "\n".join(rep.lines()) + f"\n{rep.stale}\nWrites after the data-loss window above are not in the "
              f"container's data; if the old primary returns, they are kept there as diverged data.\n"
              f"Look further: pvezfsha status {ct.ctid}")
    return 0


def alert(cfg: Config, node: str, key: str, ctid: int, summary: str, body: str) -> None:
    """Queue a critical event and have `pvezfsha notify` send it, detached:
    the start does not wait for a mail system or a webhook. If that cannot
    start, the next cycle on this node sends it. alerts is imported only
    here: a start that needs no alert does not pay for its mail and HTTP
    modules."""
    from pvezfsha import alerts
    alerts.queue(alerts.Alert(key, ctid, "critical", summary, body), node)
    try:
        subprocess.Popen(_self_argv(cfg, "notify"), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True, close_fds=True)
    except Exception as e:  # an alert must never cost a start
        logger.warning(f"alerts: cannot start `pvezfsha notify`: {e}; the next cycle sends it")


def _self_argv(cfg: Config, *args: str) -> list[str]:
    return [sys.executable, "-m", "pvezfsha", "--config", cfg.path, *args]


def post_start(cfg: Config, ct: Container, cluster: Cluster) -> int:
    """Start a sync in the new direction and return at once: through the
    agent's spool when it runs and the container is continuous, else as a
    one-off `pvezfsha sync` (which also covers an agent that died)."""
    standbys = ', '.join(n for n in ct.nodes if n != cluster.local_node())
    problem = hand_off(ct.ctid, f"started on {cluster.local_node()}")
    if ct.options.continuous and problem is None and agent_running():
        print(f"pvezfsha: CT {ct.ctid}: replication towards {standbys} handed to pvezfsha-agent", flush=True)
        return 0
    argv = _self_argv(cfg, "sync", str(ct.ctid))
    if os.path.isdir("/run/systemd/system") and shutil.which("systemd-run"):
        argv = ["systemd-run", "--no-block", "--collect", f"--unit=pvezfsha-sync-{ct.ctid}-{int(time.time())}",
                "--description", f"pvezfsha sync of CT {ct.ctid} after its start", *argv]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                     start_new_session=True, env=env)
    print(f"pvezfsha: CT {ct.ctid}: replication towards {standbys} started in the background", flush=True)
    return 0


def final_push(cfg: Config, ct: Container, cluster: Cluster, phase: str) -> int:
    """The primary pushes a final snapshot to its standbys, within a bound."""
    node = cluster.local_node()
    role = role_of(cluster, RecordStore(cluster.root), ct.ctid)
    if role.primary != node:
        return 0
    timeout = ct.options.final_push_timeout
    # A timer cycle may hold a dataset: wait for it rather than skip it.
    argv = _self_argv(cfg, "sync", "--wait", f"{timeout * 0.8:.0f}", str(ct.ctid))
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
        rc = proc.returncode
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        out += f"\nfinal push stopped after {timeout:.0f} s; it resumes at the next cycle"
        rc = 1
    if rc != 0:
        out += f"\nfinal push to the standbys failed (exit {rc}); a takeover will judge their freshness"
    for line in out.splitlines():
        if line.strip():
            print(f"pvezfsha {phase}: {line}", flush=True)
            journal(f"{phase}: {line}")
    return 0   # only pre-start can stop anything; a failed push is reported above


def run(cfg_loader, vmid: str, phase: str) -> int:
    if phase not in PHASES:
        return 0   # PVE may add phases; they are not ours to refuse
    try:
        ctid = int(vmid)
    except ValueError:
        return 0
    try:
        cfg = cfg_loader()
    except PvezfshaError as e:
        # With the hook attached but no readable config we cannot know what
        # is protected: refuse the start, let the other phases pass.
        logger.error(f"CT {ctid} {phase}: {e}")
        journal(f"CT {ctid} {phase}: {e}")
        return 1 if phase == "pre-start" else 0
    ct = cfg.container(ctid)
    if ct is None:
        return 0
    cluster = Cluster()
    if cluster.local_node() not in ct.nodes:
        logger.error(f"CT {ctid}: this node ({cluster.local_node()}) is not one of its nodes "
                     f"({', '.join(ct.nodes)}) in {cfg.path}")
        return 1 if phase == "pre-start" else 0
    if phase == "pre-start":
        return pre_start(cfg, ct, cluster)
    if phase == "post-start":
        return post_start(cfg, ct, cluster)
    return final_push(cfg, ct, cluster, phase)


def promote(cfg: Config, ct: Container, cluster: Cluster, force: bool) -> int:
    node = cluster.local_node()
    owner = cluster.owner(ct.ctid)
    if owner != node and not force:
        raise PvezfshaError(f"CT {ct.ctid}'s config is on {owner}, not on {node}: move it here first "
                            f"(or --force to promote the data anyway)")
    return pre_start(cfg, ct, cluster, force=force)


def demote(cfg: Config, ct: Container, cluster: Cluster, force: bool) -> int:
    node = cluster.local_node()
    role = role_of(cluster, RecordStore(cluster.root), ct.ctid)
    if role.is_primary(node) and not force:
        raise PvezfshaError(f"CT {ct.ctid} runs here ({node} is its primary); stop or move it first "
                            f"(or --force)")
    LocalReplicas(node).demote(ct, "pvezfsha demote")
    print(f"CT {ct.ctid}: datasets on {node} are inert replicas (unmounted, readonly)")
    return 0
