"""One writer per run directory: an flock'd lock file naming its owner (PID and host).

The kernel drops an flock when its process dies, however it dies, so a lock
file left by a killed run is free and the next run takes it over: there is
no PID guessing. The owner removes the file when it is done; a process that
locked a file which was removed (or replaced) meanwhile tries again, so two
processes never both hold a lock on the same path.

The lock file is opened as every output of the project is: never through a
symlink, never blocking (a FIFO), and only if it is a regular file. Only one
process of a multi-process job (process 0) takes the lock. Standard library
only.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import stat
import time
import warnings

LOCK_FILE = ".train.lock"


class WorkdirBusy(RuntimeError):
    """The run directory cannot be taken: another process holds its lock, or its lock file is not one."""


class UnusableLockFile(WorkdirBusy):
    """The lock path holds something other than a regular file (a FIFO, a symlink, a directory)."""


_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISLNK, "a symlink"))


def _unusable(path: str, mode: int) -> UnusableLockFile:
    kind = next((name for test, name in _KINDS if test(mode)), "not a regular file")
    if stat.S_ISLNK(mode):
        kind += f" (to {os.readlink(path)})"
    return UnusableLockFile(f"{path} is {kind}, not a regular lock file; a run never opens, follows or writes "
                            f"through it: remove it and start again")


def open_regular(path: str, flags: int, mode: int = 0o644) -> int:
    """os.open for a lock or output file: never follows a symlink, never blocks (a FIFO), regular files only.

    Raises UnusableLockFile for anything else at `path`, dangling symlinks included.
    """
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK, mode)
    except OSError as error:
        # ELOOP: O_NOFOLLOW met a symlink; EISDIR: a directory opened to write; ENXIO: a socket, or a FIFO opened
        # to write with no reader.
        if error.errno in (errno.ELOOP, errno.EISDIR, errno.ENXIO):
            raise _unusable(path, os.lstat(path).st_mode) from None
        raise
    found = os.fstat(fd).st_mode
    if not stat.S_ISREG(found):
        os.close(fd)
        raise _unusable(path, found)
    return fd


def lock_path(workdir: str) -> str:
    return os.path.join(workdir, LOCK_FILE)


def _owner(path: str) -> str:
    """'PID N on HOST' from the lock file (its owner may still be writing it: retry briefly)."""
    for _ in range(20):
        try:
            fd = open_regular(path, os.O_RDONLY)
            with os.fdopen(fd) as f:
                fields = f.read().split()
        except (OSError, WorkdirBusy):
            fields = []
        if len(fields) >= 2 and fields[0].isdigit():
            return f"PID {fields[0]} on {fields[1]}"
        time.sleep(0.05)
    return "a process that has not written its PID yet"


def _busy(workdir: str, path: str) -> WorkdirBusy:
    return WorkdirBusy(f"--workdir {workdir} is in use by another run ({_owner(path)}, see {path}); wait for it "
                       f"to end or stop it (the lock of a run that was killed is taken over automatically)")


_UNSUPPORTED = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS)  # a filesystem without flock (some network mounts)


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        raise
    return True


def _same_file(fd: int, path: str) -> bool:
    try:
        here, there = os.fstat(fd), os.stat(path)
    except FileNotFoundError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


def _open_or_create(path: str) -> tuple[int, bool]:
    """(fd, whether this call created the file) of the regular file at `path`."""
    while True:
        try:
            return open_regular(path, os.O_RDWR | os.O_CREAT | os.O_EXCL), True
        except FileExistsError:
            pass
        try:
            return open_regular(path, os.O_RDWR), False
        except FileNotFoundError:  # removed by its owner between the two opens: create it
            continue


class WorkdirLock:
    """`acquire()` or raise WorkdirBusy; `release()` removes the lock file. Also a context manager."""

    def __init__(self, workdir: str):
        self.workdir = workdir
        self.path = lock_path(workdir)
        self._fd: int | None = None

    def acquire(self) -> WorkdirLock:
        while True:
            fd, created = _open_or_create(self.path)
            try:
                locked = _try_lock(fd)
            except OSError as error:
                os.close(fd)
                if created:  # nothing to show for it: leave the workdir as it was
                    os.remove(self.path)
                if error.errno not in _UNSUPPORTED:
                    raise
                warnings.warn(f"cannot lock {self.path} ({error.strerror}); make sure no other run uses "
                              f"--workdir {self.workdir} at the same time")
                return self
            if not locked:
                os.close(fd)
                raise _busy(self.workdir, self.path)
            if _same_file(fd, self.path):  # else its owner removed it between our open and our lock: again
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        try:  # removed while still locked, so that no one can lock this inode and think it is the path's
            os.remove(self.path)
        except OSError:
            pass
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> WorkdirLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def probe(workdir: str) -> None:
    """Raise WorkdirBusy if a live process holds `workdir`'s lock; writes nothing."""
    path = lock_path(workdir)
    try:
        fd = open_regular(path, os.O_RDONLY)
    except OSError:
        return  # no lock file (or an unreadable one: acquire() will say)
    try:
        free = _try_lock(fd)
    except OSError:
        free = True  # a filesystem without flock: acquire() decides
    finally:
        os.close(fd)
    if not free:
        raise _busy(workdir, path)
