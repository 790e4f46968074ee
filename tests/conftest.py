"""Shared test setup: each protocol's server fixtures live in their own plugin module, ``fixtures_<scheme>``
for every scheme of hpcfs/registry.py; ``fixtures_peers`` holds the real upstream servers."""
import pytest

from hpcfs.net import policy
from hpcfs.registry import SCHEMES

pytest_plugins = [f"fixtures_{scheme}" for scheme in SCHEMES] + ["fixtures_peers", "intruder"]

# Tests of one real server (and the docs examples) run in one xdist worker, one after another (``--dist loadgroup``, as
# scripts/test runs the suite): UFTPD counts every session of its one user against a limit of 16, and
# FirecREST's stand-in cluster has few SSH channels; the two FirecREST systems and the streamer peer are
# separate enough to run beside each other.
PEER_GROUPS = (  # (group, what in a test's id puts it there), first match wins
    ("real-firecrest-streamer", ("test_real_firecrest_streamer.py",)),
    ("real-firecrest-s3", ("RealFirecrestS3", "[real-firecrest-s3")),
    ("real-firecrest", ("test_real_firecrest.py", "test_differential_firecrest.py", "RealFirecrest",
                        "[real-firecrest")),
    ("real-uftp", ("test_real_uftp.py", "test_differential_uftp.py", "RealUftp", "[real-uftp")),
    ("docs-venv", ("test_docs.py",)),  # one worker builds the venv the examples run in
)


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(items):
    for item in items:
        group = next((name for name, marks in PEER_GROUPS if any(mark in item.nodeid for mark in marks)), None)
        if group:
            item.add_marker(pytest.mark.xdist_group(group))


@pytest.fixture(autouse=True)
def _servers_start_healthy():
    """Each test meets its servers with no pause and a closed breaker: the guards are per process, and a
    test that makes a server answer 503 on purpose must not hold back the next test's requests."""
    yield
    with policy._guards_lock:
        policy._guards.clear()


@pytest.fixture
def close_cached_filesystems():
    """fsspec keeps one instance per URL; close each test's (its server is gone afterwards)."""
    yield
    from hpcfs.frontends.fsspec import HpcfsFileSystem

    for instance in list(HpcfsFileSystem._cache.values()):
        instance.remote.close()
    HpcfsFileSystem.clear_instance_cache()
