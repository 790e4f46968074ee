"""URL parsing in one place, and the step from a URL to a backend.

Every front end (FUSE mount, ``open_fs``, fsspec, CLI) goes through :func:`open_backend`, so a URL means
the same thing everywhere.  The schemes are :mod:`hpcfs.registry`'s; each protocol package supplies
``backend_from_url(url: ParsedURL, options)`` returning ``(backend, root)`` where ``root`` is the path
inside the backend that the user asked for, and ``options`` the protocol's typed options.
"""
import re
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional, Tuple
from urllib.parse import parse_qsl, unquote, urlsplit

from .errors import UsageError
from .registry import BY_SCHEME, canonical_scheme, protocol_for


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
    def netloc(self) -> str:
        return f"{self.host}:{self.port}" if self.port else self.host


def parse(url: str) -> ParsedURL:
    """Split ``scheme://[user[:password]@]host[:port][/path][?query]``; the password may contain ``@``."""
    if "://" not in url:
        raise UsageError(f"not a URL (expected SCHEME://...): {redact(url)}")
    scheme = canonical_scheme(url.split("://", 1)[0].lower())  # hpcfs+uftp:// is uftp://
    if scheme not in BY_SCHEME:
        raise UsageError(f"unknown scheme '{scheme}' (known: {', '.join(sorted(BY_SCHEME))})")
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


def split_service(url: str) -> Tuple[str, str]:
    """``(service URL, path)``: the URL of the whole tree a server offers, and the path the URL names in it.

    ``uftp://h:9000/rest/auth/TEST:/a/b`` -> ``(uftp://h:9000/rest/auth/TEST:/, /a/b)`` (the protocol's
    ``service_end`` marks where the service ends in the path); ``firecrest://daint/a/b`` and
    ``em://u@h:8000/pod/a`` keep their authority and move the path."""
    parsed = parse(url)
    head, question, query = url.partition("?")
    scheme, _, rest = head.partition("://")
    slash = rest.find("/")
    authority = rest if slash < 0 else rest[:slash]
    marker = protocol_for(parsed.scheme).service_end
    if marker:
        service_path, found, path = parsed.path.partition(marker)
        return f"{scheme}://{authority}{service_path}{marker}{question}{query}", "/" + path if found else "/"
    return f"{scheme}://{authority}/{question}{query}", parsed.path or "/"


def url_options(parsed: ParsedURL) -> Dict[str, str]:
    """What the URL gives as the protocol's options: its query, and its ``USER:PASSWORD@`` as the options the
    protocol names for them (Flux's password is its ``token``)."""
    userinfo = protocol_for(parsed.scheme).options().from_userinfo(parsed.username, parsed.password)
    return {**parsed.params, **userinfo}


def backend_options(parsed: ParsedURL, options: Mapping[str, Any], profile: Mapping[str, Any] = {}) -> Any:
    """The protocol's typed options from explicit ``options``, the URL, the environment and a profile (first
    wins: an explicit ``user`` beats the URL's USER@, as an option beats the location in rclone and sshfs);
    names the protocol does not read are left out (core tunables, or typos refused earlier)."""
    return protocol_for(parsed.scheme).options().parse(options, url_options(parsed), profile)


def open_backend(url: str, profile: Mapping[str, Any] = {}, **options: Any) -> Tuple[Any, str]:
    """``(backend, root)`` for a URL; ``options`` override the URL (its query, user and password), which
    overrides the environment, which overrides ``profile``."""
    parsed = parse(url)
    return protocol_for(parsed.scheme).backend_from_url(parsed, backend_options(parsed, options, profile))
