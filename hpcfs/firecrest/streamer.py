"""FirecREST's ``streamer`` data path, wire only: one file over one websocket to a transfer job.

``transfer/upload|download`` with ``transferMethod: streamer`` starts a scheduler job that runs ``streamer
server`` (the ``firecrest-streamer`` package) on a node and answers with *coordinates*: base64 JSON of the
IPs, a port range and a one-time secret.  The job listens on the first free port of the range once it has
installed the package (seconds), so the client sweeps every IP and port, sending the secret as a bearer
token (a server of another transfer answers 403), until one accepts or the job has ended.

The framing (``streamer_core`` 0.0.21): an ``init`` JSON message (``num_chunks``, ``file_size``), the file
in binary messages of 5 MiB, an ``eof`` JSON message with the file's sha256.  The package's own client is
not used: it runs its own event loop per call, reports failures only to a logger, and its receiver never
recognises the ``eof`` message its sender writes (binary, not text), so downloads would end with it.  Here
the receiver counts bytes instead, and the sender writes ``eof`` as the compact *text* message the server's
receiver looks for (else the server appends it to the file and never checks the hash).
"""
from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import logging
from dataclasses import dataclass
from typing import BinaryIO, Callable, Iterator, List, Optional

from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from .. import errors, net

CHUNK_SIZE = 5 * 1024 * 1024  # the server counts every message as one chunk against its inbound limit
MAX_MESSAGE = int(CHUNK_SIZE * 1.25)  # as the server's own limit
SWEEP_PAUSE = 0.25
RECEIVED_MARKER = "File received successfully."  # the server job's log line after a matching sha256
SENT_MARKER = "sent successfully"
CLOSE_REASONS = {3003: errors.NotFound}  # the server's close code for a missing (or existing) file
# websockets logs handshake headers at DEBUG, the secret among them: never below INFO, even with ``-v``
WIRE_LOG = logging.getLogger("hpcfs.firecrest.streamer.wire")
WIRE_LOG.setLevel(logging.INFO)


@dataclass(frozen=True)
class Coordinates:
    ips: List[str]
    first_port: int
    last_port: int
    secret: str

    @classmethod
    def decode(cls, text: str) -> Coordinates:
        try:
            data = json.loads(base64.urlsafe_b64decode(text))
            first, last = (int(port) for port in data["ports"])
            return cls([str(ip) for ip in data["ips"]], first, last, str(data["secret"]))
        except (ValueError, KeyError, TypeError, binascii.Error):
            raise errors.ProtocolError("the streamer coordinates of the transfer are malformed") from None


def open_stream(coordinates: Coordinates, check_job: Callable[[], None], deadline: float,
                timeout: float, path: str) -> ClientConnection:
    """A connection to the transfer's streamer server, once it listens.  ``check_job`` is called between
    sweeps and raises when the job has ended (it will never listen then)."""
    headers = {"Authorization": f"Bearer {coordinates.secret}"}

    def sweep() -> Optional[ClientConnection]:
        connection = _first_listening(coordinates, headers, timeout)
        if connection is None:
            check_job()
        return connection

    return net.until(sweep, net.Schedule(SWEEP_PAUSE, growth=1.0), deadline,
                     lambda: errors.TimedOut("the streamer of the transfer job never accepted a connection", path))


def _first_listening(coordinates: Coordinates, headers: dict, timeout: float) -> Optional[ClientConnection]:
    """A connection to the first IP and port of the range that accepts ours, or None."""
    for ip in coordinates.ips:
        for port in range(coordinates.first_port, coordinates.last_port + 1):
            try:
                return connect(f"ws://{ip}:{port}", additional_headers=headers, max_size=MAX_MESSAGE,
                               open_timeout=timeout, close_timeout=timeout, ping_interval=None,
                               proxy=None, logger=WIRE_LOG)
            except (OSError, InvalidStatus, InvalidHandshake, TimeoutError):
                continue  # not listening yet, or another transfer's server (403)
    return None


def receive(connection: ClientConnection, sink: BinaryIO, timeout: float, path: str) -> int:
    """The file the server sends, into ``sink``, checked against its size and sha256; its size."""
    with _closing_errors(connection, path):
        init = _control(connection.recv(timeout), "init", path)
        size, digest, received = int(init["file_size"]), hashlib.sha256(), 0
        while received < size:
            chunk = connection.recv(timeout)
            if not isinstance(chunk, bytes) or received + len(chunk) > size:
                raise errors.ProtocolError("the streamer sent more than the file's announced size", path)
            sink.write(chunk)
            digest.update(chunk)
            received += len(chunk)
        eof = _control(connection.recv(timeout), "eof", path)
        if eof.get("sha256_hash") != digest.hexdigest():
            raise errors.ProtocolError("the file arrived corrupted over the streamer (sha256 mismatch)", path)
        return received


def send(connection: ClientConnection, source: BinaryIO, size: int, timeout: float, path: str) -> None:
    """``size`` bytes of ``source`` to the server, then wait until it closes: it has checked the sha256 by
    then (the job's log says whether it matched)."""
    with _closing_errors(connection, path):
        connection.send(json.dumps({"type": "init", "num_chunks": -(-size // CHUNK_SIZE),
                                    "file_size": size}).encode())
        digest, left = hashlib.sha256(), size
        while left:
            chunk = source.read(min(CHUNK_SIZE, left))
            if not chunk:
                raise errors.ProtocolError("the file to upload is shorter than announced", path)
            connection.send(chunk)
            digest.update(chunk)
            left -= len(chunk)
        connection.send(json.dumps({"type": "eof", "sha256_hash": digest.hexdigest()}, separators=(",", ":")))
        try:
            connection.recv(timeout)  # the server sends nothing more: this returns when it closes
        except ConnectionClosed:
            return
        raise errors.ProtocolError("the streamer server answered an upload", path)


def _control(message, kind: str, path: str) -> dict:
    try:
        data = json.loads(message)
        if data.get("type") == kind:
            return data
    except (ValueError, UnicodeDecodeError, AttributeError):
        pass
    raise errors.ProtocolError(f"the streamer sent no '{kind}' message where one belongs", path)


@contextlib.contextmanager
def _closing_errors(connection: ClientConnection, path: str) -> Iterator[None]:
    """Closes the connection on the way out and maps a broken one to hpcfs errors."""
    try:
        yield
    except ConnectionClosed as closed:
        frame = closed.rcvd
        reason = (frame.reason if frame else "") or "no reason given"
        error = CLOSE_REASONS.get(frame.code if frame else 0, errors.ProtocolError)
        raise error(f"the streamer closed the transfer: {reason}", path) from None
    except TimeoutError:
        raise errors.TimedOut("the streamer went silent", path) from None
    finally:
        connection.close()
