"""RemoteTree: the protocol-independent core that every front end talks to.

It owns the metadata cache, the block cache, the whole-file cache and the open files, and turns the
front ends' calls into backend calls.  Paths here are absolute inside the tree the user opened (``/`` is
the URL's path); the backend sees them joined onto ``root``.
"""
import contextlib
import dataclasses
import hashlib
import logging
import posixpath
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import BinaryIO, Callable, Iterator, Optional

from .. import errors
from ..backend import DIRECTORY, FILE, Entry, normalize, split
from .blocks import BlockCache
from .files import RemoteFile
from .metacache import MetadataCache
from .options import CoreOptions
from .upload import Uploader, fresh_partial_name
from .wholefile import WholeFileCache

log = logging.getLogger("hpcfs.core")

class RemoteTree:
    def __init__(self, backend, root="/", options=None):
        self.backend = backend
        self.root = normalize(root)
        self.options = options or CoreOptions()
        self.capabilities = backend.capabilities
        self.meta = MetadataCache(self.options.attr_ttl, self.options.negative_ttl)
        self.blocks = BlockCache(
            backend, self.options.block_size, self.options.readahead, self.options.cache_size
        )
        self.files = WholeFileCache(backend, max_bytes=self.options.file_cache_size)
        self.upload_pool = ThreadPoolExecutor(backend.capabilities.max_parallel, thread_name_prefix="hpcfs-upload")
        self.uploader = Uploader(backend, self.upload_pool)
        self._writers = {}  # path -> set of RemoteFile open for writing
        self._writers_lock = threading.Lock()

    # -- metadata -------------------------------------------------------------------------------------
    def stat(self, path):
        """Attributes as this process sees them: a file written here and not yet uploaded shows its spool's size."""
        path = normalize(path)
        writer = self._writer(path)
        unpublished = writer.unpublished_entry() if writer is not None else None
        return unpublished or self._stat_server(path)

    def _stat_server(self, path, revalidate=False):
        """Attributes of the version on the server (from the cache when fresh, unless ``revalidate``)."""
        cached = None if revalidate else self.meta.lookup(path)
        if cached is MetadataCache.MISSING:
            raise errors.NotFound("no such file or directory", path)
        if cached is not None:
            return cached
        try:
            entry = self.backend.stat(self.remote_path(path))
        except errors.NotADirectory as exc:  # a parent is a file: nothing exists below it
            raise errors.NotFound("no such file or directory", path) from exc
        except errors.NotFound:
            self.meta.mark_missing(path)
            raise
        self.meta.put(path, entry)
        return entry

    def stat_cached(self, path):
        cached = self.meta.lookup(normalize(path))
        return cached if isinstance(cached, Entry) else None

    def listdir(self, path):
        """Entries of a directory; one backend request per directory per cache period."""
        path = normalize(path)
        entries = self.meta.listing(path)
        if entries is None:
            try:
                entries = self.backend.list(self.remote_path(path))
            except errors.NotFound:
                self.meta.mark_missing(path)
                raise
            self.meta.put_listing(path, entries)
        return self._with_open_writers(path, entries)

    def exists(self, path):
        try:
            self.stat(path)
            return True
        except errors.NotFound:
            return False

    # -- files ----------------------------------------------------------------------------------------
    def open(self, path, writable=False, truncate=False, create=False, exclusive=False,
             create_mode: Optional[int] = None, revalidate=False):
        """Open a file; ``create`` makes it if missing, ``exclusive`` refuses an existing one.  A new file
        gets ``create_mode`` (permission bits) after its upload, where the server has chmod.  ``revalidate``
        asks the server for the file's attributes instead of the cache (close-to-open consistency, as NFS
        gives: the Python front ends read the server's current version; the block and whole-file caches are
        keyed by version, so a changed file is fetched anew)."""
        path = normalize(path)
        if writable:
            self.require_writable(path)
        try:
            entry = self._stat_server(path, revalidate=revalidate)
        except errors.NotFound:
            # A file another handle here is still writing exists for this process, though not on the server.
            if not create and self._writer(path) is None:
                raise
            self._check_new_name(path)
            self._require_directory(split(path)[0])
            entry = None
        else:
            if exclusive:
                raise errors.AlreadyExists("file exists", path)
            if entry.is_dir:
                raise errors.IsADirectory("is a directory", path)
        if entry is not None or not self.capabilities.chmod:
            create_mode = None
        handle = RemoteFile(self, path, entry, writable=writable, truncate=truncate, create_mode=create_mode)
        if writable:
            with self._writers_lock:
                self._writers.setdefault(path, set()).add(handle)
        return handle

    def chunks(self, path, revalidate=False) -> Iterator[bytes]:
        """The file's bytes from start to end, a block at a time (``cat``, digests)."""
        handle = self.open(path, revalidate=revalidate)
        try:
            offset = 0
            while data := handle.read(offset, self.options.block_size):
                yield data
                offset += len(data)
        finally:
            handle.release()

    def checksum(self, path, algorithm: str) -> str:
        """The hex digest (``algorithm``: a hashlib name) of the file's current content: the server's own where
        it computes that algorithm, so no bytes cross the network; else from reading the bytes."""
        path = normalize(path)
        entry = self._stat_server(path, revalidate=True)
        if entry.is_dir:
            raise errors.IsADirectory("is a directory", path)
        if algorithm in self.capabilities.checksums and self._writer(path) is None:
            try:
                return self.backend.checksum(self.remote_path(path), algorithm)
            except errors.TimedOut as exc:  # too big to hash within the server's time limit, every time
                log.info("%s: the server did not hash it in time (%s); reading the bytes instead", path, exc)
        digest = hashlib.new(algorithm)
        for data in self.chunks(path):
            digest.update(data)
        return digest.hexdigest()

    def read_data(self, path, entry, pattern, offset, size):
        """Bytes of one file version: through blocks where the backend has ranged reads and the file is
        too big to fetch whole, else through the whole-file cache."""
        if self._ranged(entry):
            return self.blocks.read(self.remote_path(path), entry, pattern, offset, size)
        if offset >= entry.size:
            return b""
        return self.files.read(self.remote_path(path), entry, offset, size)

    def read_data_into(self, path, entry, pattern, offset, dest: memoryview) -> int:
        """:meth:`read_data` into ``dest``; returns the byte count."""
        if self._ranged(entry):
            return self.blocks.read_into(self.remote_path(path), entry, pattern, offset, dest)
        data = self.read_data(path, entry, pattern, offset, len(dest))
        dest[:len(data)] = data
        return len(data)

    def reads_ranges(self, entry) -> bool:
        """Whether this file version is read in ranges (through blocks), not fetched whole."""
        return self._ranged(entry)

    def upload(self, path: str, source: BinaryIO, size: int, publish_mode: Optional[int] = None,
               partial: Optional[str] = None, resume_from: int = 0, in_order: bool = False,
               verify: Optional[Callable[[], None]] = None) -> None:
        """Send a whole file through the uploader (:mod:`hpcfs.core.upload`: a failed upload never replaces
        or creates ``path`` where the server renames instantly) and cache its new attributes.  ``partial``
        names the hidden file it goes to (default: a fresh name); ``resume_from`` and ``in_order`` are for
        resumable copies (``hpcfs cp --resume``); ``verify`` checks the bytes on the server (in ``partial``
        where the server renames) before they are published, raising ``Damaged`` to refuse them."""
        limit = self.capabilities.max_upload
        if limit is not None and size > limit:
            raise errors.TooLarge(f"file of {size} bytes exceeds the server's upload limit of {limit}", path)
        self._check_new_name(path)
        self.uploader.send(self.remote_path(path), source, size, publish_mode,
                           partial=self.remote_path(partial) if partial else None, resume_from=resume_from,
                           in_order=in_order, verify=verify)
        self.uploaded(path, size)

    def uploaded(self, path, size):
        """Record a completed upload: new attributes cached, the old version's blocks dropped."""
        self._forget_data(path)
        previous = self.stat_cached(path)
        self.meta.put(
            path,
            Entry(
                name=split(path)[1], kind=FILE, size=size, mtime=time.time(),
                mode=previous.mode if previous else 0o644, uid=previous.uid if previous else None,
                gid=previous.gid if previous else None, token=f"written:{time.time_ns()}",
            ),
        )

    def forget_writer(self, handle):
        with self._writers_lock:
            handles = self._writers.get(handle.path)
            if handles is not None:
                handles.discard(handle)
                if not handles:
                    del self._writers[handle.path]

    def truncate(self, path, size):
        path = normalize(path)
        writer = self._writer(path)
        if writer is not None:
            writer.truncate(size)
            return
        handle = self.open(path, writable=True, truncate=size == 0)
        try:
            if size:
                handle.truncate(size)
        finally:
            handle.release()

    # -- namespace ------------------------------------------------------------------------------------
    def mkdir(self, path):
        path = normalize(path)
        self.require_writable(path)
        if self.exists(path):
            raise errors.AlreadyExists("file exists", path)
        self._check_new_name(path)
        self._require_directory(split(path)[0])
        self.backend.mkdir(self.remote_path(path))
        self.meta.put(path, Entry(name=split(path)[1], kind=DIRECTORY, mtime=time.time(), mode=0o755))
        self.meta.put_listing(path, [])

    def remove(self, path):
        path = normalize(path)
        self.require_writable(path)
        if self.stat(path).is_dir:
            raise errors.IsADirectory("is a directory", path)
        self.backend.remove(self.remote_path(path))
        self.meta.mark_missing(path)
        self._forget_data(path)

    def rmdir(self, path):
        path = normalize(path)
        self.require_writable(path)
        if path == "/":
            raise errors.PermissionDenied("cannot remove the root of the tree", path)
        if not self.stat(path).is_dir:
            raise errors.NotADirectory("not a directory", path)
        self.backend.rmdir(self.remote_path(path))
        self.meta.invalidate(path)
        self.meta.mark_missing(path)

    def rename(self, src, dst):
        src, dst = normalize(src), normalize(dst)
        self.require_writable(src)
        if self.capabilities.rename == "none":
            raise errors.NotSupported("the server cannot rename", src)
        entry = self.stat(src)
        self._check_new_name(dst)
        self.backend.rename(self.remote_path(src), self.remote_path(dst))
        for path in (src, dst):
            self.meta.invalidate(path)
            self._forget_data(path)
        self.meta.mark_missing(src)
        self.meta.put(dst, dataclasses.replace(entry, name=split(dst)[1]))
        if entry.is_dir:
            self.meta.invalidate(dst)

    def copy_on_server(self, src, dst):
        """The file ``src`` copied to ``dst`` by the server (``capabilities.server_copy``): written under
        ``dst``'s partial name, then renamed onto it, so a copy that fails half way replaces nothing."""
        src, dst = normalize(src), normalize(dst)
        self.require_writable(dst)
        if self.stat(src).is_dir:
            raise errors.IsADirectory("is a directory", src)
        self._check_new_name(dst)
        partial = fresh_partial_name(dst)
        try:
            self.backend.copy(self.remote_path(src), self.remote_path(partial))
        except BaseException:
            with contextlib.suppress(errors.HpcfsError):  # nothing in it can be continued
                self.backend.remove(self.remote_path(partial))
            raise
        self.meta.invalidate(partial)
        self.meta.invalidate_listing(split(partial)[0])
        self.rename(partial, dst)

    def chmod(self, path, mode):
        """Change the permission bits; accepted and ignored where the server keeps none (see :meth:`_keeps`)."""
        path = normalize(path)
        self.require_writable(path)
        if not self._keeps(path, self.capabilities.chmod):
            return
        writer = self._writer(path)
        if writer is not None and writer.defer_mode(mode & 0o7777):  # not on the server yet
            return
        entry = self._stat_server(path)
        self.backend.chmod(self.remote_path(path), mode & 0o7777)
        self.meta.put(path, dataclasses.replace(entry, mode=mode & 0o7777))

    def set_mtime(self, path, mtime):
        """Set the modification time; accepted and ignored where the server cannot (see :meth:`_keeps`)."""
        path = normalize(path)
        self.require_writable(path)
        if not self._keeps(path, self.capabilities.set_mtime):
            return
        writer = self._writer(path)
        if writer is not None and writer.defer_mtime(mtime):  # not on the server yet
            return
        entry = self._stat_server(path)
        self.backend.set_mtime(self.remote_path(path), mtime)
        self.meta.put(path, dataclasses.replace(entry, mtime=mtime))

    def symlink(self, target, path):
        path = normalize(path)
        self.require_writable(path)
        if not self.capabilities.symlinks:
            raise errors.NotSupported("the server has no symbolic links", path)
        self._check_new_name(path)
        self.backend.symlink(target, self.remote_path(path))
        self.meta.invalidate(path)
        self.meta.invalidate_listing(split(path)[0])

    def readlink(self, path):
        return self.backend.readlink(self.remote_path(normalize(path)))

    def close(self):
        self.upload_pool.shutdown(wait=True)
        self.blocks.close()
        self.files.close()
        self.backend.close()

    # -- internals ------------------------------------------------------------------------------------
    def _keeps(self, path: str, capability: bool) -> bool:
        """Whether an attribute change (``capability``: the server can make it) goes to the server.  One it
        cannot keep is accepted and ignored, as rclone does on such storage, so ``rsync -a`` (its temporary
        file's ``fchmod`` included), ``cp -p`` and ``touch`` succeed and the mount keeps showing what the
        server has; a missing path is still ENOENT."""
        if not capability:
            self.stat(path)
        return capability

    def require_writable(self, path: str) -> None:
        """Refuse any change to a read-only tree before anything else is checked or sent."""
        if self.capabilities.read_only:
            raise errors.ReadOnly("read-only file system: nothing here can be written, created, renamed or "
                                  "deleted", path)

    def _check_new_name(self, path: str) -> None:
        """Refuse a name the server cannot take (EINVAL) before anything is spooled or sent for it."""
        self.backend.check_name(self.remote_path(path))

    def remote_path(self, path):
        """The backend's path for a path in this tree."""
        return normalize(posixpath.join(self.root, path.lstrip("/")))

    def _ranged(self, entry):
        limit = self.capabilities.max_whole_read
        return self.capabilities.ranged_reads and (limit is None or entry.size > limit)

    def _require_directory(self, path):
        if not self.stat(path).is_dir:
            raise errors.NotADirectory("not a directory", path)

    def _writer(self, path):
        with self._writers_lock:
            handles = self._writers.get(path)
            return next(iter(handles)) if handles else None

    def _with_open_writers(self, path, entries):
        """Listings include files being written here that the server has not seen yet."""
        with self._writers_lock:
            pending = {p: next(iter(h)) for p, h in self._writers.items() if split(p)[0] == path}
        if not pending:
            return entries
        by_name = {entry.name: entry for entry in entries}
        for file_path, handle in pending.items():
            unpublished = handle.unpublished_entry()
            if unpublished is not None:
                by_name[split(file_path)[1]] = unpublished
        return list(by_name.values())

    def _forget_data(self, path):
        remote = self.remote_path(path)
        self.blocks.forget(remote)
        self.files.forget(remote)
