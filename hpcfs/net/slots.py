"""A budget of sessions shared by every process of this user on this machine: a counting semaphore of lock
files.

A server that limits sessions per user (UFTPD: 16) cannot tell one hpcfs process from another, so Dask
workers, parallel ``hpcfs cp`` runs and a mount must share its limit.  A budget is a directory of slot files
in the user's private runtime directory; holding a session means holding ``flock`` on one slot file.  The
kernel drops the lock when its holder dies, however it dies, so a crashed process never keeps a slot.
``flock`` locks belong to one open file description, so threads of one process contend as processes do.

A server may go on counting a session after it ended (UFTPD until its next reap), so a slot file
records, while still locked, when its slot may be used again; a taker prefers slots that are ready and
waits for one that is not only when nothing else is free.  A slot whose holder died recorded nothing: its
taker gives it the grace from the moment it finds it.

The same budget, with no grace, caps requests in flight (:func:`.policy.request_budget`): a slot is held
for one request, so a waiter looks again more often.

Nothing here knows a protocol.  It lives in hpcfs/net because it is, like the per-server cap on HTTP
requests in flight (:mod:`.policy`), a limit on what hpcfs asks of one server; hpcfs/core sits above the
backends that use it.
"""
import contextlib
import fcntl
import hashlib
import logging
import os
import shutil
import stat
import tempfile
import time
from typing import Iterator, List, Optional, Tuple

from .. import errors

log = logging.getLogger("hpcfs.net")

POLL = 0.1  # how often a waiter looks at the slot files again
HELD = b"held"  # what a locked slot file says; still there after a release means its holder died
DIRECTORY_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class Slot:
    """One held slot; ``release`` gives it back, not usable for ``grace`` seconds (or as ``keep_busy`` says)."""

    def __init__(self, fd: int, grace: float):
        self._fd = fd
        self._hold = grace

    def keep_busy(self, seconds: float) -> None:
        """The server will count this slot's session for ``seconds`` after its release (an unused secret)."""
        self._hold = max(self._hold, seconds)

    def release(self, hold: Optional[float] = None) -> None:
        if self._fd < 0:
            return
        # written while the lock is still held: no taker can see the slot free without its time
        _write(self._fd, b"free %.3f" % (time.time() + (self._hold if hold is None else hold)))
        os.close(self._fd)  # drops the lock
        self._fd = -1


class SlotBudget:
    """``size`` slots named by ``key`` (e.g. server and remote user), shared by this user's processes; a
    released slot is not taken again for ``grace`` seconds (how long the server may still count its session).
    A waiter looks at the slot files every ``poll`` seconds.

    Processes that give one key different sizes share slots ``0..size-1``: the largest size is the cap."""

    def __init__(self, key: str, size: int, *, grace: float, poll: float = POLL, runtime_dir: Optional[str] = None):
        if size < 1:
            raise ValueError("a budget needs at least one slot")
        self.size, self.grace, self.poll = size, grace, poll
        self._own_dir: Optional[str] = None  # a per-process directory, when the shared one is unsafe
        self._dir = self._open(hashlib.sha256(key.encode()).hexdigest()[:24], runtime_dir)
        self._warned = False
        self._waited = False  # only the first wait of a budget is logged at INFO: requests wait often

    def take(self, count: int = 1) -> List[Slot]:
        """``count`` slots that are free and ready, or none at all; never waits."""
        return self._scan(count)[0]

    def wait(self, count: int, deadline: float, what: str) -> List[Slot]:
        """``count`` slots, waiting for them until ``deadline`` (``time.monotonic()``); Busy after that.
        ``what`` names the sessions in the one log line a wait writes."""
        taken, ready_in = self._scan(count)
        if taken:
            return taken
        cooling = f", or ended less than {self.grace:g} s ago and may still count on the server" if self.grace else ""
        log.log(logging.DEBUG if self._waited else logging.INFO, "waiting for %d of the %d %s this machine's "
                "hpcfs processes share: all are in use%s", count, self.size, what, cooling)
        self._waited = True
        while True:
            pause = min(self.poll, ready_in)
            if time.monotonic() + pause > deadline:
                raise errors.Busy(f"all {self.size} {what} stayed in use by this user's hpcfs processes on "
                                  "this machine")
            time.sleep(pause)
            taken, ready_in = self._scan(count)
            if taken:
                return taken

    @contextlib.contextmanager
    def holding(self, deadline: float, what: str) -> Iterator[None]:
        """One slot for the ``with`` block (a request in flight), waited for as :meth:`wait` does."""
        slot, = self.wait(1, deadline, what)
        try:
            yield
        finally:
            slot.release()

    def close(self) -> None:
        if self._dir >= 0:
            os.close(self._dir)
            self._dir = -1
        if self._own_dir:
            shutil.rmtree(self._own_dir, ignore_errors=True)
            self._own_dir = None

    # -- slot files ------------------------------------------------------------------------------------------
    def _scan(self, count: int) -> Tuple[List[Slot], float]:
        """Up to ``count`` ready slots, lowest first (a smaller budget of the same key uses the same ones),
        all or nothing; with the seconds until the first slot found cooling is ready (``poll`` if none is)."""
        taken: List[Slot] = []
        ready_in = self.poll
        now = time.time()
        for index in range(self.size):
            fd = self._lock(index)
            if fd is None:
                continue
            wait = _ready_at(fd, now + self.grace) - now
            if wait > 0:
                ready_in = min(ready_in, wait)
                os.close(fd)
                continue
            _write(fd, HELD + b" %d" % os.getpid())
            taken.append(Slot(fd, self.grace))
            if len(taken) == count:
                return taken, 0.0
        for slot in taken:
            slot.release(hold=0.0)
        return [], ready_in

    def _lock(self, index: int) -> Optional[int]:
        """The slot file's descriptor, locked by us, or None (held by someone, or not a file of ours)."""
        try:
            fd = os.open(str(index), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=self._dir)
        except OSError as exc:  # ELOOP: a symlink planted there is never followed
            self._warn_once(f"slot file {index} cannot be used ({exc.strerror})")
            return None
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid():
            os.close(fd)
            self._warn_once(f"slot file {index} is not a regular file of this user")
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        return fd

    def _warn_once(self, message: str) -> None:
        if not self._warned:
            self._warned = True
            log.warning("session budget: %s; it is skipped", message)

    # -- the directory ---------------------------------------------------------------------------------------
    def _open(self, name: str, runtime_dir: Optional[str]) -> int:
        base, shared = _shared_directory(runtime_dir)
        try:
            parent = _private_subdirectory(base, shared)
            try:
                return _private_subdirectory(parent, name)
            finally:
                os.close(parent)
        except (OSError, errors.PermissionDenied) as exc:
            # Refusing to work would let anyone who plants that directory stop our transfers: keep a budget of
            # this process's own instead (it still bounds this process's sessions).
            log.warning("session budget: %s/%s is not a private directory of this user (%s); this process "
                        "keeps a budget of its own", base, shared, exc)
            self._own_dir = tempfile.mkdtemp(prefix="hpcfs-slots-")
            return os.open(self._own_dir, DIRECTORY_FLAGS)


def _shared_directory(runtime_dir: Optional[str]) -> Tuple[str, str]:
    """(base, name): ``$XDG_RUNTIME_DIR/hpcfs`` (the login's private tmpfs), else ``hpcfs-UID`` in /tmp."""
    runtime_dir = runtime_dir or os.environ.get("XDG_RUNTIME_DIR")
    if runtime_dir and os.path.isabs(runtime_dir):
        return runtime_dir, "hpcfs"
    return tempfile.gettempdir(), f"hpcfs-{os.getuid()}"


def _private_subdirectory(parent, name: str) -> int:
    """``name`` in ``parent`` (a path or a directory descriptor), created 0700 if missing, opened without
    following a symlink and checked to be ours and closed to others."""
    dir_fd = parent if isinstance(parent, int) else None
    path = name if dir_fd is not None else os.path.join(parent, name)
    try:
        os.mkdir(path, 0o700, dir_fd=dir_fd)
    except FileExistsError:
        pass
    fd = os.open(path, DIRECTORY_FLAGS, dir_fd=dir_fd)
    info = os.fstat(fd)
    if info.st_uid != os.getuid() or info.st_mode & 0o077:
        os.close(fd)
        raise errors.PermissionDenied(f"owner uid {info.st_uid}, mode {stat.S_IMODE(info.st_mode):o}")
    return fd


def _ready_at(fd: int, if_held: float) -> float:
    """When the locked slot may be used: the time its last holder wrote, ``if_held`` if its holder died
    holding it (written down, so later takers wait no longer), 0 for a slot never used."""
    text = os.pread(fd, 64, 0)
    if text.startswith(b"free "):
        try:
            return float(text[5:])
        except ValueError:
            return 0.0
    if text.startswith(HELD):
        _write(fd, b"free %.3f" % if_held)
        return if_held
    return 0.0


def _write(fd: int, data: bytes) -> None:
    os.pwrite(fd, data, 0)
    os.ftruncate(fd, len(data))
