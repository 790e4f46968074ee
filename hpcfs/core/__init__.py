"""The protocol-independent core: caches, readahead and file objects over a backend."""
import posixpath

from ..urls import open_backend, parse
from .options import CoreOptions
from .tree import RemoteTree


def open_tree(url, subpath="/", **options):
    """A RemoteTree for a URL (or for ``subpath`` below it).  Core tunables (block_size, attr_ttl, ...)
    may come from the URL's query string or from ``options``; the rest of ``options`` goes to the backend."""
    core_names = CoreOptions.names()
    backend_options = {key: value for key, value in options.items() if key not in core_names}
    backend, root = open_backend(url, **backend_options)
    tunables = {key: value for key, value in parse(url).params.items() if key in core_names}
    tunables.update({key: value for key, value in options.items() if key in core_names})
    try:
        core_options = CoreOptions.from_strings(tunables)
    except Exception:
        backend.close()
        raise
    return RemoteTree(backend, posixpath.join(root, subpath.lstrip("/")), core_options)


__all__ = ["CoreOptions", "RemoteTree", "open_tree"]
