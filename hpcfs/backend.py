"""The contract between protocol clients and the core.

A backend speaks one wire protocol and knows nothing of caches, FUSE or PyFilesystem2.  Paths are
absolute POSIX strings inside the tree the user opened: ``/`` is the base directory of the URL, and the
backend maps it to the server's own path.  Backends must be thread-safe: the core calls them from
several threads at once (readahead, FUSE worker threads) up to ``capabilities.max_parallel``.

Everything a backend raises is an :mod:`hpcfs.errors` exception.  The core chooses strategies (ranged or
whole-file reads, how to rename, how many requests in flight) from :class:`Capabilities`, so front ends
never ask which protocol they talk to.
"""
import posixpath
import stat as stat_module
from dataclasses import dataclass, field
from typing import BinaryIO, Callable, List, Optional, Union

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
    ranged_writes: bool = False  # write_range writes in place without truncating
    rename: str = "instant"  # "instant", "job" (slow but server-side) or "none"
    max_parallel: int = 4  # requests the server accepts at once from this client
    max_whole_read: Optional[int] = None  # read_whole refuses files larger than this
    max_upload: Optional[int] = None  # largest file one write_whole may send (EFBIG above)
    chmod: bool = False
    symlinks: bool = False
    set_mtime: bool = False
    read_only: bool = False  # nothing can be written, created, renamed or deleted (EROFS up front)
    # Whether a file's listing may lag behind its upload (FirecREST, EM): the core then trusts its own
    # record of what it wrote rather than a listing taken right after.
    eventual_listing: bool = False
    # How many levels below the root hold directories the user cannot remove through hpcfs (EM volumes: 1);
    # `hpcfs rm -r` refuses them as it refuses the root itself.
    fixed_levels: int = 0
    extra: dict = field(default_factory=dict)


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

    def write_whole(self, path: str, source: BinaryIO, size: int) -> None:
        """Create or replace ``path`` with ``size`` bytes read from ``source``."""
        raise NotImplementedError

    def write_range(self, path: str, offset: int, data: bytes) -> None:
        """Write ``data`` at ``offset`` in place, without truncating (only with ``ranged_writes``)."""
        raise errors.NotSupported("partial writes are not supported", path)

    # -- namespace --------------------------------------------------------------------------------------
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
    parts = []
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


def split(path: str):
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
