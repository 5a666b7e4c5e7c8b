"""An exclusive lock on an output folder, so that two runs never write into one folder at once.

The lock is an operating-system lock (``flock``; ``msvcrt.locking`` on Windows)
on the file ``.qsm-lock`` in the folder, which also records who holds it
(process id, host, command, start time). The operating system releases the
lock when its process ends, however it ends, so a lock left by a killed run
is recognised as stale and taken over; the record of the dead holder is
reported. On a file system without such locks the record alone is used: a
holder on this host that no longer runs is stale, one on another host is
named in the refusal.
"""

import errno
import json
import os
import socket
import sys
import time

from ..errors import QSMInputError

LOCK_NAME = ".qsm-lock"
_UNSUPPORTED = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}


def _try_lock(fd):
    """Take the OS lock on ``fd`` without waiting: True if taken, False if another process holds it."""
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError as exc:
            if exc.errno in (errno.EACCES, errno.EDEADLK):
                return False
            raise
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        raise
    return True


def _read_record(fd):
    os.lseek(fd, 0, os.SEEK_SET)
    raw = b""
    while True:
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        raw += chunk
    if not raw.strip():
        return None
    try:
        record = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return {"unreadable": True}
    return record if isinstance(record, dict) else {"unreadable": True}


def _pid_alive(pid):
    try:
        os.kill(int(pid), 0)
    except (OSError, ValueError, TypeError, OverflowError) as exc:
        return isinstance(exc, PermissionError)
    return True


def describe_holder(record):
    """One phrase naming the holder of a lock from its record."""
    if not record or record.get("unreadable"):
        return "an unknown process"
    started = record.get("started")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)) if isinstance(started, (int, float)) else "?"
    command = record.get("command") or "qsm"
    return f"process {record.get('pid')} on {record.get('host')} ('{command}', started {when})"


class FolderLock:
    """An exclusive, non-blocking lock on one folder, released when the holder ends.

    Parameters
    ----------
    folder : path
        An existing folder.
    command : str, optional
        What the holder is doing, recorded for the message another run gets
        (default: the command line).

    Attributes
    ----------
    stale : dict or None
        After :meth:`acquire`, the record of a dead holder whose lock was taken over.

    Examples
    --------
    >>> with FolderLock(out_dir):          # doctest: +SKIP
    ...     write_outputs()
    """

    def __init__(self, folder, *, command=None):
        self.folder = os.fspath(folder)
        self.path = os.path.join(self.folder, LOCK_NAME)
        self.command = command or " ".join(os.path.basename(a) if n == 0 else a for n, a in enumerate(sys.argv))
        self.stale = None
        self._fd = None
        self._os_lock = True

    def _record(self):
        return json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "command": self.command[:500],
                           "started": time.time()}).encode()

    def _refuse(self, record):
        raise QSMInputError(f"{self.folder}: in use by another qsm run, {describe_holder(record)}; wait for it "
                            "to finish or choose another output folder (a finished or killed run releases "
                            f"the folder by itself; its lock file is {LOCK_NAME})")

    def acquire(self):
        """Take the lock or raise :class:`~qsmlib.errors.QSMInputError` naming the holder.

        Returns
        -------
        FolderLock
            ``self``; ``stale`` holds the record of a dead holder that was replaced.
        """
        for _attempt in range(50):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                taken = _try_lock(fd)
            except OSError as exc:
                os.close(fd)
                if exc.errno in _UNSUPPORTED:
                    return self._acquire_by_record()
                raise
            if not taken:
                record = _read_record(fd)
                os.close(fd)
                self._refuse(record)
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if not same:  # the previous holder removed the file between our open and our lock
                os.close(fd)
                continue
            previous = _read_record(fd)
            if previous:
                self.stale = previous
            os.lseek(fd, 0, os.SEEK_SET)
            os.ftruncate(fd, 0)
            os.write(fd, self._record())
            self._fd = fd
            return self
        raise QSMInputError(f"{self.folder}: could not lock the folder (it is locked and unlocked too often); "
                            "make sure no other qsm run writes into it")

    def _acquire_by_record(self):
        """Fallback without OS locks: the record file, created exclusively; dead holders on this host replaced."""
        self._os_lock = False
        for _attempt in range(50):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                try:
                    with open(self.path, "rb") as f:
                        record = json.loads(f.read().decode("utf-8") or "null")
                except (OSError, ValueError, UnicodeDecodeError):
                    record = None
                record = record if isinstance(record, dict) else None
                if record and record.get("host") == socket.gethostname() and not _pid_alive(record.get("pid")):
                    self.stale = record
                    try:
                        os.unlink(self.path)
                    except FileNotFoundError:
                        pass
                    continue
                self._refuse(record)
            os.write(fd, self._record())
            self._fd = fd
            return self
        raise QSMInputError(f"{self.folder}: could not lock the folder; make sure no other qsm run writes into it")

    def release(self):
        """Remove the lock file and release the lock (idempotent)."""
        if self._fd is None:
            return
        try:  # emptied first: where an open file cannot be removed (Windows) it then reads as free
            os.ftruncate(self._fd, 0)
            os.unlink(self.path)
        except OSError:
            pass
        os.close(self._fd)  # closing releases the OS lock
        self._fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, exc_type, exc, tb):
        self.release()
        return False
