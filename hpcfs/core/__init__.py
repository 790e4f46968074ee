"""The protocol-independent core: caches, readahead and file objects over a backend."""
import posixpath

from ..registry import protocol_for
from ..urls import backend_options, open_backend, parse
from ..options import check_known
from .options import CoreOptions
from .tree import RemoteTree


def open_tree(url, subpath="/", profile=None, **options):
    """A RemoteTree for a URL (or for ``subpath`` below it).  Core tunables (block_size, attr_ttl, ...)
    and backend options come, first wins, from ``options``, the URL's query string, the environment
    (backend options only) and ``profile``; docs/guide/options.md lists them all."""
    profile = profile or {}
    check_options(url, options, profile)
    backend, root = open_backend(url, profile, **options)  # the protocol's options class skips the core's names
    try:
        core_options = _core_options(url, options, profile)
    except Exception:
        backend.close()
        raise
    return RemoteTree(backend, posixpath.join(root, subpath.lstrip("/")), core_options)


def _core_options(url, options, profile):
    """A protocol may need other defaults (Flux: short attr_ttl, so the kernel sees a running job's output
    grow): they rank below a profile."""
    parsed = parse(url)
    defaults = protocol_for(parsed.scheme).options().CORE_DEFAULTS
    return CoreOptions.parse(options, parsed.params, {**defaults, **profile})


def check_options(url, options, profile=None):
    """Refuse options (keyword, ``-o``, profile or URL query) that nothing would read, or whose value is
    not what they take: a typo must not pass silently, and a mount fails before it detaches."""
    parsed = parse(url)
    profile = profile or {}
    check_known(parsed.scheme, {*options, *parsed.params, *profile}, CoreOptions,
                protocol_for(parsed.scheme).options())
    _core_options(url, options, profile)
    backend_options(parsed, options, profile)


__all__ = ["CoreOptions", "RemoteTree", "check_options", "open_tree"]
