"""Shared test setup: each protocol's server fixtures live in their own plugin module; ``fixtures_peers``
holds the real upstream servers."""
pytest_plugins = ["fixtures_uftp", "fixtures_firecrest", "fixtures_em", "fixtures_flux", "fixtures_peers"]

import pytest

from hpcfs.net import policy


@pytest.fixture(autouse=True)
def _servers_start_healthy():
    """Each test meets its servers with no pause and a closed breaker: the guards are per process, and a
    test that makes a server answer 503 on purpose must not hold back the next test's requests."""
    yield
    with policy._guards_lock:
        policy._guards.clear()
