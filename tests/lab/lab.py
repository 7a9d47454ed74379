#!/usr/bin/env python3
"""Lab of real OpenZFS nodes in qemu guests, for pvezfsha's integration tests.

Each node (pve1..pveN) is a Debian trixie guest with the zfs module, pyzfs and
sshd, booted from the image tests/lab/build.sh builds and caches. The host
reaches node i over ssh on 127.0.0.1:<port base + i>; the nodes reach each
other by name (pve1 = 169.254.10.1, ...) over a second NIC whose frames pass
through a tiny UDP Ethernet hub on host loopback. Every node has a pool
"tank" on a file vdev, and its root disk is a qcow2 overlay that survives a
power cut (kill -9 of qemu), so failover tests can crash and reboot nodes.

Command line (run as root; stdlib only):

    lab.py up [--nodes N] [--cfs]
                               build/reuse image, boot N nodes (2), make pools;
                               --cfs: /etc/pve is the emulated pmxcfs (cfs.py)
    lab.py down                power off everything, delete the run dir
    lab.py ssh NODE [CMD ...]  run CMD on NODE (no CMD: a shell); exit code passes
    lab.py run NODE CMD ...    like ssh, but with '\\r' stripped (for CI logs)
    lab.py push                copy the repo to /opt/pvezfsha on every node
    lab.py install-deb DEB     install the built .deb on every node (the lab
                               then runs /usr/bin/pvezfsha from the package)
    lab.py crash NODE          power cut (kill -9 of that node's qemu)
    lab.py boot NODE           start a node again on its disk, wait for ssh
    lab.py link NODE on|off    plug/unplug the node's inter-node NIC (with --cfs
                               also its corosync link: the partitions follow)
    lab.py status              show which nodes run

CMD with one argument is a shell command line ('zfs list | head'); with
several, they are an argv and quoted as such, so
`lab.py ssh pve1 python3 -c 'print(1); print(2)'` does what it says.

From Python (e.g. a pytest conftest), `import lab` and use Lab():

    lab = Lab(); lab.up(); lab.ssh("pve1", "zfs list", check=True).stdout

Environment: PVEZFSHA_LAB_RUN (run dir, default /tmp/pvezfsha-lab),
PVEZFSHA_LAB_PORT_BASE (default 2220: ssh on base+i, hub on UDP base+40,
node link ends on UDP base+40+i).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import fcntl
import io
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cfs as cfsmod  # noqa: E402

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
DEFAULT_RUN = "/tmp/pvezfsha-lab"
DEFAULT_PORT_BASE = 2220
HUB_OFFSET = 40
BOOT_TIMEOUT = 120.0
IPS = {f"pve{i}": f"169.254.10.{i}" for i in range(1, 10)}
# qemu 7 ships the C virtiofsd; later releases use the Rust one (package virtiofsd).
VIRTIOFSD = ("/usr/libexec/virtiofsd", "/usr/lib/qemu/virtiofsd")

SSH_OPTS = [
    "-o", "StrictHostKeyChecking=no",
    "-o", "UserKnownHostsFile=/dev/null",
    "-o", "LogLevel=ERROR",
    "-o", "BatchMode=yes",
    # A new connection costs ~0.7 s under TCG; a shared one ~0.1 s.
    "-o", "ControlMaster=auto",
    "-o", "ControlPersist=600",
    # Generous: two emulated guests on two cores can stall for seconds.
    "-o", "ServerAliveInterval=10",
    "-o", "ServerAliveCountMax=6",
]

POOL_SCRIPT = """
set -e
if ! zpool list tank >/dev/null 2>&1; then
  if ! zpool import -d /var/lib/lab -N tank >/dev/null 2>&1; then
    mkdir -p /var/lib/lab
    truncate -s 4G /var/lib/lab/tank.img
    zpool create -o cachefile=none -O mountpoint=/tank -O compression=lz4 \
      -O atime=off tank /var/lib/lab/tank.img
  fi
  zfs mount -a
fi
# The vdev file must be on disk before any power cut a test may cause.
sync
zfs list -H -o name tank
"""

PUSH_SCRIPT = """
set -e
rm -rf /opt/pvezfsha.new
mkdir -p /opt/pvezfsha.new
tar -x -C /opt/pvezfsha.new
rm -rf /opt/pvezfsha
mv /opt/pvezfsha.new /opt/pvezfsha
# The source wrapper only while the package is not installed: it would
# shadow the package's /usr/bin/pvezfsha (PATH has /usr/local/bin first).
if ! dpkg-query -W -f='${Status}' pvezfsha 2>/dev/null | grep -q 'install ok installed'; then
cat > /usr/local/bin/pvezfsha <<'EOF'
#!/bin/sh
PYTHONPATH=/opt/pvezfsha exec python3 -m pvezfsha "$@"
EOF
chmod 0755 /usr/local/bin/pvezfsha
else
echo "lab: the pvezfsha package is installed here: /usr/bin/pvezfsha is the .deb's, not the pushed tree" >&2
fi
# A test may power-cut the node right after a push.
sync
"""


class LabError(RuntimeError):
    pass


def log(msg: str) -> None:
    print(f"lab: {msg}", file=sys.stderr, flush=True)


def node_index(node: str) -> int:
    if not node.startswith("pve") or not node[3:].isdigit():
        raise LabError(f"bad node name {node!r} (want pve1, pve2, ...)")
    return int(node[3:])


def _pid_alive(pid: int, marker: str) -> bool:
    """True if pid runs and its command line mentions marker.

    The marker guards against a recycled pid after a crash or a reboot of
    the host: we only ever signal processes we started.
    """
    try:
        with open(f"/proc/{pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                return False
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return marker.encode() in f.read()
    except (OSError, IndexError):
        return False


def _port_free(kind: int, port: int) -> bool:
    with socket.socket(socket.AF_INET, kind) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


# --- the hub -------------------------------------------------------------

def hub_main(port: int, node_ports: list[int]) -> None:
    """Ethernet hub: every frame from one node's link goes to all others.

    qemu's UDP socket netdev sends each frame as one datagram to the hub and
    accepts frames from anyone on its own port. Unicast or not, every frame
    is flooded; the guests' NICs drop what is not theirs, as on a real hub.
    """
    peers = [("127.0.0.1", p) for p in node_ports]
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    # Python is slower than the guests' bursts; big buffers avoid drops that
    # would make TCP between the nodes crawl.
    for opt, force in ((socket.SO_RCVBUF, 33), (socket.SO_SNDBUF, 32)):
        try:
            s.setsockopt(socket.SOL_SOCKET, force, 8 << 20)  # *BUFFORCE, root
        except OSError:
            s.setsockopt(socket.SOL_SOCKET, opt, 8 << 20)
    s.bind(("127.0.0.1", port))
    while True:
        try:
            frame, src = s.recvfrom(65536)
        except OSError:
            continue
        if src not in peers:
            continue
        for p in peers:
            if p != src:
                try:
                    s.sendto(frame, p)
                except OSError:
                    pass  # that node is powered off: the frame is lost, fine


def _hub_daemon(pidfile: str, port: int, node_ports: list[int]) -> None:
    # Double fork, so the hub is nobody's zombie-to-be (a pytest process that
    # started it may live long) and survives the caller.
    pid = os.fork()
    if pid:
        Path(pidfile).write_text(f"{pid}\n")
        os._exit(0)
    os.setsid()
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    hub_main(port, node_ports)


# --- the lab -------------------------------------------------------------

class Lab:
    """The lab on this host, as described by its run dir."""

    def __init__(self, run_dir: str | os.PathLike | None = None,
                 port_base: int | None = None):
        # An empty PVEZFSHA_LAB_RUN means the default, never Path("") (the
        # current directory, which `down` would then delete): an absolute
        # path only, so that no typo can aim rmtree at a working tree.
        self.run = Path(run_dir or os.environ.get("PVEZFSHA_LAB_RUN") or DEFAULT_RUN)
        if not self.run.is_absolute():
            raise LabError(f"PVEZFSHA_LAB_RUN={self.run}: the lab's run dir must be an absolute path")
        self.state_file = self.run / "state.json"
        state = self._state()
        if port_base is None:
            port_base = state.get("port_base") or int(
                os.environ.get("PVEZFSHA_LAB_PORT_BASE", DEFAULT_PORT_BASE))
        self.port_base = port_base

    # state

    def _state(self) -> dict:
        try:
            return json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return {}

    @property
    def nodes(self) -> list[str]:
        """Names of the lab's nodes, whether running or not."""
        return [f"pve{i}" for i in range(1, self._state().get("nodes", 0) + 1)]

    def _update(self, **kw) -> None:
        state = self._state()
        state.update(kw)
        self.state_file.write_text(json.dumps(state) + "\n")

    @property
    def cfs(self) -> "cfsmod.Cfs | None":
        """The emulated pmxcfs, if this lab has one (up --cfs)."""
        if not self._state().get("cfs"):
            return None
        return cfsmod.Cfs(self.run / "cfs", self.nodes, IPS)

    def linked(self) -> set[str]:
        links = self._state().get("links", {})
        return {n for n in self.nodes if links.get(n, True)}

    @property
    def image(self) -> Path:
        img = self._state().get("image")
        if not img:
            raise LabError(f"no lab in {self.run} (run: lab.py up)")
        return Path(img)

    def ssh_port(self, node: str) -> int:
        return self.port_base + node_index(node)

    def hub_port(self) -> int:
        return self.port_base + HUB_OFFSET

    def link_port(self, node: str) -> int:
        return self.hub_port() + node_index(node)

    def _path(self, node: str, what: str) -> Path:
        return self.run / f"{node}.{what}"

    @contextlib.contextmanager
    def _lock(self):
        # Beside the run dir, since `down` deletes the run dir.
        with open(f"{self.run}.lock", "w") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            yield

    def _check_node(self, node: str) -> None:
        if node not in self.nodes:
            raise LabError(f"{node} is not in the lab (nodes: {', '.join(self.nodes) or 'none'})")

    # processes

    def _pid(self, name: str) -> int | None:
        """pid of qemu for node `name`, or of the hub for name 'hub', if it runs."""
        try:
            pid = int((self.run / f"{name}.pid").read_text())
        except (OSError, ValueError):
            return None
        return pid if _pid_alive(pid, str(self.run)) else None

    def running(self, node: str) -> bool:
        return self._pid(node) is not None

    def _kill(self, name: str) -> None:
        pid = self._pid(name)
        if pid is None:
            return
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while _pid_alive(pid, str(self.run)) and time.monotonic() < deadline:
            time.sleep(0.05)
        (self.run / f"{name}.pid").unlink(missing_ok=True)

    def _start_hub(self) -> None:
        if self._pid("hub"):
            return
        n = self._state()["nodes"]
        ports = [str(self.hub_port() + i) for i in range(1, n + 1)]
        if not _port_free(socket.SOCK_DGRAM, self.hub_port()):
            raise LabError(f"UDP port {self.hub_port()} is taken; set PVEZFSHA_LAB_PORT_BASE")
        subprocess.run([sys.executable, str(Path(__file__).resolve()), "_hub",
                        str(self.run / "hub.pid"), str(self.hub_port()), *ports],
                       check=True, stdin=subprocess.DEVNULL)
        if not self._pid("hub"):
            raise LabError("the hub did not start")

    def _start_virtiofsd(self, node: str) -> list[str]:
        """The node's virtiofs daemon for the cfs share; qemu args to use it.

        It serves one guest and exits when that guest's qemu goes, so each
        boot starts one."""
        binary = next((b for b in VIRTIOFSD if os.path.exists(b)), None)
        if binary is None:
            raise LabError("no virtiofsd (apt install virtiofsd, or qemu-system-common of qemu 7)")
        sock = self._path(node, "vfs")
        sock.unlink(missing_ok=True)
        share = str(self.run / "cfs")
        if binary.startswith("/usr/libexec"):
            argv = [binary, f"--socket-path={sock}", f"--shared-dir={share}", "--cache=never",
                    "--sandbox=chroot"]
        else:
            argv = [binary, f"--socket-path={sock}", "-o", f"source={share}", "-o", "cache=none",
                    "-o", "sandbox=chroot"]
        with open(self._path(node, "virtiofsd.log"), "ab") as f:
            p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=f, stderr=f,
                                 start_new_session=True)
        self._path(node, "virtiofsd.pid").write_text(f"{p.pid}\n")
        deadline = time.monotonic() + 10
        while not sock.exists():
            if p.poll() is not None or time.monotonic() > deadline:
                raise LabError(f"virtiofsd for {node} did not start: "
                               f"{self._path(node, 'virtiofsd.log').read_text()[-1000:]}")
            time.sleep(0.05)
        return ["-object", "memory-backend-memfd,id=mem,size=1024M,share=on",
                "-machine", "memory-backend=mem",
                "-chardev", f"socket,id=vfs,path={sock}",
                "-device", "vhost-user-fs-pci,chardev=vfs,tag=pve"]

    def _qemu_argv(self, node: str) -> list[str]:
        i = node_index(node)
        img = self.image
        mon = self._path(node, "mon")
        return [
            "qemu-system-x86_64", "-name", node,
            "-machine", "q35", "-accel", "tcg", "-cpu", "qemu64", "-smp", "1", "-m", "1024",
            # -nographic is a no-op with serial, monitor and parallel set;
            # that is what lets qemu -daemonize with it.
            "-nographic", "-no-reboot", "-parallel", "none",
            "-kernel", str(img / "vmlinuz"), "-initrd", str(img / "initrd.img"),
            "-append", "root=/dev/vda rw console=ttyS0 panic=-1 quiet net.ifnames=0 "
                       f"init=/sbin/lab-init lab.node={node} lab.ip=169.254.10.{i}",
            # No snapshot=on: the root must outlive a power cut; the overlay
            # keeps the cached image unwritten.
            "-drive", f"file={self._path(node, 'qcow2')},if=none,id=root,format=qcow2",
            "-device", "virtio-blk-pci,drive=root",
            "-nic", "user,restrict=on,net=169.254.77.0/24,"
                    f"hostfwd=tcp:127.0.0.1:{self.ssh_port(node)}-169.254.77.15:22,"
                    f"model=virtio-net-pci,mac=52:54:00:00:0{i}:01",
            "-netdev", f"socket,id=link,udp=127.0.0.1:{self.hub_port()},"
                       f"localaddr=127.0.0.1:{self.link_port(node)}",
            "-device", f"virtio-net-pci,netdev=link,mac=52:54:00:00:0{i}:02",
            "-monitor", f"unix:{mon},server=on,wait=off",
            # append=on: keep the console of earlier boots across a crash.
            "-chardev", f"file,id=console,path={self._path(node, 'console')},append=on",
            "-serial", "chardev:console",
            "-pidfile", str(self._path(node, "pid")),
            # Not our child: no zombies in a long pytest, survives lab.py.
            "-daemonize",
        ]

    def _start_node(self, node: str) -> None:
        if self.running(node):
            return
        if not _port_free(socket.SOCK_STREAM, self.ssh_port(node)):
            raise LabError(f"TCP port {self.ssh_port(node)} is taken; set PVEZFSHA_LAB_PORT_BASE")
        self._close_master(node)
        # Where this boot's console output starts, for booted() to look at.
        console = self._path(node, "console")
        self._path(node, "boot").write_text(
            f"{console.stat().st_size if console.exists() else 0}\n")
        qlog = self._path(node, "qemu.log")
        extra = self._start_virtiofsd(node) if self.cfs else []
        with open(qlog, "ab") as f:
            r = subprocess.run(self._qemu_argv(node) + extra, stdin=subprocess.DEVNULL,
                               stdout=f, stderr=f)
        if r.returncode != 0 or not self.running(node):
            raise LabError(f"qemu for {node} did not start:\n{qlog.read_text()[-2000:]}")

    def booted(self, node: str) -> bool:
        """guest-init got through its boot (pools imported and mounted).

        sshd starts before the pools are imported, so ssh answering is not
        enough: a test right after a boot would see an unmounted /tank.
        """
        try:
            start = int(self._path(node, "boot").read_text())
            with open(self._path(node, "console"), "rb") as f:
                f.seek(start)
                return f"lab-init: {node} ready".encode() in f.read()
        except (OSError, ValueError):
            return False

    def console_tail(self, node: str, lines: int = 30) -> str:
        try:
            text = self._path(node, "console").read_text(errors="replace")
        except OSError:
            return "(no console log)"
        return "\n".join(text.replace("\r", "").splitlines()[-lines:])

    # ssh

    def ssh_argv(self, node: str, cmd: str | list[str] | None = None,
                 tty: bool = False, opts: tuple[str, ...] = ()) -> list[str]:
        """argv of ssh to node; cmd as str is a shell line, as list an argv."""
        argv = ["ssh", "-i", str(self.image / "id_lab"), *SSH_OPTS, *opts,
                "-o", f"ControlPath={self._path(node, 'ssh')}",
                "-p", str(self.ssh_port(node))]
        if tty:
            argv.append("-t")
        argv.append("root@127.0.0.1")
        if cmd is not None:
            argv += ["--", cmd if isinstance(cmd, str) else shlex.join(cmd)]
        return argv

    def ssh(self, node: str, cmd: str | list[str], *, check: bool = False,
            input: str | bytes | None = None, capture: bool = True, text: bool = True,
            timeout: float | None = None) -> subprocess.CompletedProcess:
        """Run cmd on node. cmd as str is a shell line, as list an argv."""
        self._check_node(node)
        if isinstance(input, bytes):
            text = False
        r = subprocess.run(self.ssh_argv(node, cmd), input=input, capture_output=capture,
                           text=text, timeout=timeout,
                           stdin=subprocess.DEVNULL if input is None else None)
        if check and r.returncode != 0:
            raise LabError(f"{node}: {cmd!r} exited {r.returncode}\n"
                           f"{r.stdout or ''}{r.stderr or ''}")
        return r

    def _close_master(self, node: str) -> None:
        # A master to a dead guest would make the next ssh wait for nothing.
        sock = self._path(node, "ssh")
        if sock.exists():
            subprocess.run(["ssh", "-o", f"ControlPath={sock}", "-O", "exit", "x"],
                           capture_output=True, timeout=10)
            sock.unlink(missing_ok=True)

    def wait_ssh(self, node: str, timeout: float = BOOT_TIMEOUT) -> float:
        """Wait until node has booted and answers over ssh; returns seconds waited."""
        t0 = time.monotonic()
        while True:
            if not self.running(node):
                raise LabError(f"{node}: qemu is gone\n--- console ---\n{self.console_tail(node)}")
            if self._answers(node):
                return time.monotonic() - t0
            if time.monotonic() - t0 > timeout:
                what = "ssh" if self.booted(node) else "end of boot"
                raise LabError(f"{node}: no {what} after {timeout:.0f} s\n"
                               f"--- console ---\n{self.console_tail(node)}")
            time.sleep(0.5)

    def _answers(self, node: str) -> bool:
        if not self.booted(node):
            return False
        try:
            r = subprocess.run(self.ssh_argv(node, "true", opts=("-o", "ConnectTimeout=5")),
                               stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
        except subprocess.TimeoutExpired:
            return False
        return r.returncode == 0

    # lifecycle

    def healthy(self) -> bool:
        """All nodes and the hub run, and each answers with its pool."""
        if not self.nodes or not self._pid("hub"):
            return False
        for node in self.nodes:
            if not self.running(node):
                return False
            try:
                r = self.ssh(node, "zfs list -H -o name tank", timeout=30)
            except subprocess.TimeoutExpired:
                return False
            if r.returncode != 0 or r.stdout.strip() != "tank":
                return False
        return True

    def up(self, nodes: int = 2, timeout: float = BOOT_TIMEOUT, cfs: bool = False) -> None:
        """Bring up a lab of `nodes` nodes; a no-op if it is up and healthy.
        cfs: /etc/pve on the nodes is the emulated pmxcfs (cfs.py)."""
        if not 1 <= nodes <= 9:
            raise LabError("1 to 9 nodes")
        self.run.mkdir(parents=True, exist_ok=True)
        with self._lock():
            have = self._state().get("nodes")
            if have and (have != nodes or bool(self._state().get("cfs")) != cfs):
                raise LabError(f"a lab of {have} nodes{' with cfs' if self._state().get('cfs') else ''} "
                               f"is in {self.run}; run lab.py down first")
            if have and self.healthy():
                log(f"lab of {nodes} nodes already up")
                return
            t0 = time.monotonic()
            if not have:
                image = self._build()
                self._need_qemu_img()
                state = {"nodes": nodes, "image": str(image), "port_base": self.port_base,
                         "cfs": cfs}
                self.state_file.write_text(json.dumps(state) + "\n")
                if cfs:
                    self.cfs.create()
            for node in self.nodes:
                ov = self._path(node, "qcow2")
                if not ov.exists():
                    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw",
                                    "-b", str(self.image / "root.img"), str(ov)], check=True)
            self._start_hub()
            off = [n for n in self.nodes if not self.running(n)]
            for node in off:
                self._start_node(node)
            if off:
                log(f"booting {', '.join(off)}")
            self._each(lambda n: self.wait_ssh(n, timeout))
            log(f"ssh answers on all nodes after {time.monotonic() - t0:.1f} s")
            self._each(lambda n: self.ssh(n, POOL_SCRIPT, check=True))
            self._cfs_apply(remount=set(self.nodes))
            self.check_mesh()
            log(f"lab up in {time.monotonic() - t0:.1f} s")

    def _each(self, fn) -> list:
        # Threads: the work is waiting on guests, and one error should not
        # hide another node's console.
        with concurrent.futures.ThreadPoolExecutor(len(self.nodes)) as ex:
            futs = [ex.submit(fn, n) for n in self.nodes]
            errors = [str(f.exception()) for f in futs if f.exception()]
            if errors:
                raise LabError("\n".join(errors))
            return [f.result() for f in futs]

    def check_mesh(self) -> None:
        """Every node reaches every other one by name over the node link."""
        def check(node):
            others = [n for n in self.nodes if n != node]
            if not others:
                return
            script = "; ".join(f"ssh -o BatchMode=yes -o ConnectTimeout=5 {o} hostname"
                               for o in others)
            r = self.ssh(node, script, timeout=120)
            if r.stdout.split() != others:
                raise LabError(f"{node} cannot reach {others} over the node link: "
                               f"{r.stdout!r} {r.stderr!r}")
        self._each(check)

    def _build(self) -> Path:
        log("build.sh (reuses the cached image when there is one)")
        r = subprocess.run([str(HERE / "build.sh")], stdout=subprocess.PIPE, text=True)
        if r.returncode != 0:
            raise LabError(f"build.sh failed ({r.returncode})")
        image = Path(r.stdout.strip().splitlines()[-1])
        if not (image / "ready").exists():
            raise LabError(f"build.sh printed {image}, which has no image")
        return image

    @staticmethod
    def _need_qemu_img() -> None:
        # build.sh installs qemu-system but not qemu-utils, which has qemu-img.
        if shutil.which("qemu-img"):
            return
        log("installing qemu-utils (for qemu-img)")
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends",
                        "qemu-utils"], check=True, stdout=sys.stderr,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})

    def down(self) -> None:
        """Power off every node and the hub, and delete the run dir."""
        if not self.run.exists():
            return
        if not (self.run / "state.json").exists() and not any(self.run.glob("*.pid")):
            # Not a lab run dir (no state, no pid file): never delete it.
            raise LabError(f"{self.run} does not look like a lab run dir; not deleting it")
        with self._lock():
            for pidfile in self.run.glob("*.pid"):
                name = pidfile.name[:-4]
                if name != "hub":
                    self._close_master(name)
                self._kill(name)
            shutil.rmtree(self.run, ignore_errors=True)
        Path(f"{self.run}.lock").unlink(missing_ok=True)

    def crash(self, node: str) -> None:
        """Power cut: kill -9 of the node's qemu. Its disks keep what was written."""
        self._check_node(node)
        with self._lock():
            self._kill(node)
            self._kill(f"{node}.virtiofsd")
            self._close_master(node)
            self._cfs_apply()

    def boot(self, node: str, timeout: float = BOOT_TIMEOUT) -> float:
        """Start node again on its disk; returns seconds until ssh answered."""
        self._check_node(node)
        with self._lock():
            self._start_hub()
            self._start_node(node)
        waited = self.wait_ssh(node, timeout)
        with self._lock():
            self._cfs_apply(remount={node})
        return waited

    def monitor(self, node: str, command: str) -> str:
        """Run a qemu human-monitor command on node; returns its output."""
        self._check_node(node)
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(10)
            s.connect(str(self._path(node, "mon")))
            buf = b""

            def until_prompt() -> bytes:
                nonlocal buf
                while b"(qemu) " not in buf:
                    chunk = s.recv(4096)
                    if not chunk:
                        raise LabError(f"{node}: monitor closed")
                    buf += chunk
                out, _, buf = buf.partition(b"(qemu) ")
                return out

            until_prompt()  # banner
            s.sendall(command.encode() + b"\n")
            out = until_prompt().decode(errors="replace").replace("\r", "")
        # The monitor echoes the line (with terminal escapes) before the output.
        return "\n".join(out.split("\n")[1:]).strip()

    def link(self, node: str, up: bool) -> None:
        """Plug (up=True) or unplug the node's NIC on the node-to-node link."""
        out = self.monitor(node, f"set_link link {'on' if up else 'off'}")
        if out:
            raise LabError(f"{node}: set_link: {out}")
        with self._lock():
            links = self._state().get("links", {})
            links[node] = up
            self._update(links=links)
            self._cfs_apply()

    def _cfs_apply(self, remount: set[str] = frozenset()) -> None:
        """Bring every running node's /etc/pve in line with the partitions:
        .members for each, and a new mount where a node gained or lost
        quorum (or booted: `remount`). Call with the lock held."""
        cfs = self.cfs
        if cfs is None:
            return
        running = {n for n in self.nodes if self.running(n)}
        views = cfs.views(running, self.linked())
        sources = self._state().get("cfs_src", {})
        for node in self.nodes:
            if node not in views:
                sources.pop(node, None)   # off: its mounts went with it
        for node, (part, quorate) in sorted(views.items()):
            src = cfs.source(node, quorate, sources.get(node))
            cfs.write_members(node, part, quorate)
            if node in remount or sources.get(node) != src:
                self.ssh(node, ["sh", "-c", cfsmod.GUEST_SCRIPT, "-", node, src,
                                "rw" if quorate else "ro"], check=True, timeout=60)
            sources[node] = src
        self._update(cfs_src=sources)

    def cfs_views(self) -> dict[str, tuple[list[str], bool]]:
        """node -> (its partition, quorate), for the running nodes."""
        cfs = self.cfs
        if cfs is None:
            raise LabError("this lab has no cfs (lab.py up --cfs)")
        return cfs.views({n for n in self.nodes if self.running(n)}, self.linked())

    def push(self) -> None:
        """Copy the repo's files (tracked + untracked, not ignored) to /opt/pvezfsha."""
        files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"],
                               cwd=REPO, check=True, capture_output=True).stdout
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for name in sorted(set(files.decode().split("\0")) - {""}):
                path = REPO / name
                # Listed but deleted in the worktree; caches when not ignored.
                if not path.is_file() or "__pycache__" in path.parts or name.endswith(".pyc"):
                    continue
                info = tar.gettarinfo(str(path), arcname=name)
                info.uid = info.gid = 0
                info.uname = info.gname = "root"
                with open(path, "rb") as f:
                    tar.addfile(info, f)
        data = buf.getvalue()
        def one(node):
            r = self.ssh(node, PUSH_SCRIPT, input=data, check=True)
            for line in (r.stderr or b"").decode(errors="replace").splitlines():
                if line.startswith("lab: "):
                    log(f"{node}: {line[5:]}")
        self._each(one)

    def install_deb(self, deb: str | os.PathLike) -> None:
        """Install the package on every node with apt, offline (the guests
        have no network: every dependency is already in the image), and
        remove the source wrapper so that /usr/bin/pvezfsha is what runs."""
        data = Path(deb).read_bytes()
        script = (
            "set -e; cat > /var/tmp/pvezfsha.deb; "
            "DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends --reinstall "
            "/var/tmp/pvezfsha.deb >/var/tmp/pvezfsha-install.log 2>&1 "
            "|| { cat /var/tmp/pvezfsha-install.log; exit 1; }; "
            "rm -f /usr/local/bin/pvezfsha /var/tmp/pvezfsha.deb; "
            "test \"$(command -v pvezfsha)\" = /usr/bin/pvezfsha; pvezfsha --version; sync")

        def one(node):
            r = self.ssh(node, script, input=data, text=False, check=False, timeout=300)
            out = (r.stdout or b"").decode(errors="replace") + (r.stderr or b"").decode(errors="replace")
            if r.returncode != 0:
                raise LabError(f"{node}: installing {deb} failed ({r.returncode}):\n{out}")
            log(f"{node}: {out.strip().splitlines()[-1]} installed from {Path(deb).name}")
        self._each(one)

    def status(self) -> str:
        if not self.nodes:
            return f"no lab in {self.run}"
        lines = [f"run dir {self.run}, image {self.image}",
                 f"hub udp:{self.hub_port()} {'running' if self._pid('hub') else 'DOWN'}"]
        views = self.cfs_views() if self.cfs else {}
        for n in self.nodes:
            cfs = ""
            if n in views:
                part, quorate = views[n]
                cfs = f" partition {','.join(part)} {'quorate' if quorate else 'NOT quorate'}"
            lines.append(f"{n} ssh:{self.ssh_port(n)} "
                         f"{'running' if self.running(n) else 'off'}{cfs}")
        return "\n".join(lines)


# --- command line ----------------------------------------------------------

def _remote(args: list[str]) -> str | None:
    # One argument: a shell line. Several: an argv, quoted so it arrives as is.
    if not args:
        return None
    return args[0] if len(args) == 1 else shlex.join(args)


def _run_stripped(argv: list[str]) -> int:
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def pump(src, dst):
        for chunk in iter(lambda: src.read1(65536), b""):
            dst.write(chunk.replace(b"\r", b""))
            dst.flush()

    t = threading.Thread(target=pump, args=(p.stderr, sys.stderr.buffer))
    t.start()
    pump(p.stdout, sys.stdout.buffer)
    t.join()
    return p.wait()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_hub"]:  # internal: lab.py _hub PIDFILE PORT NODEPORT...
        _hub_daemon(argv[1], int(argv[2]), [int(p) for p in argv[3:]])
        return 0
    ap = argparse.ArgumentParser(prog="lab.py", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("up", help="boot the lab (no-op if up)")
    p.add_argument("--nodes", type=int, default=2)
    p.add_argument("--cfs", action="store_true", help="emulate pmxcfs with partitions (cfs.py)")
    sub.add_parser("down", help="power off all, delete the run dir")
    sub.add_parser("status", help="what runs")
    sub.add_parser("push", help="copy the repo to /opt/pvezfsha on every node")
    sub.add_parser("install-deb", help="install the built .deb on every node").add_argument("deb")
    for name in ("ssh", "run"):
        p = sub.add_parser(name, help="run a command on a node"
                           + (" ('\\r' stripped)" if name == "run" else ""))
        p.add_argument("node")
        p.add_argument("command", nargs=argparse.REMAINDER)
    for name in ("crash", "boot"):
        sub.add_parser(name, help=f"{name} a node").add_argument("node")
    p = sub.add_parser("link", help="plug/unplug a node's node-to-node NIC")
    p.add_argument("node")
    p.add_argument("state", choices=["on", "off"])
    a = ap.parse_args(argv)

    lab = Lab()
    try:
        if a.cmd == "up":
            lab.up(a.nodes, cfs=a.cfs)
        elif a.cmd == "down":
            lab.down()
        elif a.cmd == "status":
            print(lab.status())
        elif a.cmd == "push":
            lab.push()
        elif a.cmd == "install-deb":
            lab.install_deb(a.deb)
        elif a.cmd in ("ssh", "run"):
            lab._check_node(a.node)
            tty = a.cmd == "ssh" and not a.command and sys.stdin.isatty()
            ssh = lab.ssh_argv(a.node, _remote(a.command), tty=tty)
            if a.cmd == "run":
                return _run_stripped(ssh)
            return subprocess.run(ssh).returncode
        elif a.cmd == "crash":
            lab.crash(a.node)
        elif a.cmd == "boot":
            log(f"{a.node} answers after {lab.boot(a.node):.1f} s")
        elif a.cmd == "link":
            lab.link(a.node, a.state == "on")
    except LabError as e:
        log(f"error: {e}")
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
