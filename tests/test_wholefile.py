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
    return sorted(os.listdir(cache._dir))


def test_copies_stay_within_the_bound_least_recently_used_first_out(files, tmp_path):
    backend, digests = files
    cache = WholeFileCache(backend, directory=str(tmp_path), max_bytes=100 * KIB)
    try:
        entries = {name: backend.stat(f"/{name}") for name in digests}
        read = {name: cache.local_copy(f"/{name}", entries[name]) for name in ("a", "b")}
        cache.local_copy("/a", entries["a"])  # a is now used more recently than b
        read["c"] = cache.local_copy("/c", entries["c"])  # 120 KiB > 100 KiB: b goes
        assert not os.path.exists(read["b"])
        assert _copies(cache) == sorted(os.path.basename(read[name]) for name in ("a", "c"))
        for name in ("a", "c"):
            with open(read[name], "rb") as handle:
                assert hashlib.sha256(handle.read()).hexdigest() == digests[name]
    finally:
        cache.close()
    assert not os.path.exists(cache._dir)


def test_a_copy_larger_than_the_bound_is_served_until_the_next_arrives(files, tmp_path):
    backend, digests = files
    cache = WholeFileCache(backend, directory=str(tmp_path), max_bytes=100 * KIB)
    try:
        big = backend.stat("/big")
        data = cache.read("/big", big, 0, 300 * KIB)
        assert hashlib.sha256(data).hexdigest() == digests["big"]
        big_copy = cache.local_copy("/big", big)  # served from disk, not downloaded again
        assert _copies(cache) == [os.path.basename(big_copy)]
        a_copy = cache.local_copy("/a", backend.stat("/a"))
        assert _copies(cache) == [os.path.basename(a_copy)]
        cache.forget("/a")
        assert _copies(cache) == []
    finally:
        cache.close()
