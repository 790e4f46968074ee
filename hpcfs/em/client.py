"""The EM API on the wire: JWT login and renewal, one request at a time per account, 423 back-off, drift.

The service answers a second concurrent request of an account with ``423 LOCKED``, so every request of
one client -- logins included -- goes through one lock.  Access tokens are renewed through
``/auth/refresh`` shortly before they expire; when that fails the client logs in again, and a ``401``
from an ``/em`` endpoint triggers one fresh login and one replay.  The API changed between versions
(``pod_name`` became ``pvc_name``, listings moved from GET to POST): volume names are sent under both
keys and a 405 switches the method for good.  Any 2xx is success; error bodies may be HTML.
"""
import functools
import html
import io
import json
import math
import re
import shutil
import tempfile
import threading
import time
import uuid
from typing import Any, BinaryIO, Callable, Dict, Iterable, List, Optional, Tuple, Union, cast

import jwt

from .. import errors, net

DEFAULT_VOLUME = "_default"  # the tree's name for the volume used when no pod name is sent
POD_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")  # a Kubernetes (DNS-1123) label
HTTP_METHODS = ("GET", "POST")
# what the EM API means by these statuses, where the shared map says otherwise: 405 is a method this API
# version moved (see _query), and the proxy in front of Django answers 502-504 while it is down
STATUS_MEANINGS = {405: errors.NotSupported, 502: errors.Unavailable, 503: errors.Unavailable, 504: errors.Unavailable}


def is_pod_name(name: str) -> bool:
    return bool(POD_NAME.match(name))


def volume_params(volume: str) -> dict:
    """How a request names a volume: nothing for the default one, else both spellings of the API."""
    return {} if volume == DEFAULT_VOLUME else {"pod_name": volume, "pvc_name": volume}


def can_upload_name(name: str) -> bool:
    """Whether the server keeps this file name intact (Django drops path separators and unprintables)."""
    return bool(name) and name not in (".", "..") and "\\" not in name and "/" not in name and name.isprintable()


def token_expiry(token: str) -> Tuple[Optional[float], Optional[float]]:
    """``(exp, lifetime)`` read from a JWT without checking its signature; ``(None, None)`` if opaque or
    unreadable (renewal then waits for the server's 401)."""
    try:
        claims = jwt.decode(token, options={"verify_signature": False})  # the server's key is not ours to know
        expiry = float(claims["exp"])
        lifetime = expiry - float(claims.get("iat", expiry))
    except (jwt.PyJWTError, AttributeError, KeyError, OverflowError, RecursionError, TypeError, ValueError):
        return None, None
    return (expiry, lifetime) if math.isfinite(lifetime) else (None, None)


def describe_failure(response: net.Response) -> Tuple[str, str]:
    """``(error code, message)`` from an error body: the API's envelope, DRF's detail, or an HTML page."""
    try:
        body = response.json()
    except net.UNREADABLE_JSON:
        body = None
    if isinstance(body, dict):
        code = str(body.get("error") or body.get("code") or "")
        message = body.get("message") or body.get("detail") or code or json.dumps(body)[:200]
        return code, str(message)
    text = re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]*>", " ", response.text or ""))).strip()
    return "", text[:200] or response.reason or "no explanation"


# a piece of a multipart body: bytes, or a file part's source and size, copied on demand
Segment = Union[bytes, Tuple[BinaryIO, int]]


class MultipartBody:
    """A multipart/form-data body streamed from the sources, with a known length (no 2 GB in memory).

    requests sends an object with ``read``, ``__iter__`` and ``__len__`` as a stream with Content-Length.
    """

    def __init__(self, fields: Iterable[Tuple[str, str]], files: Iterable[Tuple[str, BinaryIO, int]]):
        self.boundary = uuid.uuid4().hex
        self._segments: List[Segment] = []
        for name, value in fields:
            self._segments.append(self._head(f'name="{name}"') + value.encode() + b"\r\n")
        for filename, source, size in files:
            quoted = html.escape(filename, quote=True)  # Django html-unescapes part file names
            self._segments += [self._head(f'name="files"; filename="{quoted}"', True), (source, size), b"\r\n"]
        self._segments.append(f"--{self.boundary}--\r\n".encode())
        self._length = sum(len(s) if isinstance(s, bytes) else s[1] for s in self._segments)
        self._current: Union[io.BytesIO, Tuple[BinaryIO, int], None] = None

    @property
    def content_type(self) -> str:
        return f"multipart/form-data; boundary={self.boundary}"

    def _head(self, disposition: str, is_file: bool = False) -> bytes:
        kind = "Content-Type: application/octet-stream\r\n" if is_file else ""
        return f"--{self.boundary}\r\nContent-Disposition: form-data; {disposition}\r\n{kind}\r\n".encode()

    def __len__(self):
        return self._length

    def __iter__(self):
        return iter(lambda: self.read(1 << 20), b"")

    def read(self, size: int = -1) -> bytes:
        size = self._length if size is None or size < 0 else size
        out = bytearray()
        while len(out) < size and (self._current is not None or self._segments):
            if self._current is None:
                segment = self._segments.pop(0)
                self._current = io.BytesIO(segment) if isinstance(segment, bytes) else segment
            out += self._read_current(size - len(out))
        return bytes(out)

    def _read_current(self, wanted: int) -> bytes:
        if self._current is None:
            return b""
        if isinstance(self._current, io.BytesIO):
            chunk = self._current.read(wanted)
            if not chunk:
                self._current = None
            return chunk
        source, remaining = self._current
        chunk = source.read(min(wanted, remaining)) if remaining else b""
        if remaining and not chunk:
            raise errors.ProtocolError(f"upload source ended {remaining} bytes early")
        remaining -= len(chunk)
        self._current = (source, remaining) if remaining else None
        return chunk


def _busy_is_423(outcome: Union[net.Response, Exception]) -> net.Verdict:
    """423 LOCKED: this account's one request slot is taken; anything else is the answer (or the error)."""
    return net.Verdict.BACK_OFF if isinstance(outcome, net.Response) and outcome.status_code == 423 \
        else net.Verdict.DONE


class EMClient:
    """Authenticated, serialized calls to one EM API account."""

    def __init__(
        self,
        base_url: str,
        username: str,
        password: str,
        *,
        verify=True,
        timeout: float = 60.0,
        connect_timeout: float = 10.0,
        upload_timeout: float = 7200.0,
        busy_timeout: float = 120.0,
        first_backoff: float = 0.5,
        max_backoff: float = 16.0,
    ):
        self.base_url = base_url.rstrip("/")
        self.username = username
        self._password = password
        self.timeout, self.connect_timeout, self.upload_timeout = timeout, connect_timeout, upload_timeout
        self.busy_timeout, self.first_backoff, self.max_backoff = busy_timeout, first_backoff, max_backoff
        self._session = net.new_session(verify)
        self._lock = threading.RLock()  # one request in flight per account: the server says 423 otherwise
        self._access: Optional[str] = None
        self._refresh: Optional[str] = None
        self._access_renew_at: Optional[float] = None
        self._refresh_expiry: Optional[float] = None
        self._methods: Dict[str, str] = {}  # endpoint -> the HTTP method this server accepted
        self.has_volume_list: Optional[bool] = None  # whether /em/pvc/list exists here (None: not asked yet)

    def __repr__(self):
        return f"EMClient({self.base_url!r}, user={self.username!r})"

    # -- file operations --------------------------------------------------------------------------------
    def list_files(self, volume: str) -> list:
        """The volume's whole tree as the server gives it (``data`` of the listing)."""
        return self._data(self._query("/em/files/list", volume_params(volume), f"/{volume}"), f"/{volume}")

    def list_volumes(self) -> Optional[list]:
        """Names from ``/em/pvc/list``, or None where the server has no such endpoint."""
        if self.has_volume_list is False:
            return None
        try:
            response = self._query("/em/pvc/list", {}, "/")
        except (errors.NotFound, errors.NotSupported):
            self.has_volume_list = False
            return None
        self.has_volume_list = True
        return self._data(response, "/")

    def download(self, volume: str, path: str, sink: BinaryIO) -> int:
        """Stream the whole file into ``sink``; returns the byte count.  Holds the account while streaming."""
        where = f"/{volume}/{path}"
        params = {"filepath": path, **volume_params(volume)}
        with self._lock:
            response = self._call("GET", "/em/files/downlink", where, params=params, stream=True)
            return net.stream_into(response, sink, "download", where, url=self.base_url)

    def upload(self, volume: str, directory: str, files: List[Tuple[str, BinaryIO, int]]) -> None:
        """One uplink call: ``files`` (name, seekable source, size) into ``directory`` ('' = volume root)."""
        where = f"/{volume}/{directory}".rstrip("/")
        fields = list(volume_params(volume).items()) + ([("dest_path", directory)] if directory else [])
        starts = [source.tell() for _, source, _ in files]

        def body() -> MultipartBody:  # a replay after 401 or 423 sends the sources again from the start
            for (_, source, _), start in zip(files, starts):
                source.seek(start)
            return MultipartBody(fields, files)

        self._call("POST", "/em/files/uplink", where, body=body, timeout=self.upload_timeout).close()

    def delete(self, volume: str, path: str) -> None:
        """Delete a file, or a folder with everything in it."""
        where = f"/{volume}/{path}"
        try:
            self._call("POST", "/em/files/delete", where, data={"filepath": path, **volume_params(volume)}).close()
        except errors.InvalidPath:  # the service's only answer for "nothing there"
            raise errors.NotFound("no such file or directory on the server", where) from None

    def close(self):
        self._session.close()

    # -- requests ---------------------------------------------------------------------------------------
    def _query(self, endpoint: str, params: dict, where: str, methods=HTTP_METHODS) -> net.Response:
        """A read-only call whose method drifted between API versions: try the known one, then the other."""
        preferred = self._methods.get(endpoint, methods[0])
        for method in (preferred,) + tuple(m for m in methods if m != preferred):
            arguments: Dict[str, Any] = {"params": params} if method == "GET" else {"data": params}
            response = self._call(method, endpoint, where, passthrough=(405,), **arguments)
            if response.status_code != 405:
                self._methods[endpoint] = method
                return response
            response.close()
        raise errors.NotSupported(f"the server refuses both GET and POST on {endpoint}", where)

    def _call(self, method: str, endpoint: str, where: str, *, passthrough=(), body: Optional[Callable] = None,
              timeout: Optional[float] = None, **arguments) -> net.Response:
        """One authenticated exchange: renew the token if due, replay once after a 401, retry 423s."""
        with self._lock:
            send = functools.partial(self._send, method, endpoint, where, body=body, timeout=timeout, **arguments)
            response = net.renew_and_replay(lambda: self._until_not_busy(send, where), (401,), self._login)
            return net.accepted(response, lambda failed: self._failure(failed, where), passthrough)

    def _send(self, method, endpoint, where, *, body=None, timeout=None, authenticate=True, **arguments):
        headers = {}
        if authenticate:
            headers["Authorization"] = f"Bearer {self._access_token()}"
        if body is not None:
            multipart = body()
            headers["Content-Type"] = multipart.content_type
            arguments["data"] = multipart
        # GETs only read; a body built by ``body`` is a stream, so only this client's 423 loop replays it
        return net.send(self._session, method, self.base_url + endpoint, idempotent=method == "GET",
                        replayable=body is None, timeout=(self.connect_timeout, timeout or self.timeout),
                        path=where, what=f"{method} {endpoint}", headers=headers, **arguments)

    def _until_not_busy(self, send: Callable[[], net.Response], where: str) -> net.Response:
        """Retry ``423 LOCKED`` with exponential back-off and jitter, for at most ``busy_timeout`` seconds.

        Paced by :mod:`hpcfs.net`'s pacer outside ``net.send``'s server policy: a 423 says this account's one
        request slot is taken (by another client), not that the server is unhealthy, so it must neither
        pause nor trip the breaker for others; and a replay rebuilds the streamed upload body, which
        ``net.send`` sends once."""
        def stayed_busy(response: net.Response) -> net.Response:
            response.close()
            raise errors.Busy(f"the EM stayed busy (423 LOCKED) for {self.busy_timeout:g} s", where)

        schedule = net.Schedule(self.first_backoff, growth=2.0, longest=self.max_backoff, jitter=0.5)
        return net.retry(send, _busy_is_423, schedule, deadline=time.monotonic() + self.busy_timeout,
                         discard=net.Response.close, exhausted=stayed_busy)

    @staticmethod
    def _failure(response: net.Response, where: str) -> errors.HpcfsError:
        code, message = describe_failure(response)
        text = f"{message} (HTTP {response.status_code})"
        status = response.status_code
        if status == 400 and code == "MAX_UPLINK_SIZE_EXCEEDED":
            return errors.TooLarge(text, where)
        return net.error_for_status(status, text, where, STATUS_MEANINGS)

    @staticmethod
    def _data(response: net.Response, where: str):
        body = net.json_body(response, where)
        if not isinstance(body, dict) or "data" not in body:
            raise errors.ProtocolError("the server's answer has no 'data' envelope", where)
        return body["data"]

    # -- tokens -----------------------------------------------------------------------------------------
    def _access_token(self) -> str:
        """A token that will not expire in the next moments: renewed via refresh, else a new login."""
        now = time.time()
        if self._access is None or (self._access_renew_at is not None and now >= self._access_renew_at):
            if not (self._refresh and (self._refresh_expiry is None or now < self._refresh_expiry) and self._renew()):
                self._login()
        assert self._access is not None  # _login and _renew set it, or raise
        return self._access

    def _login(self):
        response = self._until_not_busy(lambda: self._send(
            "POST", "/auth/", "/", authenticate=False,
            data={"username": self.username, "password": self._password}), "/")
        if response.status_code in (400, 401, 403):
            response.close()
            raise errors.AuthenticationFailed(f"the EM API refused the login of user {self.username}")
        tokens = self._tokens(response)
        refresh = tokens.get("refresh")
        self._refresh = refresh if isinstance(refresh, str) else None  # without one, renewal is a new login
        self._refresh_expiry = token_expiry(self._refresh)[0] if self._refresh else None
        self._set_access(tokens)

    def _renew(self) -> bool:
        """Exchange the refresh token for a new access token; False when the server refuses."""
        response = self._until_not_busy(lambda: self._send(
            "POST", "/auth/refresh", "/", authenticate=False, json={"refresh": self._refresh}), "/")
        if 200 <= response.status_code < 300:
            try:
                self._set_access(self._tokens(response))
                return True
            except errors.ProtocolError:  # an unreadable answer: a fresh login may still work
                pass
        response.close()  # whatever the reason, a fresh login is the way on
        self._refresh = None
        return False

    def _set_access(self, tokens: dict):
        access: str = tokens["access"]
        expiry, lifetime = token_expiry(access)
        self._access = access
        # renew a little early: 30 s, or a quarter of a short lifetime
        self._access_renew_at = (None if expiry is None or lifetime is None
                                 else expiry - min(30.0, max(lifetime, 0.0) / 4))

    def _tokens(self, response: net.Response) -> dict:
        if not 200 <= response.status_code < 300:
            try:
                raise self._failure(response, "/")
            finally:
                response.close()
        try:
            tokens = response.json()
            if not isinstance(tokens.get("access"), str):
                raise ValueError
            return tokens
        except (*net.UNREADABLE_JSON, AttributeError):
            raise errors.ProtocolError("the authentication answer holds no access token") from None
        finally:
            response.close()


def seekable_copy(source: BinaryIO) -> BinaryIO:
    """``source`` itself if it can be rewound for a replay, else a spooled copy that can."""
    try:
        source.tell()
        if source.seekable():
            return source
    except (AttributeError, OSError):
        pass
    spool = tempfile.SpooledTemporaryFile(max_size=8 << 20)
    shutil.copyfileobj(source, spool)
    spool.seek(0)
    return cast(BinaryIO, spool)
