"""URL parsing in one place, and the registry that turns a URL into a backend.

Every front end (FUSE mount, ``open_fs``, fsspec, CLI) goes through :func:`open_backend`, so a URL means
the same thing everywhere.  Each protocol package supplies ``backend_from_url(url: ParsedURL, options)``
returning ``(backend, root)`` where ``root`` is the path inside the backend that the user asked for.
"""
import importlib
import re
from dataclasses import dataclass, field
from typing import Dict, Optional
from urllib.parse import parse_qsl, unquote, urlsplit

from .errors import UsageError

BACKENDS = {
    "uftp": "hpcfs.uftp.backend",
    "firecrest": "hpcfs.firecrest.backend",
    "em": "hpcfs.em.backend",
    "flux": "hpcfs.flux.backend",
}


@dataclass
class ParsedURL:
    scheme: str
    username: Optional[str] = None
    password: Optional[str] = field(default=None, repr=False)
    host: str = ""
    port: Optional[int] = None
    path: str = "/"
    params: Dict[str, str] = field(default_factory=dict, repr=False)

    @property
    def netloc(self):
        return f"{self.host}:{self.port}" if self.port else self.host


def parse(url: str) -> ParsedURL:
    """Split ``scheme://[user[:password]@]host[:port][/path][?query]``; the password may contain ``@``."""
    if "://" not in url:
        raise UsageError(f"not a URL (expected SCHEME://...): {redact(url)}")
    scheme = url.split("://", 1)[0].lower()
    if scheme not in BACKENDS:
        raise UsageError(f"unknown scheme '{scheme}' (known: {', '.join(sorted(BACKENDS))})")
    rest = url.split("://", 1)[1]
    userinfo, at, hostpart = rest.rpartition("@") if "@" in rest.split("/", 1)[0] else ("", "", rest)
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    parts = urlsplit("//" + hostpart)
    try:
        port = parts.port
        host = parts.hostname or ""
    except ValueError:
        raise UsageError(f"malformed host or port in URL: {redact(url)}") from None
    return ParsedURL(
        scheme=scheme,
        username=username,
        password=password,
        host=host,
        port=port,
        path=unquote(parts.path) or "/",
        params=dict(parse_qsl(parts.query)),
    )


def redact(url: str) -> str:
    """The URL with any password and token replaced, for messages and logs."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    userinfo, at, hostpart = rest.rpartition("@") if "@" in rest.split("/", 1)[0] else ("", "", rest)
    if ":" in userinfo:
        userinfo = userinfo.partition(":")[0] + ":***"
    hostpart = re.sub(r"((?:token|password|secret)=)[^&]*", r"\1***", hostpart)
    return f"{scheme}://{userinfo}{at}{hostpart}"


def split_service(url: str):
    """``(service URL, path)``: the URL of the whole tree a server offers, and the path the URL names in it.

    ``uftp://h:9000/rest/auth/TEST:/a/b`` -> ``(uftp://h:9000/rest/auth/TEST:/, /a/b)``;
    ``firecrest://daint/a/b`` and ``em://u@h:8000/pod/a`` keep their authority and move the path."""
    parsed = parse(url)
    head, question, query = url.partition("?")
    scheme, _, rest = head.partition("://")
    slash = rest.find("/")
    authority = rest if slash < 0 else rest[:slash]
    if parsed.scheme == "uftp":
        auth_path, colon, path = parsed.path.partition(":/")
        return f"{scheme}://{authority}{auth_path}:/{question}{query}", "/" + path if colon else "/"
    return f"{scheme}://{authority}/{question}{query}", parsed.path or "/"


def backend_module(scheme: str):
    """The protocol package's backend module: ``backend_from_url`` and its ``OPTIONS``."""
    return importlib.import_module(BACKENDS[scheme])


def open_backend(url: str, **options):
    """``(backend, root)`` for a URL; options override what the URL's query string says."""
    parsed = parse(url)
    return backend_module(parsed.scheme).backend_from_url(parsed, options)
