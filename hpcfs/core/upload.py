"""The one upload path: every file the mount, ``hpcfs cp`` or an ``open_fs``/fsspec writer sends goes here.

An :class:`Upload` drives one backend :class:`~hpcfs.backend.UploadSession` (begin / put part / commit /
abort).  Where the backend publishes by rename (``Capabilities.publishes_by_rename``: the server renames
instantly), the bytes go to a hidden partial name next to the real one, which appears only by one rename
once the session is committed, so a failed or interrupted upload never creates or truncates the real
name.  Elsewhere (FirecREST: a rename is a job; EM: a copy) the session writes the real name, and only
the server's own commit makes it visible.  A caller's ``verify`` (``hpcfs cp --checksum``) runs once the
server holds every byte and before that rename, so a damaged copy replaces nothing where there is one.
Parts go out in parallel where the session allows it, at most ``session.parallel`` at once, so memory
stays bounded by a few parts.
"""
import collections
import io
import logging
import posixpath
import secrets
from concurrent.futures import Executor, Future
from typing import BinaryIO, Callable, Deque, Optional

from .. import errors
from ..backend import Backend, UploadSession, read_exactly, split

log = logging.getLogger("hpcfs.core")

PARTIAL_MARK = ".hpcfs-partial-"  # hidden names that uploads go to before they are complete


class Damaged(errors.HpcfsError):
    """The bytes arrived, but a content check found them other than the source's: where they are still
    under a partial name they are never published, and not kept as a prefix to resume from either."""


def fresh_partial_name(path: str) -> str:
    """A new hidden name next to ``path`` (same directory, so the final rename is instant)."""
    directory, name = split(path)
    return posixpath.join(directory, f".{name[:200]}{PARTIAL_MARK}{secrets.token_hex(4)}")


class Uploader:
    """Starts uploads over one backend; parts in flight run on ``pool`` (shared by every open file)."""

    def __init__(self, backend: Backend, pool: Executor):
        self._backend = backend
        self._pool = pool
        self.publishes_by_rename = backend.capabilities.publishes_by_rename

    def start(self, path: str, size: Optional[int], partial: Optional[str] = None, resume_from: int = 0,
              in_order: bool = False) -> "Upload":
        """Begin uploading ``size`` bytes (``None``: not known yet) to the backend path ``path``.  Where the
        backend publishes by rename the bytes go to ``partial`` (default: a fresh hidden name);
        ``resume_from`` continues a kept partial of that length; ``in_order`` sends one part after the
        other, so an interruption leaves a prefix of the file."""
        destination = path
        if self.publishes_by_rename:
            destination = partial or fresh_partial_name(path)
        session = self._backend.begin_upload(destination, size, resume_from)
        return Upload(self._backend, self._pool, session, destination, path, in_order)

    def send(self, path: str, source: BinaryIO, size: int, publish_mode: Optional[int] = None,
             partial: Optional[str] = None, resume_from: int = 0, in_order: bool = False,
             verify: Optional[Callable[[], None]] = None) -> None:
        """Upload ``size`` bytes of ``source`` (from ``resume_from`` on) and publish them under ``path``,
        once ``verify`` (if given) has not raised ``Damaged``.  On failure nothing appears under ``path``: the
        partial is removed, unless ``in_order`` asked to keep a resumable prefix (a damaged copy is none)."""
        upload = self.start(path, size, partial, resume_from, in_order)
        try:
            upload.send_stream(source, resume_from, size)
            upload.publish(publish_mode, verify)
        except BaseException as failure:
            upload.abort(keep_partial=in_order and partial is not None and not isinstance(failure, Damaged))
            raise


class Upload:
    """One file on its way to the server: parts, then ``publish`` (or ``abort``)."""

    def __init__(self, backend: Backend, pool: Executor, session: UploadSession, destination: str, path: str,
                 in_order: bool):
        self._backend = backend
        self._pool = pool
        self._session = session
        self.destination = destination  # where the bytes go: a partial name, or ``path`` itself
        self.path = path
        self.part_size = session.part_size
        self._parallel = 1 if in_order else max(1, session.parallel)
        self._in_flight: Deque[Future] = collections.deque()

    def put(self, offset: int, data: bytes) -> None:
        """Send one part held in memory; with parallel parts it goes out on the pool and this waits only
        when ``parallel`` parts are already in flight (raising the first failure among them)."""
        if self._parallel == 1:
            self._session.put_part(offset, io.BytesIO(data), len(data))
            return
        while len(self._in_flight) >= self._parallel:
            self._in_flight.popleft().result()
        self._in_flight.append(self._pool.submit(self._session.put_part, offset, io.BytesIO(data), len(data)))

    def send_stream(self, source: BinaryIO, start: int, end: int) -> None:
        """Send bytes ``[start, end)`` read from ``source`` in parts.  Parts sent one after the other are
        streamed from ``source`` unbuffered (a staged part can be large); parallel ones are read first."""
        for offset in range(start, end, self.part_size):
            length = min(self.part_size, end - offset)
            if self._parallel == 1:
                self._session.put_part(offset, source, length)
            else:
                self.put(offset, read_exactly(source, length, self.path))

    def wait(self) -> None:
        """Every part sent so far is on the server (else the first failure among them is raised)."""
        self._wait()

    def publish(self, mode: Optional[int] = None, verify: Optional[Callable[[], None]] = None) -> None:
        """Wait for every part, commit, ``verify`` the bytes, and make the file appear under its real name
        (keeping ``mode``, the permission bits of the file it replaces, where the server has them)."""
        self._wait()
        self._session.commit()
        if verify is not None:
            verify()
        if self.destination != self.path:
            if mode is not None and self._backend.capabilities.chmod:
                self._backend.chmod(self.destination, mode & 0o7777)
            self._backend.rename(self.destination, self.path)

    def abort(self, keep_partial: bool = False) -> None:
        """Give up: parts in flight are waited for (a late part must not land after a later upload), the
        server's state for the session freed, and the partial removed unless a resumable prefix is kept."""
        self._wait(ignore_failures=True)
        self._session.abort()
        if self.destination != self.path and not keep_partial:
            self._remove_partial()

    def _wait(self, ignore_failures: bool = False) -> None:
        """Every part in flight finished; the first failure raised once all have."""
        first_failure: Optional[BaseException] = None
        while self._in_flight:
            try:
                self._in_flight.popleft().result()
            except Exception as failure:
                first_failure = first_failure or failure
        if first_failure is not None and not ignore_failures:
            raise first_failure

    def _remove_partial(self) -> None:
        """A failure here only leaves a hidden partial file behind: the error that brought us here counts."""
        try:
            self._backend.remove(self.destination)
        except errors.NotFound:
            pass
        except errors.HpcfsError as exc:
            log.warning("could not remove the unfinished upload %s: %s", self.destination, exc)
