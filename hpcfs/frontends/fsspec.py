"""fsspec front end: ``fsspec.open("uftp://...")``, ``pandas.read_csv("firecrest://...")``, Dask.

One RemoteTree per service (the URL without its path, see :func:`hpcfs.urls.split_service`) and options in
a process, so every path on the same server shares its metadata cache, block cache and connection pool:
fsspec keeps a filesystem instance per thread, and those instances share the tree.  Files are the core's
own (readahead included), so fsspec's per-file caches are not used.  Errors are already ``OSError``
subclasses (``FileNotFoundError``, ...), which is what fsspec users expect.
"""
import datetime
import os
import posixpath
import threading
from typing import Callable, Dict, Tuple

from fsspec.spec import AbstractFileSystem
from fsspec.utils import tokenize

from ..backend import normalize
from ..core import open_tree
from ..core.files import TreeLease, open_stream
from ..registry import ALIASES, SCHEMES
from ..urls import split_service


class _SharedTrees:
    """The open trees of this process by service and options, each with the number of instances using it.

    fsspec caches a filesystem instance per thread (its cache token names the thread, for filesystems that
    are not thread-safe).  A tree is thread-safe and holds server sessions (UFTP: at least two of the 14
    that every process of the user on the machine shares), so a Dask worker's threads must share one."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget every tree, closing none: for fsspec's ``clear_instance_cache``, and in a forked child
        (its parent's trees and their sockets stay the parent's)."""
        self._lock = threading.Lock()  # held while a tree opens: a second thread waits and takes that tree
        self._leases: Dict[str, Tuple[TreeLease, int]] = {}

    def take(self, key: str, open_one: Callable[[], object]) -> TreeLease:
        with self._lock:
            lease, users = self._leases.get(key) or (TreeLease(open_one()), 0)
            self._leases[key] = (lease, users + 1)
            return lease

    def give_back(self, key: str, lease: TreeLease) -> None:
        """One user fewer; the last one closes the lease (the tree closes once its open files are)."""
        with self._lock:
            shared, users = self._leases.get(key, (None, 0))
            if shared is lease and users > 1:
                self._leases[key] = (lease, users - 1)
                return
            if shared is lease:
                del self._leases[key]
        lease.close()


_TREES = _SharedTrees()
os.register_at_fork(after_in_child=_TREES.reset)


class HpcfsFileSystem(AbstractFileSystem):
    protocol = SCHEMES + ALIASES
    root_marker = "/"

    def __init__(self, service_url, auto_mkdir=False, **options):
        """``auto_mkdir``: writing a file creates its missing parent directories (as object stores and
        fsspec's LocalFileSystem(auto_mkdir=True) do); ``options`` are core and backend options."""
        super().__init__(service_url=service_url, auto_mkdir=auto_mkdir, **options)
        self.service_url = service_url
        self.auto_mkdir = auto_mkdir
        self._tree_key = tokenize(service_url, **options)
        # open files keep the tree open after ``close``
        self._lease = _TREES.take(self._tree_key, lambda: open_tree(service_url, **options))
        self.remote = self._lease.tree
        self._released = False

    def close(self) -> None:
        """Close the tree once its open files are closed and no other thread's instance uses it; a later
        ``fsspec.open`` of this service starts a new instance."""
        type(self)._cache.pop(self._fs_token, None)
        if not self._released:
            self._released = True
            _TREES.give_back(self._tree_key, self._lease)

    @classmethod
    def clear_instance_cache(cls) -> None:
        """fsspec's, and the shared trees with it: a later instance opens a tree of its own."""
        super().clear_instance_cache()
        _TREES.reset()

    @classmethod
    def _strip_protocol(cls, path):
        if isinstance(path, list):
            return [cls._strip_protocol(item) for item in path]
        if "://" in path:
            return split_service(path)[1]
        return normalize(path)

    @staticmethod
    def _get_kwargs_from_urls(path):
        return {"service_url": split_service(path)[0]}

    def unstrip_protocol(self, name):
        return self.service_url.split("?", 1)[0].rstrip("/") + name

    # -- metadata -------------------------------------------------------------------------------------
    def ls(self, path, detail=True, **kwargs):
        path = self._strip_protocol(path)
        entry = self.remote.stat(path)
        if not entry.is_dir:
            return [self._describe(path, entry)] if detail else [path]
        children = [(posixpath.join(path, child.name), child) for child in self.remote.listdir(path)]
        if detail:
            return [self._describe(child_path, child) for child_path, child in children]
        return [child_path for child_path, _ in children]

    def info(self, path, **kwargs):
        path = self._strip_protocol(path)
        return self._describe(path, self.remote.stat(path))

    def modified(self, path):
        return datetime.datetime.fromtimestamp(self.info(path)["mtime"], tz=datetime.timezone.utc)

    created = modified

    # -- data -----------------------------------------------------------------------------------------
    def _open(self, path, mode="rb", block_size=None, autocommit=True, cache_options=None, **kwargs):
        path = self._strip_protocol(path)
        if "r" in mode and "+" not in mode:
            return open_stream(self.remote.open(path, revalidate=True), mode=mode, name=path, lease=self._lease)
        self._make_parent(path)
        handle = self.remote.open(path, writable=True, truncate="w" in mode, create=True, exclusive="x" in mode,
                                  revalidate="+" in mode)
        return open_stream(handle, mode=mode, readable="+" in mode, append="a" in mode, name=path, lease=self._lease)

    def cat_file(self, path, start=None, end=None, **kwargs):
        path = self._strip_protocol(path)
        handle = self.remote.open(path, revalidate=True)  # close-to-open: the server's current version
        size = handle.size
        start = 0 if start is None else (max(size + start, 0) if start < 0 else start)
        end = size if end is None else (max(size + end, 0) if end < 0 else min(end, size))
        return handle.read(start, end - start) if end > start else b""

    def pipe_file(self, path, value, mode="overwrite", **kwargs):
        path = self._strip_protocol(path)
        self._make_parent(path)
        handle = self.remote.open(path, writable=True, truncate=True, create=True, exclusive=mode == "create")
        try:
            handle.write(0, value)
        finally:
            handle.release()

    def cp_file(self, path1, path2, **kwargs):
        if self.isdir(path1):  # fsspec's recursive copy hands directories here too
            self.makedirs(path2, exist_ok=True)
            return
        with self.open(path1, "rb") as source, self.open(path2, "wb") as sink:
            while True:
                chunk = source.read(self.remote.options.block_size)
                if not chunk:
                    break
                sink.write(chunk)

    # -- namespace ------------------------------------------------------------------------------------
    def mkdir(self, path, create_parents=True, **kwargs):
        path = self._strip_protocol(path)
        if create_parents:
            self.makedirs(path, exist_ok=True)
        else:
            self.remote.mkdir(path)

    def makedirs(self, path, exist_ok=False):
        path = self._strip_protocol(path)
        if self.remote.exists(path):
            if not exist_ok:
                raise FileExistsError(path)
            return
        parts = [part for part in path.split("/") if part]
        for depth in range(1, len(parts) + 1):
            current = "/" + "/".join(parts[:depth])
            if not self.remote.exists(current):
                self.remote.mkdir(current)

    def _make_parent(self, path):
        if self.auto_mkdir:
            self.makedirs(posixpath.dirname(path), exist_ok=True)

    def rm_file(self, path):
        self.remote.remove(self._strip_protocol(path))

    def rmdir(self, path):
        self.remote.rmdir(self._strip_protocol(path))

    def rm(self, path, recursive=False, maxdepth=None):
        # fsspec's own rm hands directories to rm_file too.
        for item in reversed(self.expand_path(path, recursive=recursive, maxdepth=maxdepth)):
            self._rm(item)

    def _rm(self, path):
        path = self._strip_protocol(path)
        if self.remote.stat(path).is_dir:
            self.remote.rmdir(path)
        else:
            self.remote.remove(path)

    def mv(self, path1, path2, recursive=False, maxdepth=None, **kwargs):
        source, destination = self._strip_protocol(path1), self._strip_protocol(path2)
        if self.remote.exists(destination) and self.remote.stat(destination).is_dir:
            destination = posixpath.join(destination, posixpath.basename(source))
        self.remote.rename(source, destination)

    def invalidate_cache(self, path=None):
        self.remote.meta.invalidate(self._strip_protocol(path) if path else "/")

    @staticmethod
    def _describe(path, entry):
        return {
            "name": path,
            "size": entry.size,
            "type": "directory" if entry.is_dir else ("link" if entry.kind == "symlink" else "file"),
            "mtime": entry.mtime,
            "mode": entry.st_mode,
        }
