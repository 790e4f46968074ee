"""Read-through cache of whole files on local disk, for backends (or file sizes) without ranged reads.

A file version (path + change token) is downloaded once with ``read_whole`` into a private temporary
directory; every reader of that version then reads the local copy.  Concurrent first readers wait for the
one download.  Disk use is bounded by ``max_bytes`` (least recently used copies go first; a file larger
than the bound is still served, then dropped when the next one arrives).
"""
import collections
import os
import tempfile
import threading
import uuid


class WholeFileCache:
    def __init__(self, backend, directory=None, max_bytes=2 << 30):
        self.backend = backend
        self.max_bytes = max_bytes
        self._dir = tempfile.mkdtemp(prefix="hpcfs-files-", dir=directory)
        self._files = collections.OrderedDict()  # (path, token) -> (local path, size)
        self._loading = {}  # (path, token) -> Event
        self._lock = threading.Lock()

    def local_copy(self, path, entry):
        """Local path of a complete copy of this file version (downloading it if needed)."""
        key = (path, entry.change_token)
        while True:
            with self._lock:
                if key in self._files:
                    self._files.move_to_end(key)
                    return self._files[key][0]
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
            self._files[key] = (local, os.path.getsize(local))
            self._evict(keep=key)
        return local

    def read(self, path, entry, offset, size):
        with open(self.local_copy(path, entry), "rb") as handle:
            handle.seek(offset)
            return handle.read(size)

    def forget(self, path):
        with self._lock:
            for key in [key for key in self._files if key[0] == path]:
                _unlink(self._files.pop(key)[0])

    def close(self):
        with self._lock:
            for local, _ in self._files.values():
                _unlink(local)
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

    def _evict(self, keep):
        total = sum(size for _, size in self._files.values())
        for key in list(self._files):
            if total <= self.max_bytes:
                break
            if key != keep:
                local, size = self._files.pop(key)
                _unlink(local)
                total -= size


def _unlink(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
