"""Open files: reads through the tree's caches, writes through a local spool file.

A file opened for writing gets a spool in the spool directory.  Writes land there; ``flush`` (FUSE flush
and fsync, Python ``close``) sends the whole spool as one upload, in parallel parts where the backend's
upload session allows them.  A new file written from start to end on a backend with in-place writes is streamed
instead: parts go out while the writer is still writing.  Both go through the one uploader
(:mod:`hpcfs.core.upload`): to a hidden partial name, renamed onto the real one when complete, where the
server renames instantly.  If
the upload fails, or a write into the spool failed (local disk full), nothing is published, the spool is
kept and the error says where: written data is never lost and a truncated file never replaces a good one.
Two writers of one file each have their own spool; the last one to close wins, as with NFS.

Commit points: the server's file changes only when a complete new version is committed.  fsync and the
last release commit; so does a flush (the close of one descriptor), except while a file opened ``O_TRUNC``
over an existing one is still empty: shells and ``dd`` close a duplicate descriptor before their first
write, and committing the empty file then would lose the old version if the writes that follow fail.  A
commit that failed was reported to its caller; the release after it does not upload again behind the
caller's back, it only logs where the spool is kept.
"""
import errno
import io
import logging
import math
import os
import tempfile
import threading
import time
from typing import Dict, Optional

from .. import errors
from ..backend import FILE, Entry
from .blocks import ReadPattern
from .upload import Upload, Uploader

log = logging.getLogger("hpcfs.core")


class RemoteFile:
    def __init__(self, tree, path, entry, writable=False, truncate=False, create_mode: Optional[int] = None):
        self.tree = tree
        self.path = path
        self.entry = entry  # the version being read; None for a file that does not exist yet
        self.writable = writable
        self.pattern = ReadPattern()
        self._spool_fd = None
        self._spool_path = None
        self._size = entry.size if entry else 0
        self._dirty = False
        self._modified = entry.mtime if entry else time.time()
        # chmod and utime that must wait until the file exists on the server: applied after its upload
        self._pending_mode = create_mode
        self._pending_mtime: Optional[float] = None
        self._lock = threading.Lock()  # one upload at a time; spool creation happens once
        self._write_lock = threading.Lock()
        self._stream = None
        self._spool_failure: Optional[OSError] = None  # a write the spool could not take: never publish then
        self._commit_failure: Optional[OSError] = None  # the last commit failed and said so to its caller
        # Opened O_TRUNC over a file the server has: the old version stays until new content is committed.
        self._replacing = writable and truncate and entry is not None
        if writable and (truncate or entry is None):
            self._size = 0
            self._open_spool(copy_existing=False)
            self._changed()  # creating or truncating must reach the server even with no writes
            if tree.capabilities.ranged_writes and tree.uploader.publishes_by_rename:
                self._stream = StreamedUpload(tree.uploader, tree.remote_path(path), 2 * tree.options.block_size)

    @property
    def size(self):
        return self._size

    def read(self, offset: int, size: int) -> bytes:
        if self._spool_fd is not None:
            return os.pread(self._spool_fd, size, offset)
        if not self._readable_version(offset, size):
            return b""
        return self.tree.read_data(self.path, self.entry, self.pattern, offset, size)

    def read_into(self, offset: int, dest: memoryview) -> int:
        """:meth:`read` into ``dest`` (FUSE's buffer, a Python reader's), without an intermediate copy."""
        if self._spool_fd is not None:
            return os.preadv(self._spool_fd, [dest], offset)
        if not self._readable_version(offset, len(dest)):
            return 0
        return self.tree.read_data_into(self.path, self.entry, self.pattern, offset, dest)

    def _readable_version(self, offset: int, size: int) -> bool:
        """Whether there is a server version to read; refreshes it first if it may have grown."""
        if self.entry is None:
            return False
        if offset + size > self.entry.size and self._may_have_grown():
            self.entry = self.tree.stat(self.path)  # through the cache, which keeps it for entry.ttl
        return True

    def _may_have_grown(self) -> bool:
        """A file the backend marked short-lived (a running job's output) may have grown since it was
        opened: a read at its end asks again, so ``tail -f`` follows it."""
        return self.entry.ttl is not None and math.isfinite(self.entry.ttl)

    def write(self, offset, data):
        self.require_writable()
        self._ensure_spool()
        try:
            written = os.pwrite(self._spool_fd, data, offset)
        except OSError as exc:
            self._spool_failed(exc)
            raise
        with self._write_lock:  # FUSE threads may write to one file at once, and not in order
            self._size = max(self._size, offset + written)
            self._changed()
            if self._stream is not None and not self._stream.written(self._spool_fd, offset, offset + written):
                self._end_streaming()
        return written

    def truncate(self, size):
        self.require_writable()
        with self._write_lock:
            self._end_streaming()
        if self._spool_fd is None and size == 0:
            self._open_spool(copy_existing=False)
        self._ensure_spool()
        try:
            os.ftruncate(self._spool_fd, size)
        except OSError as exc:
            self._spool_failed(exc)
            raise
        self._size = size
        self._changed()

    def flush(self) -> None:
        """The close of one descriptor (FUSE flush, Python flush and close): a commit point, except for a
        file opened ``O_TRUNC`` over an existing one that is still empty (see the module's docstring)."""
        if self._replacing and self._size == 0:
            return
        self.commit()

    def commit(self) -> None:
        """Send the spool if anything changed since the last commit (fsync, flush, the last release)."""
        with self._lock:
            if not self._dirty:
                return
            try:
                self._publish()
            except OSError as exc:
                self._commit_failure = exc
                raise
            self._commit_failure = None
            self._dirty = False
            mode, mtime, self._pending_mode, self._pending_mtime = self._pending_mode, self._pending_mtime, None, None
            if mode is not None:
                self.tree.chmod(self.path, mode)
            if mtime is not None:
                self.tree.set_mtime(self.path, mtime)
            self.entry = self.tree.stat_cached(self.path) or self.entry

    def release(self):
        """Commit and close; the spool is deleted only once its data is on the server.  After a commit that
        failed (and said so) the spool is kept and the server keeps its version: nothing is sent later
        that the writer was told had failed."""
        try:
            if self._commit_failure is None:
                self.commit()
            elif self._dirty:
                log.warning("%s: not uploaded again at release, as its failed close or fsync reported: %s",
                            self.path, self._commit_failure.strerror)
        finally:
            if self._spool_fd is not None:
                os.close(self._spool_fd)
                self._spool_fd = None
                if not self._dirty:
                    os.unlink(self._spool_path)
            self.tree.forget_writer(self)

    def unpublished_entry(self) -> Optional[Entry]:
        """Attributes as the user sees them while changes written here are not on the server yet; None
        once they are (a chmod or utime made there then wins)."""
        if not self._dirty:
            return None
        base = self.entry or Entry(name=self.path.rsplit("/", 1)[-1], kind=FILE, mode=0o644)
        return Entry(
            name=base.name, kind=FILE, size=self._size,
            mtime=self._modified if self._pending_mtime is None else self._pending_mtime,
            mode=base.mode if self._pending_mode is None else self._pending_mode, uid=base.uid, gid=base.gid,
            token=f"spool:{id(self)}:{self._size}",
        )

    def defer_mode(self, mode: int) -> bool:
        """Keep a chmod for after the upload if the file is not on the server yet; False if it is."""
        if not self._dirty:
            return False
        self._pending_mode = mode
        return True

    def defer_mtime(self, mtime: float) -> bool:
        """Keep a utime for after the upload if the file is not on the server yet; False if it is."""
        if not self._dirty:
            return False
        self._pending_mtime = mtime
        return True

    # -- internals ------------------------------------------------------------------------------------
    def _publish(self) -> None:
        """One upload of the spool (or the end of the streamed one); a failure names the spool."""
        if self._spool_failure is not None:
            raise self._incomplete_spool_error(self._spool_failure)
        assert self._spool_fd is not None and self._spool_path is not None  # a changed file has its spool
        # The mode the new version gets before it appears: a pending chmod or create mode, else the old one's.
        mode = self._pending_mode if self._pending_mode is not None else self.entry.mode if self.entry else None
        try:
            if self._stream is not None and self._stream.finish(self._spool_fd, self._size, mode):
                self._stream = None  # later writes go out as a whole upload
                self.tree.uploaded(self.path, self._size)
            else:
                self._end_streaming()
                with open(self._spool_path, "rb") as source:
                    self.tree.upload(self.path, source, self._size, mode)
        except errors.HpcfsError as exc:
            raise type(exc)(
                f"upload failed ({exc.strerror}); the written data is kept in {self._spool_path}", self.path,
            ) from exc

    def _changed(self):
        self._dirty = True
        self._modified = time.time()

    def _spool_failed(self, exc: OSError) -> None:
        """A write the spool could not take (disk full): the file is incomplete and must never be published."""
        self._spool_failure = exc
        with self._write_lock:
            self._end_streaming()

    def _incomplete_spool_error(self, cause: OSError) -> errors.HpcfsError:
        kind = errors.NoSpace if cause.errno == errno.ENOSPC else errors.HpcfsError
        return kind(
            f"a write into the local spool failed ({cause.strerror}), so nothing was uploaded; "
            f"what was written is kept in {self._spool_path}",
            self.path,
        )

    def _end_streaming(self):
        if self._stream is not None:
            self._stream.stop()
            self._stream = None

    def require_writable(self):
        if not self.writable:
            raise errors.PermissionDenied("file is not open for writing", self.path)

    def _ensure_spool(self):
        if self._spool_fd is None:
            with self._lock:
                if self._spool_fd is None:
                    self._open_spool(copy_existing=self.entry is not None and self.entry.size > 0)

    def _open_spool(self, copy_existing):
        directory = self.tree.options.spool_directory
        os.makedirs(directory, mode=0o700, exist_ok=True)
        prefix = self.path.strip("/").replace("/", "_")[-80:] + "."
        fd, spool_path = tempfile.mkstemp(prefix=prefix, dir=directory)
        try:
            if copy_existing:
                self._copy_remote_into(fd)
        except BaseException:
            os.close(fd)
            os.unlink(spool_path)
            raise
        self._spool_fd, self._spool_path = fd, spool_path

    def _copy_remote_into(self, fd):
        step = self.tree.options.block_size
        pattern = ReadPattern()
        for offset in range(0, self.entry.size, step):
            os.pwrite(fd, self.tree.read_data(self.path, self.entry, pattern, offset, step), offset)


class StreamedUpload:
    """Sends a file written from start to end in parts while it is still being written.

    Used for new or truncated files on backends that write in place (``ranged_writes``) and publish by
    rename: the parts go to a hidden partial name (see :mod:`hpcfs.core.upload`), renamed onto the real
    one once the file is complete.  Writes may arrive slightly out of order (the kernel hands one large
    write to several FUSE threads), so what counts is the *prefix*: the bytes written without a gap from
    the start.  The upload begins once the prefix reaches ``first_part`` bytes (a smaller file goes out as
    one whole upload, which is cheaper); complete parts of the prefix then go out in parallel, at most
    ``session.parallel`` at once (the writer waits, so memory stays bounded); the flush sends the tail.  A
    write into bytes already sent, a gap left at the flush, or a failed part ends streaming: the flush then
    sends the whole spool.
    """

    def __init__(self, uploader: Uploader, remote_path: str, first_part: int):
        self.uploader = uploader
        self.remote_path = remote_path
        self.first_part = first_part
        self.upload: Optional[Upload] = None
        self.sent = 0  # bytes [0, sent) are handed to the backend
        self.prefix = 0  # bytes [0, prefix) are written, without a gap
        self._beyond: Dict[int, int] = {}  # extents written past the prefix: start -> end

    def written(self, fd: int, start: int, end: int) -> bool:
        """Record a write and send the complete parts; False if streaming cannot go on."""
        if start < self.sent:
            return False
        self._beyond[start] = max(end, self._beyond.get(start, end))
        grown = True
        while grown:  # absorb every extent that now touches the prefix
            grown = False
            for extent_start, extent_end in list(self._beyond.items()):
                if extent_start <= self.prefix:
                    self.prefix = max(self.prefix, extent_end)
                    del self._beyond[extent_start]
                    grown = True
        try:
            self._send_complete_parts(fd)
        except errors.HpcfsError:
            return False
        return True

    def finish(self, fd: int, size: int, replaced_mode: Optional[int] = None) -> bool:
        """Send the tail and publish; False (nothing published) if the caller must upload the spool."""
        if self.upload is None or self._beyond or self.prefix != size:
            return False  # a small file (one whole upload is cheaper), or one with gaps
        try:
            if size > self.sent:
                self._send(fd, size - self.sent)
            self.upload.wait()
        except errors.HpcfsError:
            return False
        try:
            self.upload.publish(replaced_mode)
        except BaseException:
            self.upload.abort()
            raise
        return True

    def stop(self) -> None:
        """Give up streaming: parts in flight are waited for, the unfinished partial file removed."""
        if self.upload is not None:
            self.upload.abort()

    def _send_complete_parts(self, fd: int) -> None:
        if self.upload is None:
            if self.prefix < self.first_part:
                return
            self.upload = self.uploader.start(self.remote_path, None)
        while self.prefix - self.sent >= self.upload.part_size:
            self._send(fd, self.upload.part_size)

    def _send(self, fd: int, length: int) -> None:
        assert self.upload is not None
        self.upload.put(self.sent, os.pread(fd, length, self.sent))
        self.sent += length


class TreeLease:
    """Keeps a tree open while files opened through a front end are: the front end's ``close`` (or its
    garbage collection) closes the tree only once the last of those files is closed, so
    ``open_fs(url).openbin(path).read()`` works although the filesystem object is gone."""

    def __init__(self, tree):
        self.tree = tree
        self._open_files = 0
        self._owner_closed = False
        self._lock = threading.Lock()

    def acquire(self) -> None:
        with self._lock:
            self._open_files += 1

    def release(self) -> None:
        with self._lock:
            self._open_files -= 1
        self._close_when_idle()

    def close(self) -> None:
        with self._lock:
            already, self._owner_closed = self._owner_closed, True
        if not already:
            self._close_when_idle()

    def _close_when_idle(self) -> None:
        with self._lock:
            idle = self._owner_closed and self._open_files == 0
            self._open_files = -1 if idle else self._open_files  # -1: closed, never again
        if idle:
            self.tree.close()


# The buffer of Python files: line iteration and ``read(1)`` are served from it instead of one core read
# each.  Sequential readers get whole blocks and readahead from the block cache anyway, so the buffer only
# amortises per-call cost; it stays small because every small read at a random offset (h5py, zarr) fills it
# whole, and a block-sized buffer would fetch 2 MiB for each 4 KiB asked.
PYTHON_FILE_BUFFER = 64 << 10


def open_stream(handle, mode="rb", readable=True, append=False, name=None, lease=None) -> io.BufferedIOBase:
    """A RemoteFile as a buffered Python binary file (BufferedReader, BufferedWriter or BufferedRandom)."""
    raw = FileStream(handle, mode=mode, readable=readable, append=append, name=name, lease=lease)
    if readable and handle.writable:
        return io.BufferedRandom(raw, PYTHON_FILE_BUFFER)
    if handle.writable:
        return io.BufferedWriter(raw, PYTHON_FILE_BUFFER)
    return io.BufferedReader(raw, PYTHON_FILE_BUFFER)


class FileStream(io.RawIOBase):
    """A RemoteFile as a seekable Python binary file (for PyFilesystem2, fsspec users and the CLI)."""

    def __init__(self, handle, mode="rb", readable=True, append=False, name=None, lease: Optional[TreeLease] = None):
        super().__init__()
        self.handle = handle
        self._lease = lease
        if lease is not None:
            lease.acquire()
        self.mode = mode
        self.name = name or handle.path
        self._readable = readable
        self._append = append
        self._position = handle.size if append else 0
        self._released = False

    def readable(self):
        return self._readable

    def writable(self):
        return self.handle.writable

    def seekable(self):
        return True

    def readinto(self, buffer):
        if not self._readable:
            raise io.UnsupportedOperation("not open for reading")
        count = self.handle.read_into(self._position, memoryview(buffer).cast("B"))
        self._position += count
        return count

    def readall(self):
        chunks = []
        while True:
            data = self.read(self.handle.tree.options.block_size)
            if not data:
                return b"".join(chunks)
            chunks.append(data)

    def write(self, data):
        if not self.handle.writable:
            raise io.UnsupportedOperation("not open for writing")
        if self._append:
            self._position = self.handle.size
        written = self.handle.write(self._position, bytes(data))
        self._position += written
        return written

    def seek(self, offset, whence=io.SEEK_SET):
        bases = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self.handle.size}
        if whence not in bases:
            raise ValueError(f"invalid whence ({whence})")
        base = bases[whence]
        if base + offset < 0:
            raise ValueError("negative seek position")
        self._position = base + offset
        return self._position

    def tell(self):
        return self._position

    def truncate(self, size=None):
        size = self._position if size is None else size
        self.handle.truncate(size)
        return size

    def flush(self):
        if not self.closed and self.handle.writable and not self._released:
            self.handle.flush()

    def close(self):
        if not self.closed:
            # The release commits; the flush IOBase.close makes afterwards must not send a failed one again.
            self._released = True
            try:
                self.handle.release()
            finally:
                super().close()
                if self._lease is not None:
                    self._lease.release()
