"""Read-through cache of whole files on local disk, for backends (or file sizes) without ranged reads.

A file version (path + change token) is downloaded once with ``read_whole`` into a private temporary
directory; every reader of that version then reads the local copy.  Concurrent first readers wait for the
one download.  Disk use is bounded by ``max_bytes`` (least recently used copies go first; a file larger
than the bound is still served, then dropped when the next one arrives).
"""
import os
import tempfile
import threading
import uuid
from typing import Optional, Tuple

from cachetools import LRUCache

Copy = Tuple[str, int]  # (local path, size)


class LocalCopies(LRUCache):
    """(path, token) -> :data:`Copy`, least recently used first out once their sizes pass ``max_bytes``;
    a copy that drops out is deleted from disk.  One copy larger than the bound (which cachetools refuses)
    is still kept while it is served, until the next one arrives."""

    def __init__(self, max_bytes: int):
        super().__init__(maxsize=max_bytes, getsizeof=lambda copy: copy[1])
        self._oversized: Optional[Tuple[tuple, Copy]] = None

    def local_path(self, key: tuple) -> Optional[str]:
        if self._oversized is not None and self._oversized[0] == key:
            return self._oversized[1][0]
        copy = self.get(key)
        return None if copy is None else copy[0]

    def add(self, key: tuple, copy: Copy) -> None:
        self._drop_oversized()
        if copy[1] > self.maxsize:
            self._oversized = (key, copy)
        else:
            self[key] = copy

    def popitem(self) -> Tuple[tuple, Copy]:
        key, copy = super().popitem()  # cachetools evicts through here
        _unlink(copy[0])
        return key, copy

    def discard(self, path: str) -> None:
        """Delete every copy of ``path``."""
        if self._oversized is not None and self._oversized[0][0] == path:
            self._drop_oversized()
        for key in [key for key in self if key[0] == path]:
            _unlink(self.pop(key)[0])

    def clear(self) -> None:
        self._drop_oversized()
        while self:
            self.popitem()

    def _drop_oversized(self) -> None:
        if self._oversized is not None:
            _unlink(self._oversized[1][0])
            self._oversized = None


class WholeFileCache:
    def __init__(self, backend, directory=None, max_bytes=2 << 30):
        self.backend = backend
        self.max_bytes = max_bytes
        self._dir = tempfile.mkdtemp(prefix="hpcfs-files-", dir=directory)
        self._files = LocalCopies(max_bytes)
        self._loading = {}  # (path, token) -> Event
        self._lock = threading.Lock()

    def local_copy(self, path, entry):
        """Local path of a complete copy of this file version (downloading it if needed)."""
        key = (path, entry.change_token)
        while True:
            with self._lock:
                local = self._files.local_path(key)
                if local is not None:
                    return local
                loading = self._loading.get(key)
                if loading is None:
                    self._loading[key] = threading.Event()
                    break
            loading.wait()
        try:
            local = self._download(path)
        finally:
            with self._lock:
                self._loading.pop(key).set()
        with self._lock:
            self._files.add(key, (local, os.path.getsize(local)))
        return local

    def read(self, path, entry, offset, size):
        with open(self.local_copy(path, entry), "rb") as handle:
            handle.seek(offset)
            return handle.read(size)

    def forget(self, path):
        with self._lock:
            self._files.discard(path)

    def close(self):
        with self._lock:
            self._files.clear()
        try:
            os.rmdir(self._dir)
        except OSError:
            pass

    def _download(self, path):
        local = os.path.join(self._dir, uuid.uuid4().hex)
        try:
            with open(local, "wb") as sink:
                self.backend.read_whole(path, sink)
        except BaseException:
            _unlink(local)
            raise
        return local


def _unlink(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
