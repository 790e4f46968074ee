"""One UNICORE/X storage on the wire: the ``.../rest/core/storages/NAME`` endpoints PyUNICORE's ``Storage`` and
``PathFile`` use (pyunicore/client.py), and nothing else.

- ``GET  files/PATH`` with ``Accept: application/json``: the path's properties (``isDirectory``, ``size``,
  ``lastAccessed``, ``permissions``); a directory's also hold ``content``, ``{"/dir/name": {properties}}``;
- ``GET  files/PATH`` with ``Accept: application/octet-stream``: the bytes; ``Range: bytes=A-B`` for a part
  (PathFile.raw);
- ``PUT  files/PATH`` with ``Content-Type: application/octet-stream``: create or replace (Storage.put);
- ``POST files/PATH`` with ``{}``: make a directory (Storage.mkdir);
- ``DELETE files/PATH``: remove a file, or a directory *with everything in it* (Storage.rm/rmdir);
- ``POST`` to the storage's ``action:rename`` link with ``{"from", "to"}`` (Storage.rename).

Errors carry ``{"errorMessage": ...}`` (Transport.check_error).  Credentials are HTTP Basic or a bearer token
(pyunicore.credentials), the same classes the UFTP Auth client sends, so UNICORE's two REST services share them.
"""
import threading
from typing import BinaryIO, Dict, Iterator, List, Optional, Union
from urllib.parse import quote

from .. import errors, net
from ..uftp.auth import Credential

JSON, OCTETS = "application/json", "application/octet-stream"
# 432: UNICORE's "security session expired"; without sessions it is a refusal of the credentials
STATUS_MEANINGS = {432: errors.AuthenticationFailed, 502: errors.Unavailable, 504: errors.Unavailable}

class SizedBody:
    """Exactly ``size`` bytes of ``source`` as a request body requests streams (``__len__`` gives its
    Content-Length); a source that ends early is an error, never a short file on the server."""

    def __init__(self, source: BinaryIO, size: int, where: str):
        self.source, self.remaining, self.where, self._size = source, size, where, size

    def __len__(self) -> int:
        return self._size

    def read(self, wanted: int = -1) -> bytes:
        wanted = self.remaining if wanted is None or wanted < 0 else min(wanted, self.remaining)
        chunk = self.source.read(wanted) if wanted else b""
        if wanted and not chunk:
            raise errors.HpcfsError(f"the source ended {self.remaining} bytes short of {self._size}", self.where)
        self.remaining -= len(chunk)
        return chunk

class UnicoreClient:
    """Calls to one storage of a UNICORE/X site; thread-safe (one pooled session, no per-call state)."""

    def __init__(self, storage_url: str, credential: Credential, *, verify: Union[bool, str] = True,
                 timeout: float = 60.0, upload_timeout: float = 7200.0, pool_size: int = 16):
        self.storage_url = storage_url.rstrip("/")
        self.credential = credential
        self.timeout, self.upload_timeout = timeout, upload_timeout
        self._session = net.new_session(verify, pool_size=pool_size)
        self._links: Optional[Dict[str, str]] = None
        self._lock = threading.Lock()

    def __repr__(self):
        return f"UnicoreClient({self.storage_url!r}, {self.credential!r})"

    # -- the storage ------------------------------------------------------------------------------------
    def storage_properties(self) -> dict:
        return self._json("GET", self.storage_url, "/")

    def link(self, name: str, fallback: str) -> str:
        """The storage's ``_links`` entry ``name`` (as PyUNICORE finds ``action:rename``), else ``fallback``."""
        with self._lock:
            if self._links is None:
                links = self.storage_properties().get("_links")
                self._links = {key: value["href"] for key, value in (links or {}).items()
                               if isinstance(value, dict) and isinstance(value.get("href"), str)}
            return self._links.get(name) or self.storage_url + fallback

    # -- files ------------------------------------------------------------------------------------------
    def properties(self, path: str) -> dict:
        """``GET files/PATH`` as JSON: a file's properties, or a directory's with its ``content``."""
        body = self._json("GET", self.file_url(path), path)
        if not isinstance(body, dict):
            raise errors.ProtocolError("the server's file properties are not an object", path)
        return body

    def open_range(self, path: str, offset: int, length: Optional[int]) -> net.Response:
        """The bytes from ``offset`` (``length`` of them, or to the end), streamed: the caller reads and
        closes the response.  A 416 (nothing at or after ``offset``) comes back for the caller to treat as end
        of file; a server that ignores Range answers 200 with the whole file."""
        headers = {"Accept": OCTETS}
        if offset or length is not None:
            headers["Range"] = f"bytes={offset}-{'' if length is None else offset + length - 1}"
        return self._request("GET", self.file_url(path), path, headers=headers, stream=True, passthrough=(416,))

    def upload(self, path: str, source: BinaryIO, size: int) -> None:
        """``PUT files/PATH``: ``size`` bytes of ``source`` become the file (created or replaced)."""
        body = SizedBody(source, size, path)
        self._request("PUT", self.file_url(path), path, headers={"Content-Type": OCTETS}, data=body,
                      replayable=False, timeout=self.upload_timeout).close()

    def mkdir(self, path: str) -> None:
        self._request("POST", self.file_url(path), path, json={}).close()

    def delete(self, path: str) -> None:
        """Removes a file, or a directory with everything below it (the server recurses)."""
        self._request("DELETE", self.file_url(path), path).close()

    def rename(self, source: str, target: str) -> None:
        self._request("POST", self.link("action:rename", "/actions/rename"), source,
                      json={"from": source, "to": target}).close()

    def file_url(self, path: str) -> str:
        """``.../files/PATH`` as PyUNICORE's ``_to_file_url`` builds it (no trailing slash; ``/`` is ``/files``),
        each segment percent-encoded so names with ``#``, ``?`` or ``%`` reach the server intact."""
        return self.storage_url + "/files" + quote(path.rstrip("/"), safe="/")

    def close(self) -> None:
        self._session.close()

    # -- requests ---------------------------------------------------------------------------------------
    def _json(self, method: str, url: str, where: str, **arguments):
        return net.json_body(self._request(method, url, where, **arguments), where)

    def _request(self, method: str, url: str, where: str, *, headers: Optional[dict] = None,
                 passthrough=(), replayable: bool = True, timeout: Optional[float] = None,
                 **arguments) -> net.Response:
        authorizations: List[str] = []  # the Authorization of each try

        def send() -> net.Response:
            authorizations.append(self.credential.header())
            sent = {"Accept": JSON, "Authorization": authorizations[-1], **(headers or {})}
            # GETs only read; DELETE and PUT of the same path are idempotent too, POSTs (mkdir, rename) are not
            return net.send(self._session, method, url, idempotent=method in ("GET", "PUT", "DELETE"),
                            replayable=replayable, timeout=(10.0, timeout or self.timeout), path=where,
                            what=f"{method} {_shown(url, self.storage_url)}", headers=sent, **arguments)

        # a 401 did nothing, so any request is replayed once with a renewed token -- one whose body can be sent again
        response = net.renew_and_replay(send, (401,), lambda: self.credential.renew(authorizations[0]),
                                        may_renew=lambda _: replayable and self.credential.renewable)
        return net.accepted(response, lambda failed: self._failure(failed, where), passthrough)

    def _failure(self, response: net.Response, where: str) -> errors.HpcfsError:
        try:
            body = response.json()
            message = body.get("errorMessage") if isinstance(body, dict) else None
        except net.UNREADABLE_JSON:
            message = None
        text = str(message or response.reason or "no reason given")[:200]
        for secret in self.credential.secrets():  # a server may echo what it was sent
            text = text.replace(secret, "***")
        if response.status_code == 401:
            text = f"the server refused the {self.credential.kind} credentials ({text})"
        return net.error_for_status(response.status_code, f"{text} (HTTP {response.status_code})", where,
                                    STATUS_MEANINGS)

def _shown(url: str, storage_url: str) -> str:
    """The part of ``url`` below the storage, for messages."""
    return url[len(storage_url):] or "/" if url.startswith(storage_url) else url

def iter_body(response: net.Response, where: str) -> Iterator[bytes]:
    """A ranged read's body in the chunks it arrives in; a connection that breaks is Unavailable."""
    return net.iter_chunks(response, "the download", where)
