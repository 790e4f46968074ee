"""``firecrest://SYSTEM/absolute/path``: a FirecREST v2 system as an hpcfs backend.

Mapping (see /work/shared/reference/firecrest.md):

* ``list`` = one ``ops/ls`` (hidden files, numeric ids, links not followed) with every child's attributes;
  ``stat`` = ``ops/stat`` (not dereferenced).
* ``read_whole`` = one ``ops/download`` for files the server can base64 under its output cap
  (``floor((max_ops_file_size-1)/4)*3`` bytes); ``read_range`` = one ``transfer/download`` staging job per
  file version, then HTTP ``Range`` GETs on the presigned URL.  The URL is cached per path with the
  file's change token, which is checked again at most every ``recheck`` seconds.
* ``write_whole`` = ``ops/upload`` up to ``max_ops_file_size``, else a staged multipart ``transfer/upload``
  whose ingress job is awaited, so the file is in place when the call returns.  An empty file times
  out on the server (408) although it is created: the call waits only briefly, then checks with ``stat``.
* ``rename`` = ``transfer/mv``, a scheduler job: polled, its log checked (the job "succeeds" even when
  ``mv`` fails).  POSIX replacement rules are checked first because ``mv`` moves *into* directories.
* ``remove``/``rmdir`` check the kind and emptiness first: ``ops/rm`` is ``rm -r``.
"""
import datetime
import os
import posixpath
import threading
import time
from dataclasses import dataclass
from typing import BinaryIO, Callable, Dict, List, Optional

from cachetools import TTLCache

from .. import errors, net
from ..backend import DIRECTORY, FILE, SYMLINK, Backend, Capabilities, Entry, normalize, split
from ..urls import ParsedURL
from .auth import ClientCredentials
from .client import FirecrestClient, StagingExpired, error_from_message
from .listing import decode_name, entry_from_file, entry_from_stat

JOB_MANGLED = "&<>'\""  # the job templates HTML-escape these, so jobs would act on another path
STAGE_LOCKS = 64
SIZE_HINTS = 4096
SIZE_HINT_TTL = 30.0


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
        self.file_systems = [fs.get("path") for fs in system_info.get("fileSystems") or []]
        self.capabilities = Capabilities(
            ranged_reads=self.staging, ranged_writes=False, rename="job", max_parallel=max_parallel,
            max_whole_read=(self.max_ops - 1) // 4 * 3, max_upload=None if self.staging else self.max_ops,
            chmod=True, symlinks=True, set_mtime=False, eventual_listing=False,
            extra={"max_ops_file_size": self.max_ops, "staging": "s3" if self.staging else None},
        )
        self._staged: Dict[str, _StagedCopy] = {}
        self._staged_lock = threading.Lock()
        # path -> size of a file last seen here, for the no-staging check; as long-lived as the core's attributes
        self._sizes: TTLCache = TTLCache(SIZE_HINTS, SIZE_HINT_TTL)
        self._sizes_lock = threading.Lock()
        self._stage_locks = [threading.Lock() for _ in range(STAGE_LOCKS)]

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
        self._remember_sizes(path, entries)
        return entries

    def stat(self, path: str) -> Entry:
        with self.client.operation(path):
            name = "" if path == "/" else posixpath.basename(path)
            entry = entry_from_stat(name, self.client.stat(path))
        self._remember_sizes(posixpath.dirname(path), [entry])
        return entry

    def _remember_sizes(self, directory: str, entries: List[Entry]):
        with self._sizes_lock:
            for entry in entries:
                if entry.kind == FILE:  # a link's own size says nothing about what it points to
                    self._sizes[posixpath.join(directory, entry.name)] = entry.size

    # -- reading --------------------------------------------------------------------------------------
    def read_whole(self, path: str, sink: BinaryIO) -> None:
        with self.client.operation(path):
            if not self.staging:
                self._refuse_above_download_limit(path)
            try:
                self.client.download(path, sink)
            except errors.TooLarge:  # grown past the server's cap since it was listed
                if not self.staging:
                    raise
                self.client.staged_stream(self._staged_copy(path).url, sink)

    def _refuse_above_download_limit(self, path: str):
        """Without staging, ``ops/download`` is the only way out, and for a file above its limit the server
        does not refuse: it holds an SSH channel until its command timeout (408), and a few such reads
        exhaust its channels (424) and fail its health check (503) for every user.  So check the size
        first: the one this backend just listed or stat'ed (callers look before they read), else ask."""
        with self._sizes_lock:
            size = self._sizes.get(path)
        if size is None:
            size = self.stat(path).size
        limit = self.capabilities.max_whole_read
        if limit is not None and size > limit:
            raise errors.TooLarge(
                f"{size} bytes is above the direct-download limit of FirecREST system '{self.client.system}' "
                f"({limit} bytes, from its max_ops_file_size {self.max_ops}), and the system offers no staging "
                "(no data_transfer) for larger files", path)

    def read_range(self, path: str, offset: int, length: int) -> bytes:
        pieces: List[bytes] = []
        self.read_pieces(path, offset, length, max(length, 1), pieces.append)
        return pieces[0] if pieces else b""

    def read_pieces(self, path: str, offset: int, length: int, piece_size: int,
                    deliver: Callable[[bytes], None]) -> None:
        """One streamed ranged GET for the whole range: the staging area answers each request in about a
        quarter second whatever its size, so a run of readahead blocks costs one request, not one per block."""
        if not self.staging:
            raise errors.NotSupported("this FirecREST system has no S3 staging for ranged reads", path)
        position, end = offset, offset + length  # a re-staged retry resumes after what was delivered

        def forward(piece):
            nonlocal position
            deliver(piece)
            position += len(piece)

        if length <= 0:
            return
        with self.client.operation(path):
            for attempt in range(2):
                copy = self._staged_copy(path)
                try:
                    self.client.staged_pieces(copy.url, position, end - position, piece_size, forward)
                    return
                except StagingExpired:
                    self._forget(path)
                    if attempt:
                        raise

    def _staged_copy(self, path: str) -> _StagedCopy:
        """The staging URL of the current version of ``path``: one staging job per version."""
        with self._stage_locks[hash(path) % STAGE_LOCKS]:
            with self._staged_lock:
                copy = self._staged.get(path)
            now = time.monotonic()
            if copy and now - copy.checked < self.recheck:
                return copy
            entry = self.stat(path)
            if entry.kind == DIRECTORY:
                raise errors.IsADirectory("is a directory", path)
            if copy and copy.token == entry.change_token:
                copy.checked = now
                return copy
            _refuse_mangled(path)
            job, url = self.client.transfer_download(path, self.account)
            self._finish(job, "successfully", path)
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
        with self._sizes_lock:
            for path in paths:
                self._sizes.pop(path, None)

    # -- writing --------------------------------------------------------------------------------------
    def write_whole(self, path: str, source: BinaryIO, size: int) -> None:
        directory, name = split(path)
        self._forget(path)
        with self.client.operation(path):
            if size == 0:
                self._create_empty(directory, name, path)
            elif size <= self.max_ops:
                data = source.read(size)
                if len(data) != size:
                    raise errors.ProtocolError("the file to upload is shorter than announced", path)
                self.client.upload(directory, name, data)
            elif self.staging:
                self._staged_upload(path, source, size)
            else:
                raise errors.TooLarge(f"{size} bytes is above the upload limit of FirecREST system "
                                      f"'{self.client.system}' ({self.max_ops} bytes, its max_ops_file_size), "
                                      "and the system offers no staging (no data_transfer) for larger files", path)

    def _create_empty(self, directory: str, name: str, path: str):
        """An empty upload hangs until the server's command timeout (408), yet the file is created at
        once: wait briefly, then believe ``stat``."""
        try:
            self.client.upload(directory, name, b"", timeout=(10.0, self.empty_upload_wait), retry_timeouts=False)
            return
        except errors.TimedOut:
            pass
        deadline = time.monotonic() + 10 * self.empty_upload_wait
        while True:
            try:
                if self.stat(path).size == 0:
                    return
            except errors.NotFound:
                pass
            if time.monotonic() > deadline:
                raise errors.TimedOut("the server did not create the empty file", path)
            time.sleep(self.empty_upload_wait / 4)

    def _staged_upload(self, path: str, source: BinaryIO, size: int):
        _refuse_mangled(path)
        job, directives = self.client.transfer_upload(path, size, self.account)
        part_size = int(directives["maxPartSize"])
        try:
            etags = [self.client.put_part(url, _Slice(source, min(part_size, size - number * part_size)))
                     for number, url in enumerate(directives["partsUploadUrls"])]
            self.client.complete_upload(directives["completeUploadUrl"], etags)
        except (errors.HpcfsError, EOFError) as failure:
            self.client.cancel_job(job)  # else it waits for the object for a day
            if isinstance(failure, EOFError):
                raise errors.ProtocolError(str(failure), path) from None
            raise
        self._finish(job, "successfully", path)

    def _finish(self, job: dict, marker: str, path: str):
        """Wait for a transfer job, then read its output log: the scheduler's state alone can lie."""
        try:
            self.client.wait_for_job(job, time.monotonic() + self.job_timeout)
        except errors.TimedOut:
            self.client.cancel_job(job)
            raise
        logs = job["logs"]
        if marker in self.client.view(logs["outputLog"]):
            return
        try:
            reason = self.client.view(logs["errorLog"]).strip() or "no error output"
        except errors.NotFound:
            reason = "the job left no error log"
        raise error_from_message(500, f"transfer job {job['jobId']} failed: error message:{reason}", path)

    # -- namespace ------------------------------------------------------------------------------------
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
                "server_version": self.client.server_version, "client_id": self.client.auth.client_id,
                "token_url": self.client.auth.token_url, "max_ops_file_size": self.max_ops,
                "staging": "s3" if self.staging else self._no_staging(), "file_systems": self.file_systems}

    def _no_staging(self) -> str:
        return (f"no staging: files above {self.capabilities.max_whole_read} bytes cannot be read "
                f"and files above {self.max_ops} bytes cannot be written")

    def close(self) -> None:
        self.client.session.close()


def _refuse_mangled(path: str):
    if any(char in path for char in JOB_MANGLED):
        raise errors.InvalidPath("FirecREST transfer jobs cannot handle paths containing & < > ' or \"", path)


# -- firecrest://SYSTEM/path -----------------------------------------------------------------------------
# option names (options, then the URL's query), their environment variable, what to call them when missing;
# a profile names the API URL ``api_url`` (its ``url`` is the location) and gives the secret as ``password``
SETTINGS = {
    "api": (("url", "api_url"), "FIRECREST_URL", "API URL"),
    "token_url": (("token_url",), "AUTH_TOKEN_URL", "token URL"),
    "client_id": (("client_id",), "FIRECREST_CLIENT_ID", "client id"),
    "secret": (("client_secret", "password"), "FIRECREST_CLIENT_SECRET", "client secret"),
}


def _setting(url: ParsedURL, options: dict, *names: str, env: Optional[str] = None) -> Optional[str]:
    candidates = [options.get(name) for name in names] + [url.params.get(name) for name in names]
    for value in candidates + [os.environ.get(env) if env else None]:
        if value not in (None, ""):
            return value
    return None


def _required(url: ParsedURL, options: dict, key: str) -> str:
    names, env, what = SETTINGS[key]
    value = _setting(url, options, *names, env=env)
    if value is None:
        raise errors.UsageError(f"FirecREST {what} missing: set {env} (or the {names[0]}= option)")
    return value


# What backend_from_url reads from options and the URL query; anything else is a user's typo.
OPTIONS = {"url", "api_url", "token_url", "client_id", "client_secret", "password", "verify", "ca_file", "timeout",
           "max_parallel", "tz", "account"}


def backend_from_url(url: ParsedURL, options: dict):
    """``(FirecrestBackend, root)`` for ``firecrest://SYSTEM/path``; asks ``/status/systems`` for the limits."""
    if not url.host:
        raise errors.UsageError("firecrest:// URL without a system name (expected firecrest://SYSTEM/path)")
    api_url, token_url = _required(url, options, "api"), _required(url, options, "token_url")
    client_id, secret = _required(url, options, "client_id"), _required(url, options, "secret")
    try:
        timeout = float(_setting(url, options, "timeout") or 60)
        max_parallel = int(_setting(url, options, "max_parallel") or 8)
    except ValueError:
        raise errors.UsageError("timeout and max_parallel must be numbers") from None
    session = net.new_session(_setting(url, options, "verify"), _setting(url, options, "ca_file"),
                              pool_size=max(8, 2 * max_parallel))
    auth = ClientCredentials(token_url, client_id, secret, session, timeout)
    client = FirecrestClient(api_url, url.host.lower(), auth, session, timeout)
    tz_name = _setting(url, options, "tz")
    tz = _timezone(tz_name) if tz_name else None
    with client.operation():  # the system list and its limits are server data too
        systems = client.systems()
        info = next((s for s in systems if s.get("name", "").lower() == client.system), None)
        if info is None:
            known = ", ".join(s.get("name", "?") for s in systems) or "none"
            raise errors.UsageError(f"FirecREST at {api_url} has no system '{url.host}' (known: {known})")
        backend = FirecrestBackend(client, info, max_parallel=max_parallel, tz=tz,
                                   account=_setting(url, options, "account"))
    return backend, normalize(url.path)


def _timezone(name: str) -> datetime.tzinfo:
    if name.upper() == "UTC":
        return datetime.timezone.utc
    try:
        from zoneinfo import ZoneInfo

        return ZoneInfo(name)
    except Exception:
        raise errors.UsageError(f"unknown time zone '{name}' (tz= option)") from None
