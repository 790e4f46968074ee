"""``hpcfs cp``: copies between local paths and remote trees, in either direction or remote to remote.

Files are copied by several threads at once; each remote read goes through the core's readahead, so one
large file already keeps several ranged requests in flight.  ``resume`` skips files that are already
complete at the destination and continues a partial download where it stopped.
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
from .targets import tree_for

CHUNK = 1 << 20


@dataclass
class Item:
    name: str
    is_dir: bool
    size: int


class LocalSide:
    join = staticmethod(os.path.join)
    basename = staticmethod(os.path.basename)

    def __init__(self, root):
        self.root = root

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

    def open_read(self, path, offset=0):
        handle = open(path, "rb")
        handle.seek(offset)
        return handle

    def open_write(self, path, offset=0):
        handle = open(path, "r+b" if offset else "wb")
        handle.seek(offset)
        return handle

    def close(self):
        pass


class RemoteSide:
    join = staticmethod(posixpath.join)
    basename = staticmethod(posixpath.basename)

    def __init__(self, target):
        self.remote_tree = tree_for(target)
        self.root = target.path

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

    def open_read(self, path, offset=0):
        stream = FileStream(self.remote_tree.open(path))
        stream.seek(offset)
        return stream

    def open_write(self, path, offset=0):
        handle = self.remote_tree.open(path, writable=True, truncate=not offset, create=True)
        stream = FileStream(handle, readable=False)
        stream.seek(offset)
        return stream

    def close(self):
        self.remote_tree.close()


def side_for(target):
    return LocalSide(target.path) if target.is_local else RemoteSide(target)


def copy_paths(sources, destination, recursive=False, resume=False, parallel=4, progress=False):
    dest_side = side_for(destination)
    source_sides = []
    try:
        dest_item = dest_side.stat(dest_side.root)
        into_directory = dest_item is not None and dest_item.is_dir
        if len(sources) > 1 and not into_directory:
            raise errors.NotADirectory("copying several sources needs an existing directory", destination.display)
        jobs = []
        for source in sources:
            side = side_for(source)
            source_sides.append(side)
            item = side.stat(side.root)
            if item is None:
                raise errors.NotFound("no such file or directory", source.display)
            target_path = dest_side.join(dest_side.root, side.basename(side.root.rstrip("/")) or "root") if into_directory else dest_side.root
            if item.is_dir:
                if not recursive:
                    raise errors.IsADirectory("is a directory (use -r)", source.display)
                jobs += _plan_tree(side, side.root, dest_side, target_path)
            else:
                jobs.append((side, side.root, target_path, item.size))
        meter = Progress(len(jobs), sum(job[3] for job in jobs), enabled=progress)
        with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
            for future in [pool.submit(_copy_file, *job, dest_side, resume, meter) for job in jobs]:
                future.result()
        meter.finish()
    finally:
        for side in source_sides + [dest_side]:
            side.close()


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
            jobs.append((side, src, dst, item.size))
    return jobs


def _copy_file(side, src, dst, size, dest_side, resume, meter):
    offset = 0
    if resume:
        existing = dest_side.stat(dst)
        if existing is not None and not existing.is_dir and existing.size <= size:
            offset = existing.size if isinstance(dest_side, LocalSide) or existing.size == size else 0
        if offset == size:
            meter.advance(size, file_done=True)
            return
    meter.advance(offset)
    reader = side.open_read(src, offset)
    try:
        writer = dest_side.open_write(dst, offset)
        try:
            while True:
                data = reader.read(CHUNK)
                if not data:
                    break
                writer.write(data)
                meter.advance(len(data))
        finally:
            writer.close()
    finally:
        reader.close()
    meter.advance(0, file_done=True)


class Progress:
    """One status line on stderr: files, bytes, rate and ETA, redrawn at most five times a second."""

    def __init__(self, files, total_bytes, enabled):
        self.files, self.total = files, total_bytes
        self.enabled = enabled
        self.done_files = self.done_bytes = 0
        self.started = time.monotonic()
        self._drawn = 0.0
        self._lock = threading.Lock()

    def advance(self, nbytes, file_done=False):
        with self._lock:
            self.done_bytes += nbytes
            self.done_files += file_done
            now = time.monotonic()
            if self.enabled and (now - self._drawn > 0.2 or self.done_files == self.files):
                self._drawn = now
                self._draw(now)

    def finish(self):
        if self.enabled:
            self._draw(time.monotonic())
            sys.stderr.write("\n")
            sys.stderr.flush()

    def _draw(self, now):
        elapsed = max(now - self.started, 1e-6)
        rate = self.done_bytes / elapsed
        left = (self.total - self.done_bytes) / rate if rate else 0
        sys.stderr.write(
            f"\r{self.done_files}/{self.files} files  {format_size(self.done_bytes)} / {format_size(self.total)}"
            f"  {format_size(rate)}/s  ETA {int(left) // 60}:{int(left) % 60:02d}  "
        )
        sys.stderr.flush()


def format_size(size):
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
