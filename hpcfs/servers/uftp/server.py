"""A local, wire-faithful UFTP server: Auth-server REST endpoint (HTTPS), UFTPD command port and listen port.

The real pieces are a Java Auth server that pushes ``key=value ... END`` transfer requests into UFTPD's
command port, and UFTPD, which then serves an FTP-like session per login.  Here both run in one process,
and the REST endpoint creates jobs through the same command handler the command port uses.  Behaviour,
reply texts and quirks follow UFTPD 3.5.3 and the UNICORE Auth server (github.com/UNICORE-EU/uftpd,
github.com/UNICORE-EU/uftp); sessions live in ``session``.
"""
import base64
import binascii
import hmac
import os
import secrets
import socket
import string
import threading
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from ... import registry
from .. import common
from .session import Session, UFTPError
from .wire import ControlConnection

VERSION = "3.5.3"
DEFAULTS = {  # live settings, changeable by tests through knobs.extra
    "session_limit": 16,  # UFTPD MAX_CONNECTIONS: unused jobs plus live sessions per user
    "secret_lifetime": 300.0,  # an unused job expires after this many seconds
    "cleanup_interval": 5.0,  # how often finished sessions and expired jobs are reaped
    "max_streams": 4,  # cap for NOOP n
    "data_accept_timeout": 30.0,  # a PASV/EPSV listener waits this long; then the session ends
    "data_chunk_latency": 0.0,  # seconds slept after each data chunk
    # (lowest, highest) ports for PASV/EPSV listeners, as UFTPD's PORT_RANGE=lo:hi; None: any free port
    "data_port_range": None,
    # 227/229 replies name the listener's port plus this: a relay in front of the data ports listens there
    # (the bench, benchmarks/relay.py, delays data that way); 0 names the listener itself
    "advertised_data_port_offset": 0,
    "corrupt_transfers": 0,  # this many next downloads get one byte flipped on the way (a faulty link or disk)
}


@dataclass(eq=False)
class TransferJob:
    """One accepted transfer request (one secret)."""

    user: str
    secret: str = field(repr=False)
    client_ips: List[str]
    base_file: str
    persistent: bool
    streams: int
    expires: float
    key: Optional[bytes] = field(default=None, repr=False)
    algo: str = "n/a"
    compress: bool = False
    sessions: List[threading.Event] = field(default_factory=list)  # set when that session has ended

    @property
    def layered(self):
        """Data goes through gzip and/or a cipher, so each transfer ends by closing the connection."""
        return self.compress or self.key is not None


class LoginRefused(Exception):
    """The reply line that ends a login attempt."""


class UFTPServer:
    """Auth REST + listen port (+ the UFTPD command port when ``cmd_port`` is given), in background threads.

    ``users`` maps user to password; None generates a password for the invoking user, written to
    ``generated_credentials`` (a 0600 file).  The command port takes transfer requests only with the
    ``command-secret=`` line that ``cmd_secret`` (or the generated ``cmd_secret_file``) holds: without it
    anyone on the machine could push a job and log in as any user.  The Auth endpoint needs no command port:
    it creates jobs in-process."""

    def __init__(self, root, users=None, host=common.DEFAULT_HOST, auth_port=0, listen_port=0, cmd_port=None,
                 server_name="TEST", tokens=None, authorized_keys=None, version=VERSION, tls_dir=None,
                 knobs=None, log=None, cmd_secret=None, **settings):
        self.root = root
        self.real_root = os.path.realpath(root)
        self.private = common.PrivateDirectory("hpcfs-uftp-", tls_dir)
        self.users, self.generated_credentials = common.accounts_or_generated(users, self.private)
        self.tokens = dict(tokens or {})  # bearer token -> user
        self.authorized_keys = authorized_keys
        self.host = host
        self.server_name = server_name
        self.version = version
        self.knobs = knobs or common.Knobs()
        for name, value in DEFAULTS.items():
            self.knobs.extra.setdefault(name, settings.pop(name, value))
        if settings:
            raise TypeError(f"unknown settings: {', '.join(settings)}")
        _check_data_ports(self.setting("data_port_range"), self.setting("advertised_data_port_offset"))
        self.log = log or common.RequestLog()
        self.jobs: Dict[str, TransferJob] = {}
        self.user_counts: Dict[str, int] = {}
        self.user_peaks: Dict[str, int] = {}  # the most each user's count ever reached, for tests
        self._lock = threading.Lock()
        self._controls = set()
        self._stopping = threading.Event()
        self.tls_dir = self.private.path
        self.listener = self.cmd_listener = self.cmd_port = self.cmd_secret_file = None
        try:
            self.listener = common.listening_socket(host, listen_port)
            self.listen_port = self.listener.getsockname()[1]
            if cmd_port is not None:
                self.cmd_listener = common.listening_socket(host, cmd_port)
                self.cmd_port = self.cmd_listener.getsockname()[1]
                if cmd_secret is None:
                    cmd_secret = secrets.token_urlsafe(24)
                    self.cmd_secret_file = self.private.write_secret("command-secret", cmd_secret + "\n")
            self.cmd_secret = cmd_secret
            self.rest = common.RestServer(self._rest_app(), host, auth_port, tls_dir=self.tls_dir)
        except OSError:  # a port in use: nothing of this server may stay behind
            for listener in filter(None, (self.listener, self.cmd_listener)):
                listener.close()
            self.private.remove()
            raise
        self.cert_file = self.rest.cert_file
        self.auth_port = self.rest.port
        self._threads = []

    def setting(self, name):
        return self.knobs.extra[name]

    def take_corruption(self) -> bool:
        """Whether this download gets a flipped byte (``corrupt_transfers``, counted down)."""
        with self._lock:
            due = self.knobs.extra["corrupt_transfers"] > 0
            self.knobs.extra["corrupt_transfers"] -= due
            return due

    @property
    def auth_url(self):
        return f"https://{self.host}:{self.auth_port}/rest/auth/{self.server_name}"

    def start(self):
        self.rest.start()
        loops = [(self._accept_logins, "uftp-listen"), (self._cleanup_loop, "uftp-cleanup")]
        if self.cmd_listener is not None:
            loops.append((self._accept_commands, "uftp-cmd"))
        for target, name in loops:
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self):
        self._stopping.set()
        self.rest.stop()
        for listener in filter(None, (self.listener, self.cmd_listener)):
            _shutdown(listener)
        with self._lock:
            controls = list(self._controls)
        for control in controls:
            control.close()
        for thread in self._threads:
            thread.join(timeout=5)
        self.private.remove()

    # -- jobs: the command port's transfer request, shared with the Auth REST endpoint -------------------
    def handle_command(self, request: Dict[str, str]) -> str:
        """Answer one command-port request (already parsed into key/value pairs)."""
        kind = request.get("request-type", "n/a")
        self.log.record(kind)
        if kind == "uftp-transfer-request":
            try:
                self._add_job(request)
            except (KeyError, ValueError) as exc:  # a missing field reads "ERROR::'user'", as in UFTPD
                return f"ERROR::{exc}"
            return f"OK::{self.listen_port}"
        if kind == "uftp-ping-request":
            return (f"Version: {self.version}\nListenPort: {self.listen_port}\nListenAddress: {self.host}\n"
                    f"MaxSessionsPerClient: {self.setting('session_limit')}\n")
        return f"ERROR::Unsupported request type '{kind}'"

    def _add_job(self, request):
        user, limit = request["user"], self.setting("session_limit")
        key, algo = _encryption(request.get("key"), request.get("algo"))
        job = TransferJob(
            user=user,
            secret=request["secret"],
            client_ips=request.get("client-ip", "").split(","),
            base_file=request.get("file", ""),
            persistent=request.get("persistent", "false").lower() == "true",
            streams=int(request.get("streams", "1")),
            expires=time.time() + self.setting("secret_lifetime"),
            key=key,
            algo=algo,
            compress=request.get("compress", "false").lower() == "true",
        )
        # what the grant's data connections do, counted (jobs themselves are reaped once their sessions end)
        cipher = algo if job.key is not None else "plain"
        self.log.record(f"job data {cipher}{' gzip' if job.compress else ''}")
        with self._lock:
            if self.user_counts.get(user, 0) >= limit:
                self.log.record("too-many", user)
                raise ValueError(f"Too many active sessions for '{user}' - server limit is {limit}")
            if job.secret in self.jobs:
                raise ValueError("Duplicate secret - this is not allowed.")
            self._count_one_more(user)
            self.jobs[job.secret] = job

    def _claim(self, secret, peer_ip):
        """The job and a fresh session slot for a login, or LoginRefused with the real server's reply."""
        limit = self.setting("session_limit")
        with self._lock:
            job = None if self.knobs.refuse_logins else self.jobs.get(secret)
            if job is None:
                raise LoginRefused("530 Not logged in: no matching transfer request found")
            if peer_ip not in job.client_ips:
                raise LoginRefused(f"500 Error establishing connection: Rejecting connection for '{job.user}' "
                                   f"from {peer_ip}, allowed: {job.client_ips}")
            too_many = f"500 Too many active transfer requests / sessions for '{job.user}' - server limit is {limit}"
            if self.knobs.take_busy():
                raise LoginRefused(too_many)
            if job.sessions:  # the first session uses the job's own count; later ones add to it
                if not job.persistent:
                    raise LoginRefused("500 Session for these credentials is already running")
                if self.user_counts[job.user] + 1 > limit:
                    self.log.record("too-many", job.user)
                    raise LoginRefused(too_many)
                self._count_one_more(job.user)
            slot = threading.Event()
            job.sessions.append(slot)
        return job, slot

    def _count_one_more(self, user):
        """One more job or session of ``user`` (the lock held), and the peak it reaches."""
        count = self.user_counts[user] = self.user_counts.get(user, 0) + 1
        self.user_peaks[user] = max(self.user_peaks.get(user, 0), count)

    def _cleanup_loop(self):
        while not self._stopping.wait(self.setting("cleanup_interval")):
            self.reap()

    def reap(self):
        """Drop expired unused jobs and ended sessions; a job goes once its last session has ended."""
        now = time.time()
        with self._lock:
            for secret, job in list(self.jobs.items()):
                if not job.sessions:
                    if now > job.expires:
                        del self.jobs[secret]
                        self.user_counts[job.user] -= 1
                    continue
                ended = [slot for slot in job.sessions if slot.is_set()]
                for slot in ended:
                    job.sessions.remove(slot)
                    self.user_counts[job.user] -= 1
                if not job.sessions:
                    del self.jobs[secret]

    # -- command port --------------------------------------------------------------------------------------
    def _accept_commands(self):
        for sock in _accepted(self.cmd_listener, self._stopping):
            with sock:
                sock.settimeout(10)
                try:
                    request = _read_command_request(sock.makefile("rb"))
                    sock.sendall((self._answer_command_port(request) + "\n").encode())
                except Exception:  # one bad request must not end the command port
                    pass
                _shutdown(sock)

    def _answer_command_port(self, request: Dict[str, str]) -> str:
        offered = request.pop("command-secret", "")
        if not hmac.compare_digest(offered.encode(), self.cmd_secret.encode()):
            self.log.record("command-refused")
            return "ERROR::Unauthorized: this command port needs the line command-secret=<its secret>"
        return self.handle_command(request)

    # -- listen port ---------------------------------------------------------------------------------------
    def _accept_logins(self):
        for sock in _accepted(self.listener, self._stopping):
            threading.Thread(target=self._serve_control, args=(sock,), name="uftp-session", daemon=True).start()

    def _serve_control(self, sock):
        control = ControlConnection(sock)
        with self._lock:
            self._controls.add(control)
        slot = None
        try:
            job, slot = self._login(control)
            control.reply("230 Login successful")
            Session(self, control, job).run()
        except (LoginRefused, UFTPError, OSError) as exc:
            if isinstance(exc, LoginRefused):
                _quietly(control.reply, str(exc))
        finally:
            if slot is not None:
                slot.set()
            control.close()
            with self._lock:
                self._controls.discard(control)

    def _login(self, control):
        """Greeting, optional SYST, then ``USER anonymous`` + ``PASS <secret>``; anything else ends it."""
        control.reply(f"220 UFTPD {self.version}, https://www.unicore.eu")
        syst_seen = False
        while True:
            line = control.read_line()
            if line is None:
                raise OSError("closed before login")
            verb = line.split(" ", 1)[0].upper()
            self.log.record(verb, line if verb == "USER" else "")
            self.knobs.delay()
            if verb == "SYST" and not syst_seen:
                syst_seen = True
                control.reply("215 Unix Type: L8")
            elif line.upper().startswith("USER"):
                return self._claim(self._read_secret(control, line), control.peer_ip())
            else:
                raise LoginRefused("500 Protocol error")

    def _read_secret(self, control, user_line):
        secret = None
        if user_line == "USER anonymous":  # exact, as the real server compares it
            control.reply("331 Please specify the password")
            password_line = control.read_line() or ""
            self.log.record(password_line.split(" ", 1)[0].upper())
            self.knobs.delay()
            if password_line.startswith(("USER ", "PASS ")):
                secret = password_line.split(" ", 1)[1]
        if not secret or secret == "anonymous":
            raise LoginRefused("500 Client login does not comply with protocol.")
        return secret

    # -- Auth server REST ----------------------------------------------------------------------------------
    def _rest_app(self):
        app = common.RestApp(self.knobs, self.log)
        app.route("GET", "/rest/auth")(self._auth_info)
        app.route("GET", "/rest/auth/token")(self._issue_token)
        app.route("POST", "/rest/auth/{name}")(self._authenticate)
        return app

    def _authenticate(self, request):
        self.log.record("auth", request.params["name"])
        if request.params["name"] != self.server_name:
            return _error(404, f"No such server: '{request.params['name']}'")
        user = self._caller(request)
        if user is None:
            return _error(401, "Authentication failed")
        body = request.json() or {}
        if not isinstance(body, dict):
            return _error(400, "Request body must be a JSON object")
        secret = "".join(secrets.choice(string.ascii_lowercase) for _ in range(20))
        reply = self.handle_command(_transfer_request(user, secret, body, request.client_ip))
        if not reply.startswith("OK::"):
            return _error(500, reply.partition("::")[2])
        return common.Response.json({"success": True, "reason": "", "serverHost": self.host,
                                     "serverPort": int(reply[4:]), "secret": secret})

    def _auth_info(self, request):
        user = self._caller(request)
        if user is None:
            return _error(401, "Authentication failed")
        return common.Response.json({
            self.server_name: {
                "href": self.auth_url, "description": "hpcfs local UFTPD", "status": "OK",
                "uftpdServerVersion": self.version, "sessionLimit": self.setting("session_limit"),
                "uid": user, "gid": "NONE", "availableGroups": [], "reservations": [],
                "dataSharing": {"enabled": False},
            },
            "client": {"dn": user, "xlogin": {"UID": user}},
            "server": {"version": f"hpcfs-{self.version}"},
        })

    def _issue_token(self, request):
        user = self._caller(request)
        if user is None:
            return _error(401, "Authentication failed")
        token = secrets.token_urlsafe(32)
        self.tokens[token] = user
        return common.Response(200, token.encode(), {"Content-Type": "text/plain"})

    def _caller(self, request) -> Optional[str]:
        """The authenticated user: Basic password, a configured/issued bearer token, or an SSH-key JWT."""
        if self.knobs.refuse_logins:
            return None
        scheme, _, credential = (request.headers.get("Authorization") or "").partition(" ")
        if scheme.lower() == "basic":
            try:
                user, _, password = base64.b64decode(credential).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                return None
            known = self.users.get(user)
            return user if known is not None and hmac.compare_digest(known, password) else None
        if scheme.lower() == "bearer":
            if credential in self.tokens:
                return self.tokens[credential]
            if self.authorized_keys and credential.count(".") == 2:
                from .ssh_jwt import verify_ssh_jwt

                return verify_ssh_jwt(credential, self.authorized_keys)
        return None


def _check_data_ports(port_range: Optional[Tuple[int, int]], offset: int) -> None:
    """Refuse a data port range (or its advertised shift) that names ports TCP does not have, and a shift of
    ports nobody can know in advance (a relay must listen on the shifted ports before the server names them)."""
    if port_range is None:
        if offset:
            raise ValueError("advertised_data_port_offset needs a data_port_range")
        return
    lowest, highest = port_range
    if not 0 < lowest <= highest <= 65535:
        raise ValueError(f"data_port_range {port_range} is not lowest:highest within 1..65535")
    if not 0 < lowest + offset <= highest + offset <= 65535:
        raise ValueError(f"advertised_data_port_offset {offset} moves data ports {lowest}..{highest} "
                         "outside 1..65535")


def _transfer_request(user, secret, body, client_ip):
    """The command-port request an Auth server sends for a REST auth call (reference §2.1, §3)."""
    def flag(name):
        return "true" if str(body.get(name, False)).lower() == "true" else "false"

    request = {
        "request-type": "uftp-transfer-request",
        "client-ip": body.get("client") or client_ip,
        "user": user,
        "secret": secret,
        "persistent": flag("persistent"),
        "file": body.get("serverPath", ""),
        "streams": str(body.get("streamCount", 1)),
        "compress": flag("compress"),
        "append": flag("append"),
    }
    for wire, name in (("key", "encryptionKey"), ("algo", "encryptionAlgorithm"), ("group", "group")):
        if body.get(name):
            request[wire] = str(body[name])
    return request


def _encryption(encoded_key, algo):
    """Key bytes and algorithm of a job; without ``algo`` the key length decides, as in UFTPD."""
    if not encoded_key:
        return None, "n/a"
    key = base64.b64decode(encoded_key)
    algo = (algo or ("AES" if len(key) in (32, 40, 48) else "BLOWFISH")).upper()
    if algo not in ("AES", "BLOWFISH") or (algo == "BLOWFISH" and len(key) > 56) or \
            (algo == "AES" and len(key) not in (32, 40, 48)):
        raise ValueError("Illegal key length")
    return key, algo


def _error(status, message):
    return common.Response.json({"errorMessage": message, "status": status}, status)


def _read_command_request(stream):
    request = {}
    while True:
        line = stream.readline(8192).decode("utf-8", "replace")
        if not line or line.startswith("END"):
            return request
        key, sep, value = line.strip().partition("=")
        if sep:
            request[key] = value


def _accepted(listener, stopping):
    while not stopping.is_set():
        try:
            sock, _ = listener.accept()
        except OSError:
            if stopping.is_set():
                return
            continue
        yield sock


def _shutdown(sock):
    _quietly(sock.shutdown, socket.SHUT_RDWR)
    sock.close()


def _quietly(action, *args):
    try:
        action(*args)
    except OSError:
        pass


# -- CLI ---------------------------------------------------------------------------------------------------
def add_arguments(parser):
    parser.add_argument("--root", required=True, help="directory served as the server's /")
    common.add_secret_file_argument(parser, "--users-file", "--users", "user:password", "$UFTP_USER/$UFTP_PASSWORD")
    parser.add_argument("--authorized-keys", help="SSH public keys accepted for key-signed JWT logins")
    parser.add_argument("--host", default=common.DEFAULT_HOST, help="address to listen on (default 127.0.0.1)")
    port = registry.protocol_for("uftp").default_port
    parser.add_argument("--auth-port", type=int, default=port, help=f"Auth server HTTPS port (default {port})")
    parser.add_argument("--listen-port", type=int, default=64434, help="UFTPD FTP port (default 64434)")
    parser.add_argument("--cmd-port", type=int, help="open UFTPD's command port (closed by default: the Auth "
                                                     "server creates jobs itself); it asks for a secret")
    parser.add_argument("--cmd-secret-file", metavar="FILE",
                        help="file (mode 0600) with the command port's secret (default: generated)")
    parser.add_argument("--server-name", default="TEST", help="the UFTPD name in the Auth URL (default TEST)")
    parser.add_argument("--session-limit", type=int, default=DEFAULTS["session_limit"],
                        help=f"sessions per user (default {DEFAULTS['session_limit']})")
    common.add_latency_argument(parser)


def serve(args):
    users = common.configured_accounts(args.users_file, "UFTP_USER", "UFTP_PASSWORD")
    cmd_secret = None
    if args.cmd_secret_file:
        cmd_secret = common.read_private_file(args.cmd_secret_file, "command secret file").strip()
    ports = {"--auth-port": args.auth_port, "--listen-port": args.listen_port, "--cmd-port": args.cmd_port}
    with common.naming_ports(ports):
        server = UFTPServer(args.root, users, host=args.host, auth_port=args.auth_port,
                            listen_port=args.listen_port, cmd_port=args.cmd_port, server_name=args.server_name,
                            authorized_keys=args.authorized_keys, knobs=common.Knobs(latency=args.latency),
                            cmd_secret=cmd_secret, session_limit=args.session_limit).start()
    common.run_until_interrupted(server, _banner(server, args))


def _banner(server: UFTPServer, args) -> str:
    """How to connect, with no secret in it: generated ones are named by the 0600 file holding them."""
    host = args.host
    lines = [f"UFTP auth server: {server.auth_url}  (users: {', '.join(sorted(server.users)) or 'none'})"]
    if server.generated_credentials:
        lines.append(f"  no users configured: generated a password for {sorted(server.users)[0]} in "
                     f"{server.generated_credentials} (user:password, mode 0600; removed when the server stops)")
    lines += [f"  example URL:    uftp://USER@{host}:{server.auth_port}/rest/auth/{args.server_name}:/"
              "  (password from UFTP_PASSWORD)",
              f"  TLS certificate (self-signed): {server.cert_file}  (HPCFS_CA_FILE={server.cert_file})",
              f"UFTPD listen port:  {host}:{server.listen_port}"]
    if server.cmd_port is None:
        lines.append("UFTPD command port: closed (the Auth server creates jobs itself; --cmd-port opens it)")
    else:
        lines.append(f"UFTPD command port: {host}:{server.cmd_port}  (plain text, key=value ... END; each request "
                     f"needs command-secret=<the secret in {args.cmd_secret_file or server.cmd_secret_file}>)")
    return "\n".join(lines)
