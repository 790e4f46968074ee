"""The one translation of requests' exceptions and HTTP statuses into :mod:`hpcfs.errors`."""
from typing import Mapping, Optional, Tuple, Type, Union
from urllib.parse import urlsplit

import requests
import urllib3

from .. import errors

# a reply whose body broke off (shorter than its Content-Length) or cannot be decoded
BROKEN_REPLY = (requests.exceptions.ChunkedEncodingError, requests.exceptions.ContentDecodingError)
# what reading a streamed body may raise when the connection breaks: requests' errors through
# ``iter_content``, urllib3's when the raw stream (``response.raw``) is read directly
STREAM_ERRORS = (requests.RequestException, urllib3.exceptions.HTTPError)
STATUS_ERRORS = {400: errors.InvalidPath, 401: errors.AuthenticationFailed, 403: errors.PermissionDenied,
                 404: errors.NotFound, 408: errors.TimedOut, 413: errors.TooLarge, 423: errors.Busy,
                 424: errors.Busy, 429: errors.Busy, 503: errors.Busy, 507: errors.NoSpace}


def server_of(url: str) -> str:
    """``host:port`` of ``url``, for messages (never the path or query, which may carry secrets)."""
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port}" if parts.port else str(parts.hostname)


def error_for_status(status: int, message: str, path: Optional[str] = None,
                     overrides: Mapping[int, Type[errors.HpcfsError]] = {}) -> errors.HpcfsError:
    """The error for an HTTP status; ``overrides`` holds the few statuses a protocol means otherwise
    (e.g. a 403 that says the token expired)."""
    error = overrides.get(status) or STATUS_ERRORS.get(status, errors.HpcfsError)
    return error(message, path)


def transport_error(exc: requests.RequestException, what: str, url: str, timeout=None,
                    path: Optional[str] = None) -> errors.HpcfsError:
    """``what`` (e.g. ``GET /status/systems``) failed below HTTP: no status to go by."""
    server = server_of(url)
    if isinstance(exc, requests.exceptions.SSLError):
        return errors.Unavailable(f"TLS verification failed for {server}; give the CA with ca_file=PATH "
                                  "(or HPCFS_CA_FILE), or verify=false", path)
    if isinstance(exc, requests.Timeout):
        limit = f" ({_seconds(timeout)})" if timeout else ""
        return errors.TimedOut(f"{what}: {server} did not answer within the time-out{limit}", path)
    if isinstance(exc, BROKEN_REPLY):
        return errors.ProtocolError(f"{what}: the reply from {server} broke off ({type(exc).__name__})", path)
    return errors.Unavailable(f"{what}: cannot reach {server} ({type(exc).__name__})", path)


def _seconds(timeout: Union[float, Tuple[Optional[float], Optional[float]]]) -> str:
    read = timeout[1] if isinstance(timeout, tuple) else timeout
    return f"{read:g} s"
