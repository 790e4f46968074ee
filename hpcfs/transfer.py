"""``hpcfs cp``: copies between local paths and remote trees, in either direction or remote to remote.

Files are copied by several threads at once; each remote read goes through the core's readahead, so one
large file already keeps several ranged requests in flight.  Uploads hand the source file straight to the
backend (no spool copy).

Nothing under the real name is ever partial: a download is written to a hidden ``.NAME.hpcfs-partial``
next to its destination and renamed when complete, and so is an upload where the server renames
instantly (UFTP).  A failed or interrupted copy keeps its partial file, and ``resume`` continues it:
a download from its length, an upload (where the server writes at an offset) from the kept prefix once
its last block matches the source.  ``resume`` also skips files whose destination already has the
source's size.  Copying a file onto itself is refused before anything is opened (as GNU cp does);
symbolic links inside a local tree are copied as links, or skipped with a warning where the destination
has none, unless ``dereference`` follows them (with loop detection).
"""
import errno
import os
import posixpath
import shutil
import stat
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Optional

from tqdm import tqdm

from . import errors
from .backend import normalize, read_exactly
from .core.files import FileStream
from .targets import Trees

CHUNK = 1 << 20
# A big download from a server with ranged reads is fetched in ranges side by side, one per session:
# about two ranges per session, within these bounds (one transfer's fixed cost is paid per range).
PARALLEL_DOWNLOAD_MIN = 16 << 20
PARALLEL_RANGE_MIN, PARALLEL_RANGE_MAX = 8 << 20, 64 << 20
# A resumable upload above this size goes out in parts one after the other, so a kept partial upload is
# always a prefix of the source.
UPLOAD_PIECE = 4 << 20
TAIL_CHECK = 64 << 10  # the bytes of a kept partial upload compared with the source before continuing it
# What a failed local write means, as the hierarchy every other error of the CLI comes from.
LOCAL_ERRORS = {
    errno.ENOSPC: errors.NoSpace, errno.EDQUOT: errors.NoSpace, errno.EACCES: errors.PermissionDenied,
    errno.EPERM: errors.PermissionDenied, errno.EROFS: errors.PermissionDenied, errno.ENOENT: errors.NotFound,
    errno.ENOTDIR: errors.NotADirectory, errno.EISDIR: errors.IsADirectory,
}


@dataclass
class Item:
    name: str
    is_dir: bool
    size: int
    link: Optional[str] = None  # the target of a symbolic link that is copied as a link
    identity: Optional[tuple] = None  # (st_dev, st_ino) of a local file: finds symbolic link loops


@dataclass
class Job:
    source_side: object
    source: str
    destination: str
    size: int
    link: Optional[str] = None  # make a symbolic link with this target instead of copying bytes


class Cancelled(Exception):
    """Another copy failed or the user pressed Ctrl-C: stop at the next chunk."""


_warning_lock = threading.Lock()  # copies run in threads: one warning line must not cut into another


def warn(text: str) -> None:
    with _warning_lock:
        sys.stderr.write(f"hpcfs: warning: {text}\n")
        sys.stderr.flush()


class Side:
    """What both ends of a copy share; subclasses give ``join``, ``dirname`` and ``basename``."""

    join: Callable[..., str]
    dirname: Callable[[str], str]
    basename: Callable[..., Any]  # os.path.basename or posixpath.basename (overloaded for any path-like)

    def partial(self, path: str) -> str:
        """Where a copy to ``path`` is written until it is complete."""
        return self.join(self.dirname(path), f".{self.basename(path)}.hpcfs-partial")


class LocalSide(Side):
    join = staticmethod(os.path.join)
    basename = staticmethod(os.path.basename)
    has_symlinks = True

    def __init__(self, dereference: bool = False):
        self.dereference = dereference

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
            warn(f"skipping '{path}': {os.strerror(exc.errno or errno.ELOOP).lower()} (a symbolic link that leads "
                 "nowhere)")
            return None

    @staticmethod
    def _item(name: str, status: os.stat_result) -> Item:
        return Item(name, stat.S_ISDIR(status.st_mode), status.st_size, identity=(status.st_dev, status.st_ino))

    def same(self, path: str, other: str) -> bool:
        try:
            return os.path.samefile(path, other)
        except OSError:
            return False

    def inside(self, path: str, directory: str) -> bool:
        real, top = os.path.realpath(path), os.path.realpath(directory)
        return real == top or real.startswith(top.rstrip(os.sep) + os.sep)

    def mkdir(self, path):
        os.makedirs(path, exist_ok=True)

    def check_size(self, path, size, reading):
        """Local files have no size limit."""

    def make_link(self, target: str, path: str) -> None:
        if os.path.islink(path):  # copying again replaces the link, as cp -r does
            os.remove(path)
        os.symlink(target, path)

    def open_read(self, path, offset=0):
        handle = open(path, "rb")
        handle.seek(offset)
        return handle

    def resume_offset(self, job: Job) -> Optional[int]:
        """None when the destination is complete (same size), else where to continue: the kept partial's
        length up to its first hole, or that of a shorter file under the real name (another tool's
        interrupted download)."""
        existing = self.stat(job.destination)
        if existing is not None and not existing.is_dir and existing.size == job.size:
            return None
        kept = self.stat(self.partial(job.destination))
        if kept is not None and kept.size <= job.size:
            return _written_prefix(self.partial(job.destination))
        if existing is not None and not existing.is_dir and existing.size < job.size:
            return existing.size
        return 0

    def receive(self, path, reader, offset, size, meter, stop):
        partial = self.partial(path)
        try:
            if offset and not os.path.exists(partial):  # the shorter file under the real name is the partial
                os.replace(path, partial)
            with open(partial, "r+b" if offset else "wb") as handle:
                handle.seek(offset)
                remote_file = _ranged_remote_file(reader)
                if remote_file is not None and size - offset >= PARALLEL_DOWNLOAD_MIN:
                    _download_in_ranges(remote_file, handle.fileno(), offset, size, meter, stop)
                else:
                    _write_all(reader, handle, meter, stop)
            os.replace(partial, path)
        except errors.HpcfsError:
            raise
        except OSError as exc:  # a local failure: name the destination and what is kept of it
            raise _local_error(exc, path, partial) from None


def _write_all(reader, handle, meter, stop):
    while True:
        if stop.is_set():
            raise Cancelled()
        data = reader.read(CHUNK)
        if not data:
            return
        handle.write(data)
        meter.advance(len(data))


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
    while view:
        written = os.pwrite(fd, view, position)
        view, position = view[written:], position + written


def _written_prefix(path: str) -> int:
    """The length of a kept partial download up to its first hole: where a parallel download killed
    outright (no chance to cut the file back) wrote nothing yet, before ranges it did write."""
    with open(path, "rb") as kept:
        try:
            return os.lseek(kept.fileno(), 0, os.SEEK_HOLE)
        except OSError:  # no SEEK_HOLE here: the whole length
            return os.fstat(kept.fileno()).st_size


def _local_error(exc: OSError, path: str, partial: str) -> errors.HpcfsError:
    error_class = LOCAL_ERRORS.get(exc.errno or 0, errors.HpcfsError)
    reason = os.strerror(exc.errno) if exc.errno else str(exc)
    if os.path.exists(partial):
        reason += f" (the partial copy is kept as {partial}; 'hpcfs cp --resume' continues it)"
    return error_class(reason, path)


class RemoteSide(Side):
    join = staticmethod(posixpath.join)
    basename = staticmethod(posixpath.basename)

    def __init__(self, remote_tree):
        self.remote_tree = remote_tree
        capabilities = remote_tree.capabilities
        self.has_symlinks = capabilities.symlinks
        # Uploads go to a partial name where renaming is instant; they continue where writing at an offset works.
        self.renames_instantly = capabilities.rename == "instant"
        self.resumable = self.renames_instantly and capabilities.ranged_writes

    @staticmethod
    def dirname(path: str) -> str:
        return posixpath.dirname(path.rstrip("/")) or "/"

    def stat(self, path):
        try:
            entry = self.remote_tree.stat(path)
        except errors.NotFound:
            return None
        return Item(entry.name, entry.is_dir, entry.size)

    def listdir(self, path):
        return [Item(e.name, e.is_dir, e.size) for e in sorted(self.remote_tree.listdir(path), key=lambda e: e.name)]

    def same(self, path: str, other: str) -> bool:
        return normalize(path) == normalize(other)

    def inside(self, path: str, directory: str) -> bool:
        path, directory = normalize(path), normalize(directory)
        return path == directory or path.startswith(directory.rstrip("/") + "/")

    def mkdir(self, path):
        if self.stat(path) is None:
            self.remote_tree.mkdir(path)

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

    def make_link(self, target: str, path: str) -> None:
        try:
            self.remote_tree.symlink(target, path)
        except errors.InvalidPath as exc:  # e.g. FirecREST takes absolute targets only
            warn(f"skipping symbolic link '{path}' -> '{target}': the server refused it ({exc.strerror})")

    def open_read(self, path, offset=0):
        stream = FileStream(self.remote_tree.open(path))
        stream.seek(offset)
        return stream

    def resume_offset(self, job: Job) -> Optional[int]:
        """None when the destination is complete (same size); where the server writes at an offset, the
        length of a kept partial upload whose last block matches the source; else 0 (sent again whole)."""
        existing = self.stat(job.destination)
        if existing is not None and not existing.is_dir and existing.size == job.size:
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

    def receive(self, path, reader, offset, size, meter, stop):
        """Upload through the core's one uploader.  Where the server renames instantly, the bytes go to
        the fixed partial name ``resume`` looks for; where it also writes at an offset, a file above one
        part goes in order (an interruption leaves a prefix, kept for ``resume``)."""
        source = CountingReader(reader, meter, stop)
        resumable = self.resumable and (offset > 0 or size > UPLOAD_PIECE)
        self.remote_tree.upload(path, source, size, partial=self.partial(path) if self.renames_instantly else None,
                                resume_from=offset, in_order=resumable)


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
               dereference=False):
    with Trees() as trees:
        local = LocalSide(dereference)
        remote_sides = {}

        def side_for(target):  # one side per tree: the same side on both ends means the same tree
            if target.is_local:
                return local
            remote_tree = trees.get(target)
            return remote_sides.setdefault(id(remote_tree), RemoteSide(remote_tree))

        dest_side = side_for(destination)
        into_directory = _destination_is_directory(dest_side, destination, len(sources))
        jobs = []
        for source in sources:
            jobs += _plan_source(side_for(source), source, dest_side, destination, into_directory, recursive)
        for job in jobs:
            job.source_side.check_size(job.source, job.size, reading=True)
            dest_side.check_size(job.destination, job.size, reading=False)
        meter = Progress(len(jobs), sum(job.size for job in jobs), enabled=progress)
        try:
            _run_copies(jobs, dest_side, resume, meter, parallel)
        finally:  # also before an error message: it must start on a line of its own
            meter.finish()


def _destination_is_directory(dest_side, destination, source_count: int) -> bool:
    """Whether the copies go into ``destination``; refuses a destination whose directory does not exist."""
    item = dest_side.stat(destination.path)
    if item is not None:
        if source_count > 1 and not item.is_dir:
            raise errors.NotADirectory("copying several sources needs an existing directory", destination.display)
        return item.is_dir
    if source_count > 1 or destination.display.endswith("/"):
        raise errors.NotFound("destination directory does not exist", destination.display)
    parent = dest_side.stat(dest_side.dirname(destination.path))
    if parent is None or not parent.is_dir:
        raise errors.NotFound("destination directory does not exist", destination.display)
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
    if not item.is_dir:
        return [Job(side, source.path, target_path, item.size)]
    if not recursive:
        raise errors.IsADirectory("is a directory (use -r)", source.display)
    if side is dest_side and side.inside(target_path, source.path):
        raise errors.HpcfsError(f"cannot copy a directory, '{source.display}', into itself, '{target_display}'")
    return _plan_tree(side, source.path, dest_side, target_path, {item.identity})


def _plan_tree(side, source_dir, dest_side, dest_dir, ancestors):
    """Create the destination directories now; return the copies to do.  ``ancestors`` are the identities
    of the directories on the way down, so a symbolic link back to one of them is not followed again."""
    dest_side.mkdir(dest_dir)
    jobs = []
    for item in side.listdir(source_dir):
        src = side.join(source_dir, item.name)
        dst = dest_side.join(dest_dir, item.name)
        if item.link is not None:
            jobs += _plan_link(side, item, src, dest_side, dst)
        elif item.is_dir and item.identity is not None and item.identity in ancestors:
            warn(f"skipping '{src}': a symbolic link loop (it leads back to a directory being copied)")
        elif item.is_dir:
            jobs += _plan_tree(side, src, dest_side, dst, ancestors | {item.identity})
        elif side is dest_side and side.same(src, dst):
            raise errors.HpcfsError(f"'{src}' and '{dst}' are the same file")
        else:
            jobs.append(Job(side, src, dst, item.size))
    return jobs


def _plan_link(side, item, src, dest_side, dst):
    if dest_side.has_symlinks:
        return [Job(side, src, dst, 0, link=item.link)]
    warn(f"skipping symbolic link '{src}': the destination has no symbolic links (-L copies what it points to)")
    return []


def _run_copies(jobs, dest_side, resume, meter, parallel):
    """Copy ``parallel`` files at a time; the first failure (or Ctrl-C) stops the others at their next chunk."""
    stop = threading.Event()
    pool = ThreadPoolExecutor(max_workers=max(1, parallel), thread_name_prefix="hpcfs-cp")
    try:
        futures = [pool.submit(_copy_file, job, dest_side, resume, meter, stop) for job in jobs]
        for future in futures:
            future.result()
    except BaseException:
        stop.set()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _copy_file(job, dest_side, resume, meter, stop):
    if job.link is not None:
        dest_side.make_link(job.link, job.destination)
        meter.advance(0, file_done=True)
        return
    offset = dest_side.resume_offset(job) if resume else 0
    if offset is None:
        meter.skip(job.size, file_done=True)
        return
    meter.skip(offset)
    reader = job.source_side.open_read(job.source, offset)
    try:
        dest_side.receive(job.destination, reader, offset, job.size, meter, stop)
    finally:
        reader.close()
    meter.advance(0, file_done=True)


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
