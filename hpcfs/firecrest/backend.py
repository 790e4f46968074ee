"""``firecrest://SYSTEM/absolute/path``: a FirecREST v2 system as an hpcfs backend.

Mapping (FirecREST v2 API: eth-cscs.github.io/firecrest-v2/openapi):

* ``list`` = one ``ops/ls`` (hidden files, numeric ids, links not followed) with every child's attributes;
  ``stat`` = ``ops/stat`` (not dereferenced).
* ``read_whole`` = one ``ops/download`` for files the server can base64 under its output cap
  (``floor((max_ops_file_size-1)/4)*3`` bytes); ``read_range`` = one ``transfer/download`` staging job per
  file version, awaited by looking for its object (S3 shows it only whole), then HTTP ``Range`` GETs on
  the presigned URL.  The URL is cached per path with the file's change token, which is checked again at
  most every ``recheck`` seconds.  A sequential reader's readahead runs (``read_pieces``) share one GET
  left open to the object's end (:mod:`.chains`); a random read asks for exactly its range.
* uploads (``begin_upload``) = one ``ops/upload`` up to ``max_ops_file_size``, else a staged multipart
  ``transfer/upload`` whose ingress job is awaited, so the file is in place when the commit returns.  An
  empty file times out on the server (408) although it is created: the call waits only briefly, then
  checks with ``stat``.
* On a system whose ``data_transfer`` is ``streamer``, reads above the direct-download limit and writes above
  ``max_ops_file_size`` go whole over a websocket to a streamer job (:mod:`.streamer`) instead: no ranged
  reads; an upload lands under a temporary name and is renamed over the target (the job refuses to
  replace a file, and would leave a partial one behind a broken connection).
* ``rename`` = ``transfer/mv``, a scheduler job: polled, its log checked (the job "succeeds" even when
  ``mv`` fails).  POSIX replacement rules are checked first because ``mv`` moves *into* directories.
* ``remove``/``rmdir`` check the kind and emptiness first: ``ops/rm`` is ``rm -r``.
"""
import contextlib
import datetime
import posixpath
import re
import threading
import uuid
import time
from dataclasses import dataclass
from typing import BinaryIO, Callable, Dict, List, Optional, Tuple

from cachetools import TTLCache

from .. import errors, net
from ..backend import DIRECTORY, FILE, SYMLINK, Backend, Capabilities, Entry, UploadSession, normalize, split
from ..urls import ParsedURL
from . import streamer
from .chains import StreamChains
from .auth import ClientCredentials, TokenSource, token_source
from .client import QUOTE_REFUSAL, FirecrestClient, StagingExpired, error_from_message
from .options import FirecrestOptions
from .listing import decode_name, entry_from_file, entry_from_stat

JOB_MANGLED = "&<>'\""  # the job templates HTML-escape these, so jobs would act on another path
STREAMER_JOB_SAFE = re.compile(r"[A-Za-z0-9/._+,:@%=~-]+")  # the streamer job script does not quote its path
STAGE_LOCKS = 64
SEEN_ENTRIES = 4096
SEEN_TTL = 30.0  # as long-lived as the core's attributes


@dataclass
class _StagedCopy:
    url: str
    token: str
    checked: float


class _Slice:
    """``length`` bytes of ``source`` as a file-like body with a known length (streamed, not buffered)."""

    def __init__(self, source: BinaryIO, length: int):
        self._source, self._left = source, length

    def __len__(self):
        return self._left

    def read(self, size: int = -1) -> bytes:
        size = self._left if size is None or size < 0 else min(size, self._left)
        data = self._source.read(size)
        if len(data) < size:  # not an OSError, which the HTTP layer would report as a broken connection
            raise EOFError("the file to upload is shorter than announced")
        self._left -= len(data)
        return data


class FirecrestBackend(Backend):
    def __init__(self, client: FirecrestClient, system_info: dict, max_parallel: int = 8,
                 tz: Optional[datetime.tzinfo] = None, account: Optional[str] = None, job_timeout: float = 900.0,
                 recheck: float = 2.0, empty_upload_wait: float = 1.0):
        self.client = client
        self.tz = tz
        self.account = account
        self.job_timeout = job_timeout
        self.recheck = recheck
        self.empty_upload_wait = empty_upload_wait
        operation = system_info.get("dataOperation") or {}
        self.max_ops = int(operation.get("max_ops_file_size", 5 * 1024 * 1024))
        transfer = operation.get("data_transfer") or {}
        self.staging = transfer.get("serviceType") == "s3"
        self.streamer = transfer.get("serviceType") == "streamer"
        self.direct_read_limit = (self.max_ops - 1) // 4 * 3  # ops/download base64-encodes under max_ops
        self.file_systems = [fs.get("path") for fs in system_info.get("fileSystems") or []]
        self.capabilities = Capabilities(
            ranged_reads=self.staging, ranged_writes=False, rename="job", max_parallel=max_parallel,
            parallel_copy=False,  # one staged object: one GET copies one version, no re-check of it midway
            max_whole_read=None if self.streamer else self.direct_read_limit,
            max_upload=None if self.staging or self.streamer else self.max_ops,
            chmod=True, symlinks=True, set_mtime=False, checksums=("sha256",),  # ops/checksum: sha256sum
            server_copy=True,
        )
        self._staged: Dict[str, _StagedCopy] = {}
        self._staged_lock = threading.Lock()
        # path -> (entry, when) of a file last listed or stat'ed here: its size for the no-staging check, its
        # version for staging when just seen (the caller stat'ed it a moment ago: no second ops/stat)
        self._seen: TTLCache = TTLCache(SEEN_ENTRIES, SEEN_TTL)
        self._seen_lock = threading.Lock()
        self._stage_locks = [threading.Lock() for _ in range(STAGE_LOCKS)]
        self._chains = StreamChains(wait_limit=client.timeout[1])

    # -- metadata -------------------------------------------------------------------------------------
    def list(self, path: str) -> List[Entry]:
        with self.client.operation(path):
            items = self.client.ls(path)
            entries = [entry_from_file(item, self.tz) for item in items]  # malformed records fail here
            if len(items) == 1 and "/" in items[0]["name"]:  # ls of a non-directory names the path itself
                if entries[0].kind != SYMLINK:
                    raise errors.NotADirectory("not a directory", path)
                target = self.client.ls(path.rstrip("/") + "/")  # a link: list what it points to
                entries = [entry_from_file(item, self.tz) for item in target]
        self._remember(path, entries)
        return entries

    def stat(self, path: str) -> Entry:
        with self.client.operation(path):
            name = "" if path == "/" else posixpath.basename(path)
            entry = entry_from_stat(name, self.client.stat(path))
        self._remember(posixpath.dirname(path), [entry])
        return entry

    def checksum(self, path: str, algorithm: str) -> str:
        with self.client.operation(path):
            return self.client.checksum(path)

    def _remember(self, directory: str, entries: List[Entry]):
        now = time.monotonic()
        with self._seen_lock:
            for entry in entries:
                if entry.kind == FILE:  # a link's own attributes say nothing about what it points to
                    self._seen[posixpath.join(directory, entry.name)] = (entry, now)

    def _seen_within(self, path: str, seconds: float) -> Optional[Entry]:
        """The entry of ``path`` if this backend listed or stat'ed it in the last ``seconds``."""
        with self._seen_lock:
            entry, when = self._seen.get(path, (None, 0.0))
        return entry if time.monotonic() - when < seconds else None

    # -- reading --------------------------------------------------------------------------------------
    def read_whole(self, path: str, sink: BinaryIO) -> None:
        with self.client.operation(path):
            if self.streamer and self._size_hint(path) > self.direct_read_limit:
                self._stream_download(path, sink)
                return
            if not self.staging and not self.streamer:
                self._refuse_above_download_limit(path)
            try:
                self.client.download(path, sink)
            except errors.TooLarge:  # grown past the server's cap since it was listed
                if self.streamer:
                    self._stream_download(path, sink)
                elif self.staging:
                    self.client.staged_stream(self._staged_copy(path).url, sink)
                else:
                    raise

    def _size_hint(self, path: str) -> int:
        """The size this backend just listed or stat'ed (callers look before they read), else asks."""
        return (self._seen_within(path, SEEN_TTL) or self.stat(path)).size

    def _refuse_above_download_limit(self, path: str):
        """Without staging, ``ops/download`` is the only way out, and for a file above its limit the server
        does not refuse: it holds an SSH channel until its command timeout (408), and a few such reads
        exhaust its channels (424) and fail its health check (503) for every user.  So check the size first."""
        size, limit = self._size_hint(path), self.direct_read_limit
        if size > limit:
            raise errors.TooLarge(
                f"{size} bytes is above the direct-download limit of FirecREST system '{self.client.system}' "
                f"({limit} bytes, from its max_ops_file_size {self.max_ops}), and the system offers no staging "
                "(no data_transfer) for larger files", path)

    def read_range(self, path: str, offset: int, length: int) -> bytes:
        """A random read: exactly the range, so no more bytes are sent than were asked for."""
        pieces: List[bytes] = []
        self._read_staged(path, offset, length, max(length, 1), pieces.append, chained=False)
        return pieces[0] if pieces else b""

    def read_pieces(self, path: str, offset: int, length: int, piece_size: int,
                    deliver: Callable[[bytes], None]) -> None:
        """One streamed GET for the whole range, left open to the object's end for the range that follows
        (:mod:`.chains`): a sequential reader's readahead runs cost one GET together, not one each."""
        self._read_staged(path, offset, length, piece_size, deliver, chained=True)

    def _read_staged(self, path: str, offset: int, length: int, piece_size: int, deliver: Callable[[bytes], None],
                     chained: bool) -> None:
        if not self.staging:
            raise errors.NotSupported("this FirecREST system has no S3 staging for ranged reads", path)
        position, end = offset, offset + length  # a re-staged retry resumes after what was delivered

        def forward(piece):
            nonlocal position
            deliver(piece)
            position += len(piece)

        if length <= 0:
            return

        def read_staged():
            url = self._staged_copy(path).url
            if run is None:
                self.client.staged_pieces(url, position, end - position, piece_size, forward)
                return
            resumed = run.resume(url)
            if resumed is not None:
                try:
                    resumed.pieces(end - position, piece_size, forward)
                    return
                except errors.ProtocolError:
                    pass  # the open GET broke while it waited for this run: a fresh one
            run.use(self.client.open_staged(url, position), url).pieces(end - position, piece_size, forward)

        def expired(outcome) -> net.Verdict:
            if isinstance(outcome, StagingExpired):  # stage it again, once
                self._forget(path)
                return net.Verdict.AGAIN
            return net.Verdict.DONE

        chain = self._chains.run(path, offset, end) if chained else contextlib.nullcontext()
        with self.client.operation(path), chain as run:
            net.retry(read_staged, expired, attempts=2)

    def _staged_copy(self, path: str) -> _StagedCopy:
        """The staging URL of the current version of ``path``: one staging job per version.  A version
        seen less than ``recheck`` seconds ago (the caller's own stat before reading) is not asked again.
        While one reader re-checks a staged version, the others go on reading it rather than wait for the
        check (an ``ops/stat`` over SSH, or a whole staging job when the file changed)."""
        copy = self._staged_of(path)
        if copy and time.monotonic() - copy.checked < self.recheck:
            return copy
        lock = self._stage_locks[hash(path) % STAGE_LOCKS]
        if copy is None:
            lock.acquire()
        elif not lock.acquire(blocking=False):
            return copy
        try:
            return self._current_copy(path)
        finally:
            lock.release()

    def _staged_of(self, path: str) -> Optional[_StagedCopy]:
        with self._staged_lock:
            return self._staged.get(path)

    def _current_copy(self, path: str) -> _StagedCopy:
        """Under the path's staging lock: check the staged copy against the file, stage it if it changed."""
        copy = self._staged_of(path)
        now = time.monotonic()
        if copy and now - copy.checked < self.recheck:  # checked by the reader that held the lock before
            return copy
        entry = self._seen_within(path, self.recheck) or self.stat(path)
        if entry.kind == DIRECTORY:
            raise errors.IsADirectory("is a directory", path)
        if copy and copy.token == entry.change_token:
            copy.checked = now
            return copy
        with self._staged_lock:  # changed: readers now wait for the new version, never read the old one
            self._staged.pop(path, None)
        _refuse_mangled(path)
        job, url = self.client.transfer_download(path, self.account)
        self._await_staged(job, url, entry, path)
        copy = _StagedCopy(url, entry.change_token, time.monotonic())
        with self._staged_lock:
            if len(self._staged) >= 1024:
                self._staged.clear()
            self._staged[path] = copy
        return copy

    def _forget(self, *paths: str):
        with self._staged_lock:
            for path in paths:
                self._staged.pop(path, None)
        with self._seen_lock:
            for path in paths:
                self._seen.pop(path, None)

    # -- writing --------------------------------------------------------------------------------------
    def write_whole(self, path: str, source: BinaryIO, size: int) -> None:
        with self.client.operation(path):  # one correlation id for the whole upload
            super().write_whole(path, source, size)

    def begin_upload(self, path: str, size: Optional[int], resume_from: int = 0) -> UploadSession:
        if size is None:
            raise errors.NotSupported("FirecREST needs the size of an upload before it starts", path)
        self._forget(path)
        if size <= self.max_ops:
            return _OperationUpload(self, path, size)
        if self.staging:
            return _StagedUpload(self, path, size)
        if self.streamer:
            return _StreamerUpload(self, path, size)
        raise errors.TooLarge(f"{size} bytes is above the upload limit of FirecREST system "
                              f"'{self.client.system}' ({self.max_ops} bytes, its max_ops_file_size), "
                              "and the system offers no staging (no data_transfer) for larger files", path)

    def _create_empty(self, path: str):
        """An empty upload hangs until the server's command timeout (408), yet the file is created at
        once: wait briefly, then believe ``stat``."""
        directory, name = split(path)
        try:
            self.client.upload(directory, name, b"", timeout=(10.0, self.empty_upload_wait), retry_timeouts=False)
            return
        except errors.TimedOut:
            pass
        def created() -> Optional[bool]:
            try:
                return True if self.stat(path).size == 0 else None
            except errors.NotFound:
                return None

        net.until(created, net.Schedule(self.empty_upload_wait / 4, growth=1.0),
                  time.monotonic() + 10 * self.empty_upload_wait,
                  lambda: errors.TimedOut("the server did not create the empty file", path))

    # -- streamer transfers ---------------------------------------------------------------------------
    def _stream_download(self, path: str, sink: BinaryIO):
        _refuse_for_streamer_job(path)
        job, coordinates = self.client.streamer_transfer("download", path, self.account)
        try:
            with self._open_stream(job, coordinates, streamer.SENT_MARKER, path) as connection:
                streamer.receive(connection, sink, self.client.timeout[1], path)
        except BaseException:
            self.client.cancel_job(job)  # else its server waits for a client until its wait_timeout
            raise

    def _stream_upload(self, path: str, source: BinaryIO, size: int):
        """Into a temporary sibling, then renamed over ``path``: the job refuses an existing target, and a
        broken connection leaves it a partial file that it reports as received."""
        temporary = posixpath.join(posixpath.dirname(path), f".{uuid.uuid4().hex[:16]}.hpcfs-upload")
        _refuse_for_streamer_job(temporary)
        job, coordinates = self.client.streamer_transfer("upload", temporary, self.account)
        try:
            with self._open_stream(job, coordinates, streamer.RECEIVED_MARKER, path) as connection:
                streamer.send(connection, source, size, self.client.timeout[1], path)
            self._finish(job, streamer.RECEIVED_MARKER, path)
            self.rename(temporary, path)
        except BaseException:
            self.client.cancel_job(job)
            self._remove_quietly(temporary)
            raise

    def _open_stream(self, job: dict, coordinates: str, marker: str, path: str):
        def check_job():
            if self.client.job_ended(job):  # it will never listen: say why (its log), else say that
                self._finish(job, marker, path)
                raise errors.ProtocolError(f"transfer job {job['jobId']} ended before it streamed", path)

        return streamer.open_stream(streamer.Coordinates.decode(coordinates), check_job,
                                    time.monotonic() + self.job_timeout, self.client.timeout[0], path)

    def _remove_quietly(self, path: str):
        try:
            self.client.rm(path)
        except errors.HpcfsError:
            pass  # never created, or the server is gone: nothing more to do from here

    def _finish(self, job: dict, marker: str, path: str):
        """Wait for a transfer job, then read its output log: the scheduler's state alone can lie."""
        self._wait(job)
        self._check_log(job, marker, path)

    def _await_staged(self, job: dict, url: str, entry: Entry, path: str):
        """Wait for a staging job by looking for its object, which appears only whole: sooner than the
        scheduler says the job ended, and a look costs the staging area little where asking the scheduler
        costs the cluster an SSH command.  The log says why only when the job ends without the object.
        An object of another size than ``entry`` is a later version than the reader asked for: the reader
        would get a prefix or a mix of two versions, so it gets an error instead."""
        staged_size: Optional[int] = None

        def object_there() -> bool:
            nonlocal staged_size
            staged_size = self.client.staged_object_size(url)
            return staged_size is not None

        if self._wait(job, object_there):
            self._check_log(job, "successfully", path)
        elif entry.kind == FILE and staged_size != entry.size:  # a link's own size is not its target's
            raise errors.HpcfsError(f"the file changed on the server while it was staged ({entry.size} bytes "
                                    f"when looked at, {staged_size} staged): read it again", path)

    def _wait(self, job: dict, work_done: Optional[Callable[[], bool]] = None) -> bool:
        try:
            return self.client.wait_for_job(job, time.monotonic() + self.job_timeout, work_done=work_done)
        except errors.TimedOut:
            self.client.cancel_job(job)
            raise

    def _check_log(self, job: dict, marker: str, path: str):
        logs = job["logs"]
        if marker in self.client.view(logs["outputLog"]):
            return
        try:
            reason = self.client.view(logs["errorLog"]).strip() or "no error output"
        except errors.NotFound:
            reason = "the job left no error log"
        raise error_from_message(500, f"transfer job {job['jobId']} failed: error message:{reason}", path)

    # -- namespace ------------------------------------------------------------------------------------
    def check_name(self, path: str) -> None:
        if "'" in path:
            raise errors.InvalidPath(QUOTE_REFUSAL, path)

    def mkdir(self, path: str) -> None:
        with self.client.operation(path):
            self.client.mkdir(path)

    def remove(self, path: str) -> None:
        with self.client.operation(path):
            if self.stat(path).is_dir:
                raise errors.IsADirectory("is a directory", path)
            self.client.rm(path)
        self._forget(path)

    def rmdir(self, path: str) -> None:
        if path == "/":
            raise errors.PermissionDenied("cannot remove the root of the tree", path)
        with self.client.operation(path):
            if self.list(path):
                raise errors.DirectoryNotEmpty("directory not empty", path)
            self.client.rm(path)

    def rename(self, src: str, dst: str) -> None:
        if src == dst:
            return
        _refuse_mangled(src)
        _refuse_mangled(dst)
        with self.client.operation(src):
            source = self.stat(src)
            self._clear_target(source, dst)
            self._finish(self.client.mv(src, dst, self.account), "Files were successfully", src)
        self._forget(src, dst)

    def copy(self, src: str, dst: str) -> None:
        _refuse_mangled(src)
        _refuse_mangled(dst)
        with self.client.operation(src):
            self._finish(self.client.cp(src, dst, self.account), "Files were successfully", src)
        self._forget(dst)

    def _clear_target(self, source: Entry, dst: str):
        """Make ``mv`` behave as POSIX rename: it would move into a directory or a link to one."""
        try:
            target = self.stat(dst)
        except errors.NotFound:
            return
        if target.kind == SYMLINK:
            self.client.rm(dst)
        elif target.is_dir:
            if not source.is_dir:
                raise errors.IsADirectory("is a directory", dst)
            if self.list(dst):
                raise errors.DirectoryNotEmpty("directory not empty", dst)
            self.client.rm(dst)
        elif source.is_dir:
            raise errors.NotADirectory("not a directory", dst)

    def chmod(self, path: str, mode: int) -> None:
        with self.client.operation(path):
            self.client.chmod(path, mode)

    def symlink(self, target: str, path: str) -> None:
        with self.client.operation(path):
            self.client.symlink(target, path)

    def readlink(self, path: str) -> str:
        with self.client.operation(path):
            items = self.client.ls(path)
            if len(items) != 1 or "/" not in items[0]["name"] or items[0]["type"] != "l":
                raise errors.InvalidPath("not a symbolic link", path)
            return decode_name(items[0]["linkTarget"])

    # -- lifecycle ------------------------------------------------------------------------------------
    def describe(self) -> dict:
        return {"protocol": "firecrest", "api": self.client.api_url, "system": self.client.system,
                "server_version": self.client.server_version, **self._credential_facts(),
                "max_ops_file_size": self.max_ops,
                "staging": self._large_file_path() or self._no_staging(), "file_systems": self.file_systems}

    def _credential_facts(self) -> dict:
        auth = self.client.auth
        if isinstance(auth, ClientCredentials):
            return {"client_id": auth.client_id, "token_url": auth.token_url}
        return {"credential": repr(auth)}  # a token's source, never the token

    def _large_file_path(self) -> Optional[str]:
        """How files above the direct limits travel: "s3" (staged), "streamer" (websocket), or not at all."""
        return "s3" if self.staging else "streamer" if self.streamer else None

    def _no_staging(self) -> str:
        return (f"no staging: files above {self.capabilities.max_whole_read} bytes cannot be read "
                f"and files above {self.max_ops} bytes cannot be written")

    def close(self) -> None:
        self._chains.close()
        self.client.close()


class _OperationUpload(UploadSession):
    """A file up to ``max_ops_file_size``: one ``ops/upload`` (replaces an existing file)."""

    def __init__(self, backend: FirecrestBackend, path: str, size: int):
        self._backend, self._path, self._size = backend, path, size
        self.part_size = max(size, 1)

    def put_part(self, offset: int, source: BinaryIO, length: int) -> None:
        data = source.read(length)
        if len(data) != length:
            raise errors.ProtocolError("the file to upload is shorter than announced", self._path)
        directory, name = split(self._path)
        with self._backend.client.operation(self._path):
            self._backend.client.upload(directory, name, data)

    def commit(self) -> None:
        if self._size == 0:
            with self._backend.client.operation(self._path):
                self._backend._create_empty(self._path)


class _StreamerUpload(UploadSession):
    """A larger file on a streamer system: the whole file in one part, over one websocket."""

    def __init__(self, backend: FirecrestBackend, path: str, size: int):
        self._backend, self._path = backend, path
        self.part_size = max(size, 1)

    def put_part(self, offset: int, source: BinaryIO, length: int) -> None:
        with self._backend.client.operation(self._path):
            self._backend._stream_upload(self._path, source, length)


class _StagedUpload(UploadSession):
    """A larger file: a multipart ``transfer/upload`` (S3 parts on presigned URLs, each streamed from the
    source in order), completed, then its ingress job awaited so the file is in place when ``commit``
    returns."""

    def __init__(self, backend: FirecrestBackend, path: str, size: int):
        _refuse_mangled(path)
        self._backend, self._path = backend, path
        with backend.client.operation(path):
            self._job, self._directives = backend.client.transfer_upload(path, size, backend.account)
        self.part_size = int(self._directives["maxPartSize"])
        self._etags: List[str] = []

    def put_part(self, offset: int, source: BinaryIO, length: int) -> None:
        url = self._directives["partsUploadUrls"][offset // self.part_size]
        try:
            with self._backend.client.operation(self._path):
                self._etags.append(self._backend.client.put_part(url, _Slice(source, length)))
        except EOFError as failure:
            raise errors.ProtocolError(str(failure), self._path) from None

    def commit(self) -> None:
        with self._backend.client.operation(self._path):
            self._backend.client.complete_upload(self._directives["completeUploadUrl"], self._etags)
            self._backend._finish(self._job, "successfully", self._path)

    def abort(self) -> None:
        self._backend.client.cancel_job(self._job)  # else it waits for the object for a day


def _refuse_mangled(path: str):
    if any(char in path for char in JOB_MANGLED):
        raise errors.InvalidPath("FirecREST transfer jobs cannot handle paths containing & < > ' or \"", path)


# -- firecrest://SYSTEM/path -----------------------------------------------------------------------------
# What is missing when no option, URL query or environment variable gives it: (option, variable, what).
REQUIRED = (("api_url", "FIRECREST_URL", "API URL"), ("token_url", "AUTH_TOKEN_URL", "token URL"),
            ("client_id", "FIRECREST_CLIENT_ID", "client id"),
            ("client_secret", "FIRECREST_CLIENT_SECRET", "client secret"))


def _authentication(settings: FirecrestOptions, session) -> Tuple[str, TokenSource, str]:
    """``(API URL, token source, who)``: a ``token`` option's tokens, else client credentials; ``who`` keys
    the budget of requests in flight this account shares with the user's other processes."""
    if settings.token:
        api_url = _required_settings(settings, REQUIRED[:1])[0]
        source = token_source(settings.token)
        return api_url, source, repr(source)
    api_url, token_url, client_id, client_secret = _required_settings(settings, REQUIRED)
    return api_url, ClientCredentials(token_url, client_id, client_secret, session, settings.timeout), client_id


def _required_settings(settings: FirecrestOptions, required) -> List[str]:
    """The ``required`` settings' values, or one line saying which is missing."""
    values = []
    for name, env, what in required:
        value = getattr(settings, name)
        if not value:
            raise errors.UsageError(f"FirecREST {what} missing: set {env} (or the {name}= option)")
        values.append(str(value))
    return values


def _refuse_for_streamer_job(path: str):
    if not STREAMER_JOB_SAFE.fullmatch(path):
        raise errors.InvalidPath("FirecREST streamer jobs put the path unquoted into a shell script: only "
                                 "letters, digits and / . _ + , : @ % = ~ - are safe", path)


def backend_from_url(url: ParsedURL, settings: FirecrestOptions):
    """``(FirecrestBackend, root)`` for ``firecrest://SYSTEM/path``; asks ``/status/systems`` for the limits."""
    if not url.host:
        raise errors.UsageError("firecrest:// URL without a system name (expected firecrest://SYSTEM/path)")
    session = net.new_session(settings.verify, settings.ca_file, pool_size=max(8, 2 * settings.parallel))
    api_url, auth, who = _authentication(settings, session)
    client = FirecrestClient(api_url, url.host.lower(), auth, session, settings.timeout,
                             in_flight=net.request_budget(api_url, who))
    try:
        tz = _timezone(settings.tz) if settings.tz else None
        with client.operation():  # the system list and its limits are server data too
            systems = client.systems()
            info = next((s for s in systems if s.get("name", "").lower() == client.system), None)
            if info is None:
                known = ", ".join(s.get("name", "?") for s in systems) or "none"
                raise errors.UsageError(f"FirecREST at {settings.api_url} has no system '{url.host}' "
                                        f"(known: {known})")
            backend = FirecrestBackend(client, info, max_parallel=settings.parallel, tz=tz, account=settings.account)
    except BaseException:
        client.close()
        raise
    return backend, normalize(url.path)


def _timezone(name: str) -> datetime.tzinfo:
    if name.upper() == "UTC":
        return datetime.timezone.utc
    try:
        from zoneinfo import ZoneInfo

        return ZoneInfo(name)
    except Exception:
        raise errors.UsageError(f"unknown time zone '{name}' (tz= option)") from None
