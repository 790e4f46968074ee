"""pytest fixtures for the local UNICORE/X REST server (see docs/architecture.md).

``unicore_server`` serves its root directory as storage ``HOME`` of site ``DEMO-SITE``: the URL tree is the
root (``unicore://.../storages/HOME:/a`` is ``root/a``).  ``make_unicore_server(**options)`` starts servers with
other settings (``tls=True``, another ``site``, several users ...).
"""
from typing import Any, Callable, Optional, Tuple
from urllib.parse import quote, urlencode

import pytest
import requests
from handles import ServerHandle, server_factory

from hpcfs.servers.unicore import UnicoreServer

USER, PASSWORD = "demouser", "test:12@3"  # PyUNICORE's demo user; ':' and '@' make sure URLs quote the password


class UnicoreHandle(ServerHandle):
    """What tests need to reach one running server: URLs, credentials for subprocesses, its root."""

    def __init__(self, server: UnicoreServer, storage: str = "HOME"):
        self.server = server
        self.root = server.root
        self.storage = storage

    @property
    def netloc(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    @property
    def base_url(self) -> str:
        """The site's REST base, as PyUNICORE's ``Client`` takes it."""
        return f"{self.server.http.scheme}://{self.netloc}/{self.server.site}/rest/core"

    def _url(self, userinfo: Optional[str], path: str, params: dict, storage: Optional[str]) -> str:
        query = "?" + urlencode(params) if params else ""
        at = f"{userinfo}@" if userinfo else ""
        return (f"unicore://{at}{self.netloc}/{self.server.site}/rest/core/storages/{storage or self.storage}:"
                f"{path}{query}")

    def url(self, path: str = "/", storage: Optional[str] = None, **params) -> str:
        """URL with the credentials embedded (for ``fs.open_fs`` and ``open_backend``)."""
        return self._url(f"{USER}:{quote(PASSWORD, safe='')}", path, params, storage)

    def plain_url(self, path: str = "/", storage: Optional[str] = None, **params) -> str:
        return self._url(USER, path, params, storage)

    @property
    def env(self) -> dict:
        """Environment that gives a CLI subprocess the credentials (use with :meth:`plain_url`)."""
        return {"UNICORE_USER": USER, "UNICORE_PASSWORD": PASSWORD}


def start_unicore(root: str, **options) -> UnicoreHandle:
    """A started server serving ``root`` as storage HOME; the caller stops ``.server``."""
    options.setdefault("users", {USER: PASSWORD})
    return UnicoreHandle(UnicoreServer(root, **options).start())


def rest_port(handle: UnicoreHandle) -> Tuple[Any, str, Callable[[], requests.Response]]:
    """tests/test_servers_lockdown.py's REST port: the API, a path that takes a body, an owner's request."""
    return handle.server.http, f"/{handle.server.site}/rest/core/jobs", lambda: requests.get(
        handle.base_url + "/storages", auth=(USER, PASSWORD), timeout=10)


@pytest.fixture
def make_unicore_server(tmp_path):
    """Factory: ``make_unicore_server(**UnicoreServer options)`` -> started handle; all stopped afterwards."""
    yield from server_factory(tmp_path, "unicore", start_unicore)


@pytest.fixture
def unicore_server(make_unicore_server) -> UnicoreHandle:
    return make_unicore_server()
