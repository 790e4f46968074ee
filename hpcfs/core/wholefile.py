"""Read-through cache of whole files on local disk, for backends (or file sizes) without ranged reads.

A file version (path + change token) is downloaded once with ``read_whole``, on a worker thread (at most
``max_parallel`` downloads at a time), into a private temporary directory.  The local copy grows as the
bytes arrive, and a reader of ``[offset, offset+size)`` is served as soon as those bytes are on disk (or
the download has ended: a short read at end of file), so the first 128 KiB of a 1 GiB file do not wait for
the whole GiB.  Bytes go straight to disk; no reader ever sees a byte the download has not written yet.

Failure: a reader whose bytes are on disk is served; a reader waiting for bytes the download never wrote
gets the download's own error.  The partial copy is dropped, so the next reader starts a new download.

A copy forgotten (its file changed) or evicted while it is being filled leaves the cache at once, so later
readers start a new download.  Its download goes on only while readers that came before still wait on
it, and stops at its next write once none does.  ``close`` stops every download at its next write.

The directory of copies is private (``mkdtemp``: 0700) and goes with the cache: at ``close``, when the cache
is collected, or at interpreter exit for a cache nobody closed (fsspec keeps its filesystems to the end).

Disk use is bounded by ``max_bytes`` (least recently used copies go first; a copy being filled counts at
the file's listed size; a file larger than the bound is still served, then dropped when the next one
arrives).
"""
import os
import shutil
import tempfile
import threading
import uuid
import weakref
from typing import BinaryIO, Callable, Dict, Optional, Tuple, Union

from cachetools import LRUCache

from .. import errors
from ..backend import Entry

Key = Tuple[str, str]  # (path, change token): one version of a file
Copy = Tuple[str, int]  # (local path, size)


class LocalCopies(LRUCache):
    """(path, token) -> :data:`Copy`, least recently used first out once their sizes pass ``max_bytes``;
    a copy that drops out is deleted from disk and reported to ``dropped``.  One copy larger than the
    bound (which cachetools refuses) is still kept while it is served, until the next one arrives."""

    def __init__(self, max_bytes: int, dropped: Callable[[Key], None]):
        super().__init__(maxsize=max_bytes, getsizeof=lambda copy: copy[1])
        self._oversized: Optional[Tuple[Key, Copy]] = None
        self._dropped = dropped

    def local_path(self, key: Key) -> Optional[str]:
        if self._oversized is not None and self._oversized[0] == key:
            return self._oversized[1][0]
        copy = self.get(key)
        return None if copy is None else copy[0]

    def add(self, key: Key, copy: Copy) -> None:
        self._drop_oversized()
        if copy[1] > self.maxsize:
            self._oversized = (key, copy)
        else:
            self[key] = copy

    def resize(self, key: Key, size: int) -> None:
        """Count a copy at the size it turned out to have (the file changed since it was listed)."""
        oversized = self._oversized is not None and self._oversized[0] == key
        copy = self._oversized[1] if self._oversized is not None and oversized else self.get(key)
        if copy is None or copy[1] == size:
            return
        if oversized:
            self._oversized = None
        else:
            del self[key]  # (not popitem: the file stays)
        self.add(key, (copy[0], size))

    def popitem(self) -> Tuple[Key, Copy]:
        key, copy = super().popitem()  # cachetools evicts through here
        self._delete(key, copy)
        return key, copy

    def discard(self, path: str) -> None:
        """Delete every copy of ``path``."""
        if self._oversized is not None and self._oversized[0][0] == path:
            self._drop_oversized()
        for key in [key for key in self if key[0] == path]:
            self._delete(key, self.pop(key))

    def remove(self, key: Key) -> None:
        """Delete the copy of one file version."""
        if self._oversized is not None and self._oversized[0] == key:
            self._drop_oversized()
        elif key in self:
            self._delete(key, self.pop(key))

    def clear(self) -> None:
        self._drop_oversized()
        while self:
            self.popitem()

    def _drop_oversized(self) -> None:
        if self._oversized is not None:
            key, copy = self._oversized
            self._oversized = None
            self._delete(key, copy)

    def _delete(self, key: Key, copy: Copy) -> None:
        _unlink(copy[0])
        self._dropped(key)


class _Abandoned(Exception):
    """Raised by a copy's ``write`` to end a download nobody will read."""


class _Filling:
    """A local copy being downloaded: the sink handed to ``read_whole`` (it counts the bytes on disk
    after each write) and what readers wait on."""

    def __init__(self, local: str):
        self.local = local
        self._fd = os.open(local, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        self._arrived = threading.Condition()
        self._written = 0
        self._ended = False
        self._error: Optional[BaseException] = None
        self._waiting = 0  # readers that joined and have not been served yet
        self._dropped = False  # out of the cache: only its waiting readers still need it
        self._stopped = False  # the cache closed: nobody needs it

    def write(self, data: Union[bytes, memoryview]) -> int:
        self.require_readers()
        view = memoryview(data).cast("B")
        count = view.nbytes
        while view:  # unbuffered, so what is counted is on disk for every reader's own handle
            view = view[os.write(self._fd, view):]
        with self._arrived:
            self._written += count
            self._arrived.notify_all()
        return count

    def require_readers(self) -> None:
        """Raise :class:`_Abandoned` once nobody will read what comes next."""
        with self._arrived:
            if self._stopped or (self._dropped and not self._waiting):
                raise _Abandoned()

    def join(self) -> None:
        """A reader will wait on this copy."""
        with self._arrived:
            self._waiting += 1

    def bytes_for(self, end: int) -> int:
        """Wait until bytes up to ``end`` are on disk or the download ended, then how many bytes may be read
        (all of ``end`` unless the file is shorter).  Raises the download's error if it failed before ``end``."""
        with self._arrived:
            try:
                while self._written < end and not self._ended:
                    self._arrived.wait()
                if self._written < end and self._error is not None:
                    raise self._error
                return self._written
            finally:
                self._waiting -= 1

    def drop(self) -> None:
        """Out of the cache: serve the readers already waiting, then stop."""
        with self._arrived:
            self._dropped = True

    def stop(self, path: str) -> None:
        """The cache closes: wake every reader with an error and stop at the next write."""
        with self._arrived:
            self._stopped = True
        self.end(errors.Unavailable("the file cache was closed during this download", path))

    def end(self, error: Optional[BaseException]) -> None:
        """The download is over (``error`` None: complete); the first end counts."""
        with self._arrived:
            if not self._ended:
                self._ended, self._error = True, error
                self._arrived.notify_all()

    def close(self) -> int:
        """Close the local file; its size."""
        os.close(self._fd)
        return self._written


class WholeFileCache:
    def __init__(self, backend, directory: Optional[str] = None, max_bytes: int = 2 << 30):
        self.backend = backend
        self.max_bytes = max_bytes
        self._dir = tempfile.mkdtemp(prefix="hpcfs-files-", dir=directory)
        self._remove_dir = weakref.finalize(self, _remove_directory, self._dir, os.getpid())
        self._files = LocalCopies(max_bytes, self._copy_dropped)
        self._filling: Dict[Key, _Filling] = {}  # copies in _files whose download is still running
        self._lock = threading.Lock()
        self._closed = False
        self._slots = threading.BoundedSemaphore(max(1, backend.capabilities.max_parallel))

    def read(self, path: str, entry: Entry, offset: int, size: int) -> bytes:
        """Bytes ``[offset, offset+size)`` of this file version, as soon as they are on local disk."""
        handle, filling = self._open_copy((path, entry.change_token), entry.size)
        with handle:
            available = offset + size if filling is None else filling.bytes_for(offset + size)
            handle.seek(offset)
            return handle.read(max(0, min(size, available - offset)))

    def forget(self, path: str) -> None:
        """Every copy of ``path`` goes, those being filled included: later readers download anew."""
        with self._lock:
            self._files.discard(path)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for (path, _), filling in self._filling.items():
                filling.stop(path)
            self._files.clear()
        # A worker may still wait on the network for its next chunk: it ends at that chunk's write, into a
        # file already gone.
        self._remove_dir()

    def _open_copy(self, key: Key, listed_size: int) -> Tuple[BinaryIO, Optional[_Filling]]:
        """A handle on the local copy (downloading it if needed) and the download still filling it, if any.
        Opened under the lock, so an eviction right after cannot take the file from under the reader."""
        with self._lock:
            if self._closed:
                raise errors.Unavailable("the file cache is closed", key[0])
            local = self._files.local_path(key)
            filling: Optional[_Filling] = self._filling.get(key)
            if local is None:
                filling = self._start(key, listed_size)
                local = filling.local
            handle = open(local, "rb")
            if filling is not None:
                filling.join()
            return handle, filling

    def _start(self, key: Key, listed_size: int) -> _Filling:
        filling = _Filling(os.path.join(self._dir, uuid.uuid4().hex))
        self._files.add(key, (filling.local, listed_size))  # counted at its final size from the start
        self._filling[key] = filling
        # A daemon thread: a program that exits with its filesystem still open must not wait for a download
        # nobody reads any more (a pool's workers are joined at exit).
        threading.Thread(target=self._download, args=(key, filling), name="hpcfs-wholefile", daemon=True).start()
        return filling

    def _download(self, key: Key, filling: _Filling) -> None:
        error: Optional[BaseException] = None
        try:
            with self._slots:  # the downloads beyond max_parallel wait their turn here
                filling.require_readers()
                self.backend.read_whole(key[0], filling)
        except BaseException as exc:  # handed to the readers, whatever it is
            error = exc
        size = filling.close()
        with self._lock:
            if self._filling.get(key) is filling:  # still in the cache: keep it complete, or drop it
                del self._filling[key]
                if error is None:
                    self._files.resize(key, size)
                else:
                    self._files.remove(key)
        filling.end(error)

    def _copy_dropped(self, key: Key) -> None:
        filling = self._filling.pop(key, None)
        if filling is not None:
            filling.drop()


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _remove_directory(path: str, owner_pid: int) -> None:
    """Remove the copies of the process that made them: a forked child runs the same exit hooks, and its
    parent still reads from them."""
    if os.getpid() == owner_pid:
        shutil.rmtree(path, ignore_errors=True)
