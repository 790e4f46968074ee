"""The contract between protocol clients and the core.

A backend speaks one wire protocol and knows nothing of caches, FUSE or PyFilesystem2.  Paths are
absolute POSIX strings inside the tree the user opened: ``/`` is the base directory of the URL, and the
backend maps it to the server's own path.  Backends must be thread-safe: the core calls them from
several threads at once (readahead, FUSE worker threads) up to ``capabilities.max_parallel``.

Everything a backend raises is an :mod:`hpcfs.errors` exception.  The core chooses strategies (ranged or
whole-file reads, how to rename, how many requests in flight) from :class:`Capabilities`, so front ends
never ask which protocol they talk to.

Uploads: ``begin_upload(path, size)`` returns an :class:`UploadSession` that says how its parts go (their
size, how many may be in flight) and takes them with ``put_part``, then ``commit`` (or ``abort``).  A
backend that sends a file in one request only overrides ``write_whole`` (the default session is one
``write_whole``); one with parts overrides ``begin_upload`` (``write_whole`` then sends the parts in
order).  Partial names and publishing by rename (``Capabilities.publishes_by_rename``) are the core's
(:mod:`hpcfs.core.upload`), not the backend's: a session writes exactly the path it was given.
"""
import io
import posixpath
import stat as stat_module
from dataclasses import dataclass
from typing import BinaryIO, Callable, List, Optional, Tuple
from typing import Union

from . import errors

FILE, DIRECTORY, SYMLINK = "file", "dir", "symlink"


@dataclass(frozen=True)
class Entry:
    """One directory entry with the attributes a listing gives."""

    name: str
    kind: str = FILE
    size: int = 0
    mtime: float = 0.0
    mode: int = 0o644  # permission bits only; the kind gives the type bits
    uid: Optional[int] = None
    gid: Optional[int] = None
    target: Optional[str] = None  # symlink target where the server reports it
    token: str = ""  # changes whenever the content changes; caches key on it
    # Seconds these attributes stay true: None for the tree's attr_ttl, math.inf for content that never
    # changes again (a finished job's files), a few seconds for a file that grows while open (a running
    # job's output: readers ask again when they reach its end).
    ttl: Optional[float] = None

    @property
    def is_dir(self):
        return self.kind == DIRECTORY

    @property
    def st_mode(self):
        type_bits = {FILE: stat_module.S_IFREG, DIRECTORY: stat_module.S_IFDIR, SYMLINK: stat_module.S_IFLNK}
        return type_bits[self.kind] | (self.mode & 0o7777)

    @property
    def change_token(self):
        """What identifies this version of the content: the backend's token, else size and mtime."""
        return self.token or f"{self.size}:{self.mtime}"


@dataclass(frozen=True)
class Capabilities:
    """What a backend can do, declared up front so the core picks its strategy without trial and error."""

    ranged_reads: bool = False  # read_range works (else only read_whole)
    # Upload sessions write parts in place at any offset: they start before the size is known (a file
    # streamed while written) and continue a kept prefix (resume_from).
    ranged_writes: bool = False
    rename: str = "instant"  # "instant", "job" (slow but server-side) or "none"
    max_parallel: int = 4  # requests the server accepts at once from this client
    # `hpcfs cp` fetches a big file in ranges side by side; False: in one stream.  FirecREST's staged object
    # is fetched with one GET: the staging store of the real FirecREST peer (moto) reads the whole object for
    # every ranged GET, so 16 ranges of 256 MiB took 4.7 s against 0.5 s for one GET (docs/benchmarks.md);
    # a store that serves ranges natively might gain from them, which nobody has measured here yet.
    parallel_copy: bool = True
    max_whole_read: Optional[int] = None  # read_whole refuses files larger than this
    max_upload: Optional[int] = None  # largest file one upload may send (EFBIG above)
    chmod: bool = False
    symlinks: bool = False
    set_mtime: bool = False
    read_only: bool = False  # nothing can be written, created, renamed or deleted (EROFS up front)
    # How many levels below the root hold directories the user cannot remove through hpcfs (EM volumes: 1);
    # `hpcfs rm -r` refuses them as it refuses the root itself.
    fixed_levels: int = 0
    # Hash algorithms (hashlib names) the server computes over a file itself: `checksum` sends no bytes.
    checksums: Tuple[str, ...] = ()
    server_copy: bool = False  # `copy` makes a file's copy on the server: no byte passes through hpcfs

    @property
    def publishes_by_rename(self) -> bool:
        """Whether an upload goes to a hidden partial name and is renamed onto the real one when complete:
        only where renaming is instant (elsewhere a rename per upload costs a job or a copy)."""
        return self.rename == "instant"


class UploadSession:
    """One file on its way to the server: ``put_part`` calls, then ``commit`` (or ``abort``).

    Every part but the last is ``part_size`` bytes long and starts at a multiple of it; up to ``parallel``
    parts may be in flight at once (1: one after the other, in order).  The file is complete under the
    session's path only after ``commit``; ``abort`` frees what the server holds for an unfinished upload
    (a staging job), best effort.  A file of size 0 gets no parts.
    """

    part_size: int  # set by each session
    parallel: int = 1

    def put_part(self, offset: int, source: BinaryIO, length: int) -> None:
        raise NotImplementedError

    def commit(self) -> None:
        pass

    def abort(self) -> None:
        pass


class WholeUpload(UploadSession):
    """The session of a backend that takes a file in one request: its one part is one ``write_whole``."""

    def __init__(self, backend: "Backend", path: str, size: Optional[int]):
        if size is None:
            raise errors.NotSupported("the server needs the size of an upload before it starts", path)
        self.backend, self.path, self.size = backend, path, size
        self.part_size = max(size, 1)
        self._sent = False

    def put_part(self, offset: int, source: BinaryIO, length: int) -> None:
        self.backend.write_whole(self.path, source, length)
        self._sent = True

    def commit(self) -> None:
        if not self._sent:  # an empty file
            self.backend.write_whole(self.path, io.BytesIO(b""), 0)


def upload_in_order(session: UploadSession, source: BinaryIO, size: int) -> None:
    """Send ``size`` bytes of ``source`` through ``session`` one part after the other, then commit; abort
    on any failure."""
    try:
        for offset in range(0, size, session.part_size):
            session.put_part(offset, source, min(session.part_size, size - offset))
        session.commit()
    except BaseException:
        session.abort()
        raise


class Backend:
    """Base class for protocol backends.  Optional operations raise :class:`errors.NotSupported`."""

    capabilities = Capabilities()

    # -- metadata ---------------------------------------------------------------------------------------
    def list(self, path: str) -> List[Entry]:
        """All entries of directory ``path`` with their attributes, in as few requests as the wire allows."""
        raise NotImplementedError

    def stat(self, path: str) -> Entry:
        raise NotImplementedError

    # -- data -------------------------------------------------------------------------------------------
    def read_range(self, path: str, offset: int, length: int) -> bytes:
        """Bytes ``[offset, offset+length)`` (``bytes`` or a ``bytearray``); shorter only at end of file."""
        raise errors.NotSupported("ranged reads are not supported", path)

    def read_pieces(self, path: str, offset: int, length: int, piece_size: int,
                    deliver: Callable[[bytes], None]) -> None:
        """Bytes ``[offset, offset+length)`` handed to ``deliver`` in order, in pieces of ``piece_size`` (the
        last may be shorter; fewer only at end of file).  The block cache fetches a run of readahead blocks
        this way; a backend that can stream one long range in one request overrides it."""
        end = offset + length
        for start in range(offset, end, piece_size):
            piece = self.read_range(path, start, min(piece_size, end - start))
            deliver(piece)
            if len(piece) < min(piece_size, end - start):
                return

    def stream_range(self, path: str, offset: int, length: int,
                     write: Callable[[Union[bytes, memoryview]], None]) -> None:
        """Bytes ``[offset, offset+length)`` handed to ``write`` in order (fewer only at end of file); a
        piece may be a view of a buffer reused for the next one, so ``write`` uses it before it returns.
        ``hpcfs cp`` downloads through this, one range per session; UFTP overrides it."""
        self.read_pieces(path, offset, length, 1 << 20, write)

    def read_whole(self, path: str, sink: BinaryIO) -> None:
        """Write the whole file into ``sink``."""
        raise NotImplementedError

    # A backend implements uploads by overriding one of ``write_whole`` (one request per file) and
    # ``begin_upload`` (parts: parallel pieces, S3 multipart); each default is built on the other.
    def write_whole(self, path: str, source: BinaryIO, size: int) -> None:
        """Create or replace ``path`` with ``size`` bytes read from ``source``."""
        if type(self).begin_upload is Backend.begin_upload:
            raise NotImplementedError(f"{type(self).__name__} implements neither write_whole nor begin_upload")
        upload_in_order(self.begin_upload(path, size), source, size)

    def begin_upload(self, path: str, size: Optional[int], resume_from: int = 0) -> UploadSession:
        """Start creating or replacing ``path`` with ``size`` bytes (``None``: not known yet, only with
        ``ranged_writes``, for a file streamed while it is written).  ``resume_from`` (only with
        ``ranged_writes``) keeps that many bytes already at ``path`` and continues after them.  The core's
        uploader (:mod:`hpcfs.core.upload`) drives the session and handles partial names and publishing."""
        return WholeUpload(self, path, size)

    # -- namespace --------------------------------------------------------------------------------------
    def check_name(self, path: str) -> None:
        """Raise :class:`errors.InvalidPath` (EINVAL) if the server cannot create ``path`` under its exact
        name.  The core asks before it creates, spools or sends anything for a new name (a file, a
        directory, a rename's or link's target), so such a name fails at ``open``/``mkdir``, not later at
        ``close`` where shells ignore the error.  The default takes every name ``normalize`` passes."""

    def mkdir(self, path: str) -> None:
        raise NotImplementedError

    def remove(self, path: str) -> None:
        raise NotImplementedError

    def rmdir(self, path: str) -> None:
        """Remove an empty directory; ``DirectoryNotEmpty`` otherwise (check first if the server deletes
        recursively)."""
        raise NotImplementedError

    def rename(self, src: str, dst: str) -> None:
        """Move ``src`` to ``dst``, replacing a file at ``dst`` as POSIX rename does."""
        raise errors.NotSupported("rename is not supported", src)

    def chmod(self, path: str, mode: int) -> None:
        raise errors.NotSupported("chmod is not supported", path)

    def symlink(self, target: str, path: str) -> None:
        raise errors.NotSupported("symbolic links are not supported", path)

    def readlink(self, path: str) -> str:
        raise errors.NotSupported("symbolic links are not supported", path)

    def set_mtime(self, path: str, mtime: float) -> None:
        raise errors.NotSupported("setting times is not supported", path)

    def copy(self, src: str, dst: str) -> None:
        """A copy of the file ``src`` at ``dst`` (replaced if it exists), made by the server."""
        raise errors.NotSupported("the server cannot copy", src)

    def checksum(self, path: str, algorithm: str) -> str:
        """The hex digest the server computes for the file, for an ``algorithm`` in ``capabilities.checksums``
        (a hashlib name).  TimedOut where the file is too big for the server to hash in time."""
        raise errors.NotSupported(f"the server computes no {algorithm}", path)

    # -- lifecycle --------------------------------------------------------------------------------------
    def describe(self) -> dict:
        """Facts for ``hpcfs info``: server version, limits, who we are.  Never a credential."""
        return {}

    def close(self) -> None:
        pass


def normalize(path: str) -> str:
    """Canonical absolute path inside the tree; refuses what could escape it or cannot be sent."""
    if "\0" in path:
        raise errors.InvalidPath("path contains a NUL byte", path)
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:  # undecodable bytes from FUSE arrive as surrogates; no server can store them
        raise errors.InvalidPath("name is not valid UTF-8", path.encode("utf-8", "replace").decode()) from None
    parts: List[str] = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not parts:
                raise errors.InvalidPath("path leaves the root of the tree", path)
            parts.pop()
        else:
            parts.append(part)
    return "/" + "/".join(parts)


def split(path: str) -> Tuple[str, str]:
    """``(parent, name)`` of a normalized path; the root's parent is itself."""
    parent, name = posixpath.split(path)
    return parent or "/", name


def read_exactly(source: BinaryIO, size: int, path: str) -> bytes:
    """``size`` bytes from ``source`` (whose reads may come short); an error naming ``path`` if it ends first."""
    chunks, remaining = [], size
    while remaining:
        chunk = source.read(min(remaining, 1 << 20))
        if not chunk:
            raise errors.HpcfsError(f"the source ended {remaining} bytes short of {size}", path)
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)
