"""File primitives every other module builds on: no job or spool knowledge here.

Opening without following links, atomic write (tmp + fsync + rename), fsync
of a directory, syncfs, rename without replacing, file locks, bounded reads,
and telling a full disk from other failures.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import itertools
import os
import stat
from typing import Callable, Iterator, TypeVar

from .errors import SpoolError

_counter = itertools.count()
T = TypeVar("T")
_AT_FDCWD = -100
_RENAME_NOREPLACE = 1
_libc = None

# Open flags for any file another program may have put in the spool: never
# follow a symlink, never block on a FIFO, never leak into a child.
NOFOLLOW_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


# What a network filesystem answers for a moment where a local disk would not fail:
# ESTALE (NFS, GlusterFS: the name moved or went away under this client's cache),
# and a server that is not answering (a FUSE client cut off, an NFS timeout).
# Each means "look again", never "this file is broken".
STALE = errno.ESTALE
UNREACHABLE = frozenset({errno.ESTALE, errno.ENOTCONN, errno.ETIMEDOUT, errno.EHOSTDOWN, errno.EHOSTUNREACH,
                         errno.ECONNABORTED, errno.ECONNRESET})


def unreachable(e: BaseException) -> bool:
    """Is this error a stale handle or a server not answering (for now), not a broken file?"""
    return getattr(e, "errno", None) in UNREACHABLE


def gone(e: OSError) -> OSError:
    """ESTALE on a file's own handle means the file moved on or was replaced: ENOENT, for every caller."""
    if e.errno == STALE:
        return FileNotFoundError(errno.ENOENT, f"{e.strerror} (moved or replaced meanwhile)", e.filename)
    return e


def looking_again(fn: Callable[[], T], tries: int = 3) -> T:
    """fn(), called again (at most `tries` times) while it fails with ESTALE: a name moved on
    under this client's cache (NFS, GlusterFS); the next look sees where it went."""
    for n in range(1, tries + 1):
        try:
            return fn()
        except OSError as e:
            if e.errno != STALE or n == tries:
                raise
    raise AssertionError("not reached")


def db_ino(ino: int) -> int:
    """An inode number as a signed 64-bit database integer holds it (SQLite's INTEGER): GlusterFS
    derives its inode numbers from 128-bit file ids, and every one is >= 2**63."""
    return ino - (1 << 64) if ino >= 1 << 63 else ino


def close_quietly(fd: int) -> None:
    """close(2) of a descriptor only read from: ESTALE or EIO there loses nothing (NFS and
    GlusterFS report a file replaced through another client at close)."""
    try:
        os.close(fd)
    except OSError:
        pass


def open_nofollow(path: str) -> int:
    """A read-only descriptor on path itself (a symlink raises ELOOP, a FIFO never blocks).

    ESTALE (a name this client still caches, gone on the server) raises FileNotFoundError.
    """
    try:
        return os.open(path, NOFOLLOW_FLAGS)
    except OSError as e:
        raise gone(e) from None


def read_fd(fd: int, limit: int | None = None) -> bytes:
    """Everything from offset 0 (at most about `limit` bytes), whatever the file offset is."""
    chunks = []
    offset = 0
    while True:
        try:
            chunk = os.pread(fd, 1 << 16, offset)
        except OSError as e:
            raise gone(e) from None
        if not chunk:
            break
        chunks.append(chunk)
        offset += len(chunk)
        if limit is not None and offset >= limit:
            break
    return b"".join(chunks)


def read_nofollow(path: str, limit: int | None = None) -> tuple[bytes, os.stat_result]:
    """The bytes and fstat of the file at path, read without following links."""
    fd = open_nofollow(path)
    try:
        return read_fd(fd, limit), os.fstat(fd)
    except OSError as e:
        raise gone(e) from None
    finally:
        close_quietly(fd)


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _load_libc():
    global _libc
    if _libc is None:
        import ctypes  # lazily: most commands never need it
        try:
            _libc = ctypes.CDLL(None, use_errno=True)
        except OSError:
            _libc = False
    return _libc


def syncfs(path: str) -> None:
    """Flush every dirty file of the filesystem holding path: one call instead of one fsync a file."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        libc = _load_libc()
        if libc and hasattr(libc, "syncfs") and libc.syncfs(fd) == 0:
            return
        os.sync()
    finally:
        os.close(fd)


def rename_noreplace(src: str, dst: str) -> None:
    """rename(2) that raises FileExistsError instead of replacing dst.

    renameat2(RENAME_NOREPLACE) is one atomic step; where the kernel or the
    filesystem lacks it, link + unlink gives the same no-clobber guarantee.
    """
    libc = _load_libc()
    if libc and hasattr(libc, "renameat2"):
        import ctypes
        if libc.renameat2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), _RENAME_NOREPLACE) == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise OSError(err, os.strerror(err), dst)
    os.link(src, dst)
    os.unlink(src)


def is_disk_full(e: BaseException) -> bool:
    """Is this error a full disk or an exhausted quota (not a broken file)?"""
    if isinstance(e, OSError):
        return e.errno in (errno.ENOSPC, errno.EDQUOT)
    return "disk is full" in str(e) or "disk full" in str(e)


def space_error(e: OSError, what: str) -> SpoolError:
    """The SpoolError a failed write becomes: a full disk says so in its own words.
    It keeps the errno, so a stale handle or an unreachable server is retried, not fatal."""
    err = SpoolError(f"no space left on device while {what}" if is_disk_full(e) else f"{what}: {e.strerror or e}")
    err.errno = e.errno  # type: ignore[attr-defined]
    return err


def disk_full(path: str) -> bool:
    """Is the filesystem holding path out of blocks or inodes right now?

    A filesystem with no blocks at all (/proc, /sys) is not full: it holds no files to write.
    """
    try:
        st = os.statvfs(path)
    except OSError:
        return False
    return st.f_blocks > 0 and (st.f_bavail == 0 or (st.f_files > 0 and st.f_favail == 0))


def open_append(path: str, what: str) -> int:
    """A descriptor appending to the regular file at path (made 0600 if missing).

    SpoolError, never a write, if path is something else: a FIFO would block
    the writer (or feed whoever reads it), a link would write where it points.
    """
    kind = not_regular(path, follow=False)
    if kind is None:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK
                         | os.O_CLOEXEC, 0o600)
        except OSError as e:
            raise space_error(e, f"opening {what} {path}") from None
        st_mode = os.fstat(fd).st_mode
        if stat.S_ISREG(st_mode):
            os.set_blocking(fd, True)
            return fd
        os.close(fd)
        kind = _KINDS.get(stat.S_IFMT(st_mode), "not a regular file")
    raise SpoolError(f"{what} {path} is {kind}, not a regular file: refusing to write to it")


def dir_ident(path: str) -> tuple[int, int] | None:
    """(device, inode) of the directory at path, or None if there is none."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino) if stat.S_ISDIR(st.st_mode) else None


def check_here(root: str, ident: tuple[int, int] | None) -> None:
    """SpoolError if the spool directory was moved, removed or replaced since its supervisor
    opened it: a worker stops (its supervisor says why) instead of working in a new, empty one."""
    if moved(root, ident):
        raise SpoolError(f"the spool directory {root} was moved, removed or replaced")


def moved(path: str, ident: tuple[int, int] | None) -> bool:
    """Is the directory at path no longer the one whose dir_ident() was `ident` (moved away,
    removed, or replaced by another)? A process working in it must stop, not make a new one."""
    return ident is not None and dir_ident(path) != ident


_KINDS = {stat.S_IFDIR: "a directory", stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device",
          stat.S_IFIFO: "a FIFO", stat.S_IFSOCK: "a socket", stat.S_IFLNK: "a symbolic link"}


def not_regular(path: str, *, follow: bool = True) -> str | None:
    """What path is when it is there and no regular file ("a FIFO", "a character device"), else None.

    A path a user names (--index, --textfile) may be /dev/null or a FIFO: such a
    file is never replaced, truncated or written as if it were ours.
    """
    try:
        mode = (os.stat if follow else os.lstat)(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return None
    if stat.S_ISREG(mode):
        return None
    return _KINDS.get(stat.S_IFMT(mode), "not a regular file")


def unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


_prefix: str | None = None  # ".PID.RANDOM", made once a process: not a getpid and getrandom a file


def _forget_prefix() -> None:
    global _prefix
    _prefix = None


os.register_at_fork(after_in_child=_forget_prefix)


def tmp_name(tmp_dir: str) -> str:
    """A scratch name no other writer uses: dot-prefixed, .tmp-suffixed (ignored by every scan)."""
    global _prefix
    if _prefix is None:
        _prefix = f".{os.getpid()}.{os.urandom(3).hex()}"
    return os.path.join(tmp_dir, f"{_prefix}.{next(_counter)}.tmp")


def create_tmp(tmp_dir: str, *, mode: int = 0o600, what: str = "writing a job file") -> tuple[str, int]:
    """A new, empty private file in tmp_dir, open for writing: (path, fd)."""
    path = tmp_name(tmp_dir)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
        if mode & ~0o600:
            os.fchmod(fd, mode)  # past the umask: others are meant to read it
    except OSError as e:
        raise space_error(e, what) from None
    return path, fd


def write_tmp(tmp_dir: str, data: bytes, *, durable: bool, mtime: float | None = None,
              keep_open: bool = False, mode: int = 0o600, what: str = "writing a job file",
              spare: tuple[str, int] | None = None) -> tuple[str, int]:
    """Write data to a new private file in tmp_dir: (path, fd), fd -1 unless keep_open.

    keep_open lets the caller lock the file before renaming it into place.
    `spare`: a file create_tmp() made earlier, still empty, written instead of
    creating one now (a new inode either way: see Spool.make_spare).
    """
    path, fd = spare if spare is not None else create_tmp(tmp_dir, mode=mode, what=what)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        if mtime is not None:
            os.utime(fd, (mtime, mtime))
        if durable:
            os.fsync(fd)
    except OSError as e:
        os.close(fd)
        unlink_quietly(path)
        raise space_error(e, what) from None
    if keep_open:
        return path, fd
    os.close(fd)
    return path, -1


class SpareFile:
    """One empty file made ahead of time in a tmp/ directory, for the next write_tmp there.

    A worker makes it while a command runs, when it would only wait: the
    record that follows then writes and renames a file that already exists
    instead of creating one (allocating an inode cost a worker 0.03-1 ms of
    CPU on an ext4 disk here, a third of a short job). It is still a new
    inode, written once and renamed into place, so what a power cut can leave
    is what it was (docs/spool-format.md). A file kept past a moment would be
    taken for an interrupted write's leftover (`check`): drop() it then.
    """
    __slots__ = ("tmp_dir", "file")

    def __init__(self, tmp_dir: str):
        self.tmp_dir = tmp_dir
        self.file: tuple[str, int] | None = None

    def make(self) -> None:
        if self.file is None:
            try:
                self.file = create_tmp(self.tmp_dir)
            except SpoolError:
                pass  # a full disk: the record creates its file itself, and says so if it cannot

    def take(self) -> tuple[str, int] | None:
        file, self.file = self.file, None
        return file

    def write(self, data: bytes, *, durable: bool, mtime: float | None = None) -> tuple[str, int]:
        """write_tmp(keep_open=True) into the spare, or into a file created now if there is none."""
        return write_tmp(self.tmp_dir, data, durable=durable, mtime=mtime, keep_open=True, spare=self.take())

    def drop(self) -> None:
        file = self.take()
        if file is not None:
            close_quietly(file[1])
            unlink_quietly(file[0])


def atomic_write(tmp_dir: str, dest: str, data: bytes, *, durable: bool, mtime: float | None = None,
                 mode: int = 0o600, what: str = "writing a job file") -> None:
    """Write, (fsync,) rename: a reader sees the old file or the new one, never half."""
    tmp, _ = write_tmp(tmp_dir, data, durable=durable, mtime=mtime, mode=mode, what=what)
    try:
        os.rename(tmp, dest)
    except OSError as e:
        unlink_quietly(tmp)
        raise space_error(e, f"writing {dest}") from None
    if durable:
        fsync_dir(os.path.dirname(dest))


def lock_file(path: str, *, wait: bool = False) -> int | None:
    """An open descriptor holding the flock of the regular file at path, or None.

    None if there is no such file (symlinks are never followed), if another
    process holds the lock (unless wait), or if the path stopped naming the
    locked file meanwhile (it was renamed on or replaced).
    """
    try:
        fd = open_nofollow(path)
    except OSError:
        return None
    if lock_fd(path, fd, wait=wait):
        return fd
    close_quietly(fd)
    return None


def lock_fd(path: str, fd: int, *, wait: bool = False) -> bool:
    """flock an open descriptor; True only if path still names that very file."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        return os.stat(path, follow_symlinks=False).st_ino == os.fstat(fd).st_ino
    except OSError:
        return False


def nlink(path: str) -> int:
    try:
        return os.lstat(path).st_nlink
    except OSError:
        return 0


class SpoolLock:
    """A lock file (the spool's .lock): flock(2), reentrant through one object."""

    def __init__(self, path: str):
        self.path = path
        self._depth = 0  # how deep this process holds it through this object

    @contextlib.contextmanager
    def lock(self) -> Iterator[bool]:
        """The spool-wide lock for cold paths (config writes, reindex, index repair).

        The same blocking flock(2) on SPOOL/.lock as hot_lock(): filelock's
        Unix lock was that flock too, but polled every 50 ms and cost a new
        spool's first enqueue its 14 ms import.
        """
        with self.hot_lock() as held:
            yield held

    @contextlib.contextmanager
    def hot_lock(self, *, wait: bool = True) -> Iterator[bool]:
        """The same spool-wide lock for hot paths (enqueue, drop-in acceptance).

        A bare flock(2): a waiter is woken by the kernel the moment the lock is
        free. With wait=False it yields False, without the lock, if another
        process holds it.
        """
        if self._depth:
            with self._held():
                yield True
            return
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                yield False
                return
            with self._held():
                yield True
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def _held(self) -> Iterator[None]:
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1


@contextlib.contextmanager
def no_lock(*, wait: bool = True) -> Iterator[bool]:
    """The lock of a read-only spool: nobody can change it, so there is nothing to exclude."""
    yield True
