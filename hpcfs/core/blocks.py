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
import ctypes
import ctypes.util
import functools
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import List, Tuple

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


RUNS_IN_FLIGHT = 4  # most runs one sequential reader's readahead window is cut into


@functools.cache
def keep_freed_block_memory() -> bool:
    """Tell glibc's malloc to keep freed block buffers in the process instead of returning them to the
    system at once.  Blocks of a few MiB are allocated and freed at the rate data streams through the
    cache; by default each comes from a fresh mmap and every page of it faults in again (zero-filled by
    the kernel), which cost half the time of a sequential read against a real UFTPD.  Memory stays bounded
    by the cache size: freed buffers are reused for the next blocks.  Process-wide, so only hpcfs's own
    processes (the CLI and its mounts) call it, never a library user's process."""
    name = ctypes.util.find_library("c")
    if not name or "libc.so" not in name:
        return False  # not glibc
    libc = ctypes.CDLL(name)
    m_trim_threshold, m_mmap_threshold, m_arena_max = -1, -3, -8
    # One arena: a block freed by the thread that evicts it is reused by whichever worker fetches the next
    # one, so freed blocks are not stranded in per-thread arenas (Python's GIL serialises malloc anyway).
    return bool(libc.mallopt(m_mmap_threshold, 32 << 20) and libc.mallopt(m_trim_threshold, 512 << 20)
                and libc.mallopt(m_arena_max, 1))


class BlockCache:
    def __init__(self, backend, block_size=2 << 20, readahead_max=32 << 20, max_bytes=256 << 20, workers=None):
        self.backend = backend
        self.block_size = block_size
        self.max_blocks_ahead = max(1, readahead_max // block_size)
        self.max_blocks = max(2, max_bytes // block_size)
        self.workers = workers = workers or backend.capabilities.max_parallel
        # Readahead goes out in runs of consecutive blocks, one request each: a full window is at most
        # RUNS_IN_FLIGHT runs, enough to keep several sessions busy while each request stays long (a
        # request's fixed cost, a UFTPD round trip or a staging-area GET, is paid per run, not per block).
        self.run_blocks = max(1, self.max_blocks_ahead // min(workers, RUNS_IN_FLIGHT))
        self._blocks = collections.OrderedDict()  # (path, token, index) -> Future[bytes]; first = evict next
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(
            max_workers=workers, thread_name_prefix="hpcfs-block"
        )

    def read(self, path, entry, pattern, offset, size) -> bytes:
        """``size`` bytes at ``offset`` of the file version ``entry`` (short at end of file)."""
        return b"".join(self._views(path, entry, pattern, offset, size))  # the one copy

    def read_into(self, path, entry, pattern, offset, dest: memoryview) -> int:
        """Like :meth:`read`, copying straight into ``dest`` (FUSE's buffer, a Python reader's): the blocks'
        bytes are copied once, not joined first.  Returns the byte count."""
        position = 0
        for view in self._views(path, entry, pattern, offset, len(dest)):
            dest[position:position + len(view)] = view
            position += len(view)
        return position

    def _views(self, path, entry, pattern, offset, size) -> List[memoryview]:
        """Views of the blocks' bytes covering the read, valid as long as the caller holds them."""
        end = min(offset + size, entry.size)
        if offset >= end:
            return []
        window = pattern.update(offset, size, self.block_size, self.max_blocks_ahead)
        first, last = offset // self.block_size, (end - 1) // self.block_size
        token = entry.change_token
        if window == 0 and not self._all_cached(path, token, first, last):
            return [memoryview(self.backend.read_range(path, offset, end - offset))]
        futures = self._fetch(path, token, entry.size, range(first, last + 1))
        self._read_ahead(path, token, entry.size, last + 1, min(last + window, (entry.size - 1) // self.block_size))
        views = []
        for index, future in zip(range(first, last + 1), futures):
            data = self._result(path, token, index, future)
            start = max(offset - index * self.block_size, 0)
            stop = min(end - index * self.block_size, len(data))
            views.append(memoryview(data)[start:stop])
            if window and stop == len(data):
                self._mark_consumed((path, token, index))
        if sum(map(len, views)) != end - offset:  # the file shrank on the server since we listed it
            self.forget(path)
        return views

    def forget(self, path):
        """Drop every block of ``path`` (after a write, a rename or a short read)."""
        with self._lock:
            for key in [key for key in self._blocks if key[0] == path]:
                del self._blocks[key]

    def close(self):
        self._pool.shutdown(wait=False, cancel_futures=True)

    # -- internals ------------------------------------------------------------------------------------
    def _all_cached(self, path, token, first, last):
        with self._lock:
            return all((path, token, index) in self._blocks for index in range(first, last + 1))

    def _read_ahead(self, path, token, size, start, stop):
        """Fetch the missing blocks of ``[start, stop]``, but only once a whole run of them is missing (or
        the run reaches the end of the file): topping the window up one block at a time would cost one
        request per block again."""
        if stop < start:
            return
        with self._lock:
            missing = sum((path, token, index) not in self._blocks for index in range(start, stop + 1))
        if missing >= min(self.run_blocks, stop - start + 1) or (missing and stop == (size - 1) // self.block_size):
            self._fetch(path, token, size, range(start, stop + 1))

    def _fetch(self, path, token, size, indices) -> list:
        """Futures of the blocks ``indices``; the missing ones are fetched in runs of consecutive blocks,
        one streamed ``read_pieces`` per run of up to ``run_blocks``."""
        futures: List[Future] = []
        missing: List[Tuple[int, Future]] = []
        with self._lock:
            for index in indices:
                key = (path, token, index)
                future = self._blocks.get(key)
                if future is None:
                    future = self._blocks[key] = Future()
                    missing.append((index, future))
                else:
                    self._blocks.move_to_end(key)
                futures.append(future)
            self._evict()
        for run in _runs(missing, self.run_blocks):
            offset = run[0][0] * self.block_size
            length = min(len(run) * self.block_size, size - offset)
            self._pool.submit(_fill_run, [future for _, future in run], self.backend.read_pieces, path, offset,
                              length, self.block_size)
        return futures

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


def _runs(missing, longest):
    """``[(index, future), ...]`` cut into runs of consecutive indices, each at most ``longest`` long."""
    runs = []
    for index, future in missing:
        if runs and runs[-1][-1][0] == index - 1 and len(runs[-1]) < longest:
            runs[-1].append((index, future))
        else:
            runs.append([(index, future)])
    return runs


def _fill_run(futures, read_pieces, path, offset, length, block_size):
    """Fetch a run of blocks with one ``read_pieces``, completing each block's future as it arrives; a
    failure goes to every block not delivered yet (whose reader raises it in its own thread)."""
    pending = collections.deque(futures)

    def deliver(piece):
        pending.popleft().set_result(piece)

    try:
        read_pieces(path, offset, length, block_size, deliver)
    except BaseException as exc:
        failure = exc if isinstance(exc, Exception) else errors.HpcfsError(str(exc))
        while pending:
            pending.popleft().set_exception(failure)
        return
    while pending:  # the file ended early (it shrank): the reader sees a short block and forgets the file
        pending.popleft().set_result(b"")
