"""A shared filesystem for simulated hosts on one machine (used by test_cluster.py and bench/cluster.py).

One export directory served by a loopback sshd, mounted N times with sshfs:
each mount is its own client, as another machine's would be. rename is
atomic on the server (the loser gets ENOENT); flock does not reach from one
mount to another; inotify sees nothing written through another mount. Each
"host" runs its processes with its own node name (QUEUECTL_NODE), its own
XDG_CACHE_HOME (its local disk, where its index lives) and its own mount.

Needs root (FUSE mounts, sshd, and apt-get for openssh-server and sshfs when
missing). `Cluster.up()` raises Unavailable with the reason otherwise.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

# What docs/many-hosts.md tells users to mount with, not kinder: sshfs's own directory
# cache off, the kernel's attribute and name caches at 1 s, no negative cache.
MOUNT_OPTIONS = "dir_cache=no,attr_timeout=1,entry_timeout=1,negative_timeout=0,reconnect"
SSHD = "/usr/sbin/sshd"


class Unavailable(Exception):
    """No sshfs cluster here (not root, no FUSE, no packages): the reason."""


def _install_packages() -> None:
    if shutil.which("sshfs") and os.path.exists(SSHD):
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise Unavailable("sshfs and openssh-server are missing and installing them needs root and apt-get")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "openssh-server", "sshfs"]):
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        if r.returncode:
            raise Unavailable(f"{' '.join(cmd)} failed: {r.stderr.strip()[-300:]}")
    if not shutil.which("sshfs") or not os.path.exists(SSHD):
        raise Unavailable("sshfs or sshd still missing after apt-get install")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    """base/export served by sshd, mounted at base/host0 .. base/host{n-1}."""

    kind = "sshfs"

    def __init__(self, base: Path, n: int = 3):
        self.base = Path(base)
        self.n = n
        self.export = self.base / "export"
        self.mounts = [self.base / f"host{i}" for i in range(n)]
        self.nodes = [f"host{chr(ord('A') + i)}" for i in range(n)]
        self.ssh = self.base / ".ssh"
        self.sshd_pid: int | None = None

    def up(self) -> "Cluster":
        if os.geteuid() != 0:
            raise Unavailable("needs root: FUSE mounts and a loopback sshd")
        if not os.path.exists("/dev/fuse") or not shutil.which("fusermount3") and not shutil.which("fusermount"):
            _install_packages()  # brings fuse3 (fusermount3) along with sshfs
        _install_packages()
        if not os.path.exists("/dev/fuse"):
            raise Unavailable("no /dev/fuse in this container")
        self.export.mkdir(parents=True, exist_ok=True)
        self.ssh.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.makedirs("/run/sshd", exist_ok=True)
        for key in ("key", "hostkey"):
            if not (self.ssh / key).exists():
                subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.ssh / key)], check=True)
        shutil.copy(self.ssh / "key.pub", self.ssh / "authorized_keys")
        port = _free_port()
        pidfile = self.ssh / "sshd.pid"
        pidfile.unlink(missing_ok=True)
        r = subprocess.run([SSHD, "-p", str(port), "-o", "ListenAddress=127.0.0.1", "-h", str(self.ssh / "hostkey"),
                            "-o", f"PidFile={pidfile}", "-o", f"AuthorizedKeysFile={self.ssh / 'authorized_keys'}",
                            "-o", "StrictModes=no", "-o", "PermitRootLogin=prohibit-password",
                            "-o", "MaxStartups=50", "-o", "MaxSessions=50"], capture_output=True, text=True)
        if r.returncode:
            raise Unavailable(f"sshd did not start: {r.stderr.strip()}")
        for _ in range(100):
            if pidfile.exists() and pidfile.read_text().strip():
                self.sshd_pid = int(pidfile.read_text())
                break
            time.sleep(0.05)
        for m in self.mounts:
            m.mkdir(parents=True, exist_ok=True)
            r = subprocess.run(["sshfs", "-p", str(port), "-o", f"IdentityFile={self.ssh / 'key'}",
                                "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                                "-o", "LogLevel=ERROR", "-o", MOUNT_OPTIONS,
                                f"root@127.0.0.1:{self.export}", str(m)], capture_output=True, text=True, timeout=60)
            if r.returncode:
                self.down()
                raise Unavailable(f"sshfs mount failed (FUSE not allowed here?): {r.stderr.strip()}")
        return self

    def down(self) -> None:
        for m in self.mounts:
            if os.path.ismount(m):
                for tool in ("fusermount3", "fusermount"):
                    if shutil.which(tool) and subprocess.run([tool, "-u", "-z", str(m)],
                                                             capture_output=True).returncode == 0:
                        break
        if self.sshd_pid:
            try:
                os.kill(self.sshd_pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            self.sshd_pid = None

    # -- what one host runs ----------------------------------------------------------

    def env(self, i: int, node: str | None = None) -> dict[str, str]:
        """Host i's environment: its node name and its own local disk for caches."""
        cache = self.base / f"cache{i}"
        cache.mkdir(exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("QUEUECTL_")}
        env.update(QUEUECTL_NODE=node or self.nodes[i], XDG_CACHE_HOME=str(cache), PYTHONUNBUFFERED="1")
        return env

    def spool(self, i: int, name: str) -> Path:
        """The spool `name` (a directory in the export) as host i sees it."""
        return self.mounts[i] / name

    def cli(self, i: int, spool: str, *args: str, node: str | None = None, timeout: float = 120,
            input: str | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "queuectl", "--spool", str(self.spool(i, spool)), *args],
                              env=self.env(i, node), capture_output=True, text=True, timeout=timeout, input=input)

    def start(self, i: int, spool: str, *args: str, log: Path, node: str | None = None) -> subprocess.Popen:
        """A background `queuectl ... ARGS` on host i, in its own session, output to log."""
        out = open(log, "ab")
        try:
            return subprocess.Popen([sys.executable, "-m", "queuectl", "--spool", str(self.spool(i, spool)), *args],
                                    env=self.env(i, node), stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        finally:
            out.close()


def processes_of_node(node: str) -> list[int]:
    """Every process (supervisor, workers, their commands) whose environment names this node."""
    needle = f"QUEUECTL_NODE={node}".encode()
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as f:
                env = f.read().split(b"\0")
        except OSError:
            continue
        if needle in env:
            found.append(int(name))
    return found


def kill_node(node: str) -> list[int]:
    """kill -9 every process of one simulated host, as a power cut would."""
    pids = processes_of_node(node)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return pids
