"""The core's speed mechanisms, proven by what reaches the server (request counts, sizes, parallelism),
against the real local UFTP server.  No timings: speed is measured by scripts/bench."""
import hashlib
import os
import random
import subprocess
import threading
import time
import tracemalloc

import pytest

from hpcfs.core import CoreOptions, RemoteTree
from hpcfs.firecrest import chains
from hpcfs.urls import open_backend
from mounting import mounted

BLOCK = 1 << 20


class Observed:
    """The real backend, with the data requests the core makes recorded, as a packet trace would show."""

    def __init__(self, backend):
        self.backend = backend
        self.capabilities = backend.capabilities
        self.reads = []  # (path, offset, length)
        self.runs = []  # (offset, length) of each streamed run of blocks
        self.writes = []  # (kind, offset, length)
        self.peak = 0
        self._active = 0
        self._lock = threading.Lock()

    def read_range(self, path, offset, length):
        with self._lock:
            self._active += 1
            self.peak = max(self.peak, self._active)
            self.reads.append((path, offset, length))
        try:
            return self.backend.read_range(path, offset, length)
        finally:
            with self._lock:
                self._active -= 1

    def read_pieces(self, path, offset, length, piece_size, deliver):
        """A streamed run of blocks: each piece recorded as the read of its range."""
        position = offset

        def record(piece):
            nonlocal position
            with self._lock:
                self.reads.append((path, position, len(piece)))
            position += len(piece)
            deliver(piece)

        with self._lock:
            self._active += 1
            self.peak = max(self.peak, self._active)
            self.runs.append((offset, length))
        try:
            return self.backend.read_pieces(path, offset, length, piece_size, record)
        finally:
            with self._lock:
                self._active -= 1

    def begin_upload(self, path, size, resume_from=0):
        """An upload session whose parts are recorded: ("begin", size) then ("part", offset, length)."""
        with self._lock:
            self.writes.append(("begin", size))
        return RecordedSession(self, self.backend.begin_upload(path, size, resume_from))

    def __getattr__(self, name):
        return getattr(self.backend, name)


class RecordedSession:
    """A real upload session with its parts recorded, and how many were in flight at once."""

    def __init__(self, observed, session):
        self.observed, self.session = observed, session
        self.part_size, self.parallel = session.part_size, session.parallel

    def put_part(self, offset, source, length):
        observed = self.observed
        with observed._lock:
            observed.writes.append(("part", offset, length))
            observed._active += 1
            observed.peak = max(observed.peak, observed._active)
        try:
            return self.session.put_part(offset, source, length)
        finally:
            with observed._lock:
                observed._active -= 1

    def commit(self):
        self.session.commit()

    def abort(self):
        self.session.abort()


@pytest.fixture
def make_tree(uftp_server):
    trees = []

    def make(**options):
        backend, root = open_backend(uftp_server.url("/"))
        observed = Observed(backend)
        tree = RemoteTree(observed, root, CoreOptions(**{"block_size": BLOCK, **options}))
        trees.append(tree)
        return tree, observed

    yield make
    for tree in trees:
        tree.close()


def put(uftp_server, name, size):
    data = os.urandom(size)
    path = os.path.join(uftp_server.root, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(data)
    return data


def listed_tree(uftp_server, make_tree, sizes):
    """A tree whose cache holds the listings of every directory of ``sizes`` ({path: size}, put on the server)."""
    for name, size in sizes.items():
        put(uftp_server, name, size)
    tree, _ = make_tree()
    for directory in sorted({os.path.dirname("/" + name) for name in sizes}):
        tree.listdir(directory)
    return tree


def read_sequentially(tree, path, chunk=128 << 10):
    handle = tree.open(path)
    digest = hashlib.sha256()
    offset = 0
    while True:
        data = handle.read(offset, chunk)
        if not data:
            return digest.hexdigest()
        digest.update(data)
        offset += len(data)


def test_a_listing_answers_every_stat_in_the_directory(uftp_server, make_tree):
    for index in range(20):
        put(uftp_server, f"d/f{index}", index)
    tree, _ = make_tree()
    tree.listdir("/d")
    before = uftp_server.log.snapshot()
    sizes = [tree.stat(f"/d/f{index}").size for index in range(20)]
    with pytest.raises(FileNotFoundError):
        tree.stat("/d/not-there")
    assert sizes == list(range(20))
    assert uftp_server.log.snapshot() == before, "a stat after a listing went to the server"


def test_missing_paths_are_remembered_briefly(uftp_server, make_tree):
    tree, _ = make_tree()
    for _ in range(3):
        with pytest.raises(FileNotFoundError):
            tree.stat("/nothing/here")
    assert uftp_server.log.snapshot()["MLST"] == 1


def test_own_writes_update_the_cache_without_a_round_trip(uftp_server, make_tree):
    put(uftp_server, "w/old", 10)
    tree, _ = make_tree()
    tree.listdir("/w")
    handle = tree.open("/w/new", writable=True, create=True)
    handle.write(0, b"x" * 1234)
    handle.release()
    before = uftp_server.log.snapshot()
    assert sorted(entry.name for entry in tree.listdir("/w")) == ["new", "old"]
    assert tree.stat("/w/new").size == 1234
    assert uftp_server.log.snapshot() == before
    with open(os.path.join(uftp_server.root, "w/new"), "rb") as stored:
        assert stored.read() == b"x" * 1234


def test_own_removes_and_recreations_update_the_cache_without_a_round_trip(uftp_server, make_tree):
    tree = listed_tree(uftp_server, make_tree, {"r/a": 3, "r/b": 4})
    tree.remove("/r/a")
    before = uftp_server.log.snapshot()
    assert [entry.name for entry in tree.listdir("/r")] == ["b"]
    with pytest.raises(FileNotFoundError):
        tree.stat("/r/a")
    assert uftp_server.log.snapshot() == before, "the cache did not know about our own remove"
    handle = tree.open("/r/a", writable=True, create=True)
    handle.write(0, b"again")
    handle.release()
    assert tree.stat("/r/a").size == 5 and sorted(entry.name for entry in tree.listdir("/r")) == ["a", "b"]
    assert os.path.getsize(os.path.join(uftp_server.root, "r/a")) == 5


def test_sequential_reads_keep_several_blocks_in_flight(uftp_server, make_tree):
    data = put(uftp_server, "seq.bin", 24 * BLOCK + 123)
    tree, observed = make_tree(readahead=8 * BLOCK, cache_size=32 * BLOCK)
    assert read_sequentially(tree, "/seq.bin") == hashlib.sha256(data).hexdigest()
    assert observed.peak >= 2, "readahead never had two blocks in flight"
    offsets = sorted(offset for _, offset, _ in observed.reads)
    assert offsets == [index * BLOCK for index in range(25)], "each block fetched exactly once, block-aligned"
    assert all(length == min(BLOCK, len(data) - offset) for _, offset, length in observed.reads)


def test_readahead_asks_for_the_next_block_at_once_and_serves_later_reads_from_cache(uftp_server, make_tree):
    data = put(uftp_server, "ahead.bin", 6 * BLOCK)
    tree, observed = make_tree(readahead=4 * BLOCK, cache_size=16 * BLOCK)
    handle = tree.open("/ahead.bin")
    assert handle.read(0, 4096) == data[:4096]
    deadline = time.monotonic() + 30
    while len(observed.reads) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert (BLOCK, BLOCK) in {(offset, length) for _, offset, length in observed.reads}, observed.reads
    assert read_sequentially(tree, "/ahead.bin") == hashlib.sha256(data).hexdigest()
    fetched = len(observed.reads)
    rng = random.Random(11)
    for offset in (rng.randrange(len(data) - 4096) for _ in range(50)):  # random, but every block is cached
        assert handle.read(offset, 4096) == data[offset : offset + 4096]
    assert len(observed.reads) == fetched, "a random read of cached blocks went to the server"


def test_random_reads_fetch_only_what_they_ask_for(uftp_server, make_tree):
    data = put(uftp_server, "random.bin", 16 * BLOCK)
    tree, observed = make_tree()
    handle = tree.open("/random.bin")
    rng = random.Random(3)
    offsets = [rng.randrange(4096, len(data) - 4096) for _ in range(200)]
    for offset in offsets:
        assert handle.read(offset, 4096) == data[offset : offset + 4096]
    assert len(observed.reads) == 200
    assert all(length == 4096 for _, _, length in observed.reads), "a random read started readahead"


def test_readers_of_one_file_share_its_blocks(uftp_server, make_tree):
    data = put(uftp_server, "shared.bin", 12 * BLOCK)
    tree, observed = make_tree(readahead=4 * BLOCK, cache_size=64 * BLOCK)
    results = []
    threads = [threading.Thread(target=lambda: results.append(read_sequentially(tree, "/shared.bin")))
               for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not any(thread.is_alive() for thread in threads), "a reader hung"
    assert results == [hashlib.sha256(data).hexdigest()] * 8
    assert sum(length for _, _, length in observed.reads) == len(data), "a block was fetched twice"


def test_block_memory_stays_within_the_cache_size(uftp_server, make_tree):
    put(uftp_server, "big.bin", 40 * BLOCK)
    tree, _ = make_tree(readahead=4 * BLOCK, cache_size=8 * BLOCK)
    handle = tree.open("/big.bin")
    tracemalloc.start()  # every thread's allocations: the readers' and the block fetchers'
    try:
        baseline = tracemalloc.get_traced_memory()[0]
        held = 0
        for offset in range(0, 40 * BLOCK, 256 << 10):
            assert len(handle.read(offset, 256 << 10)) == 256 << 10
            held = max(held, tracemalloc.get_traced_memory()[0] - baseline)
    finally:
        tracemalloc.stop()
    assert held <= 8 * BLOCK + 2 * BLOCK, f"{held / BLOCK:.1f} MiB held for a cache of 8 MiB"  # 2: a read's own copies


def test_two_scans_through_a_small_cache_fetch_each_block_once(uftp_server, make_tree):
    first, second = put(uftp_server, "a.bin", 20 * BLOCK), put(uftp_server, "b.bin", 20 * BLOCK)
    tree, observed = make_tree(readahead=2 * BLOCK, cache_size=8 * BLOCK)
    digests = {}
    threads = [threading.Thread(target=lambda name=name: digests.__setitem__(name, read_sequentially(tree, name)))
               for name in ("/a.bin", "/b.bin")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not any(thread.is_alive() for thread in threads), "a reader hung"
    assert digests == {"/a.bin": hashlib.sha256(first).hexdigest(), "/b.bin": hashlib.sha256(second).hexdigest()}
    assert sum(length for _, _, length in observed.reads) == 40 * BLOCK, "the scans evicted unread readahead"


def test_ls_lR_through_the_mount_costs_one_listing_per_directory(uftp_server, tmp_path):
    for directory in range(10):
        for index in range(30):
            put(uftp_server, f"tree/d{directory}/f{index}", 1)
    with mounted(uftp_server.plain_url("/"), tmp_path / "mnt", env=uftp_server.env) as mountpoint:
        uftp_server.log.reset()
        cold = subprocess.run(["ls", "-lR", f"{mountpoint}/tree"], capture_output=True, text=True, check=True)
        counts = uftp_server.log.snapshot()
        assert cold.stdout.count(" f") == 300
        # One STAT N per directory (tree and its 10 children); the lookup of "tree" itself is one stat,
        # which the UFTP backend sends as MLST + STAT F.
        assert counts["STAT"] - counts["MLST"] == 11 and counts["MLST"] <= 1 and counts["RETR"] == 0, counts
        uftp_server.log.reset()
        subprocess.run(["ls", "-lR", f"{mountpoint}/tree"], capture_output=True, check=True)
        assert sum(uftp_server.log.snapshot().values()) == 0, "a warm ls -lR went to the server"


def test_a_file_written_from_start_to_end_streams_while_being_written(uftp_server, make_tree):
    tree, observed = make_tree()
    data = os.urandom(20 * BLOCK + 777)
    handle = tree.open("/streamed.bin", writable=True, create=True)
    for offset in range(0, len(data), 128 << 10):
        handle.write(offset, data[offset : offset + (128 << 10)])
    # Parts go out on the upload pool's threads, as soon as the load lets them: wait for them (bounded),
    # still before the close; without streaming none would go out until then.
    deadline = time.monotonic() + 30
    while len([write for write in observed.writes if write[0] == "part"]) < 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    sent_before_close = [write for write in observed.writes if write[0] == "part"]
    handle.release()
    assert len(sent_before_close) >= 4, "parts did not go out while the file was being written"
    assert observed.writes[0] == ("begin", None), "the upload did not begin before the size was known"
    with open(os.path.join(uftp_server.root, "streamed.bin"), "rb") as stored:
        assert hashlib.sha256(stored.read()).hexdigest() == hashlib.sha256(data).hexdigest()
    assert tree.stat("/streamed.bin").size == len(data)


def test_a_write_out_of_order_falls_back_to_one_whole_upload(uftp_server, make_tree):
    tree, observed = make_tree()
    data = bytearray(os.urandom(12 * BLOCK))
    handle = tree.open("/patched.bin", writable=True, create=True)
    handle.write(0, bytes(data))
    patch = os.urandom(5000)
    handle.write(3 * BLOCK + 10, patch)  # rewrites bytes that may already be on the server
    data[3 * BLOCK + 10 : 3 * BLOCK + 10 + 5000] = patch
    handle.release()
    assert [write for write in observed.writes if write[0] == "begin"][-1] == ("begin", len(data))
    with open(os.path.join(uftp_server.root, "patched.bin"), "rb") as stored:
        assert hashlib.sha256(stored.read()).hexdigest() == hashlib.sha256(data).hexdigest()


def test_writes_slightly_out_of_order_still_stream(uftp_server, make_tree):
    """The kernel splits one large write over several FUSE threads; their order must not end streaming."""
    tree, observed = make_tree()
    data = os.urandom(20 * BLOCK)
    chunk = 128 << 10
    offsets = list(range(0, len(data), chunk))
    rng = random.Random(5)
    for start in range(0, len(offsets), 4):  # each group of four arrives in a random order
        group = offsets[start : start + 4]
        rng.shuffle(group)
        offsets[start : start + 4] = group
    handle = tree.open("/shuffled.bin", writable=True, create=True)
    for offset in offsets:
        handle.write(offset, data[offset : offset + chunk])
    streamed = [write for write in observed.writes if write[0] == "part"]
    handle.release()
    assert len(streamed) >= 4 and [write[0] for write in observed.writes].count("begin") == 1, observed.writes
    with open(os.path.join(uftp_server.root, "shuffled.bin"), "rb") as stored:
        assert hashlib.sha256(stored.read()).hexdigest() == hashlib.sha256(data).hexdigest()


def test_a_streamed_file_appears_under_its_name_only_when_complete(uftp_server, make_tree):
    """Pieces go to a hidden partial name; the real name appears by one rename at close, never truncated."""
    put(uftp_server, "dir/streamed.bin", 1000)
    os.chmod(os.path.join(uftp_server.root, "dir/streamed.bin"), 0o750)
    old = open(os.path.join(uftp_server.root, "dir/streamed.bin"), "rb").read()
    tree, observed = make_tree()
    data = os.urandom(20 * BLOCK + 777)
    handle = tree.open("/dir/streamed.bin", writable=True, truncate=True)
    for offset in range(0, len(data), 128 << 10):
        handle.write(offset, data[offset : offset + (128 << 10)])
    assert len([write for write in observed.writes if write[0] == "part"]) >= 4, "nothing was streamed"
    stored_path = os.path.join(uftp_server.root, "dir/streamed.bin")
    with open(stored_path, "rb") as stored:
        assert stored.read() == old, "the streamed upload wrote into the real name"
    partials = [name for name in os.listdir(os.path.join(uftp_server.root, "dir")) if name != "streamed.bin"]
    assert len(partials) == 1 and partials[0].startswith(".streamed.bin.hpcfs-partial-"), partials
    handle.release()
    assert os.listdir(os.path.join(uftp_server.root, "dir")) == ["streamed.bin"]
    with open(stored_path, "rb") as stored:
        assert hashlib.sha256(stored.read()).hexdigest() == hashlib.sha256(data).hexdigest()
    assert os.stat(stored_path).st_mode & 0o777 == 0o750, "the replaced file lost its permissions"



# -- mechanisms an audit broke by hand without any test noticing ---------------------------------------
def test_a_file_changed_on_the_server_is_read_anew_not_from_old_blocks(uftp_server, make_tree):
    """Blocks are keyed by the file's version: same size, new content and mtime means new bytes."""
    old = put(uftp_server, "changing.bin", 6 * BLOCK)
    tree, _ = make_tree(attr_ttl=0.0)
    assert read_sequentially(tree, "/changing.bin") == hashlib.sha256(old).hexdigest()
    new = os.urandom(len(old))
    stored = os.path.join(uftp_server.root, "changing.bin")
    with open(stored, "wb") as handle:
        handle.write(new)
    later = os.stat(stored).st_mtime + 60
    os.utime(stored, (later, later))
    assert read_sequentially(tree, "/changing.bin") == hashlib.sha256(new).hexdigest(), "stale blocks served"


def test_children_of_a_renamed_or_removed_directory_are_forgotten(uftp_server, make_tree):
    tree = listed_tree(uftp_server, make_tree, {"a/f": 3, "a/sub/g": 5})
    assert tree.exists("/a/f") and tree.exists("/a/sub/g")
    tree.rename("/a", "/b")
    assert not tree.exists("/a/f") and not tree.exists("/a/sub/g") and not tree.exists("/a")
    assert tree.stat("/b/f").size == 3 and tree.stat("/b/sub/g").size == 5
    tree.remove("/b/sub/g")
    tree.rmdir("/b/sub")
    assert not tree.exists("/b/sub/g") and not tree.exists("/b/sub")
    assert [entry.name for entry in tree.listdir("/b")] == ["f"]


@pytest.mark.parametrize("max_files, max_upload, uploads", [(100, 1 << 20, 2), (100, 30_000, 5)])
def test_renaming_a_directory_on_em_respects_the_upload_batching(make_em_server, max_files, max_upload, uploads):
    """EM has no rename: 150 files move in uploads of at most max_files files and max_upload bytes (the
    server enforces both, and the request log counts the calls)."""
    handle = make_em_server(max_files=max_files, max_upload=max_upload)
    files = {f"f{index:03}.bin": os.urandom(1000) for index in range(150)}
    for name, data in files.items():
        handle.server.write_out_of_band("pod-a", f"dir/{name}", data)
    backend, root = open_backend(handle.url("/"), max_files=str(max_files), max_upload=str(max_upload))
    tree = RemoteTree(backend, root, CoreOptions())
    try:
        handle.log.reset()
        tree.rename("/pod-a/dir", "/pod-a/moved")
    finally:
        tree.close()
    assert handle.log.counts["files/uplink"] == uploads
    moved = os.path.join(handle.root, "pod-a", "moved")
    assert sorted(os.listdir(moved)) == sorted(files)
    for name, data in files.items():
        with open(os.path.join(moved, name), "rb") as stored:
            assert hashlib.sha256(stored.read()).digest() == hashlib.sha256(data).digest(), name
    assert not os.path.exists(os.path.join(handle.root, "pod-a", "dir"))


def test_a_presigned_url_that_expired_mid_read_is_staged_again(firecrest_server, monkeypatch):
    # An open GET outlives its URL's expiry, and a sequential reader's runs go on on the one left open
    # (hpcfs/firecrest/chains.py): here it is dropped as idle before the URL expires, so the next run needs a
    # new GET, and that one must stage the file again.
    monkeypatch.setattr(chains, "PARKED_IDLE", 2.0)
    data = os.urandom(6 << 20)
    with open(os.path.join(firecrest_server.root, "big.bin"), "wb") as handle:
        handle.write(data)
    backend, root = open_backend(firecrest_server.url("/"))
    backend.recheck = 600.0  # trust the staged copy: only the URL's expiry may cause a second staging
    # 3 s: long enough that the URL of the second staging outlives its reads on a loaded machine
    firecrest_server.knobs.extra["staging_ttl"] = 3
    stagings = "POST /filesystem/{system_name}/transfer/download"
    tree = RemoteTree(backend, root, CoreOptions(block_size=BLOCK, readahead=BLOCK, cache_size=4 * BLOCK))
    try:
        handle = tree.open("/big.bin")
        first = handle.read(0, 2 * BLOCK)
        staged_before = firecrest_server.log.total(stagings)
        time.sleep(4.5)  # the URL (issued to the second, valid 3 s) has expired
        rest = b"".join(handle.read(offset, BLOCK) for offset in range(2 * BLOCK, len(data), BLOCK))
    finally:
        tree.close()
    assert hashlib.sha256(first + rest).digest() == hashlib.sha256(data).digest()
    assert firecrest_server.log.total(stagings) > staged_before, "the rest was read without staging again"
