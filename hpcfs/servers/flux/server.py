"""A local Flux RESTful API server (``hpcfs serve flux``): the same paths, bodies and status codes as
flux-restful-api, with jobs run as local subprocesses instead of on a Flux instance.

Endpoints under ``/v1``: ``jobs`` (ids; ``details``/``detail`` for infos, ``listing`` for a list, ``limit``),
``jobs/search``, ``jobs/{id}`` (info, or ``null`` for an unknown id), ``jobs/{id}/output`` (``{"Output":
[chunks]}``), ``jobs/{id}/output/stream`` (the chunks as they come, until the job ends), ``jobs/submit``,
``jobs/{id}/cancel``, ``nodes`` and ``token``.

Single-user mode asks for no credentials, but serves only the local user who started it: a connection
whose socket belongs to another user (the kernel's socket table says whose) is answered ``403``, since a
job runs as the server's user.  Multi-user mode (``--require-auth`` or ``FLUX_REQUIRE_AUTH``) answers
``401`` with ``WWW-Authenticate: Bearer``; the client signs ``{"user", "pass", "scope": "token"}`` with
``FLUX_SECRET_KEY`` (HS256) and exchanges it at ``POST /v1/token`` for a bearer token ``{"sub", "exp"}``;
an invalid or expired bearer token is ``403``.  Unlike upstream, the output stream needs the token too (a
job's output is the owner's).  Credentials come from ``FLUX_USER``, ``FLUX_TOKEN`` and ``FLUX_SECRET_KEY``,
never from the command line; those generated for a run go to a 0600 file.  Requests are authenticated
before their body is read, and bodies are capped (a submit is a few hundred bytes).

Jobs: ``command`` is split like a shell would (``shlex``) but run without one, in ``--root`` or in
``workdir`` below it, stdout and stderr interleaved line by line as Flux's ``guest.output`` does, with a
login's minimal environment (``PATH``, ``HOME``, ``USER``, ``LOGNAME``, ``SHELL``, ``LANG``) plus the
request's ``envars``: nothing of the server's own environment.
States are Flux's names: ``SCHED`` until the process starts, ``RUN``, ``INACTIVE``; ``result`` is
``COMPLETED``, ``FAILED``, ``CANCELED`` or ``TIMEOUT`` (``runtime`` seconds), ``returncode`` the exit
status (128 + signal for a killed job).  Job ids are Flux-style FLUIDs: milliseconds since the server
started, shifted left 24 bits, plus a sequence number, so a newer job has a larger id.
"""
import hmac
import itertools
import math
import os
import secrets
import select
import shlex
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, Optional, Tuple
from urllib.parse import urlsplit

import jwt

from ... import registry
from ..common import (DEFAULT_HOST, Knobs, LocalServer, OutsideRoot, Peer, Request, RequestLog, Response, RestApp,
                     _RestHandler, confine, job_environment, naming_ports, run_until_interrupted, served_directory,
                     terminate_group)

DEFAULT_PORT = registry.protocol_for("flux").default_port
MAX_BODY = 64 << 10  # a submit request is a few hundred bytes
CREDENTIAL_VARIABLES = {"user": "FLUX_USER", "token": "FLUX_TOKEN", "secret_key": "FLUX_SECRET_KEY"}
NO_OUTPUT = {"Message": "The output does not exist yet, or the jobid is incorrect."}
NOT_AUTHENTICATED = Response.json({"detail": "Not authenticated"}, 401, {"WWW-Authenticate": "Bearer"})
INVALID_TOKEN = Response.json({"detail": "Could not validate credentials"}, 403)
FOREIGN_USER = Response.json({"detail": "This single-user server serves only the local user who started it "
                                        "(its jobs run as that user): start it with --require-auth to share it"},
                             403)


@dataclass
class Job:
    """One submitted command and everything the API reports about it."""

    id: int
    command: List[str]
    cwd: str
    runtime: float = 0.0  # seconds before the job is killed; 0: unlimited
    t_submit: float = field(default_factory=time.time)
    t_run: float = 0.0
    t_inactive: float = 0.0
    state: str = "SCHED"
    result: str = ""
    returncode: Optional[int] = None
    waitstatus: Optional[int] = None
    exception_type: str = ""
    chunks: List[str] = field(default_factory=list)
    process: Optional[subprocess.Popen] = None
    changed: threading.Condition = field(default_factory=threading.Condition)

    def info(self) -> dict:
        """What ``GET /v1/jobs/{id}`` answers: Flux's job-list attributes plus the server's additions."""
        return {
            "id": self.id, "userid": os.getuid(), "urgency": 16, "priority": 16,
            "name": os.path.basename(self.command[0]),
            "cwd": self.cwd, "ntasks": 1, "ncores": 1, "nnodes": 1, "ranks": "0", "nodelist": socket.gethostname(),
            "duration": self.runtime, "t_submit": self.t_submit, "t_depend": self.t_submit,
            "t_run": self.t_run, "t_cleanup": self.t_inactive, "t_inactive": self.t_inactive,
            "state": self.state, "result": self.result, "success": self.result == "COMPLETED",
            "returncode": self.returncode, "waitstatus": self.waitstatus,
            "runtime": (self.t_inactive or time.time()) - self.t_run if self.t_run else 0.0,
            "exception": {"occurred": bool(self.exception_type), "severity": 0 if self.exception_type else None,
                          "type": self.exception_type or None, "note": ""},
        }

    def follow(self, idle: float = 1.0) -> Iterator[str]:
        """The output chunks as they come, until the job is inactive and all are given; an empty chunk
        after ``idle`` seconds without output, so the caller can check that its reader is still there."""
        given = 0
        while True:
            with self.changed:
                if given == len(self.chunks) and self.state != "INACTIVE":
                    self.changed.wait(idle)
                fresh = self.chunks[given:]
                ended = not fresh and self.state == "INACTIVE"
            if ended:
                return
            if not fresh:
                yield ""
                continue
            given += len(fresh)
            yield from fresh


class JobRunner:
    """Runs jobs as local process groups and records their output and end."""

    def __init__(self, root: str):
        self.root = root
        self.environment = job_environment()
        self.jobs: Dict[int, Job] = {}
        self._lock = threading.Lock()
        self._started = time.monotonic()
        self._sequence = itertools.count()

    def _new_id(self) -> int:
        milliseconds = int((time.monotonic() - self._started) * 1000) + 1
        return (milliseconds << 24) | (next(self._sequence) & 0xFFFFFF)

    def submit(self, command: List[str], cwd: str, envars: Dict[str, str], runtime: float) -> Job:
        job = Job(self._new_id(), command, cwd, runtime)
        with self._lock:
            self.jobs[job.id] = job
        environment = dict(self.environment, **{str(k): str(v) for k, v in envars.items()})
        threading.Thread(target=self._run, args=(job, environment), name=f"flux-job-{job.id}", daemon=True).start()
        return job

    def _run(self, job: Job, environment: Dict[str, str]):
        try:
            process = subprocess.Popen(job.command, cwd=job.cwd, env=environment, stdin=subprocess.DEVNULL,
                                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        except OSError as exc:  # no such program: Flux reports an exec failure as a job exception
            self._append(job, f"flux-job: {job.command[0]}: {exc.strerror}\n")
            return self._finish(job, 127, "exec")
        with job.changed:
            job.process, job.state, job.t_run = process, "RUN", time.time()
            cancelled_before_start = bool(job.exception_type)
            job.changed.notify_all()
        if cancelled_before_start:  # cancel() found no process yet: it is stopped as it starts
            terminate_group(process)
        if job.runtime:
            timer = threading.Timer(job.runtime, self._time_out, args=(job,))
            timer.daemon = True
            timer.start()
        output = process.stdout
        assert output is not None  # started with stdout=PIPE
        for line in iter(output.readline, b""):
            self._append(job, line.decode("utf-8", "replace"))
        output.close()
        status = process.wait()
        self._finish(job, status if status >= 0 else 128 - status, job.exception_type)

    @staticmethod
    def _append(job: Job, chunk: str):
        with job.changed:
            job.chunks.append(chunk)
            job.changed.notify_all()

    @staticmethod
    def _finish(job: Job, returncode: int, exception_type: str):
        results = {"cancel": "CANCELED", "timeout": "TIMEOUT"}
        with job.changed:
            job.returncode = returncode
            job.waitstatus = returncode - 128 if returncode > 128 else returncode << 8
            job.exception_type = exception_type
            job.result = results.get(exception_type) or ("COMPLETED" if returncode == 0 else "FAILED")
            job.t_inactive = time.time()
            job.t_run = job.t_run or job.t_inactive
            job.state = "INACTIVE"
            job.changed.notify_all()

    def _time_out(self, job: Job):
        self.cancel(job, "timeout")

    def cancel(self, job: Job, reason: str = "cancel") -> bool:
        """Kill the job's process group; False if it has already ended."""
        with job.changed:
            if job.state == "INACTIVE":
                return False
            job.exception_type = reason
            process = job.process
        terminate_group(process)
        return True

    def newest_first(self) -> List[Job]:
        with self._lock:
            return sorted(self.jobs.values(), key=lambda job: job.id, reverse=True)

    def get(self, jobid: str) -> Optional[Job]:
        try:
            return self.jobs.get(int(jobid))
        except ValueError:
            return None

    def stop(self):
        for job in self.newest_first():
            self.cancel(job)


class TokenIssuer:
    """The multi-user mode's credentials: the shared user/token pair and the HS256 key for both JWTs."""

    def __init__(self, user: str, token: str, secret_key: str, lifetime: float):
        self.user, self._token, self._key, self.lifetime = user, token, secret_key, lifetime
        self.clock: Callable[[], float] = time.time  # what "now" is for issuing and expiry; tests move it

    def exchange(self, header: str) -> Optional[str]:
        """A bearer token for a valid ``Bearer <JWT {user, pass, scope: token}>`` header, else None."""
        claims = self._claims(header)
        if not claims or claims.get("scope") != "token":
            return None
        user_ok = hmac.compare_digest(str(claims.get("user", "")).encode(), self.user.encode())
        pass_ok = hmac.compare_digest(str(claims.get("pass", "")).encode(), self._token.encode())
        if not (user_ok and pass_ok):
            return None
        # Rounded up: a token lives at least its lifetime (rounded down, a 1 s token could live 10 ms).
        expires = math.ceil(self.clock() + self.lifetime)
        return jwt.encode({"sub": self.user, "exp": expires}, self._key, "HS256")

    def accepts(self, header: str) -> bool:
        claims = self._claims(header, require=["exp", "sub"])
        return claims is not None and claims.get("sub") == self.user

    def _claims(self, header: str, require=()) -> Optional[dict]:
        scheme, _, credential = (header or "").partition(" ")
        if scheme.lower() != "bearer" or not credential:
            return None
        try:
            # Expiry is checked against self.clock below, not against PyJWT's own clock.
            claims = jwt.decode(credential.strip(), self._key, algorithms=["HS256"],
                                options={"require": list(require), "verify_exp": False})
        except jwt.PyJWTError:
            return None
        expires = claims.get("exp", math.inf)
        return claims if isinstance(expires, (int, float)) and expires > self.clock() else None


class _FluxHandler(_RestHandler):
    """Refuses a request before its body is read: unauthenticated, or a body larger than any the API takes."""

    def _handle(self):
        refusal = self.server.app.refusal(self.command, urlsplit(self.path).path, self.headers, self.peer)
        if refusal is not None:
            self.close_connection = True  # the unread body must not be taken for the next request
            return self._send(refusal)
        return super()._handle()

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _handle


class _FluxApp(RestApp):
    def __init__(self, server: "FluxServer"):
        super().__init__(server.knobs, server.log)
        self.server = server

    def refusal(self, method: str, path: str, headers, peer: Optional[Peer]) -> Optional[Response]:
        issuer = self.server.issuer
        if issuer is None and not (peer and peer.is_owner):
            self.log.record("foreign-user", f"{method} {path} from {peer.key if peer else 'nobody known'}")
            return FOREIGN_USER
        try:
            length = int(headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_BODY:
            return Response.json({"detail": f"request body over {MAX_BODY} bytes"}, 413)
        if issuer is None or path.rstrip("/") == "/v1/token" or not path.startswith("/v1/"):
            return None
        header = headers.get("Authorization")
        if issuer.accepts(header):
            return None
        self.log.record("unauthenticated", f"{method} {path}")
        return INVALID_TOKEN if header and header.lower().startswith("bearer ") else NOT_AUTHENTICATED


class FluxServer(LocalServer):
    """The Flux RESTful API on 127.0.0.1 in a background thread; ``start()`` returns self, ``stop()`` ends
    it and its jobs.  ``issuer`` None is single-user mode (no credentials; the server's own user only)."""

    def __init__(self, root: Optional[str] = None, host: str = DEFAULT_HOST, port: int = 0, *,
                 credentials: Optional[Dict[str, str]] = None, access_lifetime: float = 600 * 60):
        """``credentials``: ``{"user", "token", "secret_key"}`` for multi-user mode, None for single-user."""
        self.root = served_directory(root, "hpcfs-flux-")
        super().__init__("hpcfs-flux-")  # credentials generated for a run; removed on stop
        self.knobs, self.log = Knobs(), RequestLog()
        self.issuer = None
        if credentials is not None:
            self.issuer = TokenIssuer(credentials["user"], credentials["token"], credentials["secret_key"],
                                      access_lifetime)
        self.runner = JobRunner(self.root)
        self.app = _FluxApp(self)
        self._register_routes()
        self.http = self.listen(self.app, host, port)
        self.http.httpd.RequestHandlerClass = type("Handler", (_FluxHandler,), {})

    def end_jobs(self):
        self.runner.stop()

    # -- routes -----------------------------------------------------------------------------------------
    def _register_routes(self):
        jobs, job = "/v1/jobs", "/v1/jobs/{jobid}"
        self.app.add_routes([
            ("POST", "/v1/token", self._token), ("GET", "/v1/nodes", self._nodes),
            ("GET", jobs, self._jobs), ("GET", jobs + "/search", self._search),
            ("POST", jobs + "/submit", self._submit), ("GET", job, self._job), ("GET", job + "/output", self._output),
            ("GET", job + "/output/stream", self._stream), ("POST", job + "/cancel", self._cancel),
        ])

    def _token(self, request: Request) -> Response:
        token = self.issuer.exchange(request.headers.get("Authorization", "")) if self.issuer else None
        if token is None:
            return Response.json({"Message": "Denied"}, 400)
        return Response.json({"access_token": token, "token_type": "bearer"})

    def _jobs(self, request: Request) -> Response:
        arguments = _arguments(request)
        jobs = self.runner.newest_first()
        if not (_flag(arguments.get("details")) or _flag(arguments.get("detail"))):
            return Response.json({"jobs": [{"id": job.id} for job in jobs]})
        limit = _integer(arguments.get("limit"))
        infos = [job.info() for job in jobs[:limit]]
        if _flag(arguments.get("listing")):
            return Response.json(infos)
        return Response.json({str(info["id"]): info for info in infos})

    def _search(self, request: Request) -> Response:
        jobs = [job.info() for job in self.runner.newest_first()]
        query = request.arg("search[value]") or request.arg("search")
        found = [info for info in jobs if query in f"{info['id']} {info['name']}"] if query else jobs
        start, length = _integer(request.arg("start")) or 0, _integer(request.arg("length"))
        found = found[start:][:length]
        return Response.json({"data": found, "draw": request.arg("draw") or 1, "recordsTotal": len(jobs),
                              "recordsFiltered": len(found)})

    def _job(self, request: Request) -> Response:
        job = self.runner.get(request.params["jobid"])
        return Response.json(job.info() if job else None)

    def _output(self, request: Request) -> Response:
        job = self.runner.get(request.params["jobid"])
        chunks = list(job.chunks) if job else []
        return Response.json({"Output": chunks} if chunks else NO_OUTPUT)

    def _stream(self, request: Request) -> None:
        """Chunked text until the job ends (an unknown id: an empty body, as upstream swallows the error)."""
        job = self.runner.get(request.params["jobid"])
        handler = request.responder
        handler.send_response(200)
        handler.send_header("Content-Type", "text/plain; charset=utf-8")
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        try:
            for chunk in job.follow() if job else ():
                if not chunk:
                    if _hung_up(handler.connection):  # nobody reads: end, not wait for the job's end
                        handler.close_connection = True
                        return None
                    continue
                data = chunk.encode()
                handler.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                handler.wfile.flush()
            handler.wfile.write(b"0\r\n\r\n")
        except OSError:  # the client went away
            handler.close_connection = True
        return None

    def _submit(self, request: Request) -> Response:
        arguments = _arguments(request)
        errors, command, cwd = self._validate_submit(arguments)
        if errors:
            return Response.json({"Message": "Invalid submit request", "Errors": errors}, 400)
        envars = arguments.get("envars") or {}
        job = self.runner.submit(command, cwd, envars, float(arguments.get("runtime") or 0))
        return Response.json({"Message": "Job submit.", "id": job.id})

    def _validate_submit(self, arguments: dict):
        errors: List[str] = []
        try:
            command = shlex.split(str(arguments.get("command") or ""))
        except ValueError as exc:
            command, errors = [], [f"'command' cannot be split: {exc}"]
        if not command and not errors:
            errors.append("'command' is required.")
        try:
            if float(arguments.get("runtime") or 0) < 0:
                errors.append(f"Runtime must be >= 0, found {arguments.get('runtime')}")
        except ValueError:
            errors.append(f"Runtime must be a number, found {arguments.get('runtime')}")
        if not isinstance(arguments.get("envars") or {}, dict):
            errors.append("Environment variables must be key/value pairs (dict)")
        cwd = self.root
        try:
            cwd = confine(self.root, str(arguments.get("workdir") or ""))
            if not os.path.isdir(cwd):
                errors.append(f"workdir {arguments.get('workdir')} does not exist")
        except OutsideRoot:
            errors.append(f"workdir {arguments.get('workdir')} is outside the server's root")
        return errors, command, cwd

    def _cancel(self, request: Request) -> Response:
        jobid = request.params["jobid"]
        job = self.runner.get(jobid)
        if job is None:
            return Response.json({"Message": f"Job {jobid} does not exist.", "id": jobid}, 404)
        if not self.runner.cancel(job):
            return Response.json({"Message": f"Job {jobid} is not running: it cannot be cancelled.", "id": jobid},
                                 400)
        return Response.json({"Message": "Job is requested to cancel.", "id": jobid})

    def _nodes(self, request: Request) -> Response:
        return Response.json({"nodes": [socket.gethostname()]})


def _hung_up(connection: socket.socket) -> bool:
    """Whether the client closed its end (readable, with nothing to read)."""
    readable, _, _ = select.select([connection], [], [], 0)
    try:
        return bool(readable) and connection.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True


def _arguments(request: Request) -> dict:
    """A request's parameters: its JSON object body, else its query string (the official client sends a
    submit's fields as query parameters first, and as JSON when it repeats the request after a token)."""
    body = request.json()
    if isinstance(body, dict):
        return body
    return {name: values[0] for name, values in request.query.items()}


def _flag(value) -> bool:
    return str(value).strip().lower() in ("1", "true", "yes", "on")


def _integer(value) -> Optional[int]:
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


# -- hpcfs serve flux -----------------------------------------------------------------------------------
def add_arguments(parser):
    parser.add_argument("--root", help="working directory of the jobs (default: a new temporary directory)")
    parser.add_argument("--host", default=DEFAULT_HOST, help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"default {DEFAULT_PORT}")
    parser.add_argument("--require-auth", action="store_true",
                        help="multi-user mode: bearer tokens from FLUX_USER, FLUX_TOKEN and FLUX_SECRET_KEY "
                             "(also switched on by FLUX_REQUIRE_AUTH); generated for this run if unset")
    parser.add_argument("--access-lifetime", type=float, default=600 * 60,
                        help="seconds a bearer token is valid (default 36000)")


def _credentials() -> Tuple[Dict[str, str], List[str]]:
    """The multi-user credentials from the environment, each generated for this run where unset, and the
    keys of those generated."""
    fresh = {"user": "flux", "token": secrets.token_urlsafe(16), "secret_key": secrets.token_urlsafe(32)}
    generated = [key for key, name in CREDENTIAL_VARIABLES.items() if not os.environ.get(name)]
    return {key: os.environ.get(name) or fresh[key] for key, name in CREDENTIAL_VARIABLES.items()}, generated


def serve(args):
    multi_user = args.require_auth or _flag(os.environ.get("FLUX_REQUIRE_AUTH", ""))
    credentials, generated = _credentials() if multi_user else (None, [])
    with naming_ports({"--port": args.port}):
        server = FluxServer(args.root, args.host, args.port, credentials=credentials,
                            access_lifetime=args.access_lifetime).start()
    lines = [f"Flux RESTful API ({'multi' if multi_user else 'single'}-user mode) running jobs in {server.root} "
             f"at {server.http.url}/v1/",
             f"  connect: hpcfs mount flux://{server.http.host}:{server.http.port}/ MOUNTPOINT"]
    if not multi_user:
        lines.append(f"  serving only local user {server.runner.environment['USER']} (uid {os.geteuid()}): "
                     "--require-auth to share it")
    elif generated and credentials is not None:  # printed, they would reach every reader of the log
        path = server.private.write_secret(
            "credentials", "".join(f"{CREDENTIAL_VARIABLES[key]}={credentials[key]}\n" for key in generated))
        lines.append(f"  credentials for this run in {path} (mode 0600; removed when the server stops): "
                     f"set -a; . {path}; set +a")
    run_until_interrupted(server, "\n".join(lines))
