"""What every local server's test handle offers, so that the suites which run for every protocol of
hpcfs/registry.py (through each protocol's ``fixture``) treat the handles alike; and the factory fixture
that starts servers with options of a test's own."""
from typing import Callable, Iterator, List


class ServerHandle:
    """A running local server as tests see it.  Each protocol's handle (tests/fixtures_<scheme>.py) also has
    ``server`` (the running server: ``stop()``), ``netloc`` (``host:port`` of the endpoint its URLs name),
    ``env`` (what a CLI subprocess needs), ``url(path)`` (credentials embedded), ``root`` (the served
    directory) and ``log`` (the server's request log); a read-only protocol's handle also has ``sample()``, ``(path, bytes)`` of a file in its tree, and
    a handle whose server takes files only below some directory has ``volume_path`` (EM's volume).  The suites
    that run for every protocol (tests/contract.py) use nothing else."""

    def allow_rapid_commands(self) -> None:
        """For a test that runs many CLI commands in a row: lift a limit on sessions that ended sessions
        still count against for a while.  Only UFTPD has one (UFTPHandle)."""


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
