"""pytest fixtures for the local Flux RESTful API server (``hpcfs serve flux``).

``flux_server`` runs in single-user mode (no credentials; it serves only the test's own local user);
``make_flux_server(auth=True)`` starts one in multi-user mode with the credentials in :data:`CREDENTIALS`,
which reach clients only through the environment (:attr:`FluxServerHandle.env`).  ``handle.run(command)``
submits a job and waits for its end.
"""
import time
from typing import Any, Callable, Tuple

import fs.opener
import fsspec
import pytest
import requests
from handles import ServerHandle, server_factory

from hpcfs.frontends.fsspec import HpcfsFileSystem
from hpcfs.frontends.pyfs import FluxOpener
from hpcfs.servers.flux import FluxServer

CREDENTIALS = {"user": "flux-tester", "token": "t0ken:with@odd/chars", "secret_key": "k" * 32}

# The shared test environment installed hpcfs before the flux:// entry points existed; an install of this
# tree (pip install -e .) registers them from setup.cfg, as for the other schemes.
if "flux" not in fs.opener.registry.protocols:
    fs.opener.registry.install(FluxOpener)
if "flux" not in fsspec.registry:
    fsspec.register_implementation("flux", HpcfsFileSystem)


class FluxServerHandle(ServerHandle):
    """What tests need to reach one running server: URLs, the environment for clients, job helpers."""

    def __init__(self, server: FluxServer, auth: bool):
        self.server = server
        self.root = server.root
        self.auth = auth

    @property
    def api(self) -> str:
        return self.server.http.url

    @property
    def netloc(self) -> str:
        return f"127.0.0.1:{self.server.http.port}"

    def url(self, path: str = "/", **params) -> str:
        query = "?" + "&".join(f"{key}={value}" for key, value in params.items()) if params else ""
        return f"flux://{self.netloc}{path}{query}"

    @property
    def env(self) -> dict:
        """The environment a client needs (empty in single-user mode)."""
        if not self.auth:
            return {}
        return {"FLUX_USER": CREDENTIALS["user"], "FLUX_TOKEN": CREDENTIALS["token"],
                "FLUX_SECRET_KEY": CREDENTIALS["secret_key"]}

    def submit(self, command: str, **fields) -> int:
        """Submit straight to the runner (no HTTP, so request counts stay the tests' own)."""
        errors, argv, cwd = self.server._validate_submit({"command": command, **fields})
        assert not errors, errors
        return self.server.runner.submit(argv, cwd, fields.get("envars") or {}, float(fields.get("runtime") or 0)).id

    def wait(self, jobid: int, timeout: float = 20.0) -> dict:
        deadline = time.monotonic() + timeout
        job = self.server.runner.get(str(jobid))
        while job.state != "INACTIVE":
            assert time.monotonic() < deadline, f"job {jobid} still {job.state}"
            time.sleep(0.02)
        return job.info()

    def run(self, command: str, **fields) -> int:
        jobid = self.submit(command, **fields)
        self.wait(jobid)
        return jobid

    def sample(self):
        """``(path, bytes)`` of a file in the tree (a finished job's output), for the suites that run for every
        protocol: they cannot make one in a read-only tree."""
        return f"/jobs/{self.run('echo sample')}/output", b"sample\n"

    def get(self, endpoint: str, **arguments) -> requests.Response:
        return requests.get(self.api + endpoint, timeout=10, **arguments)


def start_flux(root: str, auth: bool = False, **options) -> FluxServerHandle:
    """A started server whose jobs run in ``root`` (multi-user with :data:`CREDENTIALS` if ``auth``); the
    caller stops ``.server``."""
    server = FluxServer(root, credentials=CREDENTIALS if auth else None, **options).start()
    return FluxServerHandle(server, auth)


def rest_port(handle: FluxServerHandle) -> Tuple[Any, str, Callable[[], requests.Response]]:
    """tests/test_servers_lockdown.py's REST port: the API, a path that takes a body, an owner's request."""
    return handle.server.http, "/v1/jobs/submit", lambda: handle.get("/v1/jobs")


@pytest.fixture
def make_flux_server(tmp_path, monkeypatch):
    """Factory: ``make_flux_server(auth=False, **FluxServer options)`` -> started handle; all stopped after.

    The test's own environment gets no Flux credentials: each client is handed them explicitly."""
    for name in ("FLUX_USER", "FLUX_TOKEN", "FLUX_SECRET_KEY", "FLUX_REQUIRE_AUTH"):
        monkeypatch.delenv(name, raising=False)
    yield from server_factory(tmp_path, "flux", start_flux)


@pytest.fixture
def flux_server(make_flux_server) -> FluxServerHandle:
    return make_flux_server()
