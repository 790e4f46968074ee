"""A local FirecREST v2 server (``hpcfs serve firecrest``) that behaves like the real 2.5.x one.

Same paths, bodies, status codes, headers and error shape as the server's OpenAPI document
(eth-cscs.github.io/firecrest-v2/openapi) for the status, filesystem ``ops``/``transfer`` and job
endpoints; JWT bearer auth with an embedded client-credentials token endpoint (``POST /token``); an S3
staging area on a second port for ``transfer/upload|download``.  The served directory is the system's
``/`` (one file system of type ``users``); job logs go to ``{work_dir}/{user}`` as on a real cluster.

The real server's limits and defects are knobs (``server.knobs.extra``, see ``DEFAULT_LIMITS``), switchable
while it runs: the output cap (413, or 408/500 after the command timeout when far above it), the empty
upload that times out (408), ``MaxSessions`` (424), a failed health probe (503), busy answers and latency.
Malformed replies, as a broken server or proxy sends them: ``knobs.extra["garbage"] = {"ops/ls": "html"}``
(routes by the end of their path -- ``ops/ls``, ``ops/stat``, ``ops/download``, ``status/systems``,
``token`` ...; kinds in ``common.GARBAGE_KINDS``).
"""
import argparse
import datetime
import email.message
import json
import math
import os
import tempfile
import threading
import time
import uuid
from typing import Callable, Dict, List, Optional, Tuple

from ... import registry
from ..common import (DEFAULT_HOST, Knobs, LocalServer, OutsideRoot, Request, RequestLog, Response,
                     RestApp, add_latency_argument, add_secret_file_argument, credential_lines, generated_account,
                     naming_ports, read_private_file, run_until_interrupted, temporary_directory)
from .auth import TokenIssuer, TokenRejected
from .jobs import (Scheduler, copy, delete, egress_script, file_script, ingress_script, move,
                             template)
from .s3 import ObjectStore, build_app
from .shell import ApiError, RemoteShell, command_error

APP_VERSION = "2.5.6"
MIB = 1024 * 1024
MULTIPART_OVERHEAD = MIB  # part headers around an ops/upload file (the handler's own limit answers first)
DEFAULT_LIMITS = {
    "max_ops_file_size": 5 * MIB,  # output cap of every ops command and the ops/upload limit
    "max_part_size": 2 * 1024 * MIB,  # S3 multipart part size for transfer/upload
    "command_timeout": 5.0,  # `timeout 5` around every ops command (empty upload, output deadlock)
    "hash_rate": 800 * MIB,  # bytes/s of `sha256sum` on the cluster: a file it cannot hash in time gets 408
    "max_sessions": 10,  # sshd MaxSessions: concurrent ops beyond this get 424
    "command_latency": 0.0,  # seconds each SSH-backed request holds its session (the exec itself)
    "busy_status": 424,  # status of the answers `knobs.busy_responses` injects (408, 424, 429 or 503)
    "retry_after": 1,  # Retry-After seconds sent with an injected 429
    "unhealthy": False,  # the last health probe failed: 503 on every filesystem/compute request
    "queue_delay": 0.0,  # seconds a transfer job waits in the queue
    "job_visibility_lag": 0.0,  # seconds a new job answers 404 "Job not found."
    "ingress_poll": 60.0,  # the upload job checks the staging bucket this often
    "ingress_max_polls": 1440,
    "staging_ttl": 604800,  # lifetime of presigned URLs, seconds
    "account_required": False,  # job directives name {account}: transfer requests without one get 400
}
SSH_BACKED = ("/filesystem/", "/compute/")
MISSING_PATH = "Unable to decode request and retreive the required path or source_path parameter."  # sic
QUOTE_FAILURE = "bash: -c: line 1: unexpected EOF while looking for matching `''"

# request kinds in `server.log` (RestApp records "METHOD pattern")
LS = "GET /filesystem/{system_name}/ops/ls"
STAT = "GET /filesystem/{system_name}/ops/stat"
DOWNLOAD = "GET /filesystem/{system_name}/ops/download"
UPLOAD = "POST /filesystem/{system_name}/ops/upload"
STAGED_GET = "GET /{bucket}/{key:path}"
TOKEN = "POST /token"
DATA_KINDS = (DOWNLOAD, UPLOAD, STAGED_GET, "PUT /{bucket}/{key:path}")


class _Validation(ApiError):
    def __init__(self, location: str, name: str, message: str = "Field required"):
        super().__init__(400, f"1 validation error: {name}: {message}", "validation",
                         {"fields": [{"location": location, "name": name, "message": message}]})


def _error_response(error: ApiError, user: Optional[str], headers: Optional[Dict[str, str]] = None):
    body = {"errorType": error.error_type, "message": error.message, "causedBy": None, "data": error.data,
            "user": user}
    return Response.json(body, error.status, headers)


def _is_uuid(value: Optional[str]) -> bool:
    try:
        return value is None or bool(uuid.UUID(value))
    except ValueError:
        return False


class _FirecrestApp(RestApp):
    """FastAPI's behaviour around the routes: paths lowercased, FirecREST's error shape for 404/405."""

    def dispatch(self, request: Request) -> Optional[Response]:
        request.path = request.path.lower()
        response = super().dispatch(request)
        if response is not None and response.status in (404, 405) and response.body.startswith(b'{"detail"'):
            message = json.loads(response.body)["detail"]
            response = _error_response(ApiError(response.status, message), None, response.headers)
        return response


class FirecrestServer(LocalServer):
    """FirecREST v2 on ``root`` in background threads.  ``clients`` maps client id to
    ``(secret, username)``; ``limits`` override ``DEFAULT_LIMITS``."""

    thread_name = "firecrest-server"

    def __init__(self, root: Optional[str] = None, clients: Optional[Dict[str, Tuple[str, str]]] = None,
                 host: str = DEFAULT_HOST, port: int = 0, s3_port: int = 0, system: str = "local",
                 work_dir: str = "/.firecrest", token_lifetime: float = 300, min_token_ttl: float = 30,
                 tls: bool = False, **limits):
        unknown = set(limits) - set(DEFAULT_LIMITS)
        if unknown:
            raise TypeError(f"unknown FirecREST limits: {', '.join(sorted(unknown))}")
        self.root = os.path.realpath(root or temporary_directory("hpcfs-firecrest-"))
        super().__init__("hpcfs-firecrest-")  # TLS key, generated secret, S3 staging; removed on stop
        self.generated_credentials = None
        if not clients:  # no built-in client: a random secret for the invoking user, in a 0600 file
            user, secret, self.generated_credentials = generated_account(self.private)
            clients = {user: (secret, user)}
        self.clients = clients
        self.system = system.lower()
        self.work_dir = work_dir
        self.knobs = Knobs(extra=dict(DEFAULT_LIMITS, **limits))
        self.log = RequestLog()
        self.issuer = TokenIssuer(self.clients, token_lifetime, min_token_ttl)
        self.shell = RemoteShell(self.root, lambda: (self.knob("max_ops_file_size"), self.knob("command_timeout")))
        self.store = ObjectStore(tempfile.mkdtemp(prefix="staging-", dir=self.private.path))
        self.scheduler = Scheduler(self.shell, self.knob, self.system)
        self._sessions = 0
        self._sessions_lock = threading.Lock()
        # callables (request, response) seeing every API exchange, e.g. to validate it
        self.observers: List[Callable[[Request, Optional[Response]], None]] = []
        self.api = self.listen(self._build_api(), host, port, tls)
        s3_app = build_app(self.store, self.knobs, self.log, lambda: self.knob("max_part_size"))
        self.s3 = self.listen(s3_app, host, s3_port, tls)
        self.store.public_url = self.s3.url

    def knob(self, name: str):
        return self.knobs.extra.get(name, DEFAULT_LIMITS[name])

    @property
    def token_url(self) -> str:
        return f"{self.api.url}/token"

    def end_jobs(self):
        self.scheduler.stop()

    def fail_probe(self, unhealthy: bool = True):
        """Mark the SSH service unhealthy, as a failed health probe does: 503 until cleared."""
        self.knobs.extra["unhealthy"] = unhealthy

    # -- request pipeline -------------------------------------------------------------------------------
    def _build_api(self) -> RestApp:
        app = _FirecrestApp(self.knobs, self.log)
        app.route("POST", "/token")(self._token)
        app.route("GET", "/status/liveness/")(self._endpoint(self._liveness, auth=False))
        routes = [
            ("GET", "/status/systems", self._systems),
            ("GET", "/filesystem/{system_name}/ops/ls", self._ls),
            ("GET", "/filesystem/{system_name}/ops/stat", self._stat),
            ("GET", "/filesystem/{system_name}/ops/file", self._file),
            ("GET", "/filesystem/{system_name}/ops/checksum", self._checksum),
            ("GET", "/filesystem/{system_name}/ops/head", self._head),
            ("GET", "/filesystem/{system_name}/ops/tail", self._tail),
            ("GET", "/filesystem/{system_name}/ops/view", self._view),
            ("GET", "/filesystem/{system_name}/ops/download", self._download),
            # a file of up to max_ops_file_size in a multipart body; the other routes take JSON
            ("POST", "/filesystem/{system_name}/ops/upload", self._upload,
             lambda: self.knob("max_ops_file_size") + MULTIPART_OVERHEAD),
            ("POST", "/filesystem/{system_name}/ops/mkdir", self._mkdir),
            ("POST", "/filesystem/{system_name}/ops/symlink", self._symlink),
            ("PUT", "/filesystem/{system_name}/ops/chmod", self._chmod),
            ("PUT", "/filesystem/{system_name}/ops/chown", self._chown),
            ("DELETE", "/filesystem/{system_name}/ops/rm", self._rm),
            ("POST", "/filesystem/{system_name}/transfer/upload", self._transfer_upload),
            ("POST", "/filesystem/{system_name}/transfer/download", self._transfer_download),
            ("POST", "/filesystem/{system_name}/transfer/mv", self._transfer_mv),
            ("POST", "/filesystem/{system_name}/transfer/cp", self._transfer_cp),
            ("DELETE", "/filesystem/{system_name}/transfer/rm", self._transfer_rm),
            ("GET", "/compute/{system_name}/jobs", self._jobs),
            ("GET", "/compute/{system_name}/jobs/{job_id}", self._job),
            ("DELETE", "/compute/{system_name}/jobs/{job_id}", self._cancel_job),
        ]
        app.add_routes(routes, wrap=self._endpoint)
        return app

    def _endpoint(self, handler, auth: bool = True):
        """Wrap a handler ``(request, user) -> Response`` in what FirecREST does around every route:
        tracing-id check, bearer auth, system lookup, health and session limits, error shape, headers."""

        def run(request: Request) -> Optional[Response]:
            request_id = request.headers.get("X-Request-ID")
            correlation_id = request.headers.get("X-Correlation-ID")
            if not (_is_uuid(request_id) and _is_uuid(correlation_id)):
                return Response(400, b"", {})
            headers = {"F7T-Timestamp": str(time.time()), "F7T-AppVersion": APP_VERSION,
                       "X-Request-ID": request_id or uuid.uuid4().hex,
                       "X-Correlation-ID": correlation_id or uuid.uuid4().hex}
            user = None
            try:
                if auth:
                    user = self.issuer.verify(request.headers.get("Authorization"))
                response = self._guarded(handler, request, user)
            except TokenRejected as rejected:
                response = _error_response(ApiError(401, str(rejected)), None)
            except ApiError as error:
                extra = {"F7T-AuthUsername": user} if user else {}
                if error.status == 429:
                    extra["Retry-After"] = str(self.knob("retry_after"))
                response = _error_response(error, user, extra)
            if response is not None:
                response.headers.update(headers)
            for observer in self.observers:
                observer(request, response)
            return response

        return run

    def _guarded(self, handler, request: Request, user: Optional[str]) -> Optional[Response]:
        if not request.path.startswith(SSH_BACKED) or "system_name" not in request.params:
            return handler(request, user)
        if request.params["system_name"] != self.system:
            raise ApiError(404, "System not found")
        if self.knobs.take_busy():
            raise self._busy_error(self.knob("busy_status"))
        if self.knob("unhealthy"):
            raise self._busy_error(503)
        with self._sessions_lock:
            if self._sessions >= self.knob("max_sessions"):
                raise self._busy_error(424)
            self._sessions += 1
        try:
            time.sleep(self.knob("command_latency"))
            return handler(request, user)
        finally:
            with self._sessions_lock:
                self._sessions -= 1

    def _busy_error(self, status: int) -> ApiError:
        messages = {408: "Command execution timeout limit exceeded.", 424: "Unable to open a new SSH channel.",
                    429: "Too Many Requests",
                    503: f"The ssh service for the requested system ({self.system}) is unhealthy."}
        return ApiError(status, messages.get(status, "Service unavailable"))

    # -- request helpers --------------------------------------------------------------------------------
    @staticmethod
    def _query_path(request: Request) -> str:
        path = request.arg("path")
        if path is None:  # the path check runs before FastAPI's validation: its error, not a 422-style one
            raise ApiError(400, MISSING_PATH)
        return _checked_path(path)

    @staticmethod
    def _json(request: Request) -> dict:
        body = request.json()
        if not isinstance(body, dict):
            raise _Validation("body", "body", "Input should be a valid dictionary or object")
        return body

    def _workdir(self, user: str) -> str:
        return f"{self.work_dir.rstrip('/')}/{user}"

    def _check_account(self, body_or_query_account: Optional[str]):
        if self.knob("account_required") and not body_or_query_account:
            raise ApiError(400, "Account parameter is required on this system.")

    def _transfer_job(self, job) -> dict:
        return {"jobId": job.job_id, "system": self.system, "workingDirectory": job.working_directory,
                "logs": {"outputLog": job.output_log, "errorLog": job.error_log}}

    # -- auth and status --------------------------------------------------------------------------------
    def _token(self, request: Request) -> Response:
        status, body = self.issuer.grant(request.body, request.headers.get("Authorization"),
                                         self.knobs.refuse_logins)
        return Response.json(body, status, {"Cache-Control": "no-store"})

    def _liveness(self, request: Request, user) -> Response:
        now = datetime.datetime.now(datetime.timezone.utc).isoformat()
        return Response.json({"healthcheckRuns": {self.system: now}, "lastUpdate": int(time.time())})

    def _systems(self, request: Request, user) -> Response:
        return Response.json({"systems": [self._cluster()]})

    def _cluster(self) -> dict:
        now = datetime.datetime.now(datetime.timezone.utc).isoformat()
        healthy = not self.knob("unhealthy")

        def health(kind, **extra):
            return dict({"serviceType": kind, "lastChecked": now, "latency": 0.01, "healthy": healthy or kind != "ssh",
                         "message": None if healthy or kind != "ssh" else "ssh probe failed"}, **extra)

        file_systems = [{"path": "/", "dataType": "users", "defaultWorkDir": False},
                        {"path": self.work_dir, "dataType": "scratch", "defaultWorkDir": True}]
        directives = ["#SBATCH --time=0-00:15:00"]
        if self.knob("account_required"):
            directives.append("#SBATCH --account={account}")
        return {
            "name": self.system,
            "ssh": {"host": "localhost", "port": 22, "proxyHost": None, "proxyPort": None, "maxClients": 100,
                    "timeout": {"connection": 5, "login": 5, "commandExecution": int(self.knob("command_timeout")),
                                "idleTimeout": 60, "keepAlive": 5}},
            "scheduler": {"type": "slurm", "connectionMode": "ssh", "version": "24.05.0", "apiUrl": None,
                          "apiVersion": None, "timeout": 10},
            "servicesHealth": [health("scheduler"), health("ssh"), health("s3"),
                               health("filesystem", path="/"), health("filesystem", path=self.work_dir)],
            "probing": {"services": {"ssh": {"timeout": 10}, "filesystem": {"timeout": 10},
                                     "scheduler": {"timeout": 10}, "s3": {"timeout": 10}}, "intervalCheck": 120},
            "lastHealthCheck": now,
            "fileSystems": file_systems,
            "dataOperation": {
                "datatransfer_jobs_directives": directives,
                "max_ops_file_size": self.knob("max_ops_file_size"),
                "data_transfer": {
                    "serviceType": "s3", "name": "staging", "privateUrl": "**********", "publicUrl": self.s3.url,
                    "accessKeyId": "**********", "secretAccessKey": "**********", "region": "us-east-1",
                    "ttl": self.knob("staging_ttl"), "tenant": None,
                    "multipart": {"use_split": False, "max_part_size": self.knob("max_part_size"),
                                  "parallel_runs": 3, "tmp_folder": "tmp"},
                    "bucketLifecycleConfiguration": {"days": 10},
                },
            },
        }

    # -- ops --------------------------------------------------------------------------------------------
    def _ls(self, request: Request, user) -> Response:
        output = self.shell.ls(self._query_path(request), _flag(request, "showHidden"), _flag(request, "numericUid"),
                               _flag(request, "recursive"), _flag(request, "dereference"))
        return Response.json({"output": output})

    def _stat(self, request: Request, user) -> Response:
        return Response.json({"output": self.shell.stat(self._query_path(request), _flag(request, "dereference"))})

    def _file(self, request: Request, user) -> Response:
        return Response.json({"output": self.shell.file_type(self._query_path(request))})

    def _checksum(self, request: Request, user) -> Response:
        path = self._query_path(request)
        if self._hash_seconds(path) > self.knob("command_timeout"):
            raise self._busy_error(408)
        return Response.json({"output": self.shell.checksum(path)})

    def _hash_seconds(self, path: str) -> float:
        """How long ``sha256sum`` would run on the cluster: the command timeout cuts big files off."""
        try:
            return os.path.getsize(self.shell.local(path, follow=True)) / self.knob("hash_rate")
        except (OSError, OutsideRoot):
            return 0.0  # sha256sum reports a missing file itself

    def _head(self, request: Request, user) -> Response:
        return self._head_tail(request, "head", "skipTrailing")

    def _tail(self, request: Request, user) -> Response:
        return self._head_tail(request, "tail", "skipHeading")

    def _head_tail(self, request: Request, which: str, skip_name: str) -> Response:
        path = self._query_path(request)
        count_bytes, count_lines = _number(request, "bytes"), _number(request, "lines")
        skip = _flag(request, skip_name)
        if count_bytes and count_lines:
            raise ApiError(400, "Only one of `bytes` or `lines` can be specified.")
        by_bytes = count_bytes is not None
        content = self.shell.head_tail(path, which, count_bytes if by_bytes else count_lines, not by_bytes, skip)
        count = count_bytes if by_bytes else count_lines if count_lines is not None else 10
        if which == "head":
            start, end = 0, (-count if skip else count)
        else:
            start, end = (count if skip else -count), -1
        return Response.json({"output": {"content": content, "contentType": "bytes" if count_bytes else "lines",
                                         "startPosition": start, "endPosition": end}})

    def _view(self, request: Request, user) -> Response:
        path = self._query_path(request)
        cap = self.knob("max_ops_file_size")
        size, offset = _number(request, "size", cap), _number(request, "offset", 0)
        if offset < 0:
            raise ApiError(400, "`offset` value must be an integer value equal or greater than 0")
        if size <= 0:
            raise ApiError(400, "`size` value must be an integer value greater than 0")
        if size > cap:
            raise ApiError(400, f"`size` value must be less than {cap} bytes")
        return Response.json({"output": self.shell.view(path, size, offset)})

    def _download(self, request: Request, user) -> Response:
        data = self.shell.download(self._query_path(request))
        return Response(200, data, {"Content-Type": "application/octet-stream"})

    def _upload(self, request: Request, user) -> Response:
        directory = self._query_path(request)
        filename, data = _multipart_file(request)
        if "'" in filename:
            raise command_error(2, QUOTE_FAILURE)
        if len(data) > self.knob("max_ops_file_size"):
            raise ApiError(413, "File to upload is too large.")
        self.shell.upload(directory, filename, data)
        return Response(204, b"", {})

    def _mkdir(self, request: Request, user) -> Response:
        body = self._json(request)
        path = _body_path(body)
        return Response.json({"output": self.shell.mkdir(path, bool(body.get("parent", False)))}, 201)

    def _symlink(self, request: Request, user) -> Response:
        body = self._json(request)
        target = _body_path(body)
        link = _field(body, "linkPath", "link_path")
        return Response.json({"output": self.shell.symlink(target, _checked_path(link))}, 201)

    def _chmod(self, request: Request, user) -> Response:
        body = self._json(request)
        path = _body_path(body)
        return Response.json({"output": self.shell.chmod(path, str(_field(body, "mode")))})

    def _chown(self, request: Request, user) -> Response:
        body = self._json(request)
        path = _body_path(body)
        return Response.json({"output": self.shell.chown(path, body.get("owner") or "", body.get("group") or "")})

    def _rm(self, request: Request, user) -> Response:
        self.shell.rm(self._query_path(request))
        return Response(204, b"", {})

    # -- transfer jobs ----------------------------------------------------------------------------------
    def _transfer_upload(self, request: Request, user) -> Response:
        body = self._json(request)
        path = _body_path(body, quoted_by_shell=False)
        directives = self._staging_directives(body)
        size = directives.get("fileSize", directives.get("file_size"))
        self._check_account(body.get("account"))
        if not isinstance(size, int):
            raise ApiError(500, "(\"unsupported operand type(s) for /: 'NoneType' and 'int'\",)")
        key = f"{uuid.uuid4()}/{os.path.basename(path)}"
        upload_id = self.store.new_upload(user, key)
        ttl = self.knob("staging_ttl")
        parts = [self.store.presign("PUT", user, key, ttl, partNumber=str(n), uploadId=upload_id)
                 for n in range(1, math.ceil(size / self.knob("max_part_size")) + 1)]
        complete = self.store.presign("POST", user, key, ttl, uploadId=upload_id)
        job = self.scheduler.submit(user, "IngressFileTransfer", self._workdir(user),
                                    ingress_script(self.scheduler, self.store, user, key, template(path)))
        return Response.json({"transferJob": self._transfer_job(job), "transferDirectives": {
            "transferMethod": "s3", "partsUploadUrls": parts, "completeUploadUrl": complete,
            "maxPartSize": self.knob("max_part_size")}}, 201)

    def _transfer_download(self, request: Request, user) -> Response:
        body = self._json(request)
        path = _body_path(body)
        self._staging_directives(body)
        self._check_account(body.get("account"))
        self.shell.stat(path, dereference=True)
        key = f"{os.path.basename(path)}_{uuid.uuid4()}"
        job = self.scheduler.submit(user, "OutgressFileTransfer", self._workdir(user),
                                    egress_script(self.shell, self.store, user, key, template(path)))
        url = self.store.presign("GET", user, key, self.knob("staging_ttl"))
        return Response.json({"transferJob": self._transfer_job(job),
                              "transferDirectives": {"transferMethod": "s3", "downloadUrl": url}}, 201)

    def _staging_directives(self, body: dict) -> dict:
        directives = _field(body, "transferDirectives", "transfer_directives")
        if not isinstance(directives, dict):
            directives = {}
        method = directives.get("transferMethod", directives.get("transfer_method"))
        if method not in ("s3", "streamer", "wormhole"):
            raise _Validation("body", "transferDirectives", "Input tag does not match any of the expected tags")
        if method != "s3":
            raise ApiError(400, "Requested transfer method is not available.")
        return directives

    def _transfer_mv(self, request: Request, user) -> Response:
        body = self._json(request)
        source, target = _body_path(body, quoted_by_shell=False), _field(body, "targetPath", "target_path")
        self._check_account(body.get("account"))
        action = lambda: move(self.shell, template(source), template(target))  # noqa: E731
        return self._file_job(user, "MoveFiles", file_script(action, "Move Files", "moved"), 201)

    def _transfer_cp(self, request: Request, user) -> Response:
        body = self._json(request)
        source, target = _body_path(body, quoted_by_shell=False), _field(body, "targetPath", "target_path")
        self._check_account(body.get("account"))
        dereference = bool(body.get("dereference", False))
        action = lambda: copy(self.shell, template(source), template(target), dereference)  # noqa: E731
        return self._file_job(user, "CopyFiles", file_script(action, "Copy Files", "copied"), 201)

    def _transfer_rm(self, request: Request, user) -> Response:
        path = request.arg("path")
        if path is None:
            raise _Validation("query", "path")
        _checked_path(path, quoted_by_shell=False)
        self._check_account(request.arg("account"))
        action = lambda: delete(self.shell, template(path))  # noqa: E731
        return self._file_job(user, "DeleteFiles", file_script(action, "Delete Files", "deleted"), 200)

    def _file_job(self, user: str, name: str, script, status: int) -> Response:
        job = self.scheduler.submit(user, name, self._workdir(user), script)
        return Response.json({"transferJob": self._transfer_job(job)}, status)

    # -- compute ----------------------------------------------------------------------------------------
    def _jobs(self, request: Request, user) -> Response:
        return Response.json({"jobs": [self.scheduler.describe(job) for job in self.scheduler.jobs_of(user)]})

    def _job(self, request: Request, user) -> Response:
        job = self.scheduler.find(user, request.params["job_id"])
        if job is None:
            raise ApiError(404, "Job not found.")
        return Response.json({"jobs": [self.scheduler.describe(job)]})

    def _cancel_job(self, request: Request, user) -> Response:
        job = self.scheduler.find(user, request.params["job_id"])
        if job is None:
            raise ApiError(404, "Job not found.")
        self.scheduler.cancel(job)
        return Response(204, b"", {})


# -- request parsing, as FastAPI and pydantic do it -------------------------------------------------------
def _checked_path(path: str, quoted_by_shell: bool = True) -> str:
    """FirecREST's path check (absolute), then what a ``'`` does to the single-quoted shell command."""
    if not path.startswith("/"):
        raise ApiError(400, f"The provided path ({path}) is not an absolute path.")
    if quoted_by_shell and "'" in path:
        raise command_error(2, QUOTE_FAILURE)
    return path


def _field(body: dict, *names: str):
    for name in names:
        if name in body:
            return body[name]
    raise _Validation("body", names[0])


def _body_path(body: dict, quoted_by_shell: bool = True) -> str:
    """The path FirecREST's path check takes from a body: ``path``, ``sourcePath`` or ``source_path``."""
    for name in ("path", "sourcePath", "source_path"):
        if isinstance(body.get(name), str):
            return _checked_path(body[name], quoted_by_shell)
    raise ApiError(400, MISSING_PATH)


def _flag(request: Request, name: str) -> bool:
    value = request.arg(name)
    if value is None:
        return False
    lowered = value.lower()
    if lowered in ("true", "1", "yes", "on", "t", "y"):
        return True
    if lowered in ("false", "0", "no", "off", "f", "n"):
        return False
    raise _Validation("query", name, "Input should be a valid boolean, unable to interpret input")


def _number(request: Request, name: str, default=None):
    value = request.arg(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise _Validation("query", name, "Input should be a valid integer") from None


def _multipart_file(request: Request) -> Tuple[str, bytes]:
    """The ``file`` field of a ``multipart/form-data`` body: (filename, content)."""
    content_type = email.message.Message()
    content_type["content-type"] = request.headers.get("Content-Type", "")
    boundary = content_type.get_param("boundary")
    if not boundary or not isinstance(boundary, str):
        raise _Validation("body", "file")
    for part in request.body.split(b"--" + boundary.encode())[1:]:
        head, _, content = part.partition(b"\r\n\r\n")
        disposition = email.message.Message()
        for line in head.decode("utf-8", "replace").split("\r\n"):
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-disposition":
                disposition["content-disposition"] = value.strip()
        if disposition.get_param("name", header="content-disposition") == "file":
            filename = disposition.get_filename() or ""
            return filename, content[:-2] if content.endswith(b"\r\n") else content
    raise _Validation("body", "file")


# -- hpcfs serve firecrest ---------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser):
    parser.add_argument("--root", required=True, help="directory served as the system's /")
    parser.add_argument("--host", default=DEFAULT_HOST, help="address to listen on (default 127.0.0.1)")
    port = registry.protocol_for("firecrest").default_port
    parser.add_argument("--port", type=int, default=port, help=f"FirecREST API port (default {port})")
    parser.add_argument("--s3-port", type=int, default=8001, help="S3 staging port (default 8001)")
    parser.add_argument("--system", default="local", help="system name (default: local)")
    add_secret_file_argument(parser, "--clients-file", "--clients", "client_id:secret[:username]",
                             "$FIRECREST_CLIENT_ID/$FIRECREST_CLIENT_SECRET")
    parser.add_argument("--token-lifetime", type=float, default=300.0, help="seconds (default 300)")
    parser.add_argument("--min-token-ttl", type=float, default=30.0, help="seconds a token must have left (30)")
    parser.add_argument("--max-ops-file-size", type=int, default=DEFAULT_LIMITS["max_ops_file_size"],
                        help="bytes: largest ops upload or download, larger go through S3 (default %(default)s)")
    parser.add_argument("--max-part-size", type=int, default=DEFAULT_LIMITS["max_part_size"],
                        help="bytes per S3 multipart upload part (default %(default)s)")
    parser.add_argument("--command-timeout", type=float, default=DEFAULT_LIMITS["command_timeout"],
                        help="seconds an ops command may run (default %(default)s)")
    parser.add_argument("--max-sessions", type=int, default=DEFAULT_LIMITS["max_sessions"],
                        help="concurrent ops requests; beyond them the answer is 424 (default %(default)s)")
    parser.add_argument("--ingress-poll", type=float, default=DEFAULT_LIMITS["ingress_poll"],
                        help="seconds between the upload job's checks of the staging bucket (real server: 60)")
    add_latency_argument(parser)
    parser.add_argument("--tls", action="store_true", help="HTTPS with self-signed certificates")


def _clients_from(args) -> Optional[Dict[str, Tuple[str, str]]]:
    """Clients to serve: the clients file, else $FIRECREST_CLIENT_ID/$FIRECREST_CLIENT_SECRET, else None
    (the server generates a secret)."""
    if args.clients_file:
        clients = {}
        for client_id, rest in credential_lines(read_private_file(args.clients_file, "clients file")):
            secret, _, username = rest.partition(":")
            clients[client_id] = (secret, username or client_id)
        return clients
    if os.environ.get("FIRECREST_CLIENT_SECRET"):
        client_id = os.environ.get("FIRECREST_CLIENT_ID", "hpcfs")
        return {client_id: (os.environ["FIRECREST_CLIENT_SECRET"], client_id)}
    return None


def serve(args):
    with naming_ports({"--port": args.port, "--s3-port": args.s3_port}):
        server = FirecrestServer(
            args.root, _clients_from(args), args.host, args.port, args.s3_port, args.system,
            token_lifetime=args.token_lifetime, min_token_ttl=args.min_token_ttl, tls=args.tls,
            max_ops_file_size=args.max_ops_file_size, max_part_size=args.max_part_size,
            command_timeout=args.command_timeout, max_sessions=args.max_sessions, ingress_poll=args.ingress_poll,
        )
    server.knobs.latency = args.latency
    server.start()
    client_id = sorted(server.clients)[0]
    lines = [f"FirecREST v2 API serving {server.root} as system '{server.system}' at {server.url}",
             f"  token endpoint: {server.token_url}   S3 staging: {server.s3.url}",
             f"  connect: export FIRECREST_URL={server.url} AUTH_TOKEN_URL={server.token_url} "
             f"FIRECREST_CLIENT_ID={client_id}"]
    if server.generated_credentials:
        lines.append(f"  no clients configured: generated a secret for {client_id} in {server.generated_credentials}"
                     " (client_id:secret, mode 0600; removed when the server stops): "
                     f"export FIRECREST_CLIENT_SECRET=\"$(cut -d: -f2- {server.generated_credentials})\"")
    else:
        lines.append("  secret: export FIRECREST_CLIENT_SECRET with the secret you configured")
    lines.append(f"  then: hpcfs mount firecrest://{server.system}/ MOUNTPOINT")
    if server.cert_file:
        lines.append(f"  self-signed certificates: export REQUESTS_CA_BUNDLE={server.cert_file}")
    run_until_interrupted(server, "\n".join(lines))
