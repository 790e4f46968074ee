"""Block cache and readahead for backends with ranged reads.

Files are cut into fixed-size blocks.  A block is fetched once, by one ``read_range`` on a worker thread,
and shared by every reader of the same file version (blocks are keyed by path *and* change token, so a
changed file never serves stale bytes).  Each open file keeps a :class:`ReadPattern`: while reads stay
sequential the readahead window doubles up to ``readahead_max`` bytes, and that many blocks are in flight
at once across the backend's parallel sessions or connections.  A random read fetches only the bytes it
asks for and starts no readahead.

Memory is bounded by ``max_bytes``.  Eviction is LRU, except that a block a sequential reader has fully
consumed goes to the front of the eviction queue, so a long scan does not flush blocks other readers
still need (nor its own readahead).
"""
import collections
import threading
from concurrent.futures import Future, ThreadPoolExecutor

from .. import errors


class ReadPattern:
    """Per-open-file access pattern: where the last read ended and how far ahead to fetch."""

    def __init__(self):
        self.next_offset = 0  # a file's first read at 0 counts as sequential
        self.window = 0  # readahead in blocks; 0 = random access, no readahead

    def update(self, offset, size, block_size, max_blocks):
        """Record a read; return the readahead window in blocks."""
        # A read that starts where the last one ended is sequential.  Once a run is going, FUSE worker
        # threads may deliver the kernel's requests slightly out of order, so "near" then counts too.
        near = abs(offset - self.next_offset) <= 2 * block_size
        if offset == self.next_offset or (near and self.window):
            self.window = min(max(1, self.window * 2), max_blocks)
            self.next_offset = max(self.next_offset, offset + size)
        else:
            self.window = 0
            self.next_offset = offset + size
        return self.window


class BlockCache:
    def __init__(self, backend, block_size=2 << 20, readahead_max=32 << 20, max_bytes=256 << 20, workers=None):
        self.backend = backend
        self.block_size = block_size
        self.max_blocks_ahead = max(1, readahead_max // block_size)
        self.max_blocks = max(2, max_bytes // block_size)
        self._blocks = collections.OrderedDict()  # (path, token, index) -> Future[bytes]; first = evict next
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(
            max_workers=workers or backend.capabilities.max_parallel, thread_name_prefix="hpcfs-block"
        )

    def read(self, path, entry, pattern, offset, size):
        """``size`` bytes at ``offset`` of the file version ``entry`` (short at end of file)."""
        end = min(offset + size, entry.size)
        if offset >= end:
            return b""
        window = pattern.update(offset, size, self.block_size, self.max_blocks_ahead)
        first, last = offset // self.block_size, (end - 1) // self.block_size
        token = entry.change_token
        if window == 0 and not self._all_cached(path, token, first, last):
            return bytes(self.backend.read_range(path, offset, end - offset))
        futures = [self._block(path, token, entry.size, index) for index in range(first, last + 1)]
        for index in range(last + 1, last + 1 + window):
            if index * self.block_size >= entry.size:
                break
            self._block(path, token, entry.size, index)
        pieces = []
        for index, future in zip(range(first, last + 1), futures):
            data = self._result(path, token, index, future)
            start = max(offset - index * self.block_size, 0)
            stop = min(end - index * self.block_size, len(data))
            pieces.append(memoryview(data)[start:stop])  # views: the join below is the only copy
            if window and stop == len(data):
                self._mark_consumed((path, token, index))
        result = b"".join(pieces)
        if len(result) != end - offset:  # the file shrank on the server since we listed it
            self.forget(path)
        return result

    def forget(self, path):
        """Drop every block of ``path`` (after a write, a rename or a short read)."""
        with self._lock:
            for key in [key for key in self._blocks if key[0] == path]:
                del self._blocks[key]

    def cached_bytes(self):
        with self._lock:
            return sum(len(f.result()) for f in self._blocks.values() if f.done() and not f.exception())

    def close(self):
        self._pool.shutdown(wait=False, cancel_futures=True)

    # -- internals ------------------------------------------------------------------------------------
    def _all_cached(self, path, token, first, last):
        with self._lock:
            return all((path, token, index) in self._blocks for index in range(first, last + 1))

    def _block(self, path, token, size, index):
        key = (path, token, index)
        with self._lock:
            future = self._blocks.get(key)
            if future is not None:
                self._blocks.move_to_end(key)
                return future
            future = Future()
            self._blocks[key] = future
            self._evict()
        offset = index * self.block_size
        length = min(self.block_size, size - offset)
        self._pool.submit(_fill, future, self.backend.read_range, path, offset, length)
        return future

    def _result(self, path, token, index, future):
        try:
            return future.result()
        except BaseException:
            with self._lock:  # a failed block must be fetched again by the next reader, not cached
                if self._blocks.get((path, token, index)) is future:
                    del self._blocks[(path, token, index)]
            raise

    def _mark_consumed(self, key):
        with self._lock:
            if key in self._blocks:
                self._blocks.move_to_end(key, last=False)

    def _evict(self):
        while len(self._blocks) > self.max_blocks:
            self._blocks.popitem(last=False)


def _fill(future, fetch, *args):
    if not future.set_running_or_notify_cancel():
        return
    try:
        future.set_result(fetch(*args))
    except BaseException as exc:  # handed to the reader, who raises it in its own thread
        future.set_exception(exc if isinstance(exc, Exception) else errors.HpcfsError(str(exc)))
