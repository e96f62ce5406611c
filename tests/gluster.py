"""A real distributed filesystem for simulated hosts on one machine: GlusterFS (used by the cluster tests and
bench/cluster.py).

One volume with one brick on a local directory, served by a glusterd and a brick process of this fixture's own
(bound to a loopback address derived from the base directory, so several clusters and a system glusterd can
coexist; no traffic leaves the machine), mounted N times with the native FUSE client: each mount is its own
Gluster client, as another machine's would be. Gluster's default volume and mount options: that is what a user
gets, and what queuectl must be correct on.

What a mount sees (GlusterFS 10.3, measured): rename is atomic on the server (one winner, the loser gets
ENOENT); O_EXCL collides across mounts; flock(2) and fcntl locks are honoured across mounts and freed 30-280 ms
after the holder dies; a rename on one mount is in another's listing within 1-2 ms; but for up to a second a
name renamed away still stats, mtime and size lag, a replaced file may still read its old content, and
open/read/close may fail with ESTALE; every st_ino is >= 2**63; inotify sees nothing written through another
mount.

`GlusterCluster` has the interface of cluster.Cluster (mounts, nodes, env, spool, cli, start); `export` is the
brick, where the files are as the server has them (read it, never write it). Needs root, /dev/fuse and Debian's
glusterfs-server and glusterfs-client; `up()` raises Unavailable with the reason otherwise.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import zlib
from pathlib import Path

from cluster import Cluster, Unavailable

VOLUME = "qv"
PORT = 24007  # glusterd's: its bricks fetch their volfile there, so each cluster binds its own address


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return False


def _stop(pid: int) -> None:
    """SIGTERM, then SIGKILL after 5 s."""
    if not _alive(pid):
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if not _alive(pid):
            return
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _free(addr: str) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((addr, PORT))
        except OSError:
            return False
    return True


class GlusterCluster(Cluster):
    """base/.gluster/brick served by this cluster's glusterd, mounted at base/host0 .. base/host{n-1}."""

    kind = "glusterfs"

    def __init__(self, base: Path, n: int = 3):
        super().__init__(base, n)
        self.g = self.base / ".gluster"
        self.export = self.g / "brick"
        self.addr = ""
        self.glusterd_pid: int | None = None

    def _cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(["gluster", f"--glusterd-sock={self.g / 'gd' / 'glusterd.socket'}",
                               f"--log-file={self.g / 'logs' / 'cli.log'}", "--mode=script", *args],
                              capture_output=True, text=True, timeout=timeout)

    def _wait(self, pred, what: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if pred():
                return
            time.sleep(0.1)
        self.down()
        raise Unavailable(f"{what} (logs in {self.g / 'logs'})")

    def up(self) -> "GlusterCluster":
        if os.geteuid() != 0:
            raise Unavailable("needs root: FUSE mounts and a glusterd")
        if not shutil.which("glusterd") or not shutil.which("gluster") or not os.path.exists("/sbin/mount.glusterfs") \
                and not shutil.which("mount.glusterfs"):
            raise Unavailable("glusterfs-server and glusterfs-client are not installed (scripts/test.sh installs them)")
        if not os.path.exists("/dev/fuse"):
            raise Unavailable("no /dev/fuse in this container")
        for d in (self.g / "gd" / "lib", self.g / "gd" / "run", self.g / "logs", self.export,
                  Path("/var/log/glusterfs/bricks"), Path("/var/run/gluster")):
            d.mkdir(parents=True, exist_ok=True)
        # The CLI refuses 127.0.0.1 and localhost as a brick's host: another loopback address, from the path.
        h = zlib.crc32(str(self.base).encode())
        for salt in range(16):
            x = (h + salt * 7919) % 4294967291
            addr = f"127.{x % 200 + 30}.{x // 200 % 256}.{x // 51200 % 250 + 2}"
            if _free(addr):
                break
        else:
            raise Unavailable(f"port {PORT} is taken on every loopback address tried (a system glusterd on 0.0.0.0?)")
        self.addr = addr
        if Path("/var/lib/glusterd/groups").is_dir() and not (self.g / "gd" / "lib" / "groups").exists():
            shutil.copytree("/var/lib/glusterd/groups", self.g / "gd" / "lib" / "groups")
        vol = self.g / "gd" / "glusterd.vol"
        vol.write_text(f"""volume management
    type mgmt/glusterd
    option working-directory {self.g / 'gd' / 'lib'}
    option run-directory {self.g / 'gd' / 'run'}
    option glusterd-sockfile {self.g / 'gd' / 'glusterd.socket'}
    option transport-type socket
    option transport.socket.bind-address {addr}
    option transport.socket.listen-port {PORT}
    option transport.socket.read-fail-log off
    option ping-timeout 0
    option event-threads 1
    option base-port {49152 + h % 40 * 250}
    option max-port 60999
end-volume
""")
        pidfile = self.g / "gd" / "glusterd.pid"
        r = subprocess.run(["glusterd", "-f", str(vol), "-p", str(pidfile), "-l", str(self.g / "logs" / "glusterd.log")],
                           capture_output=True, text=True, timeout=60)
        if r.returncode:
            raise Unavailable(f"glusterd did not start: {(r.stderr or r.stdout).strip()[-300:]}")
        self._wait(lambda: pidfile.exists() and pidfile.read_text().strip(), "glusterd wrote no pid file")
        self.glusterd_pid = int(pidfile.read_text())
        self._wait(lambda: self._cli("volume", "list", timeout=10).returncode == 0, "glusterd does not answer")
        brick = f"{addr}:{self.export}"
        # force: the brick is on the root filesystem, which Gluster accepts only when told.
        for args in (("volume", "create", VOLUME, brick, "force"), ("volume", "start", VOLUME)):
            r = self._cli(*args)
            if r.returncode:
                self.down()
                raise Unavailable(f"gluster {' '.join(args)} failed: {(r.stderr or r.stdout).strip()[-300:]}")
        self._wait(lambda: "<status>1</status>" in self._cli("volume", "status", VOLUME, "--xml", timeout=10).stdout,
                   "the brick did not come up")
        for i, m in enumerate(self.mounts):
            m.mkdir(parents=True, exist_ok=True)
            r = subprocess.run(["mount", "-t", "glusterfs", "-o", f"log-file={self.g / 'logs' / f'm{i}.log'}",
                                f"{addr}:/{VOLUME}", str(m)], capture_output=True, text=True, timeout=60)
            if r.returncode:
                self.down()
                raise Unavailable(f"mount of {m} failed: {(r.stderr or r.stdout).strip()[-300:]}")
            self._wait(lambda: os.path.ismount(m) and os.listdir(m) is not None, f"{m} does not answer")
        return self

    def client_pid(self, i: int) -> int | None:
        """The glusterfs client process serving mount i (SIGSTOP it to cut host i off the server)."""
        needle = str(self.mounts[i]).encode()
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                with open(f"/proc/{name}/cmdline", "rb") as f:
                    argv = f.read().split(b"\0")
            except OSError:
                continue
            if argv and argv[0].endswith(b"glusterfs") and needle in argv:
                return int(name)
        return None

    def down(self) -> None:
        for i, m in enumerate(self.mounts):
            if os.path.ismount(m):
                pid = self.client_pid(i)
                if pid is not None:
                    try:
                        os.kill(pid, signal.SIGCONT)  # a test may have left it stopped
                    except ProcessLookupError:
                        pass
                if subprocess.run(["umount", str(m)], capture_output=True).returncode:
                    subprocess.run(["umount", "-l", str(m)], capture_output=True)
        for pf in (self.g / "gd" / "run" / "vols").glob("*/*.pid") if (self.g / "gd" / "run" / "vols").is_dir() else ():
            try:
                _stop(int(pf.read_text()))
            except (OSError, ValueError):
                pass
        if self.glusterd_pid:
            _stop(self.glusterd_pid)
            self.glusterd_pid = None
        shutil.rmtree(self.g, ignore_errors=True)
