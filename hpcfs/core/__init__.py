"""The protocol-independent core: caches, readahead and file objects over a backend."""
import posixpath

from ..errors import UsageError
from ..urls import backend_module, open_backend, parse
from .options import CoreOptions
from .tree import RemoteTree


def open_tree(url, subpath="/", **options):
    """A RemoteTree for a URL (or for ``subpath`` below it).  Core tunables (block_size, attr_ttl, ...)
    may come from the URL's query string or from ``options``; the rest of ``options`` goes to the backend."""
    check_options(url, options)
    core_names = CoreOptions.names()
    backend_options = {key: value for key, value in options.items() if key not in core_names}
    backend, root = open_backend(url, **backend_options)
    # A protocol may need other defaults (Flux: short attr_ttl, so the kernel sees a running job's output grow)
    tunables = dict(getattr(backend_module(parse(url).scheme), "CORE_DEFAULTS", {}))
    tunables.update({key: value for key, value in parse(url).params.items() if key in core_names})
    tunables.update({key: value for key, value in options.items() if key in core_names})
    try:
        core_options = CoreOptions.from_strings(tunables)
    except Exception:
        backend.close()
        raise
    return RemoteTree(backend, posixpath.join(root, subpath.lstrip("/")), core_options)


def check_options(url, options):
    """Refuse options (keyword, ``-o``, profile or URL query) that nothing would read: a typo must not pass
    silently."""
    parsed = parse(url)
    known = CoreOptions.names() | backend_module(parsed.scheme).OPTIONS
    unknown = sorted((set(options) | set(parsed.params)) - known)
    if unknown:
        names = ", ".join(sorted(known - SECRET_NAMES))
        raise UsageError(f"unknown option '{unknown[0]}' for {parsed.scheme}:// (known: {names})")
    for name, value in {**parsed.params, **options}.items():
        if name in TIMEOUT_NAMES and value is not None:
            _check_positive_seconds(name, value)


TIMEOUT_NAMES = {"timeout", "upload_timeout"}  # seconds that sockets and requests wait: 0 or less is refused there


def _check_positive_seconds(name, value):
    try:
        valid = float(value) > 0
    except (TypeError, ValueError):
        valid = False
    if not valid:
        raise UsageError(f"option {name} must be a number of seconds above 0, not {value!r}")


SECRET_NAMES = {"password", "client_secret", "token", "secret", "secret_key"}  # options that hold (or are) a credential

__all__ = ["CoreOptions", "RemoteTree", "check_options", "open_tree"]
