"""The toolkit the local servers share: root confinement, knobs, request counting, a small REST
router over the standard library's threading HTTP server, the frame of a REST server (``LocalServer``: ports,
private directory, start and stop), and self-signed TLS for tests.

The servers bind to 127.0.0.1 unless told otherwise.  They run in a thread of the calling process
(tests, the demo) or in the foreground (``hpcfs serve``).
"""
import argparse
import collections
import contextlib
import datetime
import errno
import getpass
import http.client
import http.server
import io
import json
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import socketserver
import ssl
import stat
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Callable, Dict, Iterable, Iterator, List, Optional, Set, Tuple, TypeVar, Union, cast
from urllib.parse import parse_qs, unquote, urlsplit

from ..errors import UsageError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_MAX_BODY = 1 << 20  # a route that takes JSON or a form needs far less; uploads set their own cap


class OutsideRoot(PermissionError):
    """A path that resolves outside the served root (``..`` or a symlink pointing out)."""


def confine(root: str, path: str) -> str:
    """The real local path for ``path`` under ``root``; symlinks are resolved before the check."""
    return _resolved_inside(root, os.path.join(os.path.realpath(root), path.lstrip("/")), path)


def _resolved_inside(root: str, local: str, shown: str) -> str:
    real_root, candidate = os.path.realpath(root), os.path.realpath(local)
    if candidate != real_root and not candidate.startswith(real_root + os.sep):
        raise OutsideRoot(f"Forbidden: {shown} not in {real_root}")
    return candidate


_WRITE_FLAGS = {"wb": os.O_CREAT | os.O_TRUNC, "ab": os.O_CREAT | os.O_APPEND, "r+b": 0}


def open_for_writing(root: str, path: str, mode: str = "wb") -> BinaryIO:
    """Open ``path`` under ``root`` for writing (``mode`` ``wb``, ``ab`` or ``r+b``).  A final symlink is
    followed only while its target stays inside ``root`` (``confine`` resolves it), and the open itself never
    follows one, so a link planted between the check and the open cannot redirect the write out of the tree."""
    access = os.O_RDWR if mode == "r+b" else os.O_WRONLY
    descriptor = os.open(confine(root, path), access | os.O_NOFOLLOW | _WRITE_FLAGS[mode], 0o666)
    return cast(BinaryIO, os.fdopen(descriptor, mode))


def check_link_target(root: str, link_directory: str, target: str):
    """OutsideRoot unless a symlink in the local directory ``link_directory`` whose text is ``target`` would
    lead inside ``root``: no link may later take a read or write out of the tree."""
    _resolved_inside(root, os.path.join(link_directory, target), target)


@dataclass
class Knobs:
    """Faults and delays that tests and benchmarks switch on at run time.  All off by default."""

    latency: float = 0.0  # seconds added before every reply (a request round trip)
    drop_after_bytes: Optional[int] = None  # cut the next data transfer after this many bytes
    refuse_logins: bool = False  # reject every authentication, as for a revoked password
    busy_responses: int = 0  # answer this many requests with the server's "busy" status first
    extra: Dict[str, Any] = field(default_factory=dict)  # per-server knobs

    def delay(self):
        if self.latency:
            time.sleep(self.latency)

    def take_busy(self) -> bool:
        """True (and count one down) while busy answers are still due."""
        with _knob_lock:
            if self.busy_responses > 0:
                self.busy_responses -= 1
                return True
            return False

    def take_drop(self) -> Optional[int]:
        """The byte count after which to cut the current transfer, once."""
        with _knob_lock:
            limit, self.drop_after_bytes = self.drop_after_bytes, None
            return limit


_knob_lock = threading.Lock()


class RequestLog:
    """Thread-safe counts of requests by kind, plus the raw list, for tests that assert on round trips."""

    def __init__(self):
        self._lock = threading.Lock()
        self.counts = collections.Counter()
        self.entries: List[Tuple[str, str]] = []

    def record(self, kind: str, detail: str = ""):
        with self._lock:
            self.counts[kind] += 1
            self.entries.append((kind, detail))

    def snapshot(self) -> collections.Counter:
        with self._lock:
            return collections.Counter(self.counts)

    def reset(self):
        with self._lock:
            self.counts.clear()
            self.entries.clear()

    def total(self, *kinds) -> int:
        with self._lock:
            return sum(self.counts[k] for k in kinds) if kinds else sum(self.counts.values())


def peer_uid(connection: socket.socket) -> Optional[int]:
    """The local user owning the other end of a TCP connection from this machine (the kernel's socket
    table, as identd reads it); None when the peer is another host."""
    family = connection.family
    table = "/proc/net/tcp6" if family == socket.AF_INET6 else "/proc/net/tcp"
    theirs, ours = (_proc_net_address(family, *connection.getpeername()[:2]),
                    _proc_net_address(family, *connection.getsockname()[:2]))
    try:
        with open(table) as handle:
            rows = [line.split() for line in handle.readlines()[1:]]
    except OSError:
        return None
    # A socket its owner has closed (TIME_WAIT, or orphaned while it sends its FIN) keeps its row with inode
    # 0 and uid 0: no owner at all, never root's.  Every live socket has an inode.
    return next((int(row[7]) for row in rows if row[1] == theirs and row[2] == ours and row[9] != "0"), None)


@dataclass(frozen=True)
class Peer:
    """Who is at the other end of a connection: a local user (``uid``, from the socket table) or, where that
    is unknown (another host, a socket already closed), just the address."""

    uid: Optional[int]
    host: str

    @property
    def key(self) -> str:
        """What a share of the connections is counted by: one local user, or one address."""
        return f"uid {self.uid}" if self.uid is not None else f"host {self.host}"

    @property
    def is_owner(self) -> bool:
        """The server's own user (the kernel's word for it, not anything the client sent)."""
        return self.uid == os.geteuid()


def _proc_net_address(family: int, host: str, port: int) -> str:
    """An address as /proc/net/tcp writes it: each 32-bit word of the address in host byte order, hex."""
    packed = socket.inet_pton(family, host)
    words = "".join(f"{int.from_bytes(packed[i:i + 4], sys.byteorder):08X}" for i in range(0, len(packed), 4))
    return f"{words}:{port:04X}"


# -- secrets the servers keep: a private directory, files only their owner can read -------------------------
class PrivateDirectory:
    """A directory only the server's user can enter (``mkdtemp`` makes it 0700) for its TLS key, generated
    passwords and secrets.  A directory the server made is removed on ``remove()``: a key or password left
    behind would outlive the server on a shared machine."""

    def __init__(self, prefix: str, path: Optional[str] = None):
        self.owned = path is None
        self.path = path if path is not None else tempfile.mkdtemp(prefix=prefix)

    def write_secret(self, name: str, text: str) -> str:
        """Write ``text`` to a new file readable by the owner only (0600 from its creation) and return its path."""
        path = os.path.join(self.path, name)
        with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as handle:
            handle.write(text)
        return path

    def remove(self):
        if self.owned:
            shutil.rmtree(self.path, ignore_errors=True)


def read_private_file(path: str, what: str) -> str:
    """The text of a file that holds passwords or secrets.  Refused, as OpenSSH refuses such key files,
    unless it belongs to the caller (or root) and no other user may read or write it."""
    try:
        info = os.stat(path)
        with open(path) as handle:
            text = handle.read()
    except OSError as exc:
        raise UsageError(f"cannot read the {what} {path}: {exc.strerror}") from None
    if info.st_uid not in (os.getuid(), 0) or info.st_mode & 0o077:
        raise UsageError(f"the {what} {path} is open to other users (mode {stat.S_IMODE(info.st_mode):04o}, "
                         f"owner uid {info.st_uid}): run 'chmod 600 {path}' as its owner")
    return text


def credential_lines(text: str) -> Iterator[Tuple[str, str]]:
    """``name:secret`` pairs of a credentials file; blank lines and ``#`` comments skipped."""
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, secret = line.partition(":")
            yield name, secret


def generated_account(directory: PrivateDirectory) -> Tuple[str, str, str]:
    """A random password for the invoking user, written as ``user:password`` to a 0600 file in ``directory``:
    ``(user, password, file)``.  There is no built-in account whose password everybody knows."""
    user, password = getpass.getuser(), secrets.token_urlsafe(16)
    return user, password, directory.write_secret("credentials", f"{user}:{password}\n")


def accounts_or_generated(users: Optional[Dict[str, str]],
                          directory: PrivateDirectory) -> Tuple[Dict[str, str], Optional[str]]:
    """``(accounts, generated file)``: ``users`` as given (no file), or for None a generated password for the
    invoking user and the 0600 file in ``directory`` that holds it."""
    if users is not None:
        return dict(users), None
    user, password, path = generated_account(directory)
    return {user: password}, path


def configured_accounts(users_file: Optional[str], user_variable: str,
                        password_variable: str) -> Optional[Dict[str, str]]:
    """The accounts ``hpcfs serve`` was given: the users file, else the account the two environment variables
    name, else None (the server generates one)."""
    if users_file:
        return dict(credential_lines(read_private_file(users_file, "users file")))
    user, password = os.environ.get(user_variable), os.environ.get(password_variable)
    return {user: password} if user and password else None


# -- hpcfs serve: conventions every server's command line shares ----------------------------------------------
def add_secret_file_argument(parser: argparse.ArgumentParser, option: str, refused: str, lines: str, env: str):
    """``option`` FILE (mode 0600, ``lines`` per line), and ``refused``, the old option that took the same
    secrets on the command line, where every local user sees them in ``ps``: it now fails with one line."""
    parser.add_argument(option, metavar="FILE", help=f"file of {lines} lines, mode 0600 (default: {env}; "
                                                      "else a generated password, in a 0600 file the banner names)")
    parser.add_argument(refused, action=_RefusedOnCommandLine, help=argparse.SUPPRESS, instead=option)


class _RefusedOnCommandLine(argparse.Action):
    def __init__(self, option_strings, dest, instead: str, **kwargs):
        self.instead = instead
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        parser.error(f"{option_string} would show passwords to every local user (ps, /proc): put them in a file "
                     f"of mode 0600 and pass {self.instead} FILE, or use the environment")


def add_latency_argument(parser: argparse.ArgumentParser):
    parser.add_argument("--latency", type=duration, default=0.0, metavar="TIME",
                        help="delay added to every reply, e.g. 10ms or 0.5s (a bare number is milliseconds)")


def duration(text: str) -> float:
    """Seconds from ``10ms``, ``0.5s`` or a bare number of milliseconds (one unit for every server)."""
    match = re.fullmatch(r"(\d+(?:\.\d*)?|\.\d+)(ms|s)?", text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a time like 10ms or 0.5s")
    value = float(match.group(1))
    return value if match.group(2) == "s" else value / 1000


class PortInUse(OSError):
    """Another process listens on the port a server asked for."""

    def __init__(self, host: str, port: int):
        super().__init__(errno.EADDRINUSE, f"{host}:{port} is already in use")
        self.host, self.port = host, port


@contextlib.contextmanager
def binding(host: str, port: int):
    """Around a bind to ``host:port``: EADDRINUSE becomes PortInUse, which knows the port."""
    try:
        yield
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise PortInUse(host, port) from None
        raise


def listening_socket(host: str, port: int) -> socket.socket:
    with binding(host, port):
        return socket.create_server((host, port))


@contextlib.contextmanager
def naming_ports(options: Dict[str, int]):
    """Turn a PortInUse while a server starts into one line that names the port and the option to change it
    (``options`` maps each port option to the port it asked for)."""
    try:
        yield
    except PortInUse as exc:
        option = next((name for name, port in options.items() if port == exc.port), "--port")
        raise UsageError(f"port {exc.port} on {exc.host} is already in use (another server running?): "
                         f"choose another with {option} PORT, or {option} 0 for any free port") from None


# -- TLS -----------------------------------------------------------------------------------------------
def self_signed_certificate(directory: str, hostname: str = "localhost") -> Tuple[str, str]:
    """Write a fresh self-signed certificate and key for ``hostname`` and 127.0.0.1; return their paths."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName(hostname), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path = os.path.join(directory, "cert.pem")
    key_path = os.path.join(directory, "key.pem")
    with open(cert_path, "wb") as handle:
        handle.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as handle:
        handle.write(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    return cert_path, key_path


def self_signed_context(directory: str) -> Tuple[str, ssl.SSLContext]:
    """A server's TLS context with a fresh self-signed certificate written to ``directory``, and that
    certificate's path (the file clients trust)."""
    cert_file, key_file = self_signed_certificate(directory)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    return cert_file, context


# -- REST ----------------------------------------------------------------------------------------------
@dataclass
class ConnectionLimits:
    """How long a client may take over a request and how many connections it may hold, so that another local
    user who opens connections and sends nothing cannot use up a server's threads and descriptors.  Read
    live: a change applies to the next connection or request."""

    header_timeout: float = 60.0  # seconds for a TLS handshake, or for a request line and its headers in all
    body_timeout: float = 60.0  # longest silence while a body is read or a reply is written
    max_per_peer: int = 64  # connections of one local user (the socket's owner), or of one other address
    max_connections: int = 256  # connections of everyone but the server's own user, together


class BodyTooLarge(Exception):
    """A request body longer than its route accepts; answered 413 without reading it."""


class ClientGone(ConnectionError):
    """The client stopped sending a body it announced (it left, or was silent beyond the body timeout):
    nobody is left to answer, and where the next request would start is unknown."""


@dataclass
class Request:
    """One request.  Its body stays on the socket until a handler asks for it (``body`` or ``body_chunks``):
    a handler that refuses the caller from the headers never reads, let alone buffers, what was sent."""

    method: str
    path: str
    query: Dict[str, List[str]]
    headers: "http.client.HTTPMessage"
    source: Optional[BinaryIO] = None  # the connection, positioned at the body
    content_length: int = 0
    params: Dict[str, str] = field(default_factory=dict)  # from the route pattern
    client_ip: str = ""
    handler: Optional[http.server.BaseHTTPRequestHandler] = None  # for streaming replies
    max_body: int = DEFAULT_MAX_BODY  # the route's limit, checked when the body is first asked for
    _body: Optional[bytes] = field(default=None, repr=False)
    body_consumed: bool = False  # read or streamed: the connection can carry the next request
    # what an app that parses the body before dispatching (EM's forms) found: fields and file parts
    form: Dict[str, str] = field(default_factory=dict)
    uploads: List[Any] = field(default_factory=list)

    @property
    def responder(self) -> http.server.BaseHTTPRequestHandler:
        """The connection's handler, for a route that streams its own reply."""
        if self.handler is None:
            raise RuntimeError(f"{self.method} {self.path} did not come over a connection: nothing to stream to")
        return self.handler

    @property
    def body(self) -> bytes:
        if self._body is None:
            self._body = b"".join(self.body_chunks())
        return self._body

    def body_chunks(self, size: int = 1 << 20) -> Iterator[bytes]:
        """The body in pieces of at most ``size`` bytes, straight from the socket (once).  BodyTooLarge
        (a 413) if it is longer than the route accepts: checked here, so the caller is authenticated first."""
        if self.content_length > self.max_body:
            raise BodyTooLarge(self.max_body)
        source = None if self.body_consumed else self.source
        remaining = 0 if source is None else self.content_length
        self.body_consumed = True
        while source is not None and remaining > 0:
            try:
                chunk = source.read(min(size, remaining))
            except OSError as exc:  # TimeoutError: silent beyond the body timeout
                raise ClientGone(f"the body stopped arriving: {exc}") from exc
            if not chunk:
                raise ClientGone("the client closed the connection before the end of the body")
            remaining -= len(chunk)
            yield chunk

    def arg(self, name, default=None):
        values = self.query.get(name)
        return values[0] if values else default

    def json(self):
        try:
            return json.loads(self.body or b"null")
        except ValueError:
            return None


@dataclass
class Response:
    status: int = 200
    body: bytes = b""
    headers: Dict[str, str] = field(default_factory=dict)
    file_path: Optional[str] = None  # stream this file (with Range support) instead of body

    @classmethod
    def json(cls, payload, status=200, headers=None):
        merged = {"Content-Type": "application/json"}
        merged.update(headers or {})
        return cls(status, json.dumps(payload).encode(), merged)


Handler = Callable[[Request], Response]


MaxBody = Union[int, Callable[[], int]]  # bytes, or a function of the server's live settings


class RestApp:
    """Routes ``(method, '/path/{param}')`` to handlers; counts requests; applies knob latency.  A body
    longer than its route's ``max_body`` is refused (413) before the handler runs."""

    def __init__(self, knobs: Optional[Knobs] = None, log: Optional[RequestLog] = None):
        self.routes: List[Tuple[str, re.Pattern, str, Handler, MaxBody]] = []
        self.knobs = knobs or Knobs()
        self.log = log or RequestLog()

    def route(self, method: str, pattern: str, max_body: MaxBody = DEFAULT_MAX_BODY):
        regex = re.compile("^" + re.sub(r"\{(\w+)(:path)?\}", _param_regex, pattern) + "/?$")

        def register(handler):
            self.routes.append((method, regex, pattern, handler, max_body))
            return handler

        return register

    def add_routes(self, routes: Iterable[Tuple[Any, ...]],
                   wrap: Callable[[Callable], Handler] = lambda handler: handler):
        """Route each ``(method, pattern, handler[, max_body])`` of a server's table, the handler inside ``wrap``
        (what the server does around each of them)."""
        for method, pattern, handler, *max_body in routes:
            self.route(method, pattern, *max_body)(wrap(handler))

    def _match(self, request: Request):
        """The route for the request (or None) and the methods its path allows."""
        allowed: List[str] = []
        for route in self.routes:
            method, regex = route[:2]
            match = regex.match(request.path)
            if match and method == request.method:
                request.params = {k: unquote(v) for k, v in match.groupdict().items()}
                return route, allowed
            if match:
                allowed.append(method)
        return None, allowed

    def body_limit(self, request: Request) -> int:
        """The body size the request's route accepts (for apps that read the body before dispatching)."""
        route = self._match(request)[0]
        max_body = route[4] if route else DEFAULT_MAX_BODY
        return max_body() if callable(max_body) else max_body

    def dispatch(self, request: Request) -> Optional[Response]:
        """The route's reply; None where the handler has streamed its own."""
        route, allowed = self._match(request)
        if route is None:
            self.log.record("unrouted", f"{request.method} {request.path}")
            if allowed:
                return Response.json({"detail": "Method Not Allowed"}, 405, {"Allow": ", ".join(allowed)})
            return Response.json({"detail": "Not Found"}, 404)
        method, _, pattern, handler, _ = route
        request.max_body = self.body_limit(request)
        self.log.record(f"{method} {pattern}", request.path)
        self.knobs.delay()
        kind = garbage_for(self.knobs, request.path)
        return handler(request) if kind is None else garbled(kind, lambda: handler(request))


# -- the ``garbage`` knob: malformed replies, as a broken server or a proxy in between gives them ---------
# ``knobs.extra["garbage"] = {"ops/ls": "html", "files/list": b'{"data": 1}'}`` answers every request whose
# path ends in a key (``/filesystem/local/ops/ls``, ``/em/files/list``) with the kind of garbage named:
GARBAGE_KINDS = (
    "truncated-json",  # the real reply's body cut in half (a complete HTTP response with a broken body)
    "wrong-types",  # the real JSON reply with every value of another type (a string becomes a number ...)
    "html",  # 200 with a proxy's HTML page instead of the reply
    "empty",  # 200 with an empty body
    "short-body",  # the real reply announcing its full Content-Length but sending half, then closing
)
# For fuzzing, a ``bytes`` value is sent verbatim as a 200 JSON body, a ``(status, bytes)`` pair with that
# status.  Delete the key (or the whole ``garbage`` dict) to switch it off.
# Replies a handler streams itself (EM downloads) are not garbled: ``drop_after_bytes`` cuts those.
_PROXY_PAGE = b"<html><head><title>502 Bad Gateway</title></head><body><h1>Bad Gateway</h1></body></html>"


def garbage_for(knobs: Knobs, path: str):
    """The garbage kind (or bytes) the knob orders for a request to ``path``; None for an honest reply."""
    path = path.rstrip("/")
    return next((kind for key, kind in dict(knobs.extra.get("garbage") or {}).items()
                 if path.endswith("/" + key.strip("/"))), None)


def garbled(kind, reply: Callable[[], Optional[Response]]) -> Optional[Response]:
    """The reply ``kind`` of garbage stands for; ``reply()`` gives the honest one where it is needed."""
    if isinstance(kind, (bytes, tuple)):
        status, body = kind if isinstance(kind, tuple) else (200, kind)
        return Response(status, body, {"Content-Type": "application/json"})
    if kind == "html":
        return Response(200, _PROXY_PAGE, {"Content-Type": "text/html"})
    if kind == "empty":
        return Response(200, b"", {"Content-Type": "application/json"})
    if kind not in GARBAGE_KINDS:
        raise ValueError(f"unknown garbage kind {kind!r} (known: {', '.join(GARBAGE_KINDS)})")
    honest = reply()
    if honest is None or honest.file_path is not None:  # streamed or a file: nothing to garble here
        return honest
    body = honest.body or b'{"output": null}'
    if kind == "truncated-json":
        return Response(honest.status, body[: len(body) // 2], honest.headers)
    if kind == "wrong-types":
        try:
            mangled = json.dumps(_wrong_types(json.loads(body))).encode()
        except ValueError:  # not JSON at all (a download): the JSON number 0 instead
            mangled = b"0"
        return Response(honest.status, mangled, dict(honest.headers, **{"Content-Type": "application/json"}))
    headers = dict(honest.headers, **{"Content-Length": str(len(body)), "Connection": "close"})
    return Response(honest.status, body[: len(body) // 2], headers)  # short-body


def _wrong_types(value):
    """Every leaf of a JSON value replaced by one of another type; containers keep their shape."""
    if isinstance(value, dict):
        return {key: _wrong_types(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_wrong_types(item) for item in value]
    if isinstance(value, str):
        return len(value)
    if value is None:
        return {}
    return [str(value)]  # numbers and booleans


def _param_regex(match):
    return f"(?P<{match.group(1)}>.+)" if match.group(2) else f"(?P<{match.group(1)}>[^/]+)"


class _RestHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as real gateways do
    disable_nagle_algorithm = True  # headers and body are separate writes: avoid a delayed-ACK wait per reply
    server_version = "hpcfs-local"
    app: RestApp

    server: "_ThreadingHTTPServer"
    peer: Optional[Peer]

    def log_message(self, *args):  # requests are counted, not printed
        pass

    def setup(self):
        super().setup()
        self.peer = self.server.peer_of(self.connection)
        self.rfile.close()  # replaced by input under the server's clocks (closing drops its hold on the socket)
        self.input = _TimedInput(self.connection, self.server.limits)
        self.rfile = io.BufferedReader(self.input)

    def handle(self):
        if self._handshake():
            super().handle()

    def _handshake(self) -> bool:
        """A TLS connection's handshake, here in the connection's own thread under the header timeout: in
        accept(), the server's one accepting thread, a client that never says hello would stop the server."""
        if not isinstance(self.connection, ssl.SSLSocket):
            return True
        self.connection.settimeout(self.server.limits.header_timeout)
        try:
            self.connection.do_handshake()
        except OSError:  # timed out, garbage, or gone: nobody to answer
            return False
        return True

    def handle_one_request(self):
        self.input.expect_headers()  # a TimeoutError in there closes the connection (BaseHTTPRequestHandler)
        super().handle_one_request()

    def _handle(self):
        self.input.expect_body()
        try:
            self._dispatch()
        except ClientGone:
            self.close_connection = True

    def _dispatch(self):
        split = urlsplit(self.path)
        try:
            length = max(int(self.headers.get("Content-Length") or 0), 0)
        except ValueError:
            length = 0
            self.close_connection = True  # where the next request would start is unknown
        request = Request(
            method=self.command,
            path=split.path,
            query=parse_qs(split.query, keep_blank_values=True),
            headers=self.headers,
            source=self.rfile,
            content_length=length,
            client_ip=self.client_address[0],
            handler=self,
        )
        try:
            response = self.server.app.dispatch(request)
        except ClientGone:
            raise
        except BodyTooLarge as exc:
            self.server.app.log.record("too-large", f"{request.method} {request.path}")
            response = Response.json({"detail": f"Request body larger than {exc.args[0]} bytes"}, 413)
        except Exception as exc:  # a bug in a handler must show up as a 500, not a dropped socket
            response = Response.json({"detail": f"internal error: {exc}"}, 500)
        if length and not request.body_consumed:  # refused unread: the body must not pass for a request
            self.close_connection = True
            if response is not None:
                response.headers.setdefault("Connection", "close")
        if response is not None:  # None: the handler streamed its own reply
            self._send(response)

    def _send(self, response: Response):
        if response.file_path is not None:
            return send_file(self, response.file_path, response.headers)
        self.send_response(response.status)
        for key, value in response.headers.items():
            self.send_header(key, value)  # "Connection: close" ends the connection after this reply
        if "Content-Length" not in response.headers:  # a garbled reply may announce another length
            self.send_header("Content-Length", str(len(response.body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(response.body)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _handle


def send_file(handler, path: str, headers: Optional[Dict[str, str]] = None):
    """Serve a local file with single-range ``Range: bytes=a-b`` support (206/416), as object stores do."""
    size = os.path.getsize(path)
    start, end, status = 0, size - 1, 200
    spec = handler.headers.get("Range")
    if spec:
        match = re.match(r"bytes=(\d*)-(\d*)$", spec.strip())
        if match and (match.group(1) or match.group(2)):
            if match.group(1):
                start = int(match.group(1))
                end = min(int(match.group(2)), size - 1) if match.group(2) else size - 1
            else:
                start, end = max(size - int(match.group(2)), 0), size - 1
            status = 206
            if start >= size or start > end:
                handler.send_response(416)
                handler.send_header("Content-Range", f"bytes */{size}")
                handler.send_header("Content-Length", "0")
                handler.end_headers()
                return
    length = max(end - start + 1, 0)
    handler.send_response(status)
    for key, value in (headers or {}).items():
        handler.send_header(key, value)
    handler.send_header("Accept-Ranges", "bytes")
    if status == 206:
        handler.send_header("Content-Range", f"bytes {start}-{end}/{size}")
    handler.send_header("Content-Length", str(length))
    handler.end_headers()
    if handler.command == "HEAD":
        return
    with open(path, "rb") as source:
        source.seek(start)
        remaining = length
        while remaining:
            chunk = source.read(min(remaining, 1 << 20))
            if not chunk:
                break
            handler.wfile.write(chunk)
            remaining -= len(chunk)


class _TimedInput(io.RawIOBase):
    """A connection's input under the server's clocks: a request line and its headers must all be in within
    ``header_timeout`` of the wait for them starting (a client sending a byte now and then gains nothing), and
    a body may pause at most ``body_timeout`` per read.  Past either, reads raise TimeoutError."""

    def __init__(self, connection: socket.socket, limits: ConnectionLimits):
        self.connection, self.limits = connection, limits
        self.deadline: Optional[float] = None

    def readable(self) -> bool:
        return True

    def expect_headers(self):
        self.deadline = time.monotonic() + self.limits.header_timeout

    def expect_body(self):
        self.deadline = None
        self.connection.settimeout(self.limits.body_timeout)  # bounds each write of the reply too

    def readinto(self, buffer) -> int:
        if self.deadline is not None:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("the request line and headers took too long")
            self.connection.settimeout(left)
        return self.connection.recv_into(buffer)


_BUSY_BODY = b'{"detail": "Too many connections from you: close some and try again"}'
_BUSY_REPLY = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\n"
               b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(_BUSY_BODY), _BUSY_BODY))


class _ThreadingHTTPServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
    """One thread per admitted connection.  Admission happens in the accepting thread, from the kernel's
    socket table: each local user (each other address) gets ``max_per_peer`` connections, everyone but the
    server's own user ``max_connections`` together, so nobody can take the server from its owner."""

    app: "RestApp"  # set by RestServer, read by the handlers
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address, handler):
        super().__init__(address, handler)
        self.limits = ConnectionLimits()
        self.peers: Dict[socket.socket, Peer] = {}  # the admitted connections
        self.connections_lock = threading.Lock()

    @property
    def connections(self) -> Set[socket.socket]:
        with self.connections_lock:
            return set(self.peers)

    def peer_of(self, connection: socket.socket) -> Optional[Peer]:
        with self.connections_lock:
            return self.peers.get(connection)

    def verify_request(self, request, client_address) -> bool:
        peer = Peer(peer_uid(request), client_address[0])
        with self.connections_lock:
            admitted = self._has_room(peer)
            if admitted:
                self.peers[request] = peer
        if not admitted:
            self.app.log.record("connection-refused", peer.key)
            _refuse(request)
        return admitted

    def _has_room(self, peer: Peer) -> bool:
        same = sum(1 for other in self.peers.values() if other.key == peer.key)
        others = sum(1 for other in self.peers.values() if not other.is_owner)
        return same < self.limits.max_per_peer and (peer.is_owner or others < self.limits.max_connections)

    def shutdown_request(self, request):
        with self.connections_lock:
            self.peers.pop(request, None)
        super().shutdown_request(request)

    def handle_error(self, request, client_address):
        if not isinstance(sys.exc_info()[1], ConnectionError):  # a client that left is no server error
            super().handle_error(request, client_address)


def _refuse(connection: socket.socket):
    """A 503 for a connection over its cap, without waiting: over TLS nothing (no handshake was made)."""
    if isinstance(connection, ssl.SSLSocket):
        return
    connection.setblocking(False)
    try:
        connection.send(_BUSY_REPLY)
    except OSError:
        pass


class RestServer:
    """A RestApp on a port, in a background thread.  ``tls_dir`` enables HTTPS with a self-signed cert."""

    def __init__(self, app: RestApp, host: str = DEFAULT_HOST, port: int = 0, tls_dir: Optional[str] = None):
        handler = type("Handler", (_RestHandler,), {})
        with binding(host, port):
            self.httpd = _ThreadingHTTPServer((host, port), handler)
        self.httpd.app = app
        self.host, self.port = self.httpd.server_address[:2]
        self.scheme = "http"
        self.cert_file = None
        if tls_dir is not None:
            self.cert_file, context = self_signed_context(tls_dir)
            self.use_tls(context)

    def use_tls(self, context: ssl.SSLContext):
        """Serve HTTPS.  Each handshake happens in its connection's thread, under the header timeout."""
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True, do_handshake_on_connect=False)
        self.scheme = "https"

    @property
    def limits(self) -> ConnectionLimits:
        return self.httpd.limits

    @property
    def url(self):
        return f"{self.scheme}://{self.host}:{self.port}"

    def start(self, thread_name: str = "rest-server"):
        # A short poll interval makes stop() quick (tests start and stop servers often).
        threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, name=thread_name, daemon=True
        ).start()
        return self

    def stop(self):
        """Stop as a killed process would: kept-alive client connections end too."""
        self.httpd.shutdown()
        self.httpd.server_close()
        for connection in self.httpd.connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


LocalServerT = TypeVar("LocalServerT", bound="LocalServer")


class LocalServer:
    """What each local REST server (EM, Flux, UNICORE/X, FirecREST) is around its routes: ``private``, the
    directory of its TLS key and generated secrets, and the RestServers of its ports, the API's first.  A
    subclass binds its ports with ``listen``; ``end_jobs`` ends what it runs besides them."""

    thread_name = "rest-server"  # of the threads that serve the ports (thread dumps name the server)

    def __init__(self, private_prefix: str):
        self.private = PrivateDirectory(private_prefix)
        self.listeners: List[RestServer] = []
        self.cert_file: Optional[str] = None
        self._tls: Optional[ssl.SSLContext] = None

    def listen(self, app: RestApp, host: str, port: int, tls: bool = False) -> RestServer:
        """A RestServer for ``app`` on ``host:port`` (HTTPS for ``tls``).  Where the port is taken, nothing of
        this server may stay behind: the ports bound before are closed and ``private`` is removed."""
        try:
            server = RestServer(app, host, port)
        except OSError:
            for bound in self.listeners:
                bound.httpd.server_close()
            self.private.remove()
            raise
        if tls:
            server.use_tls(self._tls_context())
        self.listeners.append(server)
        return server

    def _tls_context(self) -> ssl.SSLContext:
        """One self-signed certificate for all the server's ports: one file (``cert_file``) for clients to trust."""
        if self._tls is None:
            self.cert_file, self._tls = self_signed_context(self.private.path)
        return self._tls

    @property
    def url(self) -> str:
        return self.listeners[0].url

    @property
    def port(self) -> int:
        return self.listeners[0].port

    def start(self: LocalServerT) -> LocalServerT:
        for server in self.listeners:
            server.start(self.thread_name)
        return self

    def stop(self):
        self.end_jobs()
        for server in self.listeners:
            server.stop()
        self.private.remove()

    def end_jobs(self):
        """Stop what the server runs besides its ports (jobs), before they close: none here."""


def served_directory(root: Optional[str], prefix: str) -> str:
    """The real path of the directory a server serves, made if missing; a new temporary one for None."""
    path = os.path.realpath(root or temporary_directory(prefix))
    os.makedirs(path, exist_ok=True)
    return path


def run_until_interrupted(server, banner: str = ""):
    """Print ``banner``, block until Ctrl-C or SIGTERM, then stop ``server`` (for ``hpcfs serve``).  The
    banner comes after the SIGTERM handler: a script that kills the server as soon as it has read the
    banner must still get the cleanup (TLS key and generated passwords removed)."""
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        if banner:
            print(banner, flush=True)
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


def _interrupt(*_):
    # Not raise_signal(SIGINT): a shell script's background job ignores SIGINT, so `kill` would do nothing.
    raise KeyboardInterrupt


def temporary_directory(prefix="hpcfs-"):
    return tempfile.mkdtemp(prefix=prefix)


# -- jobs (Flux, UNICORE/X) ------------------------------------------------------------------------------
JOB_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"  # a login's default PATH


def job_environment() -> Dict[str, str]:
    """What every job starts from: a login's minimal variables for the server's user.  Never the server's
    own environment, which holds its credentials and whatever else its starter had exported."""
    try:
        account = pwd.getpwuid(os.geteuid())
        name, home, shell = account.pw_name, account.pw_dir, account.pw_shell
    except KeyError:  # a uid without a passwd entry (containers)
        name, home, shell = str(os.geteuid()), "/", ""
    return {"PATH": JOB_PATH, "HOME": home, "USER": name, "LOGNAME": name, "SHELL": shell or "/bin/sh",
            "LANG": os.environ.get("LANG") or "C.UTF-8"}


def terminate_group(process: Optional[subprocess.Popen]):
    """SIGTERM to a job's process group (its shell and all it started); nothing where the job has no process
    yet or its group is gone."""
    if process is not None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
