"""``hpcfs cp``: copies between local paths and remote trees, in either direction or remote to remote.

Files are copied by several threads at once; each remote read goes through the core's readahead, so one
large file already keeps several ranged requests in flight.  Uploads hand the source file straight to the
backend (no spool copy).  Where the server renames instantly (UFTP, which also writes pieces in place),
a file is uploaded under a temporary name and renamed when complete, so an interrupted upload never
leaves a partial file under the real name.  ``resume`` skips files whose destination already has the
source's size and continues a shorter local file (a partial download) where it stopped; a partial remote
file is sent again whole.
"""
import os
import posixpath
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from . import errors
from .core.files import FileStream
from .targets import Trees

CHUNK = 1 << 20


@dataclass
class Item:
    name: str
    is_dir: bool
    size: int


@dataclass
class Job:
    source_side: object
    source: str
    destination: str
    size: int


class Cancelled(Exception):
    """Another copy failed or the user pressed Ctrl-C: stop at the next chunk."""


class LocalSide:
    join = staticmethod(os.path.join)
    basename = staticmethod(os.path.basename)

    def stat(self, path):
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return None
        return Item(os.path.basename(path), os.path.isdir(path), st.st_size)

    def listdir(self, path):
        return [self.stat(os.path.join(path, name)) for name in sorted(os.listdir(path))]

    def mkdir(self, path):
        os.makedirs(path, exist_ok=True)

    def check_size(self, path, size, reading):
        """Local files have no size limit."""

    def open_read(self, path, offset=0):
        handle = open(path, "rb")
        handle.seek(offset)
        return handle

    def receive(self, path, reader, offset, size, meter, stop):
        with open(path, "r+b" if offset else "wb") as handle:
            handle.seek(offset)
            while True:
                if stop.is_set():
                    raise Cancelled()
                data = reader.read(CHUNK)
                if not data:
                    return
                handle.write(data)
                meter.advance(len(data))


class RemoteSide:
    join = staticmethod(posixpath.join)
    basename = staticmethod(posixpath.basename)

    def __init__(self, remote_tree):
        self.remote_tree = remote_tree

    def stat(self, path):
        try:
            entry = self.remote_tree.stat(path)
        except errors.NotFound:
            return None
        return Item(entry.name, entry.is_dir, entry.size)

    def listdir(self, path):
        return [Item(e.name, e.is_dir, e.size) for e in sorted(self.remote_tree.listdir(path), key=lambda e: e.name)]

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

    def open_read(self, path, offset=0):
        stream = FileStream(self.remote_tree.open(path))
        stream.seek(offset)
        return stream

    def receive(self, path, reader, offset, size, meter, stop):
        """Upload ``reader`` whole (``offset`` is 0 here: see ``_resume_offset``)."""
        source = CountingReader(reader, meter, stop)
        if self.remote_tree.capabilities.rename != "instant":  # a job or a copy: too slow to do per file
            self.remote_tree.upload(path, source, size)
            return
        directory, name = posixpath.split(path)
        partial = posixpath.join(directory, f".{name}.hpcfs-partial")
        try:
            self.remote_tree.upload(partial, source, size)
        except BaseException:
            self._remove_quietly(partial)
            raise
        self.remote_tree.rename(partial, path)

    def _remove_quietly(self, path):
        try:
            self.remote_tree.remove(path)
        except errors.HpcfsError:
            pass  # the error that brought us here is the one to report


class CountingReader:
    """A source for a backend's ``write_whole`` that moves the progress meter and obeys ``stop``.  Backends
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


def copy_paths(sources, destination, recursive=False, resume=False, parallel=4, progress=False):
    with Trees() as trees:
        local = LocalSide()

        def side_for(target):
            return local if target.is_local else RemoteSide(trees.get(target))

        dest_side = side_for(destination)
        dest_item = dest_side.stat(destination.path)
        into_directory = dest_item is not None and dest_item.is_dir
        if len(sources) > 1 and not into_directory:
            raise errors.NotADirectory("copying several sources needs an existing directory", destination.display)
        jobs = []
        for source in sources:
            jobs += _plan_source(side_for(source), source, dest_side, destination.path, into_directory, recursive)
        for job in jobs:
            job.source_side.check_size(job.source, job.size, reading=True)
            dest_side.check_size(job.destination, job.size, reading=False)
        meter = Progress(len(jobs), sum(job.size for job in jobs), enabled=progress)
        try:
            _run_copies(jobs, dest_side, resume, meter, parallel)
        finally:  # also before an error message: it must start on a line of its own
            meter.finish()


def _plan_source(side, source, dest_side, dest_root, into_directory, recursive):
    item = side.stat(source.path)
    if item is None:
        raise errors.NotFound("no such file or directory", source.display)
    name = side.basename(source.path.rstrip("/")) or "root"
    target_path = dest_side.join(dest_root, name) if into_directory else dest_root
    if not item.is_dir:
        return [Job(side, source.path, target_path, item.size)]
    if not recursive:
        raise errors.IsADirectory("is a directory (use -r)", source.display)
    return _plan_tree(side, source.path, dest_side, target_path)


def _plan_tree(side, source_dir, dest_side, dest_dir):
    """Create the destination directories now; return the file copies to do."""
    dest_side.mkdir(dest_dir)
    jobs = []
    for item in side.listdir(source_dir):
        src = side.join(source_dir, item.name)
        dst = dest_side.join(dest_dir, item.name)
        if item.is_dir:
            jobs += _plan_tree(side, src, dest_side, dst)
        else:
            jobs.append(Job(side, src, dst, item.size))
    return jobs


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
    offset = _resume_offset(job, dest_side) if resume else 0
    if resume and offset == job.size:
        meter.skip(job.size, file_done=True)
        return
    meter.skip(offset)
    reader = job.source_side.open_read(job.source, offset)
    try:
        dest_side.receive(job.destination, reader, offset, job.size, meter, stop)
    finally:
        reader.close()
    meter.advance(0, file_done=True)


def _resume_offset(job, dest_side):
    """Where a resumed copy starts: the size when complete, the local file's length for a partial download,
    else 0 (a remote file cannot be appended to safely, and a longer one is not a partial copy)."""
    existing = dest_side.stat(job.destination)
    if existing is None or existing.is_dir or existing.size > job.size:
        return 0
    if existing.size == job.size or isinstance(dest_side, LocalSide):
        return existing.size
    return 0


class Progress:
    """One status line on stderr: files, bytes, rate and ETA, redrawn at most five times a second.  Bytes
    skipped by ``resume`` count as done but not towards the rate."""

    def __init__(self, files, total_bytes, enabled):
        self.files, self.total = files, total_bytes
        self.enabled = enabled
        self.done_files = self.done_bytes = self.skipped_bytes = 0
        self.started = time.monotonic()
        self._drawn = 0.0
        self._lock = threading.Lock()

    def skip(self, nbytes, file_done=False):
        with self._lock:
            self.skipped_bytes += nbytes
        self.advance(nbytes, file_done)

    def advance(self, nbytes, file_done=False):
        with self._lock:
            self.done_bytes += nbytes
            self.done_files += file_done
            now = time.monotonic()
            if self.enabled and (now - self._drawn > 0.2 or self.done_files == self.files):
                self._drawn = now
                self._draw(now)

    def finish(self):
        """Draw the last state and end the line; copies still winding down draw nothing more."""
        with self._lock:
            if self.enabled:
                self._draw(time.monotonic())
                sys.stderr.write("\n")
                sys.stderr.flush()
                self.enabled = False

    def _draw(self, now):
        rate = (self.done_bytes - self.skipped_bytes) / max(now - self.started, 1e-6)
        left = self.total - self.done_bytes
        eta = "0:00" if left <= 0 else (_minutes(left / rate) if rate > 0 else "--:--")
        # \r returns to the line start, \033[K clears what a longer previous line left there.
        sys.stderr.write(
            f"\r{self.done_files}/{self.files} files  {format_size(self.done_bytes)} / {format_size(self.total)}"
            f"  {format_size(rate)}/s  ETA {eta}\033[K"
        )
        sys.stderr.flush()


def _minutes(seconds):
    hours, rest = divmod(int(seconds), 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def format_size(size):
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
