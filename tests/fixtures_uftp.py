"""pytest fixtures for the local uftp server (see docs/architecture.md)."""
import os
import re
import tempfile
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Tuple
from urllib.parse import quote

import pytest
import requests
from handles import ServerHandle, server_factory

from hpcfs.servers.uftp import UFTPServer

UFTP_USER, UFTP_PASSWORD = "demo", "test123"


@dataclass
class UFTPHandle(ServerHandle):
    server: UFTPServer
    root: str

    @property
    def netloc(self):
        return f"{self.server.host}:{self.server.auth_port}"

    def allow_rapid_commands(self) -> None:
        """UFTPD counts an ended session against the user's limit until its next 5 s cleanup, and each CLI
        run uses two: a test that runs many commands in a row raises the limit (the waiting itself is
        test_cli.test_rapid_commands_wait_for_uftp_session_slots)."""
        self.knobs.extra["session_limit"] = 1000

    def url(self, path="/"):
        """URL with the credentials and the CA file embedded, for ``fs.open_fs``/``open_backend``."""
        userinfo = f"{quote(UFTP_USER, safe='')}:{quote(UFTP_PASSWORD, safe='')}@"
        return f"uftp://{userinfo}{self._rest(path)}?ca_file={quote(self.server.cert_file)}"

    def plain_url(self, path="/"):
        """URL without credentials; pair it with ``.env``."""
        return f"uftp://{self._rest(path)}"

    @property
    def env(self):
        return {"UFTP_USER": UFTP_USER, "UFTP_PASSWORD": UFTP_PASSWORD, "HPCFS_CA_FILE": self.server.cert_file}

    def _rest(self, path):
        return f"{self.netloc}/rest/auth/{self.server.server_name}:{path}"


def start_uftp(root: str, **options) -> UFTPHandle:
    """A started server on ``root`` (``options``: UFTPServer arguments); the caller stops ``.server``.  Its TLS
    files lie beside ``root`` unless ``tls_dir`` says otherwise, so that a server restarted on the same ports
    (tests/test_reliability.py) keeps the certificate its clients trust."""
    options.setdefault("tls_dir", tempfile.mkdtemp(prefix="uftp-tls-", dir=os.path.dirname(root.rstrip("/"))))
    return UFTPHandle(UFTPServer(root, {UFTP_USER: UFTP_PASSWORD}, **options).start(), root)


# What tests/test_cli.py's ``hpcfs serve uftp`` differs in: three ports to let the system choose, the account from
# a users file, and a banner that ends with the command port and names the Auth server and the certificate
# rather than a mount command.
SERVE_BANNER_END = "UFTPD command port"


def serve_arguments(users_file: str) -> List[str]:
    return ["--auth-port", "0", "--listen-port", "0", "--cmd-port", "0", "--users-file", users_file]


def serve_connection(banner: str) -> Tuple[str, Dict[str, str]]:
    """The served root's URL and the variables a client needs, as the banner tells them."""
    auth = re.search(r"https://(\S+/rest/auth/\w+)", banner).group(1)
    return f"uftp://{auth}:/", {"HPCFS_CA_FILE": re.search(r"HPCFS_CA_FILE=(\S+?)\)", banner).group(1)}


# tests/test_servers_lockdown.py's REST port: the Auth server, a path that takes a body, an owner's request
REST_PORTS = {"uftp-auth": {}}  # name -> make_uftp_server options


def rest_port(handle: UFTPHandle) -> Tuple[Any, str, Callable[[], requests.Response]]:
    server = handle.server
    return server.rest, "/rest/auth/TEST", lambda: requests.get(
        server.auth_url.rsplit("/", 1)[0], auth=(UFTP_USER, UFTP_PASSWORD), timeout=10, verify=server.cert_file)


@pytest.fixture
def make_uftp_server(tmp_path):
    """Factory: ``make_uftp_server(**UFTPServer options)`` -> started handle; all are stopped afterwards."""
    yield from server_factory(tmp_path, "uftp", start_uftp)


@pytest.fixture
def uftp_server(make_uftp_server) -> UFTPHandle:
    return make_uftp_server()
