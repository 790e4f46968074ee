"""The whole-file cache over a real backend (the local UFTP server): copies on disk bounded in bytes,
least recently used first out, deleted from disk when they drop out."""
import hashlib
import os

import pytest

from hpcfs.core.wholefile import WholeFileCache
from hpcfs.urls import open_backend

KIB = 1024


@pytest.fixture
def files(uftp_server):
    """Four files of 40 KiB, 40 KiB, 40 KiB and 200 KiB on the server: name -> sha256."""
    digests = {}
    for name, size in (("a", 40), ("b", 40), ("c", 40), ("big", 200)):
        data = os.urandom(size * KIB)
        with open(os.path.join(uftp_server.root, name), "wb") as handle:
            handle.write(data)
        digests[name] = hashlib.sha256(data).hexdigest()
    backend, _ = open_backend(uftp_server.url())
    yield backend, digests
    backend.close()


def _copies(cache):
    """The local copies on disk: their sha256 digests."""
    digests = []
    for name in os.listdir(cache._dir):
        with open(os.path.join(cache._dir, name), "rb") as handle:
            digests.append(hashlib.sha256(handle.read()).hexdigest())
    return sorted(digests)


def _read(cache, backend, name):
    data = cache.read(f"/{name}", backend.stat(f"/{name}"), 0, 1 << 20)
    return hashlib.sha256(data).hexdigest()


def test_copies_stay_within_the_bound_least_recently_used_first_out(files, tmp_path):
    backend, digests = files
    cache = WholeFileCache(backend, directory=str(tmp_path), max_bytes=100 * KIB)
    try:
        for name in ("a", "b", "a"):  # a is now used more recently than b
            assert _read(cache, backend, name) == digests[name]
        assert _read(cache, backend, "c") == digests["c"]  # 120 KiB > 100 KiB: b goes
        assert _copies(cache) == sorted(digests[name] for name in ("a", "c"))
    finally:
        cache.close()
    assert not os.path.exists(cache._dir)


def test_a_copy_larger_than_the_bound_is_served_until_the_next_arrives(files, tmp_path):
    backend, digests = files
    cache = WholeFileCache(backend, directory=str(tmp_path), max_bytes=100 * KIB)
    try:
        for _ in range(2):  # the second read is served from disk, not downloaded again
            assert _read(cache, backend, "big") == digests["big"]
            assert _copies(cache) == [digests["big"]]
        assert _read(cache, backend, "a") == digests["a"]
        assert _copies(cache) == [digests["a"]]
        cache.forget("/a")
        assert _copies(cache) == []
    finally:
        cache.close()
