"""Where an HTTP client of hpcfs connects: http or https for a host, and the base URL of the service.

Every protocol decides the same way: https, except that a loopback host defaults to plain http (nothing
leaves the machine); plain http to any other host only when the user asks, and then with a warning.  Which
option asks, and what the warning names, stays with the protocol."""
import ipaddress
import logging
from typing import Optional

from .. import errors


def is_loopback(host: str) -> bool:
    """By name or address only: resolving the name would trust whoever answers DNS."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def http_scheme(host: str, asked: Optional[str], log: logging.Logger, warning: str) -> str:
    """``asked`` (``http`` or ``https``, any case) where the user chose, else the default for ``host``.
    Plain http to a host that is not loopback logs ``warning % host`` on the protocol's ``log``."""
    scheme = (asked or ("http" if is_loopback(host) else "https")).lower()
    if scheme not in ("http", "https"):
        raise errors.UsageError(f"scheme must be http or https, not {scheme!r}")
    if scheme == "http" and not is_loopback(host):
        log.warning(warning, host)
    return scheme


def base_url(scheme: str, host: str, port: Optional[int]) -> str:
    """``scheme://host[:port]``, an IPv6 address in brackets."""
    bracketed = f"[{host}]" if ":" in host else host
    return f"{scheme}://{bracketed}{f':{port}' if port else ''}"
