"""What every local server's test handle offers, so that the suites which run for every protocol of
hpcfs/registry.py (through each protocol's ``fixture``) treat the handles alike; and the factory fixture
that starts servers with options of a test's own."""
import importlib
import os
from types import ModuleType
from typing import Any, Callable, Iterator, List, Tuple


class ServerHandle:
    """A server as tests see it.  Each protocol's handle (tests/fixtures_<scheme>.py) has ``server`` (the
    running server: ``stop()``, ``log``, ``knobs``), ``root`` (the served directory), ``netloc``
    (``host:port`` of the endpoint its URLs name), ``env`` (what a CLI subprocess needs), ``url(path)``
    (credentials embedded) and ``plain_url(path)`` (none: pair it with ``env``); a read-only protocol's
    handle also has ``sample()``, ``(path, bytes)`` of a file in a sub-directory of its tree (the suites also
    try to remove that directory and to make one beside it), and a handle whose server takes
    files only below some directory has ``volume_path`` (EM's volume).  The suites that run for every
    protocol (tests/contract.py, tests/test_mount_suite.py) use nothing else; the real servers' handles
    (tests/fixtures_peers.py) offer the same but ``server``."""

    server: Any
    # How long hpcfs may show a listing that predates a change made on the server's disk, and the mount
    # options that keep it that short: a test that changes the disk behind a mount waits that long.
    listing_ttl = 0.0
    mount_options: Tuple[str, ...] = ()

    @property
    def log(self) -> Any:
        return self.server.log

    @property
    def knobs(self) -> Any:
        return self.server.knobs

    def plain_url(self, path: str = "/") -> str:
        """The URL without credentials (a server that needs none: its :meth:`url`)."""
        return self.url(path)

    def put(self, path: str, data: bytes) -> str:
        """Write ``data`` to ``path`` of the served tree straight on the server's disk (parents made); the
        file's local path."""
        local = os.path.join(self.root, path.lstrip("/"))
        os.makedirs(os.path.dirname(local), exist_ok=True)
        with open(local, "wb") as handle:
            handle.write(data)
        return local

    def allow_rapid_commands(self) -> None:
        """For a test that runs many CLI commands in a row: lift a limit on sessions that ended sessions
        still count against for a while.  Only UFTPD has one (UFTPHandle)."""


def starter(scheme: str) -> Callable[[str], ServerHandle]:
    """``start_<scheme>(root)`` of tests/fixtures_<scheme>.py: starts the protocol's local server on the
    directory ``root``; the caller stops ``handle.server``.  The protocol's fixture is built on it, and
    suites that hold one server for longer than a test (the mount suite) call it themselves."""
    return getattr(fixtures_module(scheme), f"start_{scheme}")


def fixtures_module(scheme: str) -> ModuleType:
    """tests/fixtures_<scheme>.py: besides ``start_<scheme>`` and the fixtures, it holds the hooks through which
    suites that run for every protocol ask for what only that protocol has (``serve_*`` of tests/test_cli.py,
    ``rest_port`` of tests/test_servers_lockdown.py)."""
    return importlib.import_module(f"fixtures_{scheme}")


def server_factory(tmp_path, name: str, start: Callable[..., ServerHandle]) -> Iterator[Callable[..., ServerHandle]]:
    """The body of a ``make_<scheme>_server`` fixture (``yield from`` it): ``make(*args, **options)`` is
    ``start(root, *args, **options)`` on a new directory below ``tmp_path``; every server it started is
    stopped after the test."""
    handles: List[ServerHandle] = []

    def make(*args, **options) -> ServerHandle:
        root = tmp_path / f"{name}-root-{len(handles)}"
        root.mkdir()
        handles.append(start(str(root), *args, **options))
        return handles[-1]

    yield make
    for handle in handles:
        handle.server.stop()
