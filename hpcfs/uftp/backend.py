"""UFTP as an hpcfs backend: a pool of UFTPD sessions behind one persistent secret.

- One persistent secret per backend.  A *keeper* session stays logged in and idle, because UFTPD forgets a
  persistent secret as soon as its last session ends (UFTPD 3.5, github.com/UNICORE-EU/uftpd).
- Worker sessions, each with its keep-alive data connection, serve requests in parallel, up to
  ``capabilities.max_parallel`` and always below the server's per-user session limit.
- ``530`` at login (the secret died) buys a new secret transparently; a session whose connection died is
  dropped and an idempotent request is retried once on another; ``500 Too many active ...`` is retried
  with jittered back-off.  Sessions out of step are closed, never pooled again.
- Listing is one ``STAT N`` on the control channel; ``stat`` pipelines ``MLST`` (permission bits) with
  ``STAT F`` (mtime as UTC milliseconds; MLST's ``modify`` is the server's local time).
- Ranged reads clamp to the file's size: a range inside the size last seen is read at once, one that
  reaches past it asks the size first, because UFTPD announces ``b-a`` bytes even past the end of file and
  then never ends the transfer on a kept-alive data connection.
"""
import logging
import os
import posixpath
import secrets
import threading
import time
from typing import Callable, List, Optional, Tuple, TypeVar, Union

from cachetools import LRUCache

from .. import errors, net
from ..backend import Backend, Capabilities, Entry, UploadSession, normalize, read_exactly, split
from .auth import AuthClient, BasicCredential, Grant, SSHKeyCredential, token_credential
from .listing import Features, facts_kind, facts_mode, is_child_name, parse_mlst_reply, parse_stat_reply
from .options import UFTPOptions
from .session import ControlSession, SecretRejected, SessionLost

DEFAULT_SESSIONS = 4
# hashlib's names for the algorithms of UFTPD's HASH command (FEAT: "HASH MD5*;SHA-1;SHA-256;SHA-512")
UFTPD_HASHES = {"md5": "MD5", "sha1": "SHA-1", "sha256": "SHA-256", "sha512": "SHA-512"}
DEFAULT_TIMEOUT = 30.0
LARGE_WRITE = 8 << 20  # an upload above this sends pieces in parallel
PIECE = 4 << 20  # size of those pieces
BUSY_WAIT = 10.0  # how long "500 Too many active sessions" is retried (UFTPD reaps every 5 s)
# UFTPD's cleanup thread reaps ended sessions every 5 s (UFTPD.py ``cleanup``): a session counts against the
# limit for up to 5 s after it ended, so its slot waits that long and a second more for a loaded server.
REAP_GRACE = 6.0
# A worker session beyond a pool's first that sat idle this long is closed and its slot given back, so that
# another process can grow into it (or start: one that finds every slot taken gets two IDLE_CLOSE +
# REAP_GRACE = 11 s after the others went idle, well inside the default timeout).  Not shorter: a closed
# session's slot serves nobody for REAP_GRACE, so closing a session the pool wants again within seconds (a
# Dask task's computing between two reads, a reader's pause) would cost a login and leave the budget no
# richer meanwhile.  UFTPD's reap period, 5 s: a pool pauses less than that without giving anything back.
IDLE_CLOSE = 5.0
SECRET_LIFETIME = 300.0  # UFTPD counts a secret nobody logged in with until it expires (``_REQUEST_LIFETIME``)
UFTPD_LIMIT = 16  # UFTPD's MAX_CONNECTIONS by default, when the Auth server does not say
SESSION_MARGIN = 2  # sessions of the limit left to the user's other tools (uftp, pyuftp, another machine)
SIZE_HINTS = 4096
# A copy within the server is made by UFTPD's own transfer process from this size on.  A smaller file costs
# less streamed through here than the server's copy costs: a grant, a login UFTPD counts for seconds after
# it ended, polls and two hashes.
SERVER_COPY_FROM = 1 << 20
COPY_POLL = net.Schedule(0.05, growth=1.5, longest=1.0)  # how often a server copy's size is asked
COPY_HASH = "sha256"  # the server's hash that decides whether its copy is whole
T = TypeVar("T")
log = logging.getLogger("hpcfs.uftp")


# "500 Too many active sessions" is retried with jittered back-off: closed sessions count until UFTPD reaps them
BUSY_SCHEDULE = net.Schedule(0.05, growth=2.0, longest=2.0, jitter=0.5)


def retry_while_busy(action: Callable[[], T]) -> T:
    """``action()``, retried while UFTPD or its Auth server say there are too many sessions, for up to
    ``BUSY_WAIT`` seconds."""
    return net.retry(action, lambda outcome: net.Verdict.BACK_OFF if isinstance(outcome, errors.Busy)
                     else net.Verdict.DONE, BUSY_SCHEDULE, deadline=time.monotonic() + BUSY_WAIT)


class SessionPool:
    """Logged-in sessions sharing one persistent secret, plus the keeper that keeps the secret alive.

    Every session holds a slot of ``budget`` (the sessions this user's hpcfs processes on this machine share;
    the pool closes it): the keeper's and the first worker's are taken together before the first
    authentication, waiting for them up to ``timeout``; a further worker logs in only on a slot free at once,
    else the pool makes do with the sessions it has.  ``what`` names the sessions in log lines.

    The pool gives back what it grew into: while it has more than one worker, a reaper thread closes the
    workers that sat idle ``IDLE_CLOSE`` seconds, oldest first, down to one, and releases their slots (which
    then cool for ``REAP_GRACE``).  The keeper and one worker (or its slot) stay till close.  A session is
    either idle in the pool or lent out, and the reaper takes it out of the idle list under the pool's lock
    before closing it, so ``acquire`` never hands out a session the reaper closes."""

    def __init__(self, auth: AuthClient, base_dir: str, size: int, timeout: float, budget: net.SlotBudget,
                 what: str):
        self._auth = auth
        self._base_dir = base_dir
        self.size = size
        self.timeout = timeout
        self._cond = threading.Condition()
        self._idle: List[Tuple[float, ControlSession]] = []  # (monotonic time it came back, session), oldest first
        self._live = 0  # sessions idle or handed out, or logging in (the keeper not counted)
        self._closed = False
        self.idle_close = IDLE_CLOSE
        self._reaper: Optional[threading.Thread] = None  # runs while the pool has more than one worker
        self._closing = threading.Event()  # wakes the reaper at close
        self._renew_lock = threading.Lock()
        # (grant, generation), replaced as one so readers see a matching pair
        self._current: Tuple[Optional[Grant], int] = (None, 0)
        self._keeper: Optional[ControlSession] = None
        self.features: Optional[Features] = None
        self.version = ""
        self._budget, self._what = budget, what
        self._keeper_slot: Optional[net.Slot] = None
        self._worker_slots: List[net.Slot] = []  # one per live worker, plus spare ones for the next logins
        try:
            # both at once: pools each holding a keeper slot while waiting for a worker slot would wait forever
            self._keeper_slot, first = budget.wait(2, time.monotonic() + timeout, what)
            self._worker_slots.append(first)
            retry_while_busy(lambda: self._renew(0))
        except BaseException:
            self.close()
            raise

    @property
    def server(self) -> str:
        grant, _ = self._grant()
        return f"{grant.host}:{grant.port}"

    def _grant(self) -> Tuple[Grant, int]:
        grant, generation = self._current
        if grant is None:  # only before the first authentication, which __init__ completes
            raise errors.AuthenticationFailed("not authenticated yet")
        return grant, generation

    # -- the secret -------------------------------------------------------------------------------------
    def _renew(self, generation: int):
        """Authenticate anew and log the keeper in, unless another thread renewed since ``generation``."""
        with self._renew_lock:
            if generation != self._current[1]:
                return
            grant = self._auth.authenticate(self._base_dir)
            keeper = self._log_keeper_in(grant)
            old, self._keeper = self._keeper, keeper
            self.features, self.version = keeper.features, keeper.version
            self._current = (grant, generation + 1)
        if old is not None:
            old.close()

    def _log_keeper_in(self, grant: Grant) -> ControlSession:
        """The keeper's login with a fresh secret, retried while UFTPD is busy rather than authenticating
        anew: a secret nobody used counts against the limit until it expires."""
        try:
            return retry_while_busy(lambda: ControlSession(grant.host, grant.port, grant.secret, timeout=self.timeout,
                                                           features=self.features, transform=grant.transform,
                                                           streams=grant.streams))
        except SessionLost:  # logged in, so the secret is used and UFTPD reaps the session
            raise errors.NotFound("UFTPD ended the session right after login: is the base directory "
                                  "missing or not accessible?", self._base_dir) from None
        except BaseException:
            if self._keeper_slot is not None:
                self._keeper_slot.keep_busy(SECRET_LIFETIME)
            raise

    def _login(self) -> ControlSession:
        """A worker's login with the current secret.  UFTPD forgets a secret when its last session ends, so
        a refused one is renewed (unless another thread already did) and the login tried once more."""
        tried: List[int] = []  # the generation of each secret tried

        def log_in() -> ControlSession:
            grant, generation = self._grant()
            tried.append(generation)
            return ControlSession(grant.host, grant.port, grant.secret, timeout=self.timeout,
                                  features=self.features, transform=grant.transform, streams=grant.streams)

        def renew_once(outcome) -> net.Verdict:
            if not isinstance(outcome, SecretRejected):
                return net.Verdict.DONE
            if len(tried) > 1:  # a fresh secret refused too: another would fare no better
                return net.Verdict.FAIL
            self._renew(tried[0])
            return net.Verdict.AGAIN

        try:
            return net.retry(log_in, renew_once, attempts=2)
        except SecretRejected:
            raise errors.AuthenticationFailed("UFTPD refused a freshly issued secret") from None

    # -- lending sessions -------------------------------------------------------------------------------
    def acquire(self) -> ControlSession:
        def attempt():
            session = self._take_or_reserve()
            if session is not None:
                return session
            try:
                return self._login()
            except BaseException:
                self._forget()
                raise

        return retry_while_busy(attempt)

    def _take_or_reserve(self) -> Optional[ControlSession]:
        """An idle sound session, or None after reserving a slot for a new one."""
        with self._cond:
            while True:
                if self._closed:
                    raise errors.Unavailable("the UFTP backend is closed")
                while self._idle:
                    _, session = self._idle.pop()  # the most recently used: the reaper takes the oldest
                    if session.idle_and_sound():
                        return session
                    session.close()
                    self._dropped()
                if self._live < self.size and self._slot_for_login():
                    self._live += 1
                    if self._live > 1 and self._reaper is None:
                        self._reaper = threading.Thread(target=self._reap_idle, name="hpcfs-uftp-idle", daemon=True)
                        self._reaper.start()
                    return None
                # Every session in use comes back: each of its socket operations is bounded by the timeout.  A
                # pool with no slot to spare has one in use: the first worker's slot is kept till close.
                self._cond.wait()

    def _slot_for_login(self) -> bool:
        """Whether a slot backs one more login (lock held): a spare one of the pool's, else one the budget
        has free at once; only the first two were worth waiting for."""
        if self._live >= len(self._worker_slots):
            self._worker_slots += self._budget.take()
        return self._live < len(self._worker_slots)

    def _dropped(self):
        """One worker fewer (lock held).  Its slot goes back to the budget, cooling while UFTPD still counts
        the session, except the last worker slot of an open pool, kept for the next login."""
        self._live -= 1
        if self._closed or len(self._worker_slots) > 1:
            self._worker_slots.pop().release()

    def _reap_idle(self):
        """The reaper's thread: close the workers beyond the first that sat idle ``idle_close`` seconds and
        give back their slots, until the pool is down to one worker or closed (growing again starts a new
        reaper).  A session leaves the idle list, and its slot the pool, under the lock, so ``acquire`` can
        no longer see either; then the session is closed, and only then its slot released: the slot's
        cooling starts once the server has the session's end."""
        while True:
            with self._cond:
                if self._closed or self._live <= 1:
                    self._reaper = None
                    return
                now = time.monotonic()
                # the oldest first, so those due are the list's start: never the last worker
                due = [idle for idle in self._idle[:self._live - 1] if now - idle[0] >= self.idle_close]
                del self._idle[:len(due)]
                self._live -= len(due)
                slots = [self._worker_slots.pop() for _ in due]
                pause = self.idle_close - (now - self._idle[0][0]) if self._idle else self.idle_close
            for _, session in due:
                session.close()
            for slot in slots:
                slot.release()
            if due:
                log.debug("closed %d UFTP session(s) idle for %g s and gave back their slots", len(due),
                          self.idle_close)
            else:
                self._closing.wait(pause)  # set at close: the next round ends the reaper

    def spare_slot(self) -> Optional[net.Slot]:
        """A slot for a session that is not the pool's (UFTPD's own transfer process), else None; the caller
        releases it.  It waits as long as a slot may cool after its session ended (sessions this process or
        another just closed), not for sessions still in use: then the copy streams through the pool."""
        try:
            return self._budget.wait(1, time.monotonic() + self._budget.grace + 1, self._what)[0]
        except errors.Busy:
            return None

    def release(self, session: ControlSession):
        with self._cond:
            if not session.broken and not self._closed:
                self._idle.append((time.monotonic(), session))
                self._cond.notify()
                return
        session.close()
        self._forget()

    def _forget(self):
        with self._cond:
            self._dropped()
            self._cond.notify()

    def close(self):
        """Close the idle sessions and the keeper, then give back their slots and the spare ones; a session
        still lent out gives back its slot when it is returned."""
        with self._cond:
            self._closed = True
            idle, self._idle = [session for _, session in self._idle], []
            self._cond.notify_all()
        self._closing.set()
        for session in idle + [self._keeper]:
            if session is not None:
                session.close()
        with self._cond:
            for _ in idle:
                self._dropped()
            while len(self._worker_slots) > self._live:
                self._worker_slots.pop().release()
        if self._keeper_slot is not None:
            self._keeper_slot.release()
        self._budget.close()


class SizeHints:
    """File sizes seen lately (listings, stats, our own writes).  A ranged read inside the size last seen
    goes straight to the wire; one reaching past it asks the server first.  A stale hint is harmless: a
    file that shrank ends its transfer early, one that grew is asked about when a read reaches past it."""

    def __init__(self, capacity: int = SIZE_HINTS):
        self._sizes: LRUCache = LRUCache(maxsize=capacity)
        self._lock = threading.Lock()  # cachetools caches are not thread-safe

    def get(self, path) -> Optional[int]:
        with self._lock:
            return self._sizes.get(path)

    def set(self, path, size: int):
        with self._lock:
            self._sizes[path] = size

    def drop(self, path):
        with self._lock:
            self._sizes.pop(path, None)


class UFTPBackend(Backend):
    """A UFTP tree: ``/`` is the base directory the secret was issued for."""

    def __init__(self, auth: AuthClient, base_dir: str = "/", *, sessions: Optional[int] = None,
                 max_sessions: Optional[int] = None, timeout: float = DEFAULT_TIMEOUT,
                 large_write: int = LARGE_WRITE, piece_size: int = PIECE):
        self.base_dir = normalize(base_dir)
        self._auth = auth
        self._info = auth.server_info()
        self.session_limit = _positive_int(self._info.get("sessionLimit"))
        # sessions of this user's hpcfs processes on this machine together, the keepers included
        self.session_budget = max_sessions or max(2, (self.session_limit or UFTPD_LIMIT) - SESSION_MARGIN)
        if self.session_budget < 2:
            raise errors.UsageError("max_sessions must be at least 2: the keeper session and one for data")
        # several streams already fill the pipe that more sessions would: one data session unless asked
        workers = max(1, min(sessions or (1 if auth.streams > 1 else DEFAULT_SESSIONS), self.session_budget - 1))
        self.capabilities = Capabilities(ranged_reads=True, ranged_writes=True, rename="instant",
                                         max_parallel=workers, chmod=True, set_mtime=True, symlinks=False,
                                         checksums=tuple(UFTPD_HASHES), server_copy=True)
        self.large_write = large_write
        self.piece_size = piece_size
        self._sizes = SizeHints()
        self._pool = self._new_pool(workers, timeout)
        self._copy_refusal: Optional[str] = None  # why UFTPD makes no copies here, once known ("": it makes them)

    def _new_pool(self, workers: int, timeout: float) -> SessionPool:
        """The pool, on the budget UFTPD counts by: the remote login (the Auth server's ``uid``) on this
        server."""
        user = str(self._info.get("uid") or getattr(self._auth.credential, "user", "") or "")
        budget = net.SlotBudget(f"uftp {self._auth.auth_url} {user}", self.session_budget, grace=REAP_GRACE)
        what = f"UFTP sessions of {user or 'this account'} at {net.server_of(self._auth.auth_url)}"
        return SessionPool(self._auth, self.base_dir, workers, timeout, budget, what)

    def __repr__(self):
        return f"<UFTPBackend {self._auth.auth_url}:{self.base_dir}>"

    # -- plumbing ---------------------------------------------------------------------------------------
    def _remote(self, path: str):
        """``(normalized path, server path)``; refuses names UFTPD's line protocol would mangle."""
        path = normalize(path)
        self.check_name(path)
        if path == "/":
            return path, self.base_dir
        return path, self.base_dir.rstrip("/") + path

    def check_name(self, path: str) -> None:
        """UFTPD reads each command as one line and strips it, so a line break would end the command
        early (or inject another) and white space at the end of a name would be dropped."""
        if "\n" in path or "\r" in path:
            raise errors.InvalidPath("names with line breaks cannot be sent over UFTP", path)
        if path[-1].isspace():
            raise errors.InvalidPath("UFTPD strips white space from the end of a name", path)

    def _run(self, operation: Callable[[ControlSession], object], retry: Union[bool, Callable[[], bool]] = True):
        """``operation`` on a pooled session.  If the session dies under it, an idempotent operation is
        retried once on another session (which re-authenticates if the secret died too); ``retry`` says
        whether it is idempotent, or at the moment of the loss whether it still is (nothing delivered yet)."""
        def on_a_session():
            session = self._pool.acquire()
            try:
                return operation(session)
            finally:
                self._pool.release(session)

        def lost(outcome) -> net.Verdict:
            if isinstance(outcome, SessionLost) and (retry() if callable(retry) else retry):
                return net.Verdict.AGAIN
            return net.Verdict.DONE

        return net.retry(on_a_session, lost, attempts=2)

    @staticmethod
    def _stat_line(session: ControlSession, remote: str, path: str):
        lines = parse_stat_reply(session.expect(session.command(f"STAT F {remote}"), 211, path=path))
        if not lines:
            raise errors.ProtocolError("STAT gave no entry", path)
        return lines[0]

    def _with_name(self, session: ControlSession, remote: str, path: str, command: str, *more: str):
        """``command <path>`` plus ``more``, pipelined.  UFTPD's MFMT and MFF split their argument on
        every space, so a path with spaces is reached by a CWD to its parent and the bare name (callers
        give a name without spaces: see ``_set_attribute``)."""
        target = remote
        if " " in remote:
            parent, target = posixpath.split(remote)
            session.expect(session.command(f"CWD {parent}"), 200, path=path)
        return session.batch(f"{command} {target}", *more)

    def _set_attribute(self, path: str, remote: str, apply: Callable[[ControlSession, str], None]):
        """``apply(session, remote path)`` where the path's last name has no space, as UFTPD's MFMT and MFF
        need.  A directory named with spaces is addressed as ``name/.``.  A file named with spaces is
        renamed to a space-free temporary name in its directory (RNFR/RNTO take spaces), changed there and
        renamed back whatever happened; the directory then gets its own modification time back."""
        if " " not in posixpath.basename(remote):
            self._run(lambda session: apply(session, remote))
            return
        if self._run(lambda session: self._stat_line(session, remote, path)).is_dir:
            self._run(lambda session: apply(session, f"{remote}/."))
            return
        parent = posixpath.dirname(remote)
        parent_mtime = self._run(lambda session: self._stat_line(session, parent, path)).mtime_ms // 1000
        self._under_temporary_name(path, remote, apply)
        self._run(lambda session: self._apply_mtime(session, f"{parent}/.", path, parent_mtime))

    def _under_temporary_name(self, path: str, remote: str, apply: Callable[[ControlSession, str], None]):
        """``apply`` to the file while it has a space-free name; it is never left there unless renaming it
        back fails, and then the error says where it is."""
        temporary_name = f".hpcfs-attr.{secrets.token_hex(6)}"
        temporary = posixpath.join(posixpath.dirname(remote), temporary_name)
        self._run(lambda session: self._move(session, remote, temporary, path, path), retry=False)
        try:
            self._run(lambda session: apply(session, temporary))
        finally:
            try:
                self._run(lambda session: self._move(session, temporary, remote, path, path), retry=False)
            except (errors.HpcfsError, SessionLost) as failure:
                parked = posixpath.join(posixpath.dirname(path), temporary_name)
                raise errors.HpcfsError(f"could not rename the file back after setting an attribute "
                                        f"({failure}); it is now at {parked}", path) from failure

    @staticmethod
    def _move(session: ControlSession, remote_src: str, remote_dst: str, src: str, dst: str):
        # Not pipelined: UFTPD keeps the last RNFR path, so an RNTO after a failed RNFR would move the
        # file named by an earlier rename.
        session.expect(session.command(f"RNFR {remote_src}"), 350, path=src)
        session.expect(session.command(f"RNTO {remote_dst}"), 200, path=dst)

    # -- metadata ---------------------------------------------------------------------------------------
    def list(self, path: str) -> List[Entry]:
        path, remote = self._remote(path)

        def operation(session):
            reply = session.expect(session.command(f"STAT N {remote}"), 211, path=path)
            lines = [line for line in parse_stat_reply(reply) if is_child_name(line.name)]
            # For a file, STAT N answers with the file itself: that looks exactly like a directory holding
            # one file of the same name, so only then is the path itself asked about.
            if len(lines) == 1 and not lines[0].is_dir and lines[0].name == posixpath.basename(remote):
                if not self._stat_line(session, remote, path).is_dir:
                    raise errors.NotADirectory("not a directory", path)
            return lines

        entries = [line.entry() for line in self._run(operation)]
        for entry in entries:
            if not entry.is_dir:
                self._sizes.set(posixpath.join(path, entry.name), entry.size)
        return entries

    def stat(self, path: str) -> Entry:
        path, remote = self._remote(path)

        def operation(session):
            mlst, stat = session.batch(f"MLST {remote}", f"STAT F {remote}")
            facts, _ = parse_mlst_reply(session.expect(mlst, 250, path=path))
            lines = parse_stat_reply(session.expect(stat, 211, path=path))
            if not lines:
                raise errors.ProtocolError("STAT gave no entry", path)
            return facts, lines[0]

        facts, line = self._run(operation)
        entry = Entry(name=split(path)[1], kind=facts_kind(facts), size=line.size, mtime=line.mtime_ms / 1000.0,
                      mode=facts_mode(facts))
        if not entry.is_dir:
            self._sizes.set(path, entry.size)
        return entry

    # -- data -------------------------------------------------------------------------------------------
    def read_range(self, path: str, offset: int, length: int) -> bytes:
        path, remote = self._remote(path)
        if offset < 0 or length < 0:
            raise errors.InvalidPath("negative offset or length", path)
        if length == 0:
            return b""

        def operation(session):
            end = self._clamped_end(session, remote, path, offset + length)
            if end <= offset:
                return b""
            data = session.retrieve(remote, offset, end - offset)
            if len(data) < end - offset:
                self._sizes.drop(path)  # it shrank
            return data

        return self._run(operation)

    def read_pieces(self, path: str, offset: int, length: int, piece_size: int,
                    deliver: Callable[[bytes], None]) -> None:
        """One ``RANG``+``RETR`` for the whole range, each piece delivered as it arrives: a run of readahead
        blocks costs two commands and one round trip instead of two and one per block."""
        self._retrieve_range(path, offset, length, deliver,
                             lambda session, remote, start, count, forward: session.retrieve_pieces(
                                 remote, start, count, piece_size, forward))

    def stream_range(self, path: str, offset: int, length: int, write: Callable[[memoryview], None]) -> None:
        """One ``RANG``+``RETR`` for the whole range into one reused buffer (``ControlSession.retrieve_stream``):
        ``write`` must use each view before it returns."""
        self._retrieve_range(path, offset, length, write,
                             lambda session, remote, start, count, forward: session.retrieve_stream(
                                 remote, start, count, forward))

    def _retrieve_range(self, path: str, offset: int, length: int, consume: Callable, transfer: Callable) -> None:
        """Run ``transfer(session, remote, start, count, forward)`` over ``[offset, offset+length)`` clamped
        to the file's size; a retry on another session resumes after the bytes already consumed."""
        path, remote = self._remote(path)
        position, end = offset, offset + length

        def forward(piece):
            nonlocal position
            consume(piece)
            position += len(piece)

        def operation(session):
            stop = self._clamped_end(session, remote, path, end)
            if stop > position and transfer(session, remote, position, stop - position, forward) < stop - position:
                self._sizes.drop(path)  # it shrank

        self._run(operation)

    def _clamped_end(self, session: ControlSession, remote: str, path: str, end: int) -> int:
        """``end`` cut to the file's size, asking the server only when the size known here is too small."""
        known = self._sizes.get(path)
        if known is not None and end <= known:
            return end
        line = self._stat_line(session, remote, path)
        if line.is_dir:
            raise errors.IsADirectory("is a directory", path)
        self._sizes.set(path, line.size)
        return min(end, line.size)

    def read_whole(self, path: str, sink) -> None:
        path, remote = self._remote(path)
        written = 0

        def write(view):
            nonlocal written
            sink.write(view)
            written += len(view)

        size = self._run(lambda session: session.retrieve_all(remote, write), retry=lambda: written == 0)
        self._sizes.set(path, size)

    def begin_upload(self, path: str, size: Optional[int], resume_from: int = 0) -> UploadSession:
        path, remote = self._remote(path)
        if path == "/":
            raise errors.IsADirectory("is a directory", path)
        if size is not None and size <= self.large_write and not resume_from:
            return _StoreUpload(self, path, remote, size)
        return _PieceUpload(self, path, remote, resume_from)

    # -- namespace --------------------------------------------------------------------------------------
    def mkdir(self, path: str) -> None:
        path, remote = self._remote(path)
        if path == "/":
            raise errors.AlreadyExists("the root exists", path)
        self._run(lambda session: session.expect(session.command(f"MKD {remote}"), 257, path=path), retry=False)

    def remove(self, path: str) -> None:
        path, remote = self._remote(path)
        if path == "/":
            raise errors.IsADirectory("is a directory", path)
        self._run(lambda session: session.expect(session.command(f"DELE {remote}"), 200, path=path), retry=False)
        self._sizes.drop(path)

    def rmdir(self, path: str) -> None:
        path, remote = self._remote(path)
        if path == "/":
            raise errors.PermissionDenied("cannot remove the root of the tree", path)
        self._run(lambda session: session.expect(session.command(f"RMD {remote}"), 200, path=path), retry=False)

    def rename(self, src: str, dst: str) -> None:
        src, remote_src = self._remote(src)
        dst, remote_dst = self._remote(dst)
        if "/" in (src, dst):
            raise errors.PermissionDenied("cannot move the root of the tree", src)

        self._run(lambda session: self._move(session, remote_src, remote_dst, src, dst), retry=False)
        size = self._sizes.get(src)
        self._sizes.drop(src)
        self._sizes.drop(dst)
        if size is not None:
            self._sizes.set(dst, size)

    def chmod(self, path: str, mode: int) -> None:
        path, remote = self._remote(path)

        def apply(session: ControlSession, target: str):
            reply, = self._with_name(session, target, path, f"MFF UNIX.mode={mode & 0o7777:o};")
            session.expect(reply, 213, path=path)

        self._set_attribute(path, remote, apply)

    def set_mtime(self, path: str, mtime: float) -> None:
        path, remote = self._remote(path)
        wanted = int(mtime)
        self._set_attribute(path, remote, lambda session, target: self._apply_mtime(session, target, path, wanted))

    def _apply_mtime(self, session: ControlSession, target: str, path: str, wanted: int):
        """MFMT reads the time as the *server's* local time, whose zone we do not know: send it as UTC,
        read back the UTC mtime STAT reports, and correct by the difference (twice at most, for DST)."""
        sent = wanted
        for _ in range(3):
            stamp = time.strftime("%Y%m%d%H%M%S", time.gmtime(sent))
            mfmt, stat = self._with_name(session, target, path, f"MFMT {stamp}", f"STAT F {target}")
            session.expect(mfmt, 213, path=path)
            lines = parse_stat_reply(session.expect(stat, 211, path=path))
            actual = lines[0].mtime_ms // 1000 if lines else wanted
            if actual == wanted:
                return
            sent += wanted - actual
        raise errors.HpcfsError("UFTPD did not keep the modification time it was sent", path)

    def checksum(self, path: str, algorithm: str) -> str:
        path, remote = self._remote(path)
        return self._run(lambda session: session.hash(remote, UFTPD_HASHES[algorithm]))

    # -- copies within the server -----------------------------------------------------------------------
    def copy(self, src: str, dst: str) -> None:
        """UFTPD's own server-to-server transfer: a one-time secret for the source side, ``RECEIVE-FILE`` on a
        session, then ``dst`` watched until it has the source's size and the server's hashes of both
        compared, since UFTPD never says how its transfer process ended.  The transfer process is a login
        of its own, so it holds a slot of the session budget till then.  NotSupported (the caller streams)
        where UFTPD refuses, for a small file, with no slot free, or when the process never starts writing;
        TimedOut when the copy stops growing for the timeout."""
        src, remote_src = self._remote(src)
        dst, remote_dst = self._remote(dst)
        self._require_server_copy(src)
        size = self._run(lambda session: self._stat_line(session, remote_src, src)).size
        if size < SERVER_COPY_FROM:
            raise errors.NotSupported(f"below {SERVER_COPY_FROM} bytes a file costs less streamed", src)
        slot = self._pool.spare_slot()
        if slot is None:
            raise errors.NotSupported("no UFTP session of the budget is free for UFTPD's transfer process", src)
        try:
            self._run(lambda session: self._launch_copy(session, remote_src, remote_dst, dst), retry=False)
            self._await_copy(dst, remote_dst, size)
        except BaseException:
            slot.keep_busy(SECRET_LIFETIME)  # its secret may be unused: UFTPD counts it till it expires
            raise
        finally:
            slot.release()
        self._sizes.drop(dst)
        if self.checksum(dst, COPY_HASH) != self.checksum(src, COPY_HASH):
            raise errors.HpcfsError(f"UFTPD's copy differs from its source ({COPY_HASH}): not kept", dst)

    def _require_server_copy(self, path: str) -> None:
        if self._copy_refusal is None:
            offered = self._run(lambda session: session.offers_receive_file())
            self._copy_refusal = "" if offered else "this UFTPD has no server-to-server copy (RECEIVE-FILE)"
        if self._copy_refusal:
            raise errors.NotSupported(self._copy_refusal, path)

    def _launch_copy(self, session: ControlSession, remote_src: str, remote_dst: str, dst: str) -> None:
        # UFTPD's transfer process undoes the transform of the session that forks it, so the source side's
        # secret asks for the same one.
        grant = self._auth.one_login(self.base_dir, session.transform)
        session.receive_file(remote_dst, remote_src, f"{grant.host}:{grant.port}", grant.secret)
        log.debug("UFTPD copies to %s in a transfer process of its own", dst)

    def _await_copy(self, dst: str, remote_dst: str, size: int) -> None:
        """Until ``dst`` has ``size`` bytes: the transfer process writes in order, so that is the whole copy.
        It may appear late; once it has, it must grow within every timeout."""
        timeout = self._pool.timeout
        seen: Optional[int] = None  # the size last seen, None before the file appeared
        since = time.monotonic()  # when it was first seen: the copy must grow within each timeout

        def whole() -> Optional[bool]:
            nonlocal seen, since
            current = self._size_or_none(remote_dst, dst)
            if current is not None and current > size:
                raise errors.HpcfsError(f"UFTPD's copy grew past the source's {size} bytes: the source changed", dst)
            if current != seen:
                seen, since = current, time.monotonic()
            return True if current == size else None

        net.until(whole, COPY_POLL, lambda: since + timeout, lambda: self._stalled(dst, seen, size, timeout))

    def _stalled(self, dst: str, seen: Optional[int], size: int, timeout: float) -> errors.HpcfsError:
        if seen is None:  # its login failed (UFTPD's client address check, say): so would the next ones
            self._copy_refusal = f"UFTPD's transfer process wrote nothing within {timeout:g} s"
            return errors.NotSupported(self._copy_refusal, dst)
        return errors.TimedOut(f"UFTPD's copy stopped at {seen} of {size} bytes for {timeout:g} s", dst)

    def _size_or_none(self, remote: str, path: str) -> Optional[int]:
        try:
            return self._run(lambda session: self._stat_line(session, remote, path)).size
        except errors.NotFound:
            return None

    # -- lifecycle --------------------------------------------------------------------------------------
    def describe(self) -> dict:
        return {
            "protocol": "uftp",
            "auth_url": self._auth.auth_url,
            "credential": self._auth.credential.kind,
            "base_dir": self.base_dir,
            "uftpd": self._pool.server,
            "server_version": self._pool.version or self._info.get("uftpdServerVersion", ""),
            "features": list(self._pool.features.lines if self._pool.features else ()),
            "data": ", ".join(name for name, on in (("encrypted (AES-256)", self._auth.encrypt),
                                                    ("compressed (gzip)", self._auth.compress),
                                                    (f"{self._auth.streams} streams", self._auth.streams > 1))
                              if on) or "plain",
            "session_limit": self.session_limit,
            "session_budget": self.session_budget,
            "sessions": self.capabilities.max_parallel,
        }

    def close(self) -> None:
        self._pool.close()
        self._auth.close()


class _StoreUpload(UploadSession):
    """A small file: one ``ALLO``+``STOR`` that creates or truncates and sends it whole."""

    def __init__(self, backend: UFTPBackend, path: str, remote: str, size: int):
        self._backend, self._path, self._remote, self._size = backend, path, remote, size
        self.part_size = max(size, 1)

    def put_part(self, offset: int, source, length: int) -> None:
        data = read_exactly(source, length, self._path)
        self._backend._run(lambda session: session.store(self._remote, [data], length))

    def commit(self) -> None:
        if self._size == 0:
            self._backend._run(lambda session: session.store(self._remote, [], 0))
        self._backend._sizes.set(self._path, self._size)


class _PieceUpload(UploadSession):
    """A large file or one of unknown size: created empty (unless a kept prefix is continued), then pieces
    written in place with ``RANG``+``STOR``, in parallel over the session pool."""

    def __init__(self, backend: UFTPBackend, path: str, remote: str, resume_from: int):
        self._backend, self._path, self._remote = backend, path, remote
        self.part_size = backend.piece_size
        self.parallel = backend.capabilities.max_parallel
        if not resume_from:
            backend._run(lambda session: session.store(remote, [], 0))  # create, or truncate what was there
        backend._sizes.drop(path)

    def put_part(self, offset: int, source, length: int) -> None:
        data = read_exactly(source, length, self._path)
        if data:
            self._backend._run(lambda session: session.store(self._remote, [data], length, offset))


def _positive_int(value) -> Optional[int]:
    try:
        number = int(value)
    except (TypeError, ValueError):
        return None
    return number if number > 0 else None


# -- URL -----------------------------------------------------------------------------------------------
# Where a command-line user's password may come from (a password in the URL is refused there: see ps).
PROFILE_SECRETS = "password_env, password_file, password_command or password_prompt = yes"


def backend_from_url(parsed, settings: UFTPOptions):
    """``uftp://[user[:password]@]host:port[/SITE]/rest/auth/SERVER[:/base/dir][?token=..|identity=..]``,
    PyUNICORE's URL shape; the backend's ``/`` is the base directory, so the root is ``/``."""
    auth_url, base_dir = split_auth_path(parsed)
    verify = net.parse_verify(settings.verify, settings.ca_file)
    auth = AuthClient(auth_url, make_credential(settings), verify=verify, timeout=settings.timeout,
                      encrypt=settings.encrypt, compress=settings.compress, streams=settings.streams)
    try:
        return UFTPBackend(auth, base_dir, sessions=settings.parallel, max_sessions=settings.max_sessions,
                           timeout=settings.timeout), "/"
    except BaseException:
        auth.close()
        raise


def split_auth_path(parsed):
    """``(auth URL, base dir)`` from the URL path ``[/SITE]/rest/auth/SERVER[:/base/dir]``.

    The server name is a single path segment, so the base starts at the first ``:/`` after ``/rest/auth/``
    (a later ``:/`` belongs to the base directory)."""
    prefix, marker, rest = parsed.path.partition("/rest/auth/")
    if not marker or not rest:
        raise errors.UsageError("a UFTP URL needs the Auth server path: uftp://HOST:PORT/rest/auth/SERVER:/base/dir")
    server, colon, base = rest.partition(":/")
    server = server.rstrip(":")
    if not server or "/" in server:
        raise errors.UsageError(f"no server name after /rest/auth/ in the URL path {parsed.path}")
    return f"https://{parsed.netloc}{prefix}/rest/auth/{server}", "/" + base if colon else "/"


def make_credential(settings: UFTPOptions):
    """Token (``?token=``, ``UFTP_TOKEN``), else SSH key (``?identity=``, ``UFTP_IDENTITY``), else
    user and password (option, URL, ``UFTP_USER``/``UFTP_PASSWORD``)."""
    user, password = settings.user, settings.password
    if settings.token:
        return token_credential(settings.token)
    if settings.identity:
        if not user:
            raise errors.UsageError("an identity needs a user name: uftp://USER@HOST... or UFTP_USER")
        return SSHKeyCredential(user, _identity_path(settings.identity), password)
    if not user:
        raise errors.UsageError("no UFTP credentials: set UFTP_USER and UFTP_PASSWORD, use a profile "
                                f"({PROFILE_SECRETS}), or give ?token=@FILE or ?identity=KEY")
    if password is None:
        raise errors.UsageError(f"no password for UFTP user {user}: set UFTP_PASSWORD or use a profile "
                                f"({PROFILE_SECRETS})")
    return BasicCredential(user, password)


def _identity_path(identity: str) -> str:
    if identity.startswith("SHA256:"):  # a key in ssh-agent, named by its fingerprint
        return identity
    path = os.path.expanduser(identity)
    return path if os.path.isabs(path) else os.path.join(os.path.expanduser("~/.uftp"), path)
