"""A local UNICORE/X REST server (``hpcfs serve unicore``): the part of a site's ``/SITE/rest/core`` API that
PyUNICORE's client.py speaks -- storages, their files, and jobs whose working directory is a storage.

No real UNICORE/X runs here, so the shapes below follow PyUNICORE 2.0.2's source (what it sends and which
fields it reads) and the UNICORE REST API documentation; docs/servers.md says which is which.

- ``GET /SITE/rest/core``: ``client`` (``role.selected`` "user": PyUNICORE's Client checks it), ``server.version``
  and ``_links`` to ``storages``, ``jobs``, ``factories``, ``transfers``; ``GET .../token`` issues a bearer token.
- ``GET storages`` (``{"storages": [URL]}``; job directories only with ``filter=all``, as UNICORE 10),
  ``GET storages/NAME`` (``mountPoint``, ``protocols``, ``resourceStatus`` READY, ``_links`` with
  ``files``, ``action:rename`` and ``action:copy``).
- ``storages/NAME/files/PATH``: ``GET`` with ``Accept: application/json`` gives the properties (``isDirectory``,
  ``size``, ``lastAccessed``, ``permissions``, ``unixPermissions``, ``owner``, ``group``) and, for a
  directory, ``content`` keyed by each child's storage path; ``GET`` with ``Accept: application/octet-stream``
  the bytes, ``Range`` honoured (206/416); ``PUT`` (octet-stream) writes the file, making its parents;
  ``POST`` makes a directory (and its parents); ``DELETE`` removes a file or a whole directory.
  ``POST storages/NAME/actions/rename`` and ``actions/copy`` take ``{"from", "to"}``.
- ``POST jobs`` with a job description (``Executable``, ``Arguments``, ``Environment``,
  ``haveClientStageIn``) answers 201 with ``Location: .../jobs/ID``; ``GET jobs/ID`` has ``status``
  (QUEUED, READY, RUNNING, SUCCESSFUL, FAILED), ``exitCode``, ``log``, ``submissionTime`` and ``_links``
  (``workingDirectory`` = the storage ``ID-uspace``, ``action:start``, ``action:abort``, ``action:restart``,
  ``details``).  A job waits for ``action:start`` when the client stages files in, else starts at once.

Every request is authenticated from its headers before a byte of its body is read (HTTP Basic against the
users file or ``UNICORE_USER``/``UNICORE_PASSWORD``, or a bearer token the server issued); errors are
``{"errorMessage": ...}``.  A job runs as the server's own user, so only those accounts may submit one, and
each sees only its own jobs and job directories; the job gets a login's minimal environment (the Flux
server's :func:`job_environment`) plus its description's ``Environment``, nothing of the server's.  As in
UNICORE, ``Executable`` and ``Arguments`` form one shell command line (``/bin/sh -c``), run in the job's
directory with stdout and stderr to the files ``stdout`` and ``stderr`` there.
"""
import base64
import binascii
import datetime
import errno
import grp
import hmac
import os
import pwd
import re
import secrets
import shutil
import stat
import subprocess
import threading
import time
import uuid
from typing import Dict, List, Optional, cast

from ... import registry
from ..common import (DEFAULT_HOST, Knobs, LocalServer, OutsideRoot, Request, RequestLog, Response, RestApp,
                      accounts_or_generated, add_latency_argument, add_secret_file_argument, configured_accounts,
                      confine, job_environment, naming_ports, open_for_writing, run_until_interrupted,
                      served_directory, terminate_group)

DEFAULT_PORT = registry.protocol_for("unicore").default_port
DEFAULT_SITE = "DEMO-SITE"  # the site name of UNICORE's own demo server and PyUNICORE's examples
HOME = "HOME"
UPLOAD_LIMIT = 1 << 40
VERSION = "10.1.0-hpcfs"  # PyUNICORE's server_version_info() parses MAJOR.MINOR.PATCH before a '-'
JOB_FINAL = ("SUCCESSFUL", "FAILED")
ERRNO_STATUS = {errno.EACCES: 403, errno.EPERM: 403, errno.EEXIST: 409, errno.ENOTDIR: 409, errno.EISDIR: 409,
                errno.ENOTEMPTY: 409, errno.ENOSPC: 507}


def error(status: int, message: str) -> Response:
    return Response.json({"errorMessage": message, "status": status}, status)


def iso_time(moment: float) -> str:
    """UNICORE's time format, ``2024-05-01T12:00:00+0000``."""
    return datetime.datetime.fromtimestamp(moment, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S%z")


def _unix_permissions(mode: int) -> str:
    return "".join(letter if mode & (0o400 >> index) else "-" for index, letter in enumerate("rwxrwxrwx"))


def _name_of(table, number: int) -> str:
    try:
        return table(number)[0]
    except KeyError:
        return str(number)


def file_properties(local: str, info: os.stat_result) -> dict:
    mode = info.st_mode
    user_bits = "".join(letter if os.access(local, flag) else "-"
                        for letter, flag in (("r", os.R_OK), ("w", os.W_OK), ("x", os.X_OK)))
    return {"isDirectory": stat.S_ISDIR(mode), "size": 0 if stat.S_ISDIR(mode) else info.st_size,
            "lastAccessed": iso_time(info.st_mtime), "permissions": user_bits,
            "unixPermissions": _unix_permissions(mode), "owner": _name_of(pwd.getpwuid, info.st_uid),
            "group": _name_of(grp.getgrgid, info.st_gid), "metadata": {}}


class Job:
    """One job: its description, working directory and the state PyUNICORE polls."""

    def __init__(self, job_id: str, owner: str, description: dict, directory: str):
        self.id, self.owner, self.description, self.directory = job_id, owner, description, directory
        self.status, self.log = "QUEUED", [f"Job {job_id} created for {owner}"]
        self.exit_code: Optional[int] = None
        self.submitted, self.finished = time.time(), cast(Optional[float], None)
        self.process: Optional[subprocess.Popen] = None
        self.lock = threading.Lock()

    def command(self) -> str:
        """``Executable`` and ``Arguments`` as one command line, as UNICORE's execution script writes them."""
        arguments = self.description.get("Arguments") or []
        return " ".join([str(self.description.get("Executable", ""))] + [str(a) for a in arguments])

    def environment(self) -> Dict[str, str]:
        given = self.description.get("Environment") or {}
        if isinstance(given, list):  # ["NAME=value", ...], the older form
            given = dict(str(item).partition("=")[::2] for item in given)
        return {**job_environment(), **{str(k): str(v) for k, v in given.items()}}


class JobRunner:
    """Runs jobs as local process groups in their directories and records how they end."""

    def __init__(self, root: str):
        self.root = root
        self.jobs: Dict[str, Job] = {}
        self._lock = threading.Lock()

    def create(self, owner: str, description: dict) -> Job:
        job_id = str(uuid.uuid4())
        directory = os.path.join(self.root, job_id)
        os.mkdir(directory, 0o700)
        job = Job(job_id, owner, description, directory)
        with self._lock:
            self.jobs[job_id] = job
        return job

    def start(self, job: Job) -> None:
        with job.lock:
            if job.status != "QUEUED" and job.status != "READY":
                return
            job.status = "RUNNING"
        threading.Thread(target=self._run, args=(job,), name=f"unicore-job-{job.id}", daemon=True).start()

    def _run(self, job: Job) -> None:
        try:
            with open(os.path.join(job.directory, "stdout"), "wb") as out, \
                    open(os.path.join(job.directory, "stderr"), "wb") as err:
                job.process = subprocess.Popen(["/bin/sh", "-c", job.command()], cwd=job.directory,
                                               env=job.environment(), stdin=subprocess.DEVNULL, stdout=out,
                                               stderr=err, start_new_session=True)
                code = job.process.wait()
        except OSError as exc:
            return self._finish(job, "FAILED", None, f"could not start: {exc.strerror}")
        self._finish(job, "SUCCESSFUL" if code >= 0 else "FAILED", code if code >= 0 else 128 - code,
                     f"exit code {code}")

    @staticmethod
    def _finish(job: Job, status: str, code: Optional[int], message: str) -> None:
        with job.lock:
            job.status = status if job.status != "FAILED" else "FAILED"  # an abort stays FAILED
            job.exit_code, job.finished = code, time.time()
            job.log.append(message)

    def abort(self, job: Job) -> None:
        with job.lock:
            if job.status in JOB_FINAL:
                return
            job.status = "FAILED"
            job.log.append("aborted by the user")
            process = job.process
        terminate_group(process)

    def get(self, job_id: str, owner: str) -> Optional[Job]:
        """The job if it is ``owner``'s: another account's job does not exist for them."""
        job = self.jobs.get(job_id)
        return job if job is not None and job.owner == owner else None

    def owned_by(self, owner: str) -> List[Job]:
        with self._lock:
            return sorted((job for job in self.jobs.values() if job.owner == owner), key=lambda job: job.submitted)

    def stop(self) -> None:
        for job in list(self.jobs.values()):
            self.abort(job)


class _UnicoreApp(RestApp):
    """Authenticates every request from its headers, before its route may read the body."""

    def __init__(self, server: "UnicoreServer"):
        super().__init__(server.knobs, server.log)
        self.server = server

    def dispatch(self, request: Request) -> Optional[Response]:
        request.path = re.sub("/+", "/", request.path)
        user = self.server.caller(request.headers.get("Authorization") or "")
        if user is None:
            self.log.record("unauthenticated", f"{request.method} {request.path}")
            return Response.json({"errorMessage": "Authentication failed", "status": 401}, 401,
                                 {"WWW-Authenticate": 'Basic realm="UNICORE"'})
        # the authenticated account, for the routes: ``form`` holds what an app learns before dispatching
        request.form = {"user": user}
        return super().dispatch(request)


class UnicoreServer(LocalServer):
    """The UNICORE/X REST API on 127.0.0.1 in a background thread: storage ``HOME`` is ``root``, each job's
    working directory the storage ``ID-uspace``.  ``start()`` returns self, ``stop()`` ends it and its jobs."""

    def __init__(self, root: Optional[str] = None, users: Optional[Dict[str, str]] = None,
                 host: str = DEFAULT_HOST, port: int = 0, *, site: str = DEFAULT_SITE, tls: bool = False,
                 jobs_root: Optional[str] = None):
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", site):
            raise ValueError(f"site name {site!r}: letters, digits, '.', '_' and '-' only")
        self.root = served_directory(root, "hpcfs-unicore-")
        self.site = site
        super().__init__("hpcfs-unicore-")  # TLS key, generated password, jobs; removed on stop
        self.users, self.generated_credentials = accounts_or_generated(users, self.private)
        self.tokens: Dict[str, str] = {}
        self.knobs, self.log = Knobs(), RequestLog()
        self.runner = JobRunner(jobs_root or os.path.join(self.private.path, "jobs"))
        os.makedirs(self.runner.root, mode=0o700, exist_ok=True)
        self.app = _UnicoreApp(self)
        self._register_routes()
        self.http = self.listen(self.app, host, port, tls)

    @property
    def base_url(self) -> str:
        return f"{self.http.url}/{self.site}/rest/core"

    def end_jobs(self):
        self.runner.stop()

    # -- authentication ---------------------------------------------------------------------------------
    def caller(self, header: str) -> Optional[str]:
        """The account a request's ``Authorization`` names: Basic with a known password, or an issued token."""
        if self.knobs.refuse_logins:
            return None
        scheme, _, credential = header.partition(" ")
        if scheme.lower() == "bearer":
            return self.tokens.get(credential.strip())
        if scheme.lower() != "basic":
            return None
        try:
            user, _, password = base64.b64decode(credential.strip(), validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        known = self.users.get(user)
        return user if known is not None and hmac.compare_digest(known.encode(), password.encode()) else None

    # -- routes -----------------------------------------------------------------------------------------
    def _register_routes(self):
        core = f"/{self.site}/rest/core"
        files = core + "/storages/{name}/files"
        self.app.add_routes([
            ("GET", core, self._site), ("GET", core + "/token", self._token),
            ("GET", core + "/storages", self._storages), ("GET", core + "/storages/{name}", self._storage),
            ("GET", files, self._get_file), ("GET", files + "/{path:path}", self._get_file),
            ("PUT", files + "/{path:path}", self._put_file, UPLOAD_LIMIT),
            ("POST", files + "/{path:path}", self._mkdir),
            ("DELETE", files + "/{path:path}", self._delete),
            ("POST", core + "/storages/{name}/actions/{action}", self._action),
            ("GET", core + "/jobs", self._jobs), ("POST", core + "/jobs", self._submit),
            ("GET", core + "/jobs/{job}", self._job), ("DELETE", core + "/jobs/{job}", self._destroy),
            ("GET", core + "/jobs/{job}/details", self._details),
            ("POST", core + "/jobs/{job}/actions/{action}", self._job_action),
            ("GET", core + "/factories", self._empty("factories")),
            ("GET", core + "/transfers", self._empty("transfers")),
        ])

    def _url(self, request: Request, path: str) -> str:
        """An absolute link, on the host and port the client used (as UNICORE/X behind its gateway)."""
        host = request.headers.get("Host") or self.http.url.split("://", 1)[1]
        return f"{self.http.scheme}://{host}/{self.site}/rest/core{path}"

    def _site(self, request: Request) -> Response:
        user = request.form["user"]
        links = {name: {"href": self._url(request, "/" + name)}
                 for name in ("storages", "jobs", "factories", "transfers")}
        return Response.json({
            "client": {"dn": f"CN={user}", "xlogin": {"UID": user, "availableUIDs": [user]},
                       "role": {"selected": "user", "availableRoles": ["user"]}},
            "server": {"version": VERSION},
            "_links": {**links, "self": {"href": self._url(request, "")}},
        })

    def _token(self, request: Request) -> Response:
        token = secrets.token_urlsafe(32)
        self.tokens[token] = request.form["user"]
        return Response(200, token.encode(), {"Content-Type": "text/plain"})

    @staticmethod
    def _empty(kind: str):
        return lambda request: Response.json({kind: []})

    # -- storages ---------------------------------------------------------------------------------------
    def _storage_root(self, name: str, user: str) -> Optional[str]:
        """The directory of storage ``name`` as ``user`` may see it; None for no such storage."""
        if name == HOME:
            return self.root
        job = self.runner.get(name[:-len("-uspace")], user) if name.endswith("-uspace") else None
        return job.directory if job else None

    def _storages(self, request: Request) -> Response:
        names = [HOME]
        if request.arg("filter") == "all":
            names += [f"{job.id}-uspace" for job in self.runner.owned_by(request.form["user"])]
        return Response.json({"storages": [self._url(request, f"/storages/{name}") for name in names]})

    def _storage(self, request: Request) -> Response:
        name = request.params["name"]
        root = self._storage_root(name, request.form["user"])
        if root is None:
            return error(404, f"No such storage: {name}")
        here = f"/storages/{name}"
        links = {key: {"href": self._url(request, here + suffix)} for key, suffix in (
            ("self", ""), ("files", "/files"), ("action:rename", "/actions/rename"),
            ("action:copy", "/actions/copy"))}
        return Response.json({"mountPoint": root, "protocols": ["BFT"], "resourceStatus": "READY",
                              "description": "hpcfs local storage", "filesystemDescription": "local",
                              "umask": "77", "_links": links})

    def _local(self, request: Request, path: Optional[str] = None) -> str:
        """The local path of the request's storage path; KeyError for no such storage, OutsideRoot for a path
        that leaves it."""
        root = self._storage_root(request.params["name"], request.form["user"])
        if root is None:
            raise KeyError(request.params["name"])
        return confine(root, request.params.get("path", "") if path is None else path)

    def _get_file(self, request: Request) -> Response:
        path = "/" + request.params.get("path", "").strip("/")
        return self._on_files(request, lambda local: self._send_path(request, path, local))

    def _send_path(self, request: Request, path: str, local: str) -> Response:
        try:
            info = os.stat(local)
        except NotADirectoryError:  # a path below a file: UNICORE/X finds no properties there, a 404 as anywhere
            raise FileNotFoundError(errno.ENOENT, "not found", local) from None
        if "application/octet-stream" in (request.headers.get("Accept") or "") and not stat.S_ISDIR(info.st_mode):
            return Response(200, headers={"Content-Type": "application/octet-stream"}, file_path=local)
        properties = file_properties(local, info)
        if stat.S_ISDIR(info.st_mode):
            properties["content"] = {}
            for name in sorted(os.listdir(local)):
                child = os.path.join(local, name)
                try:
                    properties["content"][f"{path.rstrip('/')}/{name}"] = file_properties(child, os.stat(child))
                except OSError:  # vanished meanwhile, or a dangling link
                    continue
        return Response.json(properties)

    def _put_file(self, request: Request) -> Response:
        def write(local: str) -> Response:
            os.makedirs(os.path.dirname(local), exist_ok=True)  # "parent directory will be created if needed"
            if os.path.isdir(local):
                return error(409, f"{request.params['path']} is a directory")
            with open_for_writing(os.path.dirname(local), os.path.basename(local)) as sink:
                for chunk in request.body_chunks():
                    sink.write(chunk)
            return Response(204)
        return self._on_files(request, write)

    def _mkdir(self, request: Request) -> Response:
        def make(local: str) -> Response:
            if os.path.exists(local) and not os.path.isdir(local):
                return error(409, f"{request.params['path']} exists and is not a directory")
            os.makedirs(local, exist_ok=True)
            return Response(201)
        return self._on_files(request, make)

    def _delete(self, request: Request) -> Response:
        def remove(local: str) -> Response:
            if local == os.path.realpath(self._storage_root(request.params["name"], request.form["user"]) or ""):
                return error(403, "the storage's root cannot be deleted")
            if os.path.isdir(local) and not os.path.islink(local):
                shutil.rmtree(local)
            else:
                os.remove(local)
            return Response(204)
        return self._on_files(request, remove)

    def _action(self, request: Request) -> Response:
        action = request.params["action"]
        body = request.json()
        if action not in ("rename", "copy"):
            return error(404, f"No such action: {action}")
        if not isinstance(body, dict) or not all(isinstance(body.get(key), str) for key in ("from", "to")):
            return error(400, 'the action needs {"from": PATH, "to": PATH}')

        def act(local: str) -> Response:
            target = self._local(request, body["to"])
            if action == "rename":
                os.rename(local, target)  # replaces a file, or an empty directory, as POSIX rename does
            elif os.path.isdir(local):
                shutil.copytree(local, target)
            else:
                shutil.copyfile(local, target)
            return Response.json({})
        return self._on_files(request, act, body["from"])

    def _on_files(self, request: Request, operation, path: Optional[str] = None) -> Response:
        """``operation(local path)`` with the file system's refusals as UNICORE's statuses."""
        try:
            return operation(self._local(request, path))
        except KeyError:
            return error(404, f"No such storage: {request.params['name']}")
        except OutsideRoot:
            return error(403, "the path leaves the storage")
        except FileNotFoundError:
            return error(404, f"File {path or request.params.get('path', '/')} not found")
        except OSError as exc:
            status = ERRNO_STATUS.get(exc.errno or 0, 500)
            return error(status, f"{exc.strerror}")

    # -- jobs -------------------------------------------------------------------------------------------
    def _jobs(self, request: Request) -> Response:
        jobs = self.runner.owned_by(request.form["user"])
        return Response.json({"jobs": [self._url(request, f"/jobs/{job.id}") for job in jobs]})

    def _submit(self, request: Request) -> Response:
        description = request.json()
        if not isinstance(description, dict) or not isinstance(description.get("Executable"), str) \
                or not description["Executable"].strip():
            return error(400, 'a job description needs "Executable"')
        if not isinstance(description.get("Arguments", []), list):
            return error(400, '"Arguments" must be a list')
        job = self.runner.create(request.form["user"], description)
        if str(description.get("haveClientStageIn", "")).lower() == "true":
            job.status = "READY"  # waits for action:start once the client has uploaded its files
        else:
            self.runner.start(job)
        return Response.json({}, 201, {"Location": self._url(request, f"/jobs/{job.id}")})

    def _found_job(self, request: Request) -> Optional[Job]:
        return self.runner.get(request.params["job"], request.form["user"])

    def _job(self, request: Request) -> Response:
        job = self._found_job(request)
        if job is None:
            return error(404, f"No such job: {request.params['job']}")
        here = f"/jobs/{job.id}"
        links = {key: {"href": self._url(request, suffix)} for key, suffix in (
            ("self", here), ("workingDirectory", f"/storages/{job.id}-uspace"),
            ("action:start", here + "/actions/start"), ("action:abort", here + "/actions/abort"),
            ("action:restart", here + "/actions/restart"), ("details", here + "/details"))}
        with job.lock:
            properties = {"status": job.status, "statusMessage": "", "owner": job.owner, "name": job.description.get(
                "Name", "UNICORE_Job"), "submissionTime": iso_time(job.submitted), "queue": "local",
                "log": list(job.log), "exitCode": None if job.exit_code is None else str(job.exit_code),
                "terminationTime": iso_time(job.finished) if job.finished else None, "_links": links}
        return Response.json(properties)

    def _details(self, request: Request) -> Response:
        job = self._found_job(request)
        if job is None:
            return error(404, f"No such job: {request.params['job']}")
        return Response.json({"command": job.command(), "directory": job.directory})

    def _job_action(self, request: Request) -> Response:
        job, action = self._found_job(request), request.params["action"]
        if job is None:
            return error(404, f"No such job: {request.params['job']}")
        if action == "start":
            self.runner.start(job)
        elif action == "abort":
            self.runner.abort(job)
        elif action != "restart":
            return error(404, f"No such action: {action}")
        return Response.json({})

    def _destroy(self, request: Request) -> Response:
        job = self._found_job(request)
        if job is None:
            return error(404, f"No such job: {request.params['job']}")
        self.runner.abort(job)
        self.runner.jobs.pop(job.id, None)
        shutil.rmtree(job.directory, ignore_errors=True)
        return Response(204)


# -- hpcfs serve unicore --------------------------------------------------------------------------------
def add_arguments(parser):
    parser.add_argument("--root", help="directory served as storage HOME (default: a new temporary directory)")
    parser.add_argument("--host", default=DEFAULT_HOST, help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"default {DEFAULT_PORT}")
    parser.add_argument("--site", default=DEFAULT_SITE, help=f"the site name in the URL (default {DEFAULT_SITE})")
    add_secret_file_argument(parser, "--users-file", "--users", "user:password", "$UNICORE_USER/$UNICORE_PASSWORD")
    parser.add_argument("--jobs-dir", help="where job working directories go (default: a private directory "
                                           "removed when the server stops)")
    parser.add_argument("--tls", action="store_true", help="HTTPS with a self-signed certificate")
    add_latency_argument(parser)


def serve(args):
    users = configured_accounts(args.users_file, "UNICORE_USER", "UNICORE_PASSWORD")
    try:
        with naming_ports({"--port": args.port}):
            server = UnicoreServer(args.root, users, args.host, args.port, site=args.site,
                                   tls=args.tls, jobs_root=args.jobs_dir)
    except ValueError as exc:
        raise SystemExit(f"hpcfs serve unicore: {exc}") from None
    server.knobs.latency = args.latency
    server.start()
    run_until_interrupted(server, _banner(server))


def _banner(server: UnicoreServer) -> str:
    """How to connect, with no secret in it: a generated password is named by the 0600 file holding it."""
    netloc = server.http.url.split("://", 1)[1]
    lines = [f"UNICORE/X REST API serving {server.root} as storage {HOME}",
             server.base_url]
    if server.generated_credentials:
        user = sorted(server.users)[0]
        lines.append(f"  no users configured: generated a password for {user} in {server.generated_credentials} "
                     f"(mode 0600; removed when the server stops): export UNICORE_USER={user} "
                     f"UNICORE_PASSWORD=\"$(cut -d: -f2- {server.generated_credentials})\"")
    if server.cert_file:
        lines.append(f"  TLS certificate (self-signed): {server.cert_file}  (HPCFS_CA_FILE={server.cert_file})")
    lines.append(f"  connect: hpcfs mount unicore://{netloc}/{server.site}/rest/core/storages/{HOME}:/ MOUNTPOINT")
    return "\n".join(lines)

