"""pytest fixtures for the local uftp server (see docs/architecture.md)."""
from dataclasses import dataclass
from urllib.parse import quote

import pytest
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
    """A started server on ``root`` (``options``: UFTPServer arguments); the caller stops ``.server``."""
    return UFTPHandle(UFTPServer(root, {UFTP_USER: UFTP_PASSWORD}, **options).start(), root)


@pytest.fixture
def make_uftp_server(tmp_path):
    """Factory: ``make_uftp_server(**UFTPServer options)`` -> started handle; all are stopped afterwards."""
    yield from server_factory(tmp_path, "uftp", start_uftp)


@pytest.fixture
def uftp_server(make_uftp_server) -> UFTPHandle:
    return make_uftp_server()
