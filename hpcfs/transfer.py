"""``hpcfs cp``: copies between local paths and remote trees, in either direction or remote to remote.

Files are copied by several threads at once; each remote read goes through the core's readahead, so one
large file already keeps several ranged requests in flight.  Uploads hand the source file straight to the
backend (no spool copy).

Nothing under the real name is ever partial: a download is written to a new hidden
``.NAME.hpcfs-partial-RANDOM`` next to its destination (created exclusively, never through a symbolic
link, mode 0600) and renamed when complete; an upload where the server renames instantly (UFTP) goes to
``.NAME.hpcfs-partial``.  Long names are cut and hashed so a partial name fits NAME_MAX.  A failed or
interrupted copy keeps its partial file, and ``resume`` continues it: a download from its length (only a
partial that is ours: a regular file of our uid, one link, no group or other bits), an upload (where the
server writes at an offset) from the kept prefix once its last block matches the source.  ``resume`` also
skips files whose destination already has the source's size and is no older (``is_complete``).
``no_clobber`` (cp -n) leaves every existing destination alone; ``preserve`` (cp -p) keeps the source's mode
and time.  Copying a file onto itself is refused before anything is opened (as GNU cp does).
``checksum`` (cp -c) compares each copy's hash with the source's before the rename that puts it in place
(the source hashed once per file, the skip check of ``resume`` included): a damaged copy is removed, as no
prefix to resume from, and the destination stays as it was.  A copy that has no partial name (a server
that cannot rename instantly, or a copy the server made itself) can only be checked where it lies.

Modes are kept as ``cp`` without ``-p`` keeps them: the source's permission bits less the umask, never
wider than the source; a private file gets its mode before its bytes reach a name others can open, where
the server allows.  Symbolic links inside a tree are copied as links, or skipped with a warning where the
destination has none; ``dereference`` follows local ones (with loop detection; a dangling one fails the copy
once the rest is done, as cp -L).  A listing that shows links as what they point to (UFTP) is checked for
loops by its content.  Special files (FIFOs, sockets, devices)
are skipped with a warning.  One file's failure does not stop the others: each is named on its own line.
"""
import errno
import functools
import hashlib
import io
import logging
import os
import posixpath
import re
import secrets
import shutil
import stat
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

from tqdm import tqdm

from . import errors
from .backend import SYMLINK, normalize, read_exactly
from .core.files import FileStream
from .core.upload import Damaged
from .targets import Trees

log = logging.getLogger("hpcfs.cp")
CHUNK = 1 << 20
# Downloaded bytes reach the disk in writes of at most this size.  Linux (6.x, ext4) caches a buffered write in
# page-cache folios as large as the call, and large free blocks are the first memory to run short: beside
# another writer of 1 MiB writes, each 1 MiB folio was memory the hypervisor had taken back (free page
# reporting), so a 1 MiB write took 2.4 ms instead of 0.2 ms and the copy ran at half pyuftp's speed.  256 KiB
# writes slowed down too once memory was fragmented; 128 KiB ones kept their speed, as did 64 KiB ones
# (pyuftp's), which cost more system calls: about 20 ms more per 512 MiB on an idle machine (issue 22).
WRITE_PIECE = 128 << 10
# A big download from a server with ranged reads is fetched in ranges side by side, one per session:
# about two ranges per session, within these bounds (one transfer's fixed cost is paid per range).
PARALLEL_DOWNLOAD_MIN = 16 << 20
PARALLEL_RANGE_MIN, PARALLEL_RANGE_MAX = 8 << 20, 64 << 20
# A resumable upload above this size goes out in parts one after the other, so a kept partial upload is
# always a prefix of the source.
UPLOAD_PIECE = 4 << 20
TAIL_CHECK = 64 << 10  # the bytes of a kept partial upload compared with the source before continuing it
CHECKSUM = "sha256"  # --checksum's hash: one every server that hashes computes (FirecREST: only this)
# What a failed local write means, as the hierarchy every other error of the CLI comes from.
LOCAL_ERRORS = {
    errno.ENOSPC: errors.NoSpace, errno.EDQUOT: errors.NoSpace, errno.EACCES: errors.PermissionDenied,
    errno.EPERM: errors.PermissionDenied, errno.EROFS: errors.PermissionDenied, errno.ENOENT: errors.NotFound,
    errno.ENOTDIR: errors.NotADirectory, errno.EISDIR: errors.IsADirectory,
}


MISSING_DESTINATION = f"{os.strerror(errno.ENOENT)} (the destination directory does not exist)"
MTIME_WINDOW = 1.0  # seconds two times may differ and still be the same (rsync's --modify-window=1)
LOOP_PERIODS = 3  # how many more times alike listings must repeat before a listing-only loop is believed
NAME_MAX = 255  # bytes in one file name, on Linux and on the servers hpcfs talks to
PARTIAL_MARK = ".hpcfs-partial"
LOCAL_PARTIAL_SUFFIX = 16  # hex digits that make a local partial name unguessable
OPEN_FLAGS = os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK  # O_NONBLOCK: a FIFO swapped in never blocks an open


@dataclass
class Item:
    name: str
    is_dir: bool
    size: int
    link: Optional[str] = None  # the target of a symbolic link that is copied as a link
    # what tells directories apart: (st_dev, st_ino) locally; the listed (mtime, size) where a server lists
    # links as what they point to
    identity: Optional[tuple] = None
    mode: int = 0o644  # permission bits
    special: bool = False  # a FIFO, socket or device: never copied
    mtime: float = 0.0


@dataclass
class Kept:
    """A partial download of ours that ``resume`` continues: its name and an open descriptor on it."""
    path: str
    fd: int
    under_real_name: bool = False  # another tool's shorter file under the destination's own name


@dataclass
class Job:
    source_side: "Side"
    source: str
    destination: str
    size: int
    link: Optional[str] = None  # make a symbolic link with this target instead of copying bytes
    mode: int = 0o644  # the permission bits the copy gets (the source's, less the umask)
    kept: Optional[Kept] = None  # set by ``LocalSide.resume_offset``
    mtime: float = 0.0  # the source's modification time
    source_digest: Optional[str] = None  # the source's CHECKSUM, once computed (``--checksum``)


@dataclass(frozen=True)
class Rules:
    """What ``cp`` was asked to do with every file: ``--resume``, ``-n`` and ``-p``."""
    resume: bool = False
    no_clobber: bool = False  # -n: a destination that exists is never written (and no error)
    preserve: bool = False  # -p: the source's mode (no umask) and modification time, where the destination can
    checksum: bool = False  # compare content hashes: before each copy is put in place, and with resume to skip


def is_complete(existing: Optional[Item], job: Job) -> bool:
    """rsync's quick check for ``resume``: the same size and a time no older than the source's (a copy
    made, or given the source's time by -p, after the source last changed); within MTIME_WINDOW, for
    servers that keep whole seconds.  A source changed since, even to the same size, is copied again."""
    return (existing is not None and not existing.is_dir and existing.size == job.size
            and existing.mtime >= job.mtime - MTIME_WINDOW)


class Cancelled(Exception):
    """The user pressed Ctrl-C (or the copy is being torn down): stop at the next chunk."""


_output_lock = threading.Lock()  # copies run in threads: one line must not cut into another


def warn(text: str) -> None:
    say(f"warning: {text}")


def say(text: str) -> None:
    with _output_lock:
        sys.stderr.write(f"hpcfs: {text}\n")
        sys.stderr.flush()


def current_umask() -> int:
    """The process's umask (read by setting it: called once, before any copy thread runs)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def partial_stem(name: str) -> str:
    """The destination's name as it appears in its partial names: whole where the partial name fits
    NAME_MAX, else cut and followed by a hash of the whole name (two long names sharing a start differ)."""
    encoded = name.encode("utf-8", "surrogateescape")
    room = NAME_MAX - len(f".{PARTIAL_MARK}-") - LOCAL_PARTIAL_SUFFIX - 1  # the leading dot
    if len(encoded) <= room:
        return name
    digest = hashlib.sha256(encoded).hexdigest()[:16]
    return encoded[:room - len(digest) - 1].decode("utf-8", "ignore") + "~" + digest


class Side:
    """What both ends of a copy share; subclasses give ``join``, ``dirname`` and ``basename``."""

    join: Callable[..., str]
    dirname: Callable[[str], str]
    basename: Callable[..., Any]  # os.path.basename or posixpath.basename (overloaded for any path-like)
    checksum: Callable[[str], str]  # the CHECKSUM of a file's content
    open_read: Callable[..., Any]  # a file opened for reading from an offset
    copies_on_server = False  # copy_on_server works for two paths of this side
    renames_instantly: bool  # a copy is written to a partial name and renamed onto the real one when complete

    def __init__(self) -> None:
        self.umask = current_umask()
        self._directory_modes: List[Tuple[str, int]] = []  # new directories whose mode is set last

    def copy_mode(self, source_mode: int) -> int:
        """The permission bits a copy gets, as ``cp`` without ``-p``: the source's less the umask."""
        return source_mode & 0o777 & ~self.umask

    def copy_on_server(self, job: "Job") -> None:
        raise errors.NotSupported("no copies on the server here", job.destination)

    def partial(self, path: str) -> str:
        """Where an upload to ``path`` is written until it is complete (a fixed name: ``resume`` finds it)."""
        return self.join(self.dirname(path), f".{partial_stem(self.basename(path))}{PARTIAL_MARK}")

    def directory_key(self, item: Item, path: str) -> Optional[tuple]:
        """What identifies directory ``path`` on the way down (a loop meets it again); None: nothing does."""
        return item.identity

    def loops_back(self, path: str, ancestor: str, key: tuple) -> bool:
        """Whether ``path``, whose key equals its ancestor's, is that ancestor met again through a link
        (an identity of its own, such as an inode, says so for sure)."""
        return True

    def make_directory(self, path: str, source_mode: int) -> None:
        """Create ``path`` (an existing directory is kept as it is, as cp does), writable by us while the
        copy fills it and never wider than its source; its own mode is set by ``finish_directories``."""
        wanted = self.copy_mode(source_mode)
        if self._create_directory(path, wanted | 0o700) and wanted != wanted | 0o700:
            self._directory_modes.append((path, wanted))

    def finish_directories(self) -> None:
        """Directories whose source lacked an owner bit get exactly the source's mode, deepest first."""
        for path, mode in reversed(self._directory_modes):
            self._set_mode(path, mode)

    def _create_directory(self, path: str, mode: int) -> bool:
        raise NotImplementedError

    def _set_mode(self, path: str, mode: int) -> None:
        raise NotImplementedError


class LocalSide(Side):
    join = staticmethod(os.path.join)
    basename = staticmethod(os.path.basename)
    has_symlinks = True
    renames_instantly = True
    can_dereference = True  # -L follows links of a local tree

    def __init__(self, dereference: bool = False):
        super().__init__()
        self.dereference = dereference
        self._partials: Dict[str, Dict[str, List[str]]] = {}  # directory -> stem -> partial names (resume)
        self._partials_lock = threading.Lock()
        # links -L could not follow: each fails the copy (exit status 1) once the rest is copied, as in cp -L
        self.failures: List[OSError] = []

    @staticmethod
    def dirname(path: str) -> str:
        return os.path.dirname(path) or "."

    def stat(self, path):
        """What ``path`` names, following symbolic links (a command-line argument is always followed)."""
        try:
            return self._item(os.path.basename(path), os.stat(path))
        except (FileNotFoundError, NotADirectoryError):
            return None

    def listdir(self, path):
        items = []
        for name in sorted(os.listdir(path)):
            item = self._child(os.path.join(path, name), name)
            if item is not None:
                items.append(item)
        return items

    def _child(self, path: str, name: str) -> Optional[Item]:
        """A directory entry: a symbolic link as itself unless dereferencing; None for a dangling one then."""
        status = os.lstat(path)
        if not stat.S_ISLNK(status.st_mode):
            return self._item(name, status)
        if not self.dereference:
            return Item(name, False, 0, link=os.readlink(path))
        try:
            return self._item(name, os.stat(path))
        except OSError as exc:  # dangling, or a loop of links (ELOOP)
            self.failures.append(_local_error(exc, path))
            return None

    @staticmethod
    def _item(name: str, status: os.stat_result) -> Item:
        kind = stat.S_IFMT(status.st_mode)
        return Item(name, kind == stat.S_IFDIR, status.st_size, identity=(status.st_dev, status.st_ino),
                    mode=status.st_mode & 0o777, special=kind not in (stat.S_IFDIR, stat.S_IFREG),
                    mtime=status.st_mtime)

    def same(self, path: str, other: str) -> bool:
        try:
            return os.path.samefile(path, other)
        except OSError:
            return False

    def inside(self, path: str, directory: str) -> bool:
        real, top = os.path.realpath(path), os.path.realpath(directory)
        return real == top or real.startswith(top.rstrip(os.sep) + os.sep)

    def _create_directory(self, path: str, mode: int) -> bool:
        """A new directory (True), or an existing real one; a symbolic link there is not followed: it
        could lead the copy anywhere another user chose."""
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            if not stat.S_ISDIR(os.lstat(path).st_mode):
                raise errors.AlreadyExists("exists and is not a directory (a symbolic link is not followed)",
                                           path) from None
            return False
        if mode != 0o700:
            os.chmod(path, mode)
        return True

    def _set_mode(self, path: str, mode: int) -> None:
        os.chmod(path, mode, follow_symlinks=False)

    def check_size(self, path, size, reading):
        """Local files have no size limit."""

    def exists(self, path: str) -> bool:
        """Anything at ``path``, a dangling symbolic link too (cp -n leaves it alone)."""
        return os.path.lexists(path)

    def set_mtime(self, path: str, mtime: float) -> None:
        os.utime(path, (mtime, mtime), follow_symlinks=False)  # the copy just renamed there, never a link's target

    def make_link(self, target: str, path: str) -> None:
        if os.path.islink(path):  # copying again replaces the link, as cp -r does
            os.remove(path)
        os.symlink(target, path)

    def open_read(self, path, offset=0):
        """``path`` opened for reading, only if it is a regular file (a FIFO put there since the listing
        would block the copy forever)."""
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise errors.HpcfsError("not a regular file any more; skipped", path)
        os.set_blocking(fd, True)
        handle = os.fdopen(fd, "rb")
        handle.seek(offset)
        return handle

    # -- partial downloads ------------------------------------------------------------------------------
    def _fresh_partial(self, path: str) -> str:
        stem = partial_stem(os.path.basename(path))
        return os.path.join(self.dirname(path), f".{stem}{PARTIAL_MARK}-{secrets.token_hex(LOCAL_PARTIAL_SUFFIX // 2)}")

    def _kept_partials(self, path: str) -> List[str]:
        """The partial downloads next to ``path`` that carry its name (one listing per directory)."""
        directory = self.dirname(path)
        with self._partials_lock:
            if directory not in self._partials:
                self._partials[directory] = _partials_by_stem(directory)
            return self._partials[directory].get(partial_stem(os.path.basename(path)), [])

    def checksum(self, path: str) -> str:
        with open(path, "rb") as handle:
            return _digest(handle.fileno())

    def resume_offset(self, job: Job, checksum: bool = False) -> Optional[int]:
        """None when the destination is complete (``is_complete``, unless ``checksum`` decided that by hash),
        else where to continue: the longest kept partial of ours up to its first hole, or the length of a
        shorter file of ours under the real name (another tool's interrupted download; not with ``checksum``:
        a copy that fails its check must leave the destination as it was); ``job.kept`` then holds it open."""
        existing = self.stat(job.destination)
        if not checksum and is_complete(existing, job):
            return None
        directory = self.dirname(job.destination)
        candidates = [Kept(os.path.join(directory, name), -1) for name in self._kept_partials(job.destination)]
        if not checksum and existing is not None and not existing.is_dir and existing.size < job.size:
            candidates.append(Kept(job.destination, -1, under_real_name=True))
        best, offset = None, 0
        for candidate in candidates:
            candidate.fd = _claim(candidate.path, private=not candidate.under_real_name)
            if candidate.fd < 0:
                continue
            length = _written_prefix(candidate.fd)
            if offset < length <= job.size:
                if best is not None:
                    os.close(best.fd)
                best, offset = candidate, length
            else:
                os.close(candidate.fd)
        job.kept = best
        return offset

    def receive(self, job, reader, offset, meter, stop, verify: Optional[Callable[[str], None]] = None):
        """Download into a partial file, ``verify`` its digest, and rename it onto the destination."""
        partial, fd = self._open_partial(job, offset)
        try:
            with os.fdopen(fd, "r+b") as handle:
                handle.seek(offset)
                remote_file = _ranged_remote_file(reader)
                if remote_file is not None and job.size - offset >= PARALLEL_DOWNLOAD_MIN:
                    _download_in_ranges(remote_file, handle.fileno(), offset, job.size, meter, stop)
                else:
                    _write_all(reader, handle, meter, stop)
                handle.flush()
                if verify is not None:
                    _verify_partial(handle.fileno(), partial, verify)
                os.fchmod(handle.fileno(), job.mode)  # the final mode, as the bytes appear under the real name
                try:
                    os.replace(partial, job.destination)
                except OSError:
                    os.fchmod(handle.fileno(), 0o600)  # kept private: --resume continues only such partials
                    raise
        except errors.HpcfsError:
            raise
        except OSError as exc:  # a local failure: name the destination and what is kept of it
            raise _local_error(exc, job.destination, partial) from None

    def _open_partial(self, job: Job, offset: int) -> Tuple[str, int]:
        """The partial file a download writes and a descriptor on it: the kept one when continuing, else
        a new one under an unguessable name, created exclusively (nothing planted there is opened), mode
        0600 until it is complete."""
        kept, job.kept = job.kept, None
        if offset and kept is not None:
            if not kept.under_real_name:
                return kept.path, kept.fd
            return self._take_over(kept, self._fresh_partial(job.destination)), kept.fd
        partial = self._fresh_partial(job.destination)
        return partial, os.open(partial, os.O_RDWR | os.O_CREAT | os.O_EXCL | OPEN_FLAGS, 0o600)

    @staticmethod
    def _take_over(kept: Kept, partial: str) -> str:
        """Move another tool's shorter copy from the real name to a partial name, private while it grows;
        refused if what was moved is not the file checked (swapped meanwhile)."""
        os.rename(kept.path, partial)
        if not os.path.samestat(os.lstat(partial), os.fstat(kept.fd)):
            os.close(kept.fd)
            raise errors.HpcfsError(f"the kept copy was replaced during the copy; it is now {partial}", kept.path)
        os.fchmod(kept.fd, 0o600)
        return partial


def _digest(fd: int) -> str:
    """The CHECKSUM of the whole file open on ``fd`` (read with pread: its offset is left alone)."""
    digest = hashlib.new(CHECKSUM)
    position = 0
    while data := os.pread(fd, CHUNK, position):
        digest.update(data)
        position += len(data)
    return digest.hexdigest()


def _verify_partial(fd: int, partial: str, verify: Callable[[str], None]) -> None:
    """``verify`` the complete partial download before its rename; a damaged one is removed: a later
    ``resume`` must not continue it.  Any other failure (the source's hash not to be had) keeps it."""
    try:
        verify(_digest(fd))
    except Damaged:
        os.unlink(partial)
        raise


def _partials_by_stem(directory: str) -> Dict[str, List[str]]:
    """Partial download names in ``directory`` by the stem of the destination they belong to."""
    pattern = re.compile(rf"\.(.*){re.escape(PARTIAL_MARK)}-[0-9a-f]{{{LOCAL_PARTIAL_SUFFIX}}}\Z", re.DOTALL)
    found: Dict[str, List[str]] = {}
    for name in os.listdir(directory):
        match = pattern.match(name)
        if match:
            found.setdefault(match.group(1), []).append(name)
    return found


def _claim(path: str, private: bool) -> int:
    """A descriptor on ``path`` if it is a copy of ours to continue, else -1: a regular file (no symbolic
    link is followed) that we own with one link (no hard link to a file elsewhere), and for a partial no
    group or other bits (ours are 0600; one another user prepared, or a wider one, is not continued)."""
    try:
        fd = os.open(path, os.O_RDWR | OPEN_FLAGS)
    except OSError:
        return -1
    status = os.fstat(fd)
    ours = (stat.S_ISREG(status.st_mode) and status.st_uid == os.geteuid() and status.st_nlink == 1
            and not (private and status.st_mode & 0o077))
    if not ours:
        os.close(fd)
        return -1
    os.set_blocking(fd, True)
    return fd


def _write_all(reader, handle, meter, stop):
    while True:
        if stop.is_set():
            raise Cancelled()
        data = reader.read(CHUNK)
        if not data:
            return
        for piece in _pieces(memoryview(data)):
            handle.write(piece)
        meter.advance(len(data))


def _pieces(view: memoryview) -> Iterator[memoryview]:
    """``view`` in slices of at most ``WRITE_PIECE`` bytes, each one write (see ``WRITE_PIECE`` for why)."""
    return (view[begin:begin + WRITE_PIECE] for begin in range(0, len(view), WRITE_PIECE))


def _ranged_remote_file(reader):
    """The RemoteFile behind ``reader`` when it is read in ranges (a big file on UFTP or FirecREST), else None."""
    handle = getattr(reader, "handle", None)
    if handle is None or handle.entry is None or handle.unpublished_entry() is not None:
        return None
    return handle if handle.tree.reads_ranges(handle.entry) else None


def _download_in_ranges(remote_file, fd: int, start: int, size: int, meter, stop: threading.Event) -> None:
    """Bytes ``[start, size)`` of ``remote_file`` written to ``fd``, in ranges fetched side by side (one
    streamed transfer each, as many at a time as the backend has sessions), each piece written where it
    belongs straight from the receive buffer: no block cache, no copy between buffers.  On any failure
    the file is cut back to the prefix complete so far, which ``resume`` continues; a process killed
    outright leaves later ranges after a hole, and ``resume`` continues at the first hole."""
    tree = remote_file.tree
    sessions = max(1, tree.capabilities.max_parallel)
    length = _range_length(sessions, size - start) if tree.capabilities.parallel_copy else size - start
    spans = [_Span(begin, min(begin + length, size)) for begin in range(start, size, length)]
    remote, failed = tree.remote_path(remote_file.path), threading.Event()

    def fetch(span: _Span) -> None:
        def write(view: memoryview) -> None:
            if stop.is_set() or failed.is_set():
                raise Cancelled()
            _pwrite_all(fd, view, span.written)
            span.written += len(view)
            meter.advance(len(view))

        tree.backend.stream_range(remote, span.written, span.end - span.written, write)
        if span.written != span.end:
            raise errors.HpcfsError("the file became shorter on the server during the copy", remote_file.path)

    pool = ThreadPoolExecutor(max_workers=sessions, thread_name_prefix="hpcfs-range")
    try:
        for future in [pool.submit(fetch, span) for span in spans]:
            future.result()
    except BaseException:
        failed.set()
        pool.shutdown(wait=True, cancel_futures=True)
        os.ftruncate(fd, _complete_prefix(spans, start))
        raise
    finally:
        pool.shutdown(wait=True)


def _range_length(sessions: int, remaining: int) -> int:
    """Two ranges per session, within bounds: the last ranges end close together."""
    return min(PARALLEL_RANGE_MAX, max(PARALLEL_RANGE_MIN, -(-remaining // (2 * sessions))))


@dataclass
class _Span:
    """A range of a parallel download and how far it is written."""
    written: int
    end: int


def _complete_prefix(spans, start: int) -> int:
    prefix = start
    for span in spans:
        prefix = span.written
        if span.written < span.end:
            break
    return prefix


def _pwrite_all(fd: int, view: memoryview, position: int) -> None:
    """``view`` written at ``position``, in writes of at most ``WRITE_PIECE`` bytes."""
    while view:
        written = os.pwrite(fd, view[:WRITE_PIECE], position)
        view, position = view[written:], position + written


def _written_prefix(fd: int) -> int:
    """The length of a kept partial download up to its first hole: where a parallel download killed
    outright (no chance to cut the file back) wrote nothing yet, before ranges it did write."""
    try:
        return os.lseek(fd, 0, os.SEEK_HOLE)
    except OSError:  # no SEEK_HOLE here: the whole length
        return os.fstat(fd).st_size


def _local_error(exc: OSError, path: str, partial: Optional[str] = None) -> errors.HpcfsError:
    error_class = LOCAL_ERRORS.get(exc.errno or 0, errors.HpcfsError)
    reason = os.strerror(exc.errno) if exc.errno else str(exc)
    if partial is not None and os.path.exists(partial):
        reason += f" (the partial copy is kept as {partial}; 'hpcfs cp --resume' continues it)"
    return error_class(reason, path)


class RemoteSide(Side):
    join = staticmethod(posixpath.join)
    basename = staticmethod(posixpath.basename)
    can_dereference = False  # a remote link is copied as a link or skipped

    def __init__(self, remote_tree):
        super().__init__()
        self.remote_tree = remote_tree
        capabilities = remote_tree.capabilities
        self.has_symlinks = capabilities.symlinks
        # A server without links in its listing may still have them and list them as what they point to
        # (UFTPD's STAT follows them): its directories are told apart by what the listing shows.
        self.listing_follows_links = not capabilities.symlinks
        self.chmod = capabilities.chmod
        # Uploads go to a partial name where renaming is instant; they continue where writing at an offset works.
        self.renames_instantly = capabilities.rename == "instant"
        self.resumable = self.renames_instantly and capabilities.ranged_writes
        self.copies_on_server = capabilities.server_copy  # within this tree

    @staticmethod
    def dirname(path: str) -> str:
        return posixpath.dirname(path.rstrip("/")) or "/"

    def stat(self, path):
        """What ``path`` names; a symbolic link given as an argument is copied as what it points to."""
        try:
            entry = self.remote_tree.stat(path)
        except errors.NotFound:
            return None
        return self._item(entry)

    def listdir(self, path):
        return [self._child(path, entry) for entry in sorted(self.remote_tree.listdir(path), key=lambda e: e.name)]

    def _child(self, directory: str, entry) -> Item:
        """A listed entry; a symbolic link as itself (its target asked for where the listing lacks it)."""
        if entry.kind != SYMLINK:
            return self._item(entry)
        target = entry.target
        if target is None:
            target = self.remote_tree.readlink(posixpath.join(directory, entry.name))
        return Item(entry.name, False, 0, link=target)

    def _item(self, entry) -> Item:
        identity = (entry.mtime, entry.size) if self.listing_follows_links and entry.is_dir else None
        return Item(entry.name, entry.is_dir, entry.size, identity=identity, mode=entry.mode & 0o777,
                    mtime=entry.mtime)

    def directory_key(self, item: Item, path: str) -> Optional[tuple]:
        """Where the listing follows links a directory has no identity of its own: what its listing shows
        (names, kinds, sizes, times); a directory that lists exactly like one on the way down to it may be
        the same one met again through a link (``loops_back`` decides)."""
        if item.identity is None:
            return None
        children = self.listdir(path)  # listed once: the tree caches it for the walk that follows
        return item.identity, tuple((child.name, child.is_dir, child.size, child.identity) for child in children)

    def loops_back(self, path: str, ancestor: str, key: tuple) -> bool:
        """Alike listings are only a hint: a link loop repeats the same way all the way down (until the
        server's own ELOOP, 40 links deep), while a nested tree that happens to list alike (``mkdir -p
        x/x/x`` in one second) ends.  So the repetition must hold for LOOP_PERIODS more periods."""
        step = posixpath.relpath(path, ancestor)
        probe = path
        for _ in range(LOOP_PERIODS):
            probe = posixpath.join(probe, step)
            try:
                item = self.stat(probe)
            except errors.HpcfsError:  # too many levels of links for the server: a loop
                return True
            if item is None or not item.is_dir or self.directory_key(item, probe) != key:
                return False
        return True

    def same(self, path: str, other: str) -> bool:
        return normalize(path) == normalize(other)

    def inside(self, path: str, directory: str) -> bool:
        path, directory = normalize(path), normalize(directory)
        return path == directory or path.startswith(directory.rstrip("/") + "/")

    def _create_directory(self, path: str, mode: int) -> bool:
        """A new directory (True) given ``mode`` before anything goes into it, or an existing one."""
        existing = self.stat(path)
        if existing is not None:
            if not existing.is_dir:
                raise errors.AlreadyExists("exists and is not a directory", path)
            return False
        self.remote_tree.mkdir(path)
        if self.chmod:
            self.remote_tree.chmod(path, mode)
        return True

    def _set_mode(self, path: str, mode: int) -> None:
        if self.chmod:
            self.remote_tree.chmod(path, mode)

    def check_size(self, path, size, reading):
        """Refuse a file the server cannot send or take (a FirecREST system without staging) before any
        byte moves, rather than after a long local spool or a server-side timeout."""
        caps = self.remote_tree.capabilities
        if reading and not caps.ranged_reads and caps.max_whole_read is not None and size > caps.max_whole_read:
            raise errors.TooLarge(f"{format_size(size)} is above the largest file this server can send "
                                  f"({format_size(caps.max_whole_read)}); it offers no staging or ranged reads "
                                  "for larger files", path)
        if not reading and caps.max_upload is not None and size > caps.max_upload:
            raise errors.TooLarge(f"{format_size(size)} is above the largest file this server can take "
                                  f"({format_size(caps.max_upload)}); it offers no staging for larger files", path)

    def exists(self, path: str) -> bool:
        return self.stat(path) is not None

    def set_mtime(self, path: str, mtime: float) -> None:
        """Where the server keeps times that a client sets (else nothing: the tree ignores it)."""
        self.remote_tree.set_mtime(path, mtime)

    def copy_on_server(self, job: Job) -> None:
        """The server copies the file itself (it keeps the source's mode and time); the copy's mode is then
        set as for any copy, where the server has chmod."""
        self.remote_tree.copy_on_server(job.source, job.destination)
        if self.chmod:
            self.remote_tree.chmod(job.destination, job.mode)

    def make_link(self, target: str, path: str) -> None:
        try:
            self.remote_tree.symlink(target, path)
        except errors.InvalidPath as exc:  # e.g. FirecREST takes absolute targets only
            warn(f"skipping symbolic link '{path}' -> '{target}': the server refused it ({exc.strerror})")

    def open_read(self, path, offset=0):
        stream = FileStream(self.remote_tree.open(path))
        stream.seek(offset)
        return stream

    def checksum(self, path: str) -> str:
        """The server's own hash where it has one (no bytes sent), else the bytes' (RemoteTree.checksum)."""
        return self.remote_tree.checksum(path, CHECKSUM)

    def resume_offset(self, job: Job, checksum: bool = False) -> Optional[int]:
        """None when the destination is complete (``is_complete``, unless ``checksum`` decided that by hash);
        where the server writes at an offset, the length of a kept partial upload whose last block matches
        the source; else 0 (sent again whole)."""
        existing = self.stat(job.destination)
        if not checksum and is_complete(existing, job):
            return None
        kept = self.stat(self.partial(job.destination)) if self.renames_instantly else None
        if not self.resumable:
            if kept is not None or (existing is not None and existing.size < job.size):
                warn(f"{job.destination}: the server cannot write at an offset; sending the whole file again")
            return 0
        if kept is None or kept.size > job.size or not self._tail_matches(job, kept.size):
            return 0
        return kept.size

    def _tail_matches(self, job: Job, end: int) -> bool:
        """Whether the kept partial's last block is the source's: a cheap check that it is a prefix of it."""
        start = max(0, end - TAIL_CHECK)
        kept = _read_at(self, self.partial(job.destination), start, end - start)
        return kept == _read_at(job.source_side, job.source, start, end - start)

    def receive(self, job, reader, offset, meter, stop, verify: Optional[Callable[[str], None]] = None):
        """Upload through the core's one uploader.  Where the server renames instantly, the bytes go to
        the fixed partial name ``resume`` looks for, which gets the copy's mode before the rename (a
        private file's before its first byte); where it also writes at an offset, a file above one part
        goes in order (an interruption leaves a prefix, kept for ``resume``).  Elsewhere the bytes go to
        the real name, whose mode is set after them (and before them when it exists: narrowed first).
        ``verify`` gets the digest of what the server holds, before the rename where there is one."""
        source = CountingReader(reader, meter, stop)
        resumable = self.resumable and (offset > 0 or job.size > UPLOAD_PIECE)
        partial = self.partial(job.destination) if self.renames_instantly else None
        mode = job.mode if self.chmod else None
        if mode is not None and mode & 0o044 != 0o044:  # others must not read what goes out
            self._narrow_before_upload(partial or job.destination, mode, create=partial is not None and not offset)
        written = partial or job.destination
        self.remote_tree.upload(job.destination, source, job.size, publish_mode=mode, partial=partial,
                                resume_from=offset, in_order=resumable,
                                verify=None if verify is None else lambda: verify(self.checksum(written)))
        if mode is not None and partial is None:
            self.remote_tree.chmod(job.destination, mode)

    def _narrow_before_upload(self, path: str, mode: int, create: bool) -> None:
        """Give ``path`` the private ``mode`` before any byte goes into it: created empty first where the
        upload goes to a partial name (the upload keeps the mode of the file it fills; a file someone else
        put there cannot be changed, and the copy stops before sending anything)."""
        backend, remote = self.remote_tree.backend, self.remote_tree.remote_path(path)
        if create:
            backend.write_whole(remote, io.BytesIO(b""), 0)
        elif self.stat(path) is None:
            return
        backend.chmod(remote, mode)


def _read_at(side, path: str, offset: int, size: int) -> bytes:
    reader = side.open_read(path, offset)
    try:
        return read_exactly(reader, size, path)
    finally:
        reader.close()


class CountingReader:
    """A source for an upload that moves the progress meter and obeys ``stop``.  Backends
    may rewind to replay a request, so only bytes beyond the furthest point read count as progress."""

    def __init__(self, source, meter, stop):
        self.source, self.meter, self.stop = source, meter, stop
        self.furthest = source.tell()

    def read(self, size=-1):
        if self.stop.is_set():
            raise Cancelled()
        data = self.source.read(size)
        position = self.source.tell()
        if position > self.furthest:
            self.meter.advance(position - self.furthest)
            self.furthest = position
        return data

    def seek(self, offset, whence=os.SEEK_SET):
        return self.source.seek(offset, whence)

    def tell(self):
        return self.source.tell()

    def seekable(self):
        return True


def copy_paths(sources, destination, recursive=False, resume=False, parallel=4, progress=False,
               dereference=False, no_clobber=False, preserve=False, checksum=False):
    rules = Rules(resume=resume, no_clobber=no_clobber, preserve=preserve, checksum=checksum)
    with Trees() as trees:
        local = LocalSide(dereference)
        remote_sides = {}

        def side_for(target):  # one side per tree: the same side on both ends means the same tree
            if target.is_local:
                return local
            remote_tree = trees.get(target)
            return remote_sides.setdefault(id(remote_tree), RemoteSide(remote_tree))

        dest_side = side_for(destination)
        if preserve:  # cp -p: the source's permission bits as they are
            dest_side.umask = 0
        into_directory = _destination_is_directory(dest_side, destination, len(sources))
        jobs = []
        for source in sources:
            jobs += _plan_source(side_for(source), source, dest_side, destination, into_directory, recursive)
        for job in jobs:
            job.source_side.check_size(job.source, job.size, reading=True)
            dest_side.check_size(job.destination, job.size, reading=False)
        meter = Progress(len(jobs), sum(job.size for job in jobs), enabled=progress)
        try:
            failures = local.failures + _run_copies(jobs, dest_side, rules, meter, parallel)
            dest_side.finish_directories()
        finally:  # also before an error message: it must start on a line of its own
            meter.finish()
        _report_failures(failures, len(jobs) + len(local.failures))


def _report_failures(failures: List[OSError], total: int) -> None:
    """One failure is the command's error; several get a line each, then one that counts them."""
    if len(failures) == 1:
        raise failures[0]
    if failures:
        for failure in failures:
            say(errors.gnu_message("cp", None, failure))
        raise errors.HpcfsError(f"{len(failures)} of {total} files could not be copied")


def _destination_is_directory(dest_side, destination, source_count: int) -> bool:
    """Whether the copies go into ``destination``; refuses a destination whose directory does not exist."""
    item = dest_side.stat(destination.path)
    if item is not None:
        if source_count > 1 and not item.is_dir:
            raise errors.NotADirectory("copying several sources needs an existing directory", destination.display)
        return item.is_dir
    if source_count > 1 or destination.display.endswith("/"):
        raise errors.NotFound(MISSING_DESTINATION, destination.display)
    parent = dest_side.stat(dest_side.dirname(destination.path))
    if parent is None or not parent.is_dir:
        raise errors.NotFound(MISSING_DESTINATION, destination.display)
    return False


def _plan_source(side, source, dest_side, destination, into_directory, recursive):
    item = side.stat(source.path)
    if item is None:
        raise errors.NotFound("no such file or directory", source.display)
    name = side.basename(source.path.rstrip("/")) or "root"
    target_path = dest_side.join(destination.path, name) if into_directory else destination.path
    target_display = dest_side.join(destination.display, name) if into_directory else destination.display
    if side is dest_side and side.same(source.path, target_path):
        raise errors.HpcfsError(f"'{source.display}' and '{target_display}' are the same file")
    if item.special:
        warn(f"skipping non-regular file '{source.display}'")
        return []
    if not item.is_dir:
        return [Job(side, source.path, target_path, item.size, mode=dest_side.copy_mode(item.mode), mtime=item.mtime)]
    if not recursive:
        raise errors.IsADirectory("Is a directory (use -r)", source.display)
    if side is dest_side and side.inside(target_path, source.path):
        raise errors.HpcfsError(f"cannot copy a directory, '{source.display}', into itself, '{target_display}'")
    return _plan_tree(side, item, source.path, dest_side, target_path, {})


def _plan_tree(side, item, source_dir, dest_side, dest_dir, ancestors):
    """Create the destination directories now; return the copies to do.  ``ancestors`` maps what
    identifies each directory on the way down to its path, so a symbolic link back to one of them is not
    followed again."""
    key = side.directory_key(item, source_dir)
    if key is not None and key in ancestors and side.loops_back(source_dir, ancestors[key], key):
        warn(f"skipping '{source_dir}': a symbolic link loop (it leads back to '{ancestors[key]}', a directory "
             "being copied)")
        return []
    dest_side.make_directory(dest_dir, item.mode)
    below = {**ancestors, key: source_dir} if key is not None else ancestors
    jobs = []
    for child in side.listdir(source_dir):
        src = side.join(source_dir, child.name)
        dst = dest_side.join(dest_dir, child.name)
        if child.link is not None:
            jobs += _plan_link(side, child, src, dest_side, dst)
        elif child.special:
            warn(f"skipping non-regular file '{src}'")
        elif child.is_dir:
            jobs += _plan_tree(side, child, src, dest_side, dst, below)
        elif side is dest_side and side.same(src, dst):
            raise errors.HpcfsError(f"'{src}' and '{dst}' are the same file")
        else:
            jobs.append(Job(side, src, dst, child.size, mode=dest_side.copy_mode(child.mode), mtime=child.mtime))
    return jobs


def _plan_link(side, item, src, dest_side, dst):
    if dest_side.has_symlinks:
        return [Job(side, src, dst, 0, link=item.link)]
    hint = " (-L copies what it points to)" if side.can_dereference else ""
    warn(f"skipping symbolic link '{src}': the destination has no symbolic links{hint}")
    return []


def _run_copies(jobs, dest_side, rules: Rules, meter, parallel) -> List[OSError]:
    """Copy ``parallel`` files at a time; the failures, once every other file is copied.  Ctrl-C (or a
    bug) stops the others at their next chunk."""
    stop = threading.Event()
    failures: List[OSError] = []
    pool = ThreadPoolExecutor(max_workers=max(1, parallel), thread_name_prefix="hpcfs-cp")
    try:
        for future in [pool.submit(_copy_file, job, dest_side, rules, meter, stop) for job in jobs]:
            try:
                future.result()
            except OSError as failure:  # this file's: the others go on
                failures.append(failure)
    except BaseException:
        stop.set()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return failures


def _copy_file(job, dest_side, rules: Rules, meter, stop):
    if rules.no_clobber and dest_side.exists(job.destination):
        meter.skip(job.size, file_done=True)
        return
    if job.link is not None:
        dest_side.make_link(job.link, job.destination)
        meter.advance(0, file_done=True)
        return
    try:
        if rules.resume and rules.checksum and _same_content(job, dest_side):
            meter.skip(job.size, file_done=True)
            return
        offset = dest_side.resume_offset(job, checksum=rules.checksum) if rules.resume else 0
        if offset is None:
            meter.skip(job.size, file_done=True)
            return
        meter.skip(offset)
        if _copied_on_server(job, dest_side):
            meter.advance(job.size - offset)
            if rules.checksum:  # the server's copy is under the real name already: checked there
                _verify_copy(job, dest_side.checksum(job.destination), replaced=True)
        else:
            _stream(job, dest_side, offset, meter, stop, rules.checksum)
        if rules.preserve:
            dest_side.set_mtime(job.destination, job.mtime)
    finally:
        if job.kept is not None:  # claimed for resume but not continued (the source could not be read)
            os.close(job.kept.fd)
    meter.advance(0, file_done=True)


def _copied_on_server(job: Job, dest_side) -> bool:
    """Whether the server made the copy itself (source and destination in one tree whose server copies);
    False where the bytes must pass through here."""
    if job.source_side is not dest_side or not dest_side.copies_on_server:
        return False
    try:
        dest_side.copy_on_server(job)
    except errors.NotSupported as exc:
        log.info("%s: not copied on the server (%s): streamed through here instead", job.destination, exc.strerror)
        return False
    log.info("%s: copied on the server, no bytes through here", job.destination)
    return True


def _stream(job: Job, dest_side, offset: int, meter, stop, checksum: bool) -> None:
    """The source's bytes from ``offset`` on through this process to the destination, checked against the
    source's hash (``checksum``) before the rename that puts them in place, where the destination has one."""
    verify = None
    if checksum:
        verify = functools.partial(_verify_copy, job, replaced=not dest_side.renames_instantly)
    reader = job.source_side.open_read(job.source, offset)
    try:
        dest_side.receive(job, reader, offset, meter, stop, verify)
    finally:
        reader.close()


def _same_content(job: Job, dest_side) -> bool:
    """rsync -c's check: the destination has the source's size and the same hash."""
    existing = dest_side.stat(job.destination)
    if existing is None or existing.is_dir or existing.size != job.size:
        return False
    return dest_side.checksum(job.destination) == _source_digest(job)


def _source_digest(job: Job) -> str:
    """The source's hash, computed where it lies (a server's own hash sends no bytes) once per file: the
    skip check of ``--resume --checksum`` and the copy's check share it."""
    if job.source_digest is None:
        job.source_digest = job.source_side.checksum(job.source)
    return job.source_digest


def _verify_copy(job: Job, copy_digest: str, replaced: bool) -> None:
    """The copy's hash against the source's; a mismatch fails the file, loudly.  ``replaced``: the copy
    is under the real name already (no partial name to check it in first)."""
    theirs = _source_digest(job)
    if copy_digest == theirs:
        return
    outcome = ("the copy in its place is damaged" if replaced
               else "the damaged copy was discarded and the destination left as it was")
    raise Damaged(f"the copy's {CHECKSUM} ({copy_digest[:16]}...) differs from the source's ({theirs[:16]}...): "
                  f"{outcome}; copy it again", job.destination)


class Progress:
    """One status line on stderr (tqdm): files, bytes, rate and ETA, redrawn at most five times a second;
    the last state stays on its line.  Bytes skipped by ``resume`` count as done but not towards the rate."""

    def __init__(self, files: int, total_bytes: int, enabled: bool):
        self.files = files
        self.done_files = self.skipped_bytes = 0
        self._lock = threading.Lock()
        self._line = StatusLine(self, total=total_bytes, disable=not enabled)

    def skip(self, nbytes: int, file_done: bool = False) -> None:
        with self._lock:
            self.skipped_bytes += nbytes
        self.advance(nbytes, file_done)

    def advance(self, nbytes: int, file_done: bool = False) -> None:
        with self._lock:
            self.done_files += file_done
            self._line.update(nbytes)

    def finish(self) -> None:
        """Draw the last state and end the line; copies still winding down draw nothing more."""
        with self._lock:
            self._line.close()


class StatusLine(tqdm):
    """tqdm drawing hpcfs's status line: its own fields, because tqdm's rate would count skipped bytes."""

    monitor_interval = 0  # no monitor thread: the line is redrawn by the copies' progress alone

    def __init__(self, progress: Progress, **settings):
        self._progress = progress  # before tqdm's __init__, which draws the first state
        # tqdm reads a terminal that reports no size (a fresh pty) as 0 columns and no rows, and then
        # draws nothing; shutil falls back to 80x24 there
        columns, rows = shutil.get_terminal_size()
        super().__init__(bar_format="{files}/{all_files} files  {done} / {size}  {speed}/s  ETA {time_left}",
                         file=sys.stderr, mininterval=0.2, leave=True, ncols=columns, nrows=rows, **settings)

    @property
    def format_dict(self):
        fields = super().format_dict
        rate = (fields["n"] - self._progress.skipped_bytes) / max(fields["elapsed"], 1e-6)
        left = fields["total"] - fields["n"]
        time_left = "0:00" if left <= 0 else (_minutes(left / rate) if rate > 0 else "--:--")
        fields.update(files=self._progress.done_files, all_files=self._progress.files, done=format_size(fields["n"]),
                      size=format_size(fields["total"]), speed=format_size(rate), time_left=time_left)
        return fields


def _minutes(seconds):
    hours, rest = divmod(int(seconds), 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def format_size(size):
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
