"""pytest fixtures for the local FirecREST server (see docs/architecture.md).

``firecrest_server`` runs ``hpcfs.servers.firecrest.FirecrestServer`` on 127.0.0.1 with the real server's
limits except where waiting would only slow tests down: a 50 ms command timeout (so an empty upload's
408 comes fast), 8 MiB staging parts and an upload job that checks the bucket every 50 ms.
"""
import secrets
from dataclasses import dataclass
from urllib.parse import quote, urlencode

import pytest

from hpcfs.servers.firecrest import FirecrestServer

CLIENT_ID = "hpcfs-tests"
USERNAME = "alice"
TEST_LIMITS = {"command_timeout": 0.05, "ingress_poll": 0.05, "max_part_size": 8 * 1024 * 1024}


@dataclass
class FirecrestHandle:
    server: FirecrestServer
    secret: str

    @property
    def root(self):
        return self.server.root

    @property
    def log(self):
        return self.server.log

    @property
    def knobs(self):
        return self.server.knobs

    @property
    def env(self):
        """What a CLI subprocess needs to reach the server with ``plain_url``."""
        return {"FIRECREST_URL": self.server.url, "AUTH_TOKEN_URL": self.server.token_url,
                "FIRECREST_CLIENT_ID": CLIENT_ID, "FIRECREST_CLIENT_SECRET": self.secret}

    def plain_url(self, path="/"):
        return f"firecrest://{self.server.system}{quote(path)}"

    def url(self, path="/"):
        """The URL with everything, the secret included, for ``fs.open_fs`` and ``open_backend``."""
        query = urlencode({"url": self.server.url, "token_url": self.server.token_url,
                           "client_id": CLIENT_ID, "client_secret": self.secret})
        return f"{self.plain_url(path)}?{query}"


def start_firecrest(root, **settings) -> FirecrestHandle:
    """A started server on ``root``; ``settings`` are FirecrestServer arguments or limits."""
    secret = secrets.token_urlsafe(12)
    options = dict(TEST_LIMITS, **settings)
    server = FirecrestServer(str(root), {CLIENT_ID: (secret, USERNAME)}, **options).start()
    return FirecrestHandle(server, secret)


@pytest.fixture
def firecrest_server(tmp_path):
    root = tmp_path / "firecrest-root"
    root.mkdir()
    handle = start_firecrest(root)
    yield handle
    handle.server.stop()
