"""pytest fixtures for the local EM API server (see docs/architecture.md).

``em_server`` serves volumes ``pod-a`` and ``pod-b`` (listed by ``/em/pvc/list``) plus the default
volume; the server's root directory mirrors the URL tree (``root/pod-a`` is ``em://.../pod-a``,
``root/_default`` is ``em://.../_default``).  Files can only live inside a volume, so generic suites
should work below :attr:`EMServerHandle.volume_path`.  ``make_em_server(**options)`` starts servers with
other settings (``api="v2"``, short token lifetimes, small limits ...).
"""
import os
from typing import Any, Callable, Tuple
from urllib.parse import quote, urlencode

import pytest
import requests
from handles import ServerHandle, server_factory

from hpcfs.servers.em import EMServer

USER, PASSWORD = "alice", "s3cret:p@ss"  # ':' and '@' make sure URLs quote the password
VOLUMES = ("pod-a", "pod-b")


class EMServerHandle(ServerHandle):
    """What tests need to reach one running server: URLs, credentials for subprocesses, its root."""

    volume_path = "/pod-a"  # a volume where files may be written (the top level holds only volumes)
    # hpcfs lists a whole EM volume at once and caches it: short periods, so files made on the disk show soon
    listing_ttl = 1.0
    mount_options = (f"listing_ttl={listing_ttl},attr_ttl={listing_ttl},negative_ttl={listing_ttl}",)

    def __init__(self, server: EMServer):
        self.server = server
        self.root = server.root

    @property
    def netloc(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    def _url(self, userinfo: str, path: str, params: dict) -> str:
        query = "?" + urlencode(params) if params else ""
        return f"em://{userinfo}@{self.netloc}{path}{query}"

    def url(self, path: str = "/", **params) -> str:
        """URL with the credentials embedded (for ``fs.open_fs`` and ``open_backend``)."""
        return self._url(f"{USER}:{quote(PASSWORD, safe='')}", path, params)

    def plain_url(self, path: str = "/", **params) -> str:
        return self._url(USER, path, params)

    @property
    def env(self) -> dict:
        """Environment that gives a CLI subprocess the credentials (use with :meth:`plain_url`)."""
        return {"EM_USERNAME": USER, "EM_PASSWORD": PASSWORD}


def start_em(root: str, **options) -> EMServerHandle:
    """A started server on ``root`` with volumes ``pod-a`` and ``pod-b``; the caller stops ``.server``."""
    for volume in VOLUMES:
        os.makedirs(os.path.join(root, volume), exist_ok=True)
    return EMServerHandle(EMServer(root, {USER: PASSWORD}, **options).start())


# tests/test_servers_lockdown.py's REST ports: name -> make_em_server options
REST_PORTS = {"em": {}, "em-tls": {"tls": True}}


def rest_port(handle: EMServerHandle) -> Tuple[Any, str, Callable[[], requests.Response]]:
    """The API, a path that takes a body, an owner's request."""
    server = handle.server
    return server.http, "/auth", lambda: requests.post(
        server.url + "/auth", data={"username": USER, "password": PASSWORD}, timeout=10,
        verify=server.cert_file or True)


@pytest.fixture
def make_em_server(tmp_path):
    """Factory: ``make_em_server(**EMServer options)`` -> started handle; all are stopped afterwards."""
    yield from server_factory(tmp_path, "em", start_em)


@pytest.fixture
def em_server(make_em_server) -> EMServerHandle:
    return make_em_server()
