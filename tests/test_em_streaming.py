"""The whole-file cache streams: an EM download goes to local disk while readers are served as soon as their
bytes are there.  The local EM server paces its download bodies (``download_rate`` knob), so a download
takes seconds and the tests can watch readers served while it still runs: through the cache itself and
through a real mount (``head -c 100`` of a big file)."""
import concurrent.futures
import hashlib
import os
import random
import shutil
import subprocess
import sys
import threading
import time
import tracemalloc

import pytest

import mounting
from hpcfs import errors
from hpcfs.core.wholefile import WholeFileCache
from hpcfs.urls import open_backend

pytestmark = pytest.mark.timeout(60)
KIB, MIB = 1024, 1024 * 1024
RATE = 4 * MIB  # bytes per second the server sends: the 8 MiB file takes 2 s
PATH = "/pod-a/big"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def downloads(em_server) -> int:
    """Downloads the server began: downlink requests less those answered 423 (the account was still busy
    with a download the client had just given up, and the client asked again)."""
    return em_server.log.snapshot()["files/downlink"] - em_server.server.statuses[423]


def on_disk(cache: WholeFileCache) -> list:
    """Sizes of the local copies, in bytes."""
    return [os.path.getsize(os.path.join(cache._dir, name)) for name in os.listdir(cache._dir)]


def download_under_way(cache: WholeFileCache, size: int) -> None:
    """Wait until the one download has written its first bytes, and check it has not finished."""
    deadline = time.monotonic() + 10
    while not any(on_disk(cache)) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert 0 < on_disk(cache)[0] < size


@pytest.fixture
def big(em_server):
    """8 MiB of random bytes at ``/pod-a/big`` on a server that sends downloads at :data:`RATE`."""
    data = os.urandom(8 * MIB)
    em_server.server.write_out_of_band("pod-a", "big", data)
    em_server.knobs.extra["download_rate"] = RATE
    return data


@pytest.fixture
def cache(em_server, tmp_path):
    backend, _ = open_backend(em_server.url())
    cache = WholeFileCache(backend, directory=str(tmp_path), max_bytes=64 * MIB)
    yield cache
    cache.close()
    backend.close()


def test_the_first_read_is_served_while_the_download_still_runs(em_server, big, cache):
    entry = cache.backend.stat(PATH)
    assert cache.read(PATH, entry, 0, 128 * KIB) == big[: 128 * KIB]
    assert on_disk(cache)[0] < len(big)  # served before the rest arrived
    assert sha256(cache.read(PATH, entry, 0, len(big) + 1)) == sha256(big)
    assert downloads(em_server) == 1


def test_concurrent_readers_at_any_offset_get_exact_bytes(em_server, big, cache):
    entry = cache.backend.stat(PATH)
    piece = 192 * KIB  # not a divisor of the file: the last read is short
    offsets = list(range(0, len(big), piece))
    random.Random(13).shuffle(offsets)

    def read(offset):
        data = cache.read(PATH, entry, offset, piece)
        return offset, data, on_disk(cache)[0]

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = sorted(pool.map(read, offsets))
    assert sha256(b"".join(data for _, data, _ in results)) == sha256(big)
    assert min(size for _, _, size in results) < len(big)  # some were served while the download ran
    assert downloads(em_server) == 1


def test_a_download_failing_midway_fails_only_readers_past_the_cut(em_server, big, cache):
    entry = cache.backend.stat(PATH)
    em_server.knobs.drop_after_bytes = 2 * MIB
    assert cache.read(PATH, entry, 0, 64 * KIB) == big[: 64 * KIB]  # there before the cut
    with pytest.raises(errors.ProtocolError):
        cache.read(PATH, entry, 6 * MIB, 64 * KIB)
    assert on_disk(cache) == []  # the partial copy is dropped
    assert cache.read(PATH, entry, 6 * MIB, 64 * KIB) == big[6 * MIB: 6 * MIB + 64 * KIB]
    assert downloads(em_server) == 2  # a fresh download


def test_a_version_forgotten_during_its_download_is_never_served_again(em_server, big, cache):
    entry = cache.backend.stat(PATH)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        first = pool.submit(cache.read, PATH, entry, 0, 64 * KIB)
        download_under_way(cache, len(big))
        new = os.urandom(len(big))
        em_server.server.write_out_of_band("pod-a", "big", new)
        cache.forget(PATH)
        assert sha256(cache.read(PATH, entry, 0, len(new) + 1)) == sha256(new)
        assert first.result() == big[: 64 * KIB]
    assert downloads(em_server) == 2
    assert on_disk(cache) == [len(new)]  # the old download's copy is gone


def test_memory_stays_flat_while_a_download_streams_to_disk(em_server, cache):
    data = os.urandom(32 * MIB)
    em_server.server.write_out_of_band("pod-a", "big", data)
    entry = cache.backend.stat(PATH)
    digest = hashlib.sha256()
    tracemalloc.start()  # every thread's allocations: the reader's, the download's and the server's
    try:
        for offset in range(0, len(data), 256 * KIB):
            digest.update(cache.read(PATH, entry, offset, 256 * KIB))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert digest.hexdigest() == sha256(data)
    assert peak < 8 * MIB, f"{peak / MIB:.1f} MiB held while 32 MiB went through"


def test_close_during_a_download_ends_its_worker_quietly(em_server, big, cache):
    entry = cache.backend.stat(PATH)
    assert cache.read(PATH, entry, 0, 64 * KIB) == big[: 64 * KIB]
    workers = [thread for thread in threading.enumerate() if thread.name == "hpcfs-wholefile"]
    cache.close()
    assert not os.path.exists(cache._dir)
    for worker in workers:
        worker.join(timeout=len(big) / RATE / 2)  # ends at its next write, long before the download would
        assert not worker.is_alive()
    with pytest.raises(errors.Unavailable):
        cache.read(PATH, entry, 0, 1)


def test_a_copy_evicted_while_filling_stops_its_download(em_server, cache, tmp_path):
    huge, small = os.urandom(16 * MIB), os.urandom(256 * KIB)  # 4 s and 0.06 s at RATE
    em_server.server.write_out_of_band("pod-a", "huge", huge)
    em_server.server.write_out_of_band("pod-a", "small", small)
    em_server.knobs.extra["download_rate"] = RATE
    bounded = WholeFileCache(cache.backend, directory=str(tmp_path), max_bytes=len(huge) + 128 * KIB)
    try:
        entry = cache.backend.stat("/pod-a/huge")
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            first = pool.submit(bounded.read, "/pod-a/huge", entry, 0, 64 * KIB)
            download_under_way(bounded, len(huge))
            started = time.monotonic()
            # 16 MiB being filled (counted at its full size) + 256 KiB > the bound: the huge copy goes, and
            # its download with it once its reader is served, instead of running on for seconds first
            data = bounded.read("/pod-a/small", cache.backend.stat("/pod-a/small"), 0, MIB)
            elapsed = time.monotonic() - started
            assert first.result() == huge[: 64 * KIB]
        assert sha256(data) == sha256(small)
        assert on_disk(bounded) == [len(small)]
        assert elapsed < len(huge) / RATE / 2, f"the small file took {elapsed:.1f} s"
    finally:
        bounded.close()


def test_a_copy_is_counted_at_the_size_it_turned_out_to_have(em_server, cache, tmp_path):
    em_server.server.write_out_of_band("pod-a", "grown", os.urandom(8 * MIB))
    listed = cache.backend.stat("/pod-a/grown")  # 8 MiB: more than the bound below
    shrunk, small = os.urandom(MIB), os.urandom(256 * KIB)
    em_server.server.write_out_of_band("pod-a", "grown", shrunk)  # changed since it was listed
    em_server.server.write_out_of_band("pod-a", "small", small)
    bounded = WholeFileCache(cache.backend, directory=str(tmp_path), max_bytes=MIB + 512 * KIB)
    try:
        assert bounded.read("/pod-a/grown", listed, 0, 8 * MIB) == shrunk
        assert bounded.read("/pod-a/small", cache.backend.stat("/pod-a/small"), 0, MIB) == small
        assert sorted(on_disk(bounded)) == [len(small), len(shrunk)]  # 1.25 MiB: both fit
    finally:
        bounded.close()


@pytest.mark.skipif(not os.access("/dev/fuse", os.R_OK | os.W_OK) or not shutil.which("fusermount3"),
                    reason="needs /dev/fuse and fusermount3")
def test_head_of_a_big_file_in_a_mount_returns_before_its_download_ends(em_server, tmp_path):
    data = os.urandom(32 * MIB)  # 8 s at RATE
    em_server.server.write_out_of_band("pod-a", "big", data)
    with mounting.mounted(em_server.plain_url("/"), tmp_path / "mnt", env=em_server.env) as mountpoint:
        target = os.path.join(mountpoint, "pod-a", "big")
        assert os.path.getsize(target) == len(data)  # the listing is in before the clock starts
        em_server.knobs.extra["download_rate"] = RATE
        started = time.monotonic()
        head = subprocess.run(["head", "-c", "100", target], capture_output=True, check=True, timeout=30).stdout
        elapsed = time.monotonic() - started
    assert head == data[:100]
    assert elapsed < len(data) / RATE / 2, f"head took {elapsed:.1f} s"


def test_a_script_that_reads_a_little_and_exits_does_not_wait_for_the_download(em_server, tmp_path):
    """A program leaves its filesystem open at exit: the download behind its read must not hold it up."""
    data = os.urandom(32 * MIB)  # 8 s at RATE
    em_server.server.write_out_of_band("pod-a", "big", data)
    em_server.knobs.extra["download_rate"] = RATE
    script = ("import sys, fs\n"
              "em = fs.open_fs(sys.argv[1])\n"
              "handle = em.openbin('/pod-a/big')\n"
              "sys.stdout.buffer.write(handle.read(100))\n")
    started = time.monotonic()
    head = subprocess.run([sys.executable, "-c", script, em_server.url()], capture_output=True, check=True,
                          timeout=30).stdout
    elapsed = time.monotonic() - started
    assert head == data[:100]
    assert elapsed < len(data) / RATE / 2, f"the script took {elapsed:.1f} s"
