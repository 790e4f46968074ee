"""The FirecREST v2 REST calls hpcfs needs, with token renewal and error mapping.

Every API request carries ``Authorization: Bearer``, a fresh ``X-Request-ID`` and the ``X-Correlation-ID``
of the filesystem operation it belongs to (both UUIDs: the server answers 400 to anything else).  A 401
renews the token and retries once.  Everything else about repeating requests — 408 (command timeout), 424
(no SSH channel), 429 (gateway rate limit), 503 (failed health probe), the cap on requests in flight and the
circuit breaker — is :mod:`hpcfs.net`'s one policy.  Errors become :mod:`hpcfs.errors` from the status and
the remote stderr the message carries.  Staging URLs (S3) go through the same transport.
"""
import contextlib
import contextvars
import time
import uuid
from typing import BinaryIO, Callable, List, Optional, Tuple

from .. import errors, net
from .auth import TokenSource
from .listing import malformed_data

TERMINAL_STATES = ("BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL", "OUT_OF_MEMORY",
                   "PREEMPTED", "TIMEOUT")
# Job polling: the scheduler's answer costs the cluster an SSH command (about 1 s on the real server).
# Seconds between polls (first, growth, last): for the scheduler alone, and for a cheap sign of the job's
# end (a look at the object store: a short job, 64 MiB staged in 1.5-4 s, is seen within a quarter second
# or so), which asks the scheduler only every SCHEDULER_INTERVAL seconds (to learn of a job that failed).
JOB_POLLS, SIGN_POLLS = net.Schedule(0.01, 2.0, 2.0), net.Schedule(0.2, 1.25, 1.0)
SCHEDULER_INTERVAL = 5.0
QUOTE_REFUSAL = "FirecREST cannot address paths containing ' (the server's shell quoting breaks)"
# remote stderr, as the message of an error body, that says more than the status code
MESSAGE_ERRORS = (
    ("No such file or directory", errors.NotFound),
    ("Not a directory", errors.NotADirectory),
    ("Is a directory", errors.IsADirectory),
    ("File exists", errors.AlreadyExists),
    ("Directory not empty", errors.DirectoryNotEmpty),
    ("Permission denied", errors.PermissionDenied),
    ("Operation not permitted", errors.PermissionDenied),
    ("subdirectory of itself", errors.InvalidPath),
    ("exit status:124", errors.TimedOut),
    ("Channel not open for sending", errors.TooLarge),  # output far above the cap deadlocks the channel
)

_correlation: contextvars.ContextVar = contextvars.ContextVar("firecrest_correlation_id", default=None)


def error_from_message(status: int, message: str, path: Optional[str]) -> errors.HpcfsError:
    detail = message.partition("error message:")[2] or message
    for needle, error in MESSAGE_ERRORS:
        if needle in message:
            return error(detail, path)
    return net.error_for_status(status, f"HTTP {status}: {detail}", path)


def error_from_response(response: net.Response, path: Optional[str]) -> errors.HpcfsError:
    try:
        body = response.json()
        message = body.get("message") or body.get("detail") or ""
    except (ValueError, AttributeError):
        message = response.text[:300]
    return error_from_message(response.status_code, str(message) or response.reason or "", path)


class FirecrestClient:
    """Calls on one system of one FirecREST API.  Thread-safe.

    ``in_flight`` (:func:`hpcfs.net.request_budget`) caps this account's API calls in flight across every
    process of the user on the machine: FirecREST runs each filesystem call over SSH as the account's user,
    and answers 424 when no SSH channel is free.  The client closes it."""

    def __init__(self, api_url: str, system: str, auth: TokenSource, session, timeout: float = 60.0,
                 in_flight: Optional[net.SlotBudget] = None):
        self.api_url = api_url.rstrip("/")
        self.system = system
        self.auth = auth
        self.session = session
        self.timeout = (min(10.0, timeout), timeout)
        self.server_version: Optional[str] = None
        self.in_flight = in_flight

    def close(self) -> None:
        self.session.close()
        if self.in_flight is not None:
            self.in_flight.close()

    @contextlib.contextmanager
    def operation(self, path: Optional[str] = None):
        """One filesystem operation on ``path``: requests made inside share one ``X-Correlation-ID`` (nested
        operations keep the outer one), and a malformed answer met inside is a ProtocolError naming ``path``."""
        token = _correlation.set(_correlation.get() or str(uuid.uuid4()))
        try:
            with malformed_data("answer", path):
                yield
        finally:
            _correlation.reset(token)

    # -- one API call ---------------------------------------------------------------------------------
    def request(self, method: str, endpoint: str, path: Optional[str] = None, expect=(200,),
                idempotent: bool = True, timeout=None, **kwargs) -> net.Response:
        """One API call.  ``path`` names the file in errors; ``idempotent`` allows repeating a time-out."""
        extra_headers = kwargs.pop("headers", {})
        used = []  # the token of each try: a 401 discards the one it refused

        def send() -> net.Response:
            used.append(self.auth.token())
            headers = {"Authorization": f"Bearer {used[-1]}", "X-Request-ID": str(uuid.uuid4()),
                       "X-Correlation-ID": _correlation.get() or str(uuid.uuid4()), **extra_headers}
            response = net.send(self.session, method, f"{self.api_url}{endpoint}", idempotent=idempotent,
                                timeout=timeout or self.timeout, path=path, what=f"{method} {endpoint}",
                                budget=self.in_flight, headers=headers, **kwargs)
            self.server_version = response.headers.get("F7T-AppVersion", self.server_version)
            return response

        response = net.renew_and_replay(send, (401,), lambda: self.auth.discard(used[-1]))
        if response.status_code in expect:
            return response
        raise error_from_response(response, path)

    def _fs(self, kind: str, operation: str) -> str:
        return f"/filesystem/{self.system}/{kind}/{operation}"

    # -- status and ops -------------------------------------------------------------------------------
    def systems(self) -> List[dict]:
        return self.request("GET", "/status/systems").json()["systems"]

    def ls(self, path: str) -> List[dict]:
        params = {"path": _addressable(path), "showHidden": "true", "numericUid": "true"}
        return self.request("GET", self._fs("ops", "ls"), path, params=params).json()["output"]

    def stat(self, path: str, dereference: bool = False) -> dict:
        params = {"path": _addressable(path), "dereference": str(dereference).lower()}
        return self.request("GET", self._fs("ops", "stat"), path, params=params).json()["output"]

    def checksum(self, path: str) -> str:
        """The SHA-256 ``sha256sum`` gives on the cluster.  A file too big to hash within the server's command
        timeout answers 408 every time, so a time-out is not repeated."""
        params = {"path": _addressable(path)}
        output = self.request("GET", self._fs("ops", "checksum"), path, params=params, idempotent=False).json()
        return str(output["output"]["checksum"]).lower()

    def view(self, path: str) -> str:
        return self.request("GET", self._fs("ops", "view"), path, params={"path": _addressable(path)}).json()["output"]

    def download(self, path: str, sink: BinaryIO):
        response = self.request("GET", self._fs("ops", "download"), path, params={"path": _addressable(path)},
                                stream=True)
        net.stream_into(response, sink, "download", path)

    def upload(self, directory: str, filename: str, data: bytes, timeout=None, retry_timeouts: bool = True):
        """``ops/upload`` (replaces an existing file).  The multipart header quotes the name as RFC 2045
        does, which the server's parser undoes exactly (requests' own encoding mangles ``"``)."""
        _addressable(f"{directory}/{filename}")
        boundary = uuid.uuid4().hex
        quoted = filename.replace("\\", "\\\\").replace('"', '\\"')
        body = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{quoted}"\r\n'
                f"Content-Type: application/octet-stream\r\n\r\n").encode("utf-8", "surrogateescape")
        body += data + f"\r\n--{boundary}--\r\n".encode()
        self.request("POST", self._fs("ops", "upload"), f"{directory}/{filename}", expect=(204,),
                     idempotent=retry_timeouts, timeout=timeout, params={"path": directory}, data=body,
                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})

    def mkdir(self, path: str, parents: bool = False):
        self.request("POST", self._fs("ops", "mkdir"), path, expect=(201,), idempotent=False,
                     json={"sourcePath": _addressable(path), "parent": parents})

    def symlink(self, target: str, link: str):
        self.request("POST", self._fs("ops", "symlink"), link, expect=(201,), idempotent=False,
                     json={"sourcePath": _addressable(target), "linkPath": _addressable(link)})

    def chmod(self, path: str, mode: int):
        self.request("PUT", self._fs("ops", "chmod"), path, json={"sourcePath": _addressable(path),
                                                                   "mode": f"{mode & 0o7777:o}"})

    def rm(self, path: str):
        """``rm -r``: recursive on the server, so callers check what they delete."""
        self.request("DELETE", self._fs("ops", "rm"), path, expect=(204,), params={"path": _addressable(path)})

    # -- transfer jobs --------------------------------------------------------------------------------
    def transfer_download(self, path: str, account: Optional[str]) -> Tuple[dict, str]:
        """Stage ``path`` to S3: (transfer job, download URL)."""
        body = _with_account({"sourcePath": _addressable(path), "transferDirectives": {"transferMethod": "s3"}},
                             account)
        reply = self.request("POST", self._fs("transfer", "download"), path, expect=(201,), json=body).json()
        return reply["transferJob"], reply["transferDirectives"]["downloadUrl"]

    def transfer_upload(self, path: str, size: int, account: Optional[str]) -> Tuple[dict, dict]:
        """Open a staged upload: (transfer job, directives with part URLs, completion URL, part size)."""
        body = _with_account({"sourcePath": _addressable(path),
                              "transferDirectives": {"transferMethod": "s3", "fileSize": size}}, account)
        reply = self.request("POST", self._fs("transfer", "upload"), path, expect=(201,), idempotent=False,
                             json=body).json()
        return reply["transferJob"], reply["transferDirectives"]

    def streamer_transfer(self, direction: str, path: str, account: Optional[str]) -> Tuple[dict, str]:
        """Start a streamer job that sends (``direction`` "download") or receives ("upload") ``path``:
        (transfer job, coordinates)."""
        body = _with_account({"sourcePath": _addressable(path),
                              "transferDirectives": {"transferMethod": "streamer"}}, account)
        reply = self.request("POST", self._fs("transfer", direction), path, expect=(201,), idempotent=False,
                             json=body).json()
        return reply["transferJob"], reply["transferDirectives"]["coordinates"]

    def mv(self, source: str, target: str, account: Optional[str]) -> dict:
        body = _with_account({"sourcePath": _addressable(source), "targetPath": _addressable(target)}, account)
        reply = self.request("POST", self._fs("transfer", "mv"), source, expect=(201,), idempotent=False, json=body)
        return reply.json()["transferJob"]

    def cp(self, source: str, target: str, account: Optional[str]) -> dict:
        """``cp --force -R -d --preserve=all`` as a transfer job on the cluster."""
        body = _with_account({"sourcePath": _addressable(source), "targetPath": _addressable(target),
                              "dereference": False}, account)
        reply = self.request("POST", self._fs("transfer", "cp"), source, expect=(201,), idempotent=False, json=body)
        return reply.json()["transferJob"]

    def wait_for_job(self, job: dict, deadline: float, visibility_grace: float = 30.0,
                     work_done: Optional[Callable[[], bool]] = None) -> bool:
        """Poll ``/compute/{system}/jobs/{id}`` until the job ends (a new job may be unknown for a while):
        True.  ``work_done`` is a cheaper sign that the job's work is done (a staged object that is there),
        asked at every poll, the scheduler then only every ``SCHEDULER_INTERVAL`` seconds (each of its
        answers costs the cluster an SSH command): False when it said so first."""
        job_id = job["jobId"]
        first_seen_deadline = time.monotonic() + visibility_grace
        schedule, interval = (SIGN_POLLS, SCHEDULER_INTERVAL) if work_done else (JOB_POLLS, 0.0)
        next_ask = time.monotonic() + interval

        def ended() -> Optional[bool]:
            nonlocal next_ask
            if work_done is not None and work_done():
                return False
            if time.monotonic() >= next_ask:
                next_ask = time.monotonic() + interval
                try:
                    if _ended(self.job_info(job)):
                        return True
                except errors.NotFound:
                    if time.monotonic() > first_seen_deadline:
                        raise errors.NotFound(f"transfer job {job_id} never appeared in the scheduler") from None
            return None

        return net.until(ended, schedule, deadline,
                         lambda: errors.TimedOut(f"transfer job {job_id} did not finish in time"))

    def job_info(self, job: dict) -> dict:
        return self.request("GET", f"/compute/{self.system}/jobs/{job['jobId']}",
                            params={"allusers": "false"}).json()["jobs"][0]

    def job_ended(self, job: dict) -> bool:
        """Whether ``job`` has ended (a job the scheduler does not show yet has not)."""
        try:
            return _ended(self.job_info(job))
        except errors.NotFound:
            return False

    def cancel_job(self, job: dict):
        """Best effort: a job left behind (an upload job waiting for parts that never come) is cancelled."""
        try:
            self.request("DELETE", f"/compute/{self.system}/jobs/{job['jobId']}", expect=(204,))
        except errors.HpcfsError:
            pass

    # -- staging area (presigned URLs, no FirecREST headers) -----------------------------------------
    def staged_range(self, url: str, offset: int, length: int) -> bytes:
        """Bytes ``[offset, offset+length)`` of a staged object; short or empty at its end.  At most
        ``length`` bytes are held: a server that ignores ``Range`` (200 and the whole object) is read up to
        the range's end and the connection dropped."""
        response = self._staging("GET", url, headers={"Range": f"bytes={offset}-{offset + length - 1}"},
                                 stream=True)
        with response:
            if response.status_code == 416:
                return b""
            return _read_span(response, offset if response.status_code == 200 else 0, length)

    def staged_pieces(self, url: str, offset: int, length: int, piece_size: int,
                      deliver: Callable[[bytearray], None]) -> None:
        """Bytes ``[offset, offset+length)`` of a staged object by one streamed ranged GET, handed to
        ``deliver`` in pieces of ``piece_size`` (the last shorter; fewer at the object's end)."""
        with contextlib.closing(self.open_staged(url, offset, length)) as stream:
            stream.pieces(length, piece_size, deliver)

    def open_staged(self, url: str, offset: int, length: Optional[int] = None) -> "StagedStream":
        """A streamed GET of a staged object from ``offset``: ``length`` bytes, or (None) on to its end, to
        be read on in order by successive ranges."""
        last = "" if length is None else offset + length - 1
        response = self._staging("GET", url, headers={"Range": f"bytes={offset}-{last}"}, stream=True)
        return StagedStream(response, offset)

    def staged_object_size(self, url: str) -> Optional[int]:
        """The size of the staged object, None while it is not there.  The staging job uploads it as one S3
        multipart upload, which the store shows only once complete: found means whole.  Not found (404, or
        403 from a store that hides missing keys from a presigned URL) means not yet.  One byte is asked for."""
        response = self._staging("GET", url, headers={"Range": "bytes=0-0"}, stream=True, absent=(403, 404))
        with response:
            if response.status_code in (403, 404):
                return None
            total = response.headers.get("Content-Range", "").rpartition("/")[2]  # "bytes 0-0/SIZE", "bytes */0"
            return int(total) if total.isdigit() else int(response.headers.get("Content-Length", 0))

    def staged_stream(self, url: str, sink: BinaryIO):
        net.stream_into(self._staging("GET", url, stream=True), sink, "staged download")

    def put_part(self, url: str, body) -> str:
        return self._staging("PUT", url, data=body).headers["ETag"]

    def complete_upload(self, url: str, etags: List[str]):
        parts = "".join(f"<Part><PartNumber>{number}</PartNumber><ETag>{etag}</ETag></Part>"
                        for number, etag in enumerate(etags, 1))
        self._staging("POST", url, data=f"<CompleteMultipartUpload>{parts}</CompleteMultipartUpload>".encode())

    def _staging(self, method: str, url: str, absent: Tuple[int, ...] = (), **kwargs) -> net.Response:
        """A presigned URL: no FirecREST headers.  A part (PUT) is sent once: its body is a stream.
        ``absent``: statuses the caller takes as "no object (yet)" rather than as errors."""
        response = net.send(self.session, method, url, idempotent=method == "GET", timeout=self.timeout,
                            replayable=method != "PUT", what=f"staging area {method}", **kwargs)
        if response.status_code in (200, 204, 206, 416, *absent):
            return response
        if response.status_code == 403:
            raise StagingExpired(f"staging area refused {method}: {response.text[:200]}")
        raise errors.HpcfsError(f"staging area answered {response.status_code} to {method}")


class StagedStream:
    """An open GET of a staged object, at ``position``; ``ended`` once the object's end is reached.  A
    server that ignores ``Range`` (200, the whole object) is read past the offset without keeping those bytes."""

    def __init__(self, response: net.Response, offset: int):
        self._response, self.position = response, offset
        total = response.headers.get("Content-Range", "").rpartition("/")[2]  # "bytes 5-9/SIZE", "bytes */SIZE"
        self._size = int(total) if total.isdigit() else None
        self.ended = response.status_code == 416
        if response.status_code == 200:
            self._size = int(response.headers.get("Content-Length", 0)) or None
            with _reading():
                _skip(response.raw, offset)

    def pieces(self, length: int, piece_size: int, deliver: Callable[[bytearray], None]) -> None:
        """The next ``length`` bytes handed to ``deliver`` in pieces of ``piece_size`` (fewer at the end)."""
        with _reading():
            for start in range(0, 0 if self.ended else length, piece_size):
                wanted = min(piece_size, length - start)
                piece = _read_exactly(self._response.raw, wanted)
                self.position += len(piece)
                if piece:
                    deliver(piece)
                if len(piece) < wanted:
                    self.ended = True
                    return
        self.ended = self._size is not None and self.position >= self._size

    def close(self) -> None:
        self._response.close()


@contextlib.contextmanager
def _reading():
    try:
        yield
    except net.STREAM_ERRORS as exc:
        raise _broken("staged range read", exc) from None


class StagingExpired(errors.PermissionDenied):
    """A presigned URL that is no longer valid (its ``ttl`` passed): stage again."""


def _read_span(response: net.Response, skip: int, length: int) -> bytes:
    """``length`` bytes of a streamed body after its first ``skip`` bytes; the rest is never read."""
    wanted = bytearray()
    try:
        for chunk in response.iter_content(1 << 20):
            if skip >= len(chunk):
                skip -= len(chunk)
                continue
            wanted += chunk[skip:skip + length - len(wanted)]
            skip = 0
            if len(wanted) >= length:
                break
    except net.RequestException as exc:
        raise _broken(f"ranged read (after {len(wanted)} bytes)", exc) from None
    return bytes(wanted)


def _read_exactly(raw, size: int) -> bytearray:
    """``size`` bytes of a streamed body into one buffer (fewer only at its end)."""
    piece, filled = bytearray(size), 0
    view = memoryview(piece)
    while filled < size:
        got = raw.readinto(view[filled:])
        if not got:
            del view
            del piece[filled:]
            break
        filled += got
    return piece


def _skip(raw, count: int):
    while count > 0:
        skipped = len(raw.read(min(count, 1 << 20)))
        if not skipped:
            return
        count -= skipped


def _broken(what: str, exc: Exception, path: Optional[str] = None) -> errors.ProtocolError:
    return errors.ProtocolError(f"{what}: the server's reply broke off ({type(exc).__name__})", path)


def _ended(info: dict) -> bool:
    return all(state in TERMINAL_STATES for state in str(info["status"]["state"]).split(","))


def _addressable(path: str) -> str:
    if "'" in path:
        raise errors.InvalidPath(QUOTE_REFUSAL, path)
    return path


def _with_account(body: dict, account: Optional[str]) -> dict:
    if account:
        body["account"] = account
    return body
