"""Metadata cache: one directory listing fills the attributes of every child.

After ``ls`` of a directory, ``stat`` of any child costs nothing, and a name missing from a cached listing
is known not to exist without asking the server.  Entries live for ``ttl`` seconds unless the backend gave
an entry its own (``Entry.ttl``: forever for a finished job's files, briefly for a running job's output),
known-missing paths for ``negative_ttl``; the tree's own writes invalidate exactly what they change.
cachetools caches are not thread-safe, so one lock guards all three maps.
"""
import threading
from typing import Optional

from cachetools import TLRUCache, TTLCache

from ..backend import split


class MetadataCache:
    MISSING = object()

    def __init__(self, ttl: float = 30.0, negative_ttl: float = 5.0, maxsize: int = 200_000):
        self._lock = threading.Lock()
        self._entries = TLRUCache(maxsize, _expiry(ttl)) if ttl > 0 else None
        self._listings: Optional[TTLCache] = TTLCache(max(maxsize // 10, 16), ttl) if ttl > 0 else None
        self._missing: Optional[TTLCache] = TTLCache(maxsize, negative_ttl) if negative_ttl > 0 else None

    def lookup(self, path):
        """The cached Entry, ``MISSING`` when known absent, or None when the server must be asked."""
        if self._entries is None:
            return None
        with self._lock:
            entry = self._entries.get(path)
            if entry is not None:
                return entry
            if self._missing is not None and path in self._missing:
                return self.MISSING
            parent, name = split(path)
            names = self._listings.get(parent) if path != "/" else None
            if names is not None and name not in names:
                return self.MISSING
        return None

    def listing(self, path):
        """The cached children of directory ``path`` (Entries), or None."""
        if self._listings is None:
            return None
        with self._lock:
            names = self._listings.get(path)
            if names is None:
                return None
            children = [self._entries.get(_child(path, name)) for name in names]
        # A child's attributes may have expired before its listing: then the listing is not whole.
        return None if any(child is None for child in children) else children

    def put(self, path, entry):
        if self._entries is None:
            return
        with self._lock:
            self._entries[path] = entry
            if self._missing is not None:
                self._missing.pop(path, None)
            parent, name = split(path)
            names = self._listings.get(parent)
            if names is not None and name not in names and path != "/":
                self._listings[parent] = {**names, name: None}

    def put_listing(self, path, entries):
        if self._entries is None:
            return
        with self._lock:
            for entry in entries:
                self._entries[_child(path, entry.name)] = entry
                if self._missing is not None:
                    self._missing.pop(_child(path, entry.name), None)
            # names in the server's order (a dict keeps it): Flux lists its jobs newest first
            self._listings[path] = dict.fromkeys(entry.name for entry in entries)

    def mark_missing(self, path):
        """Record that ``path`` does not exist (after a failed stat or our own delete)."""
        with self._lock:
            self._forget(path)
            if self._missing is not None:
                self._missing[path] = True
            parent, name = split(path)
            names = self._listings.get(parent) if self._listings is not None else None
            if names is not None and name in names:
                self._listings[parent] = {known: None for known in names if known != name}

    def invalidate(self, path):
        """Forget ``path`` and everything below it (after a rename or an unknown change)."""
        with self._lock:
            self._forget(path)
            prefix = path.rstrip("/") + "/"
            for cache in (self._entries, self._listings, self._missing):
                if cache is not None:
                    for key in [key for key in cache if key.startswith(prefix)]:
                        cache.pop(key, None)

    def invalidate_listing(self, path):
        """Forget the listing of directory ``path`` but keep its children's attributes."""
        if self._listings is not None:
            with self._lock:
                self._listings.pop(path, None)

    def _forget(self, path):
        for cache in (self._entries, self._listings, self._missing):
            if cache is not None:
                cache.pop(path, None)


def _expiry(default_ttl: float):
    """When a cached entry expires: after its own ``ttl`` where the backend set one, else the default."""

    def expires_at(_path, entry, now: float) -> float:
        return now + (default_ttl if entry.ttl is None else entry.ttl)

    return expires_at


def _child(directory, name):
    return directory.rstrip("/") + "/" + name
