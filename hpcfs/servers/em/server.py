"""A local, wire-faithful DPhi Space EM API server (``hpcfs serve em``).

It mimics the real Django REST Framework service as DPhi Space's public EM API documentation describes
it (dphi-space.github.io/public-documentation/em-api/api-specs):
``POST /auth/`` and ``/auth/refresh`` hand out HS256 JWTs (simplejwt bodies), every ``/em/*`` request
needs ``Authorization: Bearer``, success bodies are ``{"message", "data"}`` envelopes and errors
``{"error", "message"}`` (auth failures DRF's ``{"detail"}``, Django's own 400/500 pages are HTML).

Volumes are directories under ``root``: pod name ``p`` is ``root/p``; the default volume (no pod name)
is ``root/_default``, a name no pod can have.  As on the real service, naming an unknown pod *creates*
its volume -- on every endpoint, listing and download included -- which is what makes the client's
"never send a name nobody configured" rule testable through :attr:`EMServer.names_seen`.

Quirks kept on purpose: the whole volume tree in one listing (sizes as strings, minute-resolution UTC
times, a salted signed 64-bit ``hash``); downloads are chunked streams without ``Range`` support;
uploads are multipart with part names reduced to a basename as Django does, at most ``max_files`` parts
and ``max_upload`` bytes per call; delete is recursive; one request per account at a time, the others
get ``423 LOCKED``.  ``api="v1"`` follows the prose spec (``pod_name``, GET listings), ``api="v2"`` the
2026 client (``pvc_name``, POST listings); the other method gets 405.

Test hooks: :attr:`knobs` (common ones plus ``extra``: ``busy_time`` seconds each ``/em`` request
holds the account lock, ``upload_delay`` seconds of the second hop, ``download_rate`` bytes per second
a download body is paced to (a slow link; 0 = as fast as the socket), ``fail_responses`` HTML 500s to
give, ``garbage`` malformed replies such as ``{"files/list": "truncated-json"}`` -- routes by the end of
their path: ``files/list``, ``pvc/list``, ``auth``, ``refresh``; kinds in ``common.GARBAGE_KINDS``),
:attr:`log` (one entry per request: kind such as ``files/list``, detail = the volume it named),
:attr:`statuses`, :meth:`revoke_tokens` and :meth:`write_out_of_band` (a pod writing into a volume).
"""
import collections
import hashlib
import hmac
import html
import json
import os
import re
import secrets
import shutil
import threading
import time
import uuid
from typing import BinaryIO, Dict, Iterator, List, Optional, Tuple

import jwt
import multipart
from urllib.parse import parse_qs, quote

from ... import registry
from ..common import (
    DEFAULT_HOST,
    Knobs,
    LocalServer,
    OutsideRoot,
    Request,
    run_until_interrupted,
    RequestLog,
    Response,
    RestApp,
    accounts_or_generated,
    confine,
    configured_accounts,
    open_for_writing,
    add_latency_argument,
    add_secret_file_argument,
    naming_ports,
    served_directory,
)

MULTIPART_MEMORY = 8 << 20  # bytes of small parts kept in memory per request; larger parts spill to disk
FORM_FIELDS = 16  # parts besides the files (pod_name, dest_path, ...) a form may carry
UPLINK_OVERHEAD = 1 << 20  # multipart headers and form fields around an uplink's files
DEFAULT_VOLUME = "_default"  # the directory of the volume used when no pod name is given
QUOTABLE = re.compile(r"[\t \x21-\x7e]*")  # what a quoted string may hold: tab, space, visible ASCII
POD_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")  # a Kubernetes (DNS-1123) label
GIB = 1024**3
PACED_CHUNK = 64 << 10  # bytes per chunk of a download paced by the ``download_rate`` knob

DJANGO_400 = "<!doctype html>\n<html lang=\"en\">\n<head>\n  <title>Bad Request (400)</title>\n</head>\n" \
             "<body>\n  <h1>Bad Request (400)</h1><p></p>\n</body>\n</html>\n"
DJANGO_500 = "<!doctype html>\n<html lang=\"en\">\n<head>\n  <title>Server Error (500)</title>\n</head>\n" \
             "<body>\n  <h1>Server Error (500)</h1><p></p>\n</body>\n</html>\n"
NODES = [{"name": "fpga", "status": "True"}, {"name": "gpu", "status": "True"}, {"name": "mpu1", "status": "True"}]


class _Reply(Exception):
    """Unwinds a handler with a finished error response."""

    def __init__(self, response: Response):
        super().__init__(response.status)
        self.response = response


def _error(status: int, code: str, message: str) -> _Reply:
    return _Reply(Response.json({"error": code, "message": message}, status))


def _html(status: int, page: str) -> Response:
    return Response(status, page.encode(), {"Content-Type": "text/html; charset=utf-8"})


def _ok(message: str, data=None) -> Response:
    return Response.json({"message": message} if data is None else {"message": message, "data": data})


def _size_text(limit: int) -> str:
    """'2 GB' for the real limit, as the service words it."""
    for unit, scale in (("GB", GIB), ("MB", 1024**2), ("KB", 1024)):
        if limit >= scale and limit % scale == 0:
            return f"{limit // scale} {unit}"
    return f"{limit} bytes"


# -- JWT (HS256, simplejwt claims) ----------------------------------------------------------------------
class TokenSigner:
    """Issues and checks access/refresh JWTs; :meth:`rotate` invalidates every token handed out."""

    def __init__(self, access_lifetime: float, refresh_lifetime: float):
        self.lifetimes = {"access": access_lifetime, "refresh": refresh_lifetime}
        self._secret = secrets.token_bytes(32)

    def rotate(self):
        self._secret = secrets.token_bytes(32)

    def issue(self, token_type: str, user: str) -> str:
        now = time.time()
        claims = {"token_type": token_type, "exp": round(now + self.lifetimes[token_type], 3),
                  "iat": int(now), "jti": uuid.uuid4().hex, "user_id": user}
        return jwt.encode(claims, self._secret, algorithm="HS256")

    def user_of(self, token: str, token_type: str) -> Optional[str]:
        """The user a valid, unexpired token of this type was issued to; None otherwise."""
        try:
            # ``exp`` is checked below to the millisecond (PyJWT truncates it to whole seconds): tests
            # give tokens sub-second lifetimes
            claims = jwt.decode(token, self._secret, algorithms=["HS256"], options={"verify_exp": False})
        except jwt.PyJWTError:
            return None
        if claims.get("token_type") != token_type or claims.get("exp", 0) <= time.time():
            return None
        return claims.get("user_id")


# -- request bodies -------------------------------------------------------------------------------------
_HEADER_PARAM = re.compile(r';\s*([\w*]+)="((?:[^"\\]|\\.)*)"|;\s*([\w*]+)=([^;]*)')


def _disposition(header: str) -> Dict[str, str]:
    params = {}
    for match in _HEADER_PARAM.finditer(header):
        if match.group(1):
            params[match.group(1).lower()] = re.sub(r"\\(.)", r"\1", match.group(2))
        else:
            params[match.group(3).lower()] = match.group(4).strip()
    return params


def parse_multipart(request: Request, max_parts: int) -> Tuple[Dict[str, str], List["multipart.MultipartPart"]]:
    """Text fields and file parts (``.filename``, ``.size``, ``.file``) of a multipart/form-data body, read
    from the socket as it arrives: a part beyond 64 KiB goes to a temporary file, so an upload of gigabytes
    needs no more memory than one of kilobytes.  The caller closes the parts (which deletes the files)."""
    boundary = _disposition(request.headers.get("Content-Type", "")).get("boundary", "")
    if not boundary:
        raise _Reply(_html(400, DJANGO_400))
    fields, files = {}, []
    try:
        for part in multipart.MultipartParser(_ChunkReader(request.body_chunks()), boundary, request.content_length,
                                              part_limit=max_parts, memory_limit=MULTIPART_MEMORY):
            if part.filename is not None:
                files.append(part)
            elif part.name is not None:
                fields[part.name] = part.value
    except multipart.MultipartError:
        for part in files:
            part.close()
        raise _Reply(_html(400, DJANGO_400)) from None
    return fields, files


class _ChunkReader:
    """``read(n)`` over an iterator of byte chunks (a request body as it comes off the socket)."""

    def __init__(self, chunks: Iterator[bytes]):
        self._chunks, self._pending = chunks, b""

    def read(self, size: int = -1) -> bytes:
        while not self._pending:
            chunk = next(self._chunks, None)
            if chunk is None:
                return b""
            self._pending = chunk
        size = len(self._pending) if size < 0 else size
        piece, self._pending = self._pending[:size], self._pending[size:]
        return piece


def parse_form(request: Request, max_parts: int) -> Tuple[Dict[str, str], List["multipart.MultipartPart"]]:
    """Query, form, JSON or multipart fields merged (body wins), as DRF's parsers accept all of them."""
    fields = {key: values[-1] for key, values in request.query.items()}
    content_type = request.headers.get("Content-Type", "")
    files: List[multipart.MultipartPart] = []
    if content_type.startswith("multipart/form-data"):
        body_fields, files = parse_multipart(request, max_parts)
        fields.update(body_fields)
    elif content_type.startswith("application/json"):
        payload = request.json()
        if isinstance(payload, dict):
            fields.update({key: value if isinstance(value, str) else json.dumps(value)
                           for key, value in payload.items()})
    elif request.body:
        fields.update({key: values[-1] for key, values in
                       parse_qs(request.body.decode("utf-8", "replace"), keep_blank_values=True).items()})
    return fields, files


def django_file_name(name: str) -> Optional[str]:
    """What Django keeps of an uploaded part's file name (MultiPartParser.sanitize_file_name)."""
    name = html.unescape(name).rsplit("/")[-1].rsplit("\\")[-1]
    name = "".join(char for char in name if char.isprintable())
    return None if name in ("", ".", "..") else name


def content_disposition(name: str) -> str:
    """The header Django's FileResponse sends (``content_disposition_header``, Django 4.2+): a quoted name
    where every character may stand in an RFC 9110 quoted string, else RFC 5987's ``filename*=utf-8''``
    with the name percent-encoded, so no control character (a newline) can break the header."""
    if QUOTABLE.fullmatch(name):
        return 'attachment; filename="{}"'.format(name.replace("\\", "\\\\").replace('"', r"\""))
    return f"attachment; filename*=utf-8''{quote(name)}"


# -- the server -----------------------------------------------------------------------------------------
class _EMApp(RestApp):
    """RestApp that collapses ``//``, logs each request once with the volume it names, counts statuses."""

    def __init__(self, server: "EMServer"):
        super().__init__(server.knobs, RequestLog())
        self.server = server

    def dispatch(self, request: Request) -> Optional[Response]:
        request.path = re.sub("/+", "/", request.path)
        try:
            if request.path.startswith("/em/"):  # from the headers, before a byte of the body is read
                self.server.authenticated_user(request)
            request.max_body = self.body_limit(request)
            request.form, request.uploads = parse_form(request, self.server.max_files + FORM_FIELDS)
        except _Reply as reply:
            request.form, request.uploads = {}, []
            self.server.note_request(request)
            return self.server.count(reply.response)
        self.server.note_request(request)
        try:
            return self.server.count(super().dispatch(request))
        finally:
            for upload in request.uploads:
                upload.close()


class EMServer(LocalServer):
    """The EM API on 127.0.0.1 in a background thread; ``start()`` returns self, ``stop()`` ends it."""

    thread_name = "em-server"

    def __init__(
        self,
        root: Optional[str] = None,
        users: Optional[Dict[str, str]] = None,
        host: str = DEFAULT_HOST,
        port: int = 0,
        *,
        api: str = "v1",
        pvc_list: bool = True,
        access_lifetime: float = 300.0,
        refresh_lifetime: float = 86400.0,
        max_upload: int = 2 * GIB,
        max_files: int = 100,
        tls: bool = False,
    ):
        if api not in ("v1", "v2"):
            raise ValueError(f"api must be v1 or v2, not {api!r}")
        self.root = served_directory(root, "hpcfs-em-")
        os.makedirs(os.path.join(self.root, DEFAULT_VOLUME), exist_ok=True)
        super().__init__("hpcfs-em-")  # TLS key, generated password; removed on stop
        self.users, self.generated_credentials = accounts_or_generated(users, self.private)
        self.api, self.max_upload, self.max_files = api, max_upload, max_files
        self.knobs = Knobs()
        self.log = RequestLog()
        self.statuses: collections.Counter[int] = collections.Counter()  # HTTP status -> count
        # every pod_name/pvc_name value any request carried
        self.names_seen: collections.Counter[str] = collections.Counter()
        self.tokens = TokenSigner(access_lifetime, refresh_lifetime)
        self._hash_salt = secrets.token_bytes(16)  # like PYTHONHASHSEED: hashes change across restarts
        self._lock = threading.Lock()
        self._account_locks: Dict[str, threading.Lock] = collections.defaultdict(threading.Lock)
        self._pods: Dict[str, str] = {}  # pod name -> start time of its last run
        self.app = _EMApp(self)
        self._register_routes(pvc_list)
        self.http = self.listen(self.app, host, port, tls)

    # -- test hooks -------------------------------------------------------------------------------------
    def revoke_tokens(self):
        """Invalidate every token handed out so far (as a server restart with a new key would)."""
        self.tokens.rotate()

    def write_out_of_band(self, volume: str, path: str, data: bytes):
        """Change a volume behind the API's back, as a running pod writing into ``/data`` does."""
        target = confine(self.volume_dir(volume), path)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, "wb") as handle:  # a test hook: the pod writes, not a client of the API
            handle.write(data)

    def volume_dir(self, volume: str) -> str:
        return os.path.join(self.root, volume or DEFAULT_VOLUME)

    def volumes(self) -> List[str]:
        """Named volumes that exist (the default volume is not one of them)."""
        return sorted(name for name in os.listdir(self.root)
                      if POD_NAME.match(name) and os.path.isdir(os.path.join(self.root, name)))

    # -- bookkeeping used by _EMApp ---------------------------------------------------------------------
    def note_request(self, request: Request):
        for key in ("pod_name", "pvc_name"):
            if request.form.get(key):
                self.names_seen[request.form[key]] += 1
        kind = re.sub(r"^em/", "", request.path.strip("/"))
        named = request.path.startswith("/em/") and kind not in ("pvc/list", "nodes/status", "pod/image/list")
        self.log.record(kind, (self._volume_name(request.form) or DEFAULT_VOLUME) if named else "")

    def count(self, response: Optional[Response]) -> Optional[Response]:
        if response is not None:  # None: a download streamed its own reply and counted it
            with self._lock:
                self.statuses[response.status] += 1
        return response

    # -- routing ----------------------------------------------------------------------------------------
    def _register_routes(self, pvc_list: bool):
        query_method = "GET" if self.api == "v1" else "POST"  # the 2026 client moved these to POST
        self.app.route("POST", "/auth")(self._login)
        self.app.route("POST", "/auth/refresh")(self._refresh)
        protected: List[tuple] = [  # (method, path, handler[, body limit])
            (query_method, "/em/files/list", self._list_files),
            ("POST", "/em/files/uplink", self._uplink, lambda: self.max_upload + UPLINK_OVERHEAD),
            ("GET", "/em/files/downlink", self._downlink),
            ("POST", "/em/files/delete", self._delete),
            ("POST", "/em/pod/image/build", self._image_build),
            ("POST", "/em/pod/image/load", self._image_load),
            (query_method, "/em/pod/image/list", self._image_list),
            ("POST", "/em/pod/run", self._pod_run),
            (query_method, "/em/pod/status", self._pod_status),
            (query_method, "/em/nodes/status", self._nodes_status),
        ]
        if pvc_list:
            protected += [(query_method, "/em/pvc/list", self._pvc_list), ("POST", "/em/pvc/delete", self._pvc_delete)]
        self.app.add_routes(protected, wrap=self._protected)

    def _protected(self, handler):
        """Authenticate, apply fault knobs, and hold the account's lock (423 if another request runs)."""

        def run(request: Request) -> Optional[Response]:
            try:
                user = self.authenticated_user(request)
                if self.knobs.take_busy():
                    return self._locked()
                if self._take_failure():
                    return _html(500, DJANGO_500)
                lock = self._account_locks[user]
                if not lock.acquire(blocking=False):
                    return self._locked()
                try:
                    time.sleep(float(self.knobs.extra.get("busy_time", 0)))
                    return handler(request)
                finally:
                    lock.release()
            except _Reply as reply:
                return reply.response

        return run

    @staticmethod
    def _locked() -> Response:
        return Response.json({"error": "LOCKED", "message": "CG2 is busy, please try again later"}, 423)

    def _take_failure(self) -> bool:
        with self._lock:
            due = int(self.knobs.extra.get("fail_responses", 0))
            if due > 0:
                self.knobs.extra["fail_responses"] = due - 1
            return due > 0

    # -- auth -------------------------------------------------------------------------------------------
    def _login(self, request: Request) -> Response:
        missing = {key: ["This field is required."] for key in ("username", "password") if not request.form.get(key)}
        if missing:
            return Response.json(missing, 400)
        user, password = request.form["username"], request.form["password"]
        known = user in self.users and hmac.compare_digest(self.users[user].encode(), password.encode())
        if self.knobs.refuse_logins or not known:
            return Response.json({"detail": "No active account found with the given credentials"}, 401)
        return Response.json({"refresh": self.tokens.issue("refresh", user),
                              "access": self.tokens.issue("access", user)})

    def _refresh(self, request: Request) -> Response:
        token = request.form.get("refresh")
        if not token:
            return Response.json({"refresh": ["This field is required."]}, 400)
        user = self.tokens.user_of(token, "refresh")
        if user is None or user not in self.users or self.knobs.refuse_logins:
            return Response.json({"detail": "Token is invalid or expired", "code": "token_not_valid"}, 401)
        return Response.json({"access": self.tokens.issue("access", user)})

    def authenticated_user(self, request: Request) -> str:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        challenge = {"WWW-Authenticate": 'Bearer realm="api"'}
        if scheme != "Bearer" or not token:
            raise _Reply(Response.json({"detail": "Authentication credentials were not provided."}, 401, challenge))
        user = self.tokens.user_of(token.strip(), "access")
        if user is None or user not in self.users:
            body = {"detail": "Given token not valid for any token type", "code": "token_not_valid",
                    "messages": [{"token_class": "AccessToken", "token_type": "access",
                                  "message": "Token is invalid or expired"}]}
            raise _Reply(Response.json(body, 401, challenge))
        return user

    # -- volumes and paths ------------------------------------------------------------------------------
    def _volume_name(self, form: Dict[str, str]) -> str:
        keys = ("pod_name",) if self.api == "v1" else ("pvc_name", "pod_name")
        return next((form[key] for key in keys if form.get(key)), "")

    def _volume(self, request: Request) -> str:
        """The directory of the volume the request names, created if new (as the real service does)."""
        name = self._volume_name(request.form)
        if name and not POD_NAME.match(name):
            raise _error(400, "INVALID_POD_NAME", f"Invalid pod name: {name}")
        directory = self.volume_dir(name)
        os.makedirs(directory, exist_ok=True)
        return directory

    @staticmethod
    def _inside(volume: str, path: str, *, allow_root=False) -> str:
        relative = re.sub(r"^(\./)+", "", (path or "").strip()).lstrip("/")
        if not relative and not allow_root:
            raise _error(400, "INVALID_PATH", "Error in path provided")
        try:
            return confine(volume, relative)
        except OutsideRoot:
            raise _error(403, "ILLEGAL_PATH", "Illegal path provided") from None

    # -- files ------------------------------------------------------------------------------------------
    def _list_files(self, request: Request) -> Response:
        return _ok("Successfully listed files", self._tree(self._volume(request)))

    def _tree(self, directory: str) -> list:
        nodes = []
        for entry in sorted(os.scandir(directory), key=lambda item: item.name):
            if entry.is_symlink():
                continue
            info = entry.stat()
            node: Dict[str, object] = {"type": "directory" if entry.is_dir() else "file", "name": entry.name,
                    "size": str(info.st_size), "time": time.strftime("%Y-%m-%d-%H-%M", time.gmtime(info.st_mtime))}
            if entry.is_dir():
                node["contents"] = self._tree(entry.path)
            else:
                node["hash"] = self._hash(entry.path, info)
            nodes.append(node)
        return nodes

    def _hash(self, path: str, info: os.stat_result) -> int:
        """A signed 64-bit value that changes with the content, salted per server run like Python's hash()."""
        digest = hashlib.blake2b(f"{path}|{info.st_size}|{info.st_mtime_ns}|{info.st_ino}".encode(),
                                 key=self._hash_salt, digest_size=8).digest()
        return int.from_bytes(digest, "big", signed=True)

    def _uplink(self, request: Request) -> Response:
        if len(request.uploads) > self.max_files:  # Django's DATA_UPLOAD_MAX_NUMBER_FILES
            return _html(400, DJANGO_400)
        if not request.uploads:
            raise _error(400, "NO_FILES", "No files were provided for uplink!")
        total = sum(upload.size for upload in request.uploads)
        if total > self.max_upload:
            raise _error(400, "MAX_UPLINK_SIZE_EXCEEDED", f"Total upload size exceeds {_size_text(self.max_upload)}")
        destination = self._inside(self._volume(request), request.form.get("dest_path", ""), allow_root=True)
        time.sleep(float(self.knobs.extra.get("upload_delay", 0)))  # the backend's second hop to the EM
        try:
            os.makedirs(destination, exist_ok=True)
            stored = [self._store(destination, upload.filename, upload.file) for upload in request.uploads]
        except OSError as exc:
            raise _error(400, "UPLINK_FAILED", f"Uplink failed: {exc.strerror}") from None
        return _ok("Successfully uplinked files",
                   {"file_count": sum(stored), "total_size_kb": round(total / 1024, 2)})

    def _store(self, destination: str, part_name: str, content: BinaryIO) -> bool:
        name = django_file_name(part_name)
        if name is None:  # Django drops parts whose name sanitises to nothing
            return False
        content.seek(0)
        with open_for_writing(destination, name) as handle:  # IsADirectoryError for a folder
            shutil.copyfileobj(content, handle, 1 << 20)
        return True

    def _downlink(self, request: Request) -> None:
        target = self._inside(self._volume(request), request.form.get("filepath", ""))
        if not os.path.exists(target):
            raise _error(404, "FILE_MISSING", "File missing")
        if not os.path.isfile(target):
            raise _error(400, "INVALID_PATH", "Error in path provided")
        self._stream(request.handler, target)

    def _stream(self, handler, path: str):
        """Chunked body without Content-Length or Range, as a Django StreamingHttpResponse sends it."""
        with open(path, "rb") as source:  # opened before the status line: a failure can still be a 500
            limit = self.knobs.take_drop()
            self.count(Response(200))
            handler.send_response(200)
            handler.send_header("Content-Type", "application/octet-stream")
            handler.send_header("Content-Disposition", content_disposition(os.path.basename(path)))
            handler.send_header("Transfer-Encoding", "chunked")
            handler.end_headers()
            try:
                self._send_chunks(handler, source, limit)
            except (BrokenPipeError, ConnectionResetError):  # the client stopped reading: nobody to answer
                handler.close_connection = True

    def _send_chunks(self, handler, source: BinaryIO, limit: Optional[int]):
        """The body in chunks, paced by the ``download_rate`` knob, broken off after ``limit`` bytes if set."""
        sent = 0
        rate = float(self.knobs.extra.get("download_rate", 0))
        # Paced bodies go in small chunks, so a client sees bytes arrive steadily rather than in bursts.
        chunk_size = PACED_CHUNK if rate else 1 << 20
        for chunk in iter(lambda: source.read(chunk_size), b""):
            if limit is not None and sent + len(chunk) > limit:
                if limit > sent:  # (a zero-length chunk would end the body properly)
                    handler.wfile.write(b"%x\r\n%s\r\n" % (limit - sent, chunk[: limit - sent]))
                handler.close_connection = True  # the transfer breaks off mid-stream
                return
            handler.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            sent += len(chunk)
            if rate:
                time.sleep(len(chunk) / rate)
        handler.wfile.write(b"0\r\n\r\n")

    def _delete(self, request: Request) -> Response:
        target = self._inside(self._volume(request), request.form.get("filepath", ""))
        try:
            if os.path.isdir(target):
                shutil.rmtree(target)  # folders go recursively, as the spec says
            else:
                os.unlink(target)
        except OSError:
            raise _error(400, "DELETE_FAILED", "File delete failed") from None
        return _ok("File deleted successfully")

    # -- volumes ----------------------------------------------------------------------------------------
    def _pvc_list(self, request: Request) -> Response:
        return _ok("Successfully listed volumes", self.volumes())

    def _pvc_delete(self, request: Request) -> Response:
        name = request.form.get("pvc_name") or request.form.get("pvc", "")
        if not POD_NAME.match(name) or not os.path.isdir(self.volume_dir(name)):
            raise _error(400, "PVC_DELETE_FAILED", f"Volume {name} could not be deleted")
        shutil.rmtree(self.volume_dir(name))
        return _ok("Volume deleted successfully")

    # -- pods and images (enough for clients that poke at them; nothing is executed) ---------------------
    def _image_build(self, request: Request) -> Response:
        volume = self._volume(request)
        for field in ("dockerfile", "context"):
            if not os.path.exists(self._inside(volume, request.form.get(field, ""))):
                raise _Reply(Response.json({"error": "BUILD_FAILED", "message": "Docker build failed", "log_tail": [
                    f'unable to prepare context: path "{request.form.get(field, "")}" not found\n']}, 400))
        return _ok("Docker Image built successfully")

    def _image_load(self, request: Request) -> Response:
        tarfile = request.form.get("tarfile", "")
        if not os.path.isfile(self._inside(self._volume(request), tarfile)):
            raise _Reply(Response.json({"error": "IMAGE_LOAD_FAILED", "message": "Docker Image tarfile failed to load",
                                        "log_tail": [f"sh: line 1: {tarfile}: No such file or directory\n"]}, 400))
        return _ok("Tar file loaded successfully")

    def _image_list(self, request: Request) -> Response:
        return _ok("Successfully loaded list of docker images", [])

    def _pod_run(self, request: Request) -> Response:
        missing = [field for field in ("image", "max_duration", "node") if not request.form.get(field)]
        if missing or request.form.get("node", "").upper() not in ("FPGA", "GPU", "MPU"):
            raise _error(400, "INVALID_PARAMETERS", f"Invalid parameters: {', '.join(missing) or 'node'}")
        self._volume(request)
        with self._lock:
            self._pods[self._volume_name(request.form)] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        return _ok("Docker run scheduled successfully")

    def _pod_status(self, request: Request) -> Response:
        with self._lock:
            started = self._pods.get(self._volume_name(request.form))
        if started is None:
            raise _error(400, "POD_NOT_FOUND", "No DPhi Pod found with this name")
        return _ok("Successfully fetched DPhi Pod status", {"state": {"running": {"startedAt": started}}})

    def _nodes_status(self, request: Request) -> Response:
        return _ok("Nodes retrieved successfully.", NODES)


# -- hpcfs serve em -------------------------------------------------------------------------------------
DEFAULT_PORT = registry.protocol_for("em").default_port


def add_arguments(parser):
    parser.add_argument("--root", help="directory holding the volumes (default: a new temporary directory)")
    parser.add_argument("--host", default=DEFAULT_HOST, help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"API port (default {DEFAULT_PORT})")
    add_secret_file_argument(parser, "--users-file", "--users", "user:password", "$EM_USERNAME/$EM_PASSWORD")
    parser.add_argument("--api", choices=("v1", "v2"), default="v1",
                        help="v1: pod_name, GET listings (the spec); v2: pvc_name, POST listings (the 2026 client)")
    parser.add_argument("--no-pvc-list", action="store_true", help="serve no /em/pvc/* endpoints (older servers)")
    parser.add_argument("--access-lifetime", type=float, default=300.0, help="seconds (default 300)")
    parser.add_argument("--refresh-lifetime", type=float, default=86400.0, help="seconds (default 86400)")
    parser.add_argument("--max-upload", type=int, default=2 * GIB, help="bytes per uplink call (default 2 GiB)")
    parser.add_argument("--max-files", type=int, default=100, help="file parts per uplink call (default 100)")
    add_latency_argument(parser)
    parser.add_argument("--busy-time", type=float, default=0.0, help="seconds each /em request holds the account")
    parser.add_argument("--upload-delay", type=float, default=0.0, help="extra seconds per uplink (second hop)")
    parser.add_argument("--download-rate", type=int, default=0, metavar="BYTES",
                        help="bytes per second each download body is paced to, as over a slow link (default: unpaced)")
    parser.add_argument("--tls", action="store_true", help="HTTPS with a self-signed certificate")


def serve(args):
    users = configured_accounts(args.users_file, "EM_USERNAME", "EM_PASSWORD")
    with naming_ports({"--port": args.port}):
        server = EMServer(
            args.root, users, args.host, args.port, api=args.api, pvc_list=not args.no_pvc_list,
            access_lifetime=args.access_lifetime, refresh_lifetime=args.refresh_lifetime,
            max_upload=args.max_upload, max_files=args.max_files, tls=args.tls,
        )
    server.knobs.latency = args.latency
    server.knobs.extra.update(busy_time=args.busy_time, upload_delay=args.upload_delay,
                              download_rate=args.download_rate)
    server.start()
    user = sorted(server.users)[0]
    query = f"?tls=1&verify={server.cert_file}" if args.tls else ""
    lines = [f"EM API ({args.api}) serving {server.root} at {server.url}/",
             f"  connect: hpcfs mount em://{user}@{server.http.host}:{server.port}/{query} MOUNTPOINT"]
    if server.generated_credentials:
        lines.append(f"  no users configured: generated a password for {user} in {server.generated_credentials} "
                     f"(user:password, mode 0600; removed when the server stops): "
                     f"export EM_USERNAME={user} EM_PASSWORD=\"$(cut -d: -f2- {server.generated_credentials})\"")
    else:
        lines.append("  credentials: export EM_USERNAME and EM_PASSWORD for the account you configured")
    run_until_interrupted(server, "\n".join(lines))
