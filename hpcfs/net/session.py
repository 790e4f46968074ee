"""HTTP sessions with TLS verification decided once, the same way for every protocol.

``verify`` (option or URL query) may be a boolean, ``true``/``false``/``on``/``off``/``yes``/``no``/``1``/``0``
or the path of a CA bundle; ``ca_file`` names a CA bundle used while verification is on (the options parser
has read ``HPCFS_CA_FILE`` into it: hpcfs.options.HTTPOptions).  Plain requests lets ``REQUESTS_CA_BUNDLE``
override a session's own ``verify``; these sessions pass theirs with every request, so what the user asked
for wins.
"""
import os
from typing import Any, BinaryIO, Callable, Collection, Iterator, Optional, Union

import requests
from requests.adapters import HTTPAdapter

from .. import errors
from .errors import transport_error

Verify = Union[bool, str]
TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")


def parse_verify(verify: Optional[Union[bool, str]] = None, ca_file: Optional[str] = None) -> Verify:
    """What requests' ``verify`` should be: False, True, or the path of a CA bundle."""
    word = "true" if verify is None else str(verify).strip().lower()
    if word in FALSE_WORDS:
        return False
    if word in TRUE_WORDS or not word:
        bundle = ca_file or None
    else:
        bundle = str(verify)  # a path given as verify=PATH, as requests takes it
    if bundle is None:
        return True
    if not os.path.isfile(bundle):
        raise errors.UsageError(f"CA file not found: {bundle} (ca_file=, verify= or HPCFS_CA_FILE)")
    return bundle


class VerifyingSession(requests.Session):
    """A session whose ``verify`` is used as set (REQUESTS_CA_BUNDLE would otherwise replace it)."""

    def request(self, *args, **kwargs):
        kwargs.setdefault("verify", self.verify)
        return super().request(*args, **kwargs)


def new_session(verify: Optional[Union[bool, str]] = None, ca_file: Optional[str] = None,
                pool_size: int = 16) -> requests.Session:
    """A pooled session (``pool_size`` connections per host) with TLS verification parsed once."""
    session = VerifyingSession()
    session.verify = parse_verify(verify, ca_file)
    adapter = HTTPAdapter(pool_connections=4, pool_maxsize=pool_size)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


Response = requests.Response
RequestException = requests.RequestException


def accepted(response: requests.Response, failure: Callable[[requests.Response], Exception],
             passthrough: Collection[int] = ()) -> requests.Response:
    """``response`` when it is a success (2xx, or a status in ``passthrough`` the caller handles itself);
    else it is closed and the protocol's ``failure(response)`` is raised."""
    if 200 <= response.status_code < 300 or response.status_code in passthrough:
        return response
    try:
        raise failure(response)
    finally:
        response.close()


UNREADABLE_JSON = (ValueError, RecursionError)  # not JSON at all, or nested deeper than the parser goes


def json_body(response: requests.Response, where: Optional[str] = None) -> Any:
    """The answer's JSON, the response closed; an answer that is not JSON is a ProtocolError naming ``where``."""
    try:
        return response.json()
    except UNREADABLE_JSON:
        start = " ".join(response.text[:80].split())
        raise errors.ProtocolError(f"the server's answer is not JSON: {start!r}", where) from None
    finally:
        response.close()


def stream_into(response: requests.Response, sink: BinaryIO, what: str, path: Optional[str] = None,
                url: Optional[str] = None) -> int:
    """Copy a streamed body into ``sink``; a body that breaks off is an error, never a short file: given the
    server's ``url``, the error a failed request gives (:func:`.errors.transport_error`: a stalled or reset
    connection is Unavailable), else always a ProtocolError."""
    received = 0
    with response:
        try:
            for chunk in response.iter_content(1 << 20):
                sink.write(chunk)
                received += len(chunk)
        except requests.RequestException as exc:
            if url is not None:
                raise transport_error(exc, f"{what} (after {received} bytes)", url, path=path) from None
            raise errors.ProtocolError(f"{what} (after {received} bytes): the server's reply broke off "
                                       f"({type(exc).__name__})", path) from None
    return received


def iter_chunks(response: requests.Response, what: str, path: Optional[str] = None) -> Iterator[bytes]:
    """The chunks of a streamed body as they arrive, then the response closed.  A body that breaks off is
    Unavailable (the stream may be endless, so no length tells a short one); closing the response from
    another thread, to end the stream, ends it the same way."""
    try:
        yield from response.iter_content(chunk_size=None)
    except (requests.RequestException, AttributeError) as exc:  # AttributeError: closed by another thread
        raise errors.Unavailable(f"{what} broke off ({type(exc).__name__})", path) from None
    finally:
        response.close()
