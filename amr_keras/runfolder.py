"""Run folders that nothing corrupts: one owner per folder, whole-file writes, write failures as one clear error.

- :class:`FolderLock`: an OS file lock (``fcntl.flock``) on ``FOLDER/.lock``,
  held while a process trains the run (or runs the search) in ``FOLDER``. The
  kernel drops it when the process ends, however it ends, so a killed process
  never leaves a stale lock. A second process gets :class:`FolderLockError`,
  which names the holder's PID and host, before it touches anything.
- :func:`write_json_atomically` / :func:`append_line`: files are written next
  to their final name and moved into place (a kill leaves the old or the new
  file), and ledger lines are appended under a lock in one ``write`` call.
- :func:`guarded_write`: a write that fails for want of space or permission
  becomes :class:`WriteFailure` naming the file, with its partial temporary
  files removed; ``train.run`` turns it into one ``error:`` line that names the
  last complete checkpoint.
- :func:`fault_point`: a hook at each write, inert unless the test-only
  environment variable ``AMR_KERAS_TEST_FAULTS`` arms it (the crash tests kill
  the process, or fake a full disk, at a chosen write).
"""

import contextlib
import errno
import fcntl
import json
import os
import shutil
import signal
import socket
import sys
import time

LOCK_NAME = ".lock"

# errno values that mean "this file system will not take the write": the user must free space or fix permissions.
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG, errno.EIO}


class FolderLockError(RuntimeError):
    """Another process holds the folder's lock; the message names it (PID, host, since when, its command)."""

    def __init__(self, message, holder=None):
        super().__init__(message)
        self.holder = holder or {}

    def holder_text(self):
        """``"process 123 on host h"`` (or ``"another process"`` when the lock file did not say)."""
        if not self.holder:
            return "another process"
        return f"process {self.holder.get('pid', '?')} on host {self.holder.get('host', '?')}"


class WriteFailure(OSError):
    """A file could not be written (disk full, read-only, no permission): ``path`` and the OS's reason."""

    def __init__(self, path, cause):
        super().__init__(getattr(cause, "errno", None), f"could not write {path} ({describe_os_error(cause)})")
        self.path, self.cause = path, cause


class RunWriteError(RuntimeError):
    """A run could not write a file; the message says which, what is intact and how to continue."""


def describe_os_error(e):
    """``"No space left on device"``-style text of an ``OSError`` (its strerror), else its message."""
    return getattr(e, "strerror", None) or str(e) or type(e).__name__


def is_write_failure(e):
    """Whether ``e`` (or an exception it was raised from) is an ``OSError`` that more space or rights would fix."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, WriteFailure) or (isinstance(e, OSError) and e.errno in WRITE_ERRNOS):
            return True
        if "No space left on device" in str(e) or "Read-only file system" in str(e):
            return True  # libraries that re-raise the OS's error without its errno (h5py)
        e = e.__cause__ or e.__context__
    return False


def failed_path(e, default):
    """The file an ``OSError`` (or its cause chain) names, else ``default``."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        path = getattr(e, "path", None) or getattr(e, "filename", None)
        if path:
            return os.fspath(path)
        e = e.__cause__ or e.__context__
    return default


class FolderLock:
    """Exclusive ownership of ``folder`` by this process, for as long as the lock is held.

    Re-entrant within one process (``reproduce.py`` takes the lock of a run,
    then ``train.run`` takes it again), released by :meth:`release` or when the
    process ends. The lock file ``FOLDER/.lock`` holds the owner's PID, host,
    start time and command (for the message a second process prints); it stays
    on disk after release, since removing it would let two processes lock two
    different files of the same name.

    Args:
        folder: the folder to own (created if missing).
        what: how messages name it ("run folder", "search folder").

    Example:
        >>> with FolderLock("runs/x"):
        ...     pass  # train into runs/x
    """

    _held = {}  # real path of the folder -> [file descriptor, count]

    def __init__(self, folder, what="run folder"):
        self.folder, self.what = folder, what
        self.key = None

    @property
    def path(self):
        return os.path.join(self.folder, LOCK_NAME)

    def acquire(self):
        """Take the lock, or raise :class:`FolderLockError` naming the holder; returns ``self``."""
        key = os.path.realpath(self.folder)
        if key in self._held:
            self._held[key][1] += 1
            self.key = key
            return self
        try:
            os.makedirs(self.folder, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise WriteFailure(self.path, e) from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = _read_holder(fd)
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise WriteFailure(self.path, e) from e
            raise FolderLockError(self._busy_message(holder), holder) from None
        info = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S"),
                "command": " ".join(sys.argv)}
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        except OSError:
            pass  # a full disk: the lock holds all the same, only the holder's description is missing
        self._held[key] = [fd, 1]
        self.key = key
        return self

    def release(self):
        """Give the lock up (the last release of a re-entrant lock closes it)."""
        if self.key is None or self.key not in self._held:
            return
        entry = self._held[self.key]
        entry[1] -= 1
        if entry[1] == 0:
            del self._held[self.key]
            os.close(entry[0])  # closing the descriptor drops the flock
        self.key = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
        return False

    def _busy_message(self, holder):
        who = FolderLockError("", holder).holder_text() + (f" (since {holder['since']})" if holder.get("since") else "")
        command = f"; its command: {holder['command']}" if holder.get("command") else ""
        return (f"{self.folder} is in use by {who}{command}. One process at a time owns a {self.what}: wait for "
                f"it to end (or stop it), then run again (with --resume to continue a run); nothing was changed.")


def _read_holder(fd):
    try:
        text = os.pread(fd, 4096, 0).decode(errors="replace").strip()
        return json.loads(text) if text else {}
    except (OSError, ValueError):
        return {}


def remove_quietly(*paths):
    """Delete files or folders that may or may not exist (partial temporary files)."""
    for path in paths:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                os.remove(path)


@contextlib.contextmanager
def guarded_write(path, *temporaries):
    """Run a write of ``path``; an ``OSError`` of a full disk or a refused write becomes :class:`WriteFailure`.

    On any failure (or a ``KeyboardInterrupt``) the partial files in
    ``temporaries`` are removed; the file at ``path`` is left as it was.
    """
    try:
        yield
    except BaseException as e:
        remove_quietly(*temporaries)
        if isinstance(e, OSError) and not isinstance(e, WriteFailure) and is_write_failure(e):
            raise WriteFailure(path, e) from e
        raise


def write_text_atomically(path, text, point=None):
    """Write ``text`` next to ``path`` (a temporary file of this process) and move it into place, so a kill leaves
    the old or the new file, and two writers never share a temporary file.

    Args:
        path: the file to write.
        text: its whole content.
        point: the name of this write for :func:`fault_point` (default: the file's name).
    """
    tmp = f"{path}.{os.getpid()}.tmp"
    with guarded_write(path, tmp):
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        fault_point(point or os.path.basename(path), tmp)
        os.replace(tmp, path)


def write_json_atomically(path, data, indent=None, point=None):
    """:func:`write_text_atomically` of ``data`` as JSON (``json.dump``'s ``indent``)."""
    write_text_atomically(path, json.dumps(data, indent=indent) + "\n", point=point)


def append_line(path, text, point=None):
    """Append ``text`` (whole lines) to ``path`` under an exclusive lock, in one write, flushed to disk.

    Two processes appending to one ledger never interleave their lines. A
    kill leaves at most a torn last line: readers skip it, and the next append
    cuts it off before writing.
    """
    with guarded_write(path):
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            drop_torn_tail(fd)
            fault_point(point or os.path.basename(path), torn=(fd, text.encode()))
            os.write(fd, text.encode())
            os.fsync(fd)
        finally:
            os.close(fd)  # drops the lock


def drop_torn_tail(fd):
    """Cut a last line that has no newline (an append a kill cut short) off the file open as ``fd``."""
    size = end = os.fstat(fd).st_size
    while end > 0:
        start = max(0, end - 65536)
        chunk = os.pread(fd, end - start, start)
        cut = chunk.rfind(b"\n")
        if cut >= 0:
            end = start + cut + 1
            break
        end = start
    if end != size:
        os.ftruncate(fd, end)


# --- test-only fault injection --------------------------------------------------------------------------------

FAULTS_ENV = "AMR_KERAS_TEST_FAULTS"
FAULTS_LOG_ENV = "AMR_KERAS_TEST_FAULTS_LOG"
_hits = {}


def _armed():
    """``{point: (occurrence, action)}`` from ``AMR_KERAS_TEST_FAULTS`` ("point@n=action,...")."""
    spec = os.environ.get(FAULTS_ENV, "")
    armed = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        target, _, action = item.partition("=")
        point, _, n = target.partition("@")
        armed[point] = (int(n or 1), action or "kill")
    return armed


def fault_point(name, tmp=None, torn=None):
    """A named place in a write; does nothing unless ``AMR_KERAS_TEST_FAULTS`` arms it (tests only).

    ``AMR_KERAS_TEST_FAULTS="last.keras@2=kill"`` kills the process with
    SIGKILL the 2nd time the write of ``last.keras`` reaches this point, after
    cutting its temporary file ``tmp`` to half its size (a torn write);
    ``=enospc`` raises the ``OSError`` of a full disk instead. ``torn=(fd,
    data)`` writes half of ``data`` to ``fd`` before a kill (a torn append).
    With ``AMR_KERAS_TEST_FAULTS_LOG`` set, the point's name is appended to that
    file before the kill.
    """
    if FAULTS_ENV not in os.environ:
        return
    armed = _armed().get(name)
    if armed is None:
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] != armed[0]:
        return
    if armed[1] == "enospc":
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), tmp or name)
    if os.environ.get(FAULTS_LOG_ENV):
        with open(os.environ[FAULTS_LOG_ENV], "a") as f:
            f.write(name + "\n")  # which write the process dies in
    if tmp is not None and os.path.isfile(tmp):
        os.truncate(tmp, os.path.getsize(tmp) // 2)
    if torn is not None:
        os.write(torn[0], torn[1][: len(torn[1]) // 2])
    os.kill(os.getpid(), signal.SIGKILL)
