"""UFTPD's multi-stream data framing (JPARSS-compatible; UFTPD ``lib/PConnector.py``, pyuftp ``pconnector.py``):
one logical data stream spread over several TCP connections.  Shared by the client (hpcfs/uftp/session.py) and
the local server (hpcfs/servers/uftp), so both speak one implementation.

Each logical block of S bytes (at most ``BLOCK``) is split into one chunk per connection, ``S // n`` bytes each
and the remainder on the last; connection i carries a 16-byte header ``>HHIII`` (magic, i, seq, S, chunk
length) and its chunk.  ``seq`` counts the blocks of a set of connections, in both directions together (UFTPD
keeps one counter).  A reader takes a header and a chunk from each connection in turn; an empty header read is
the end.  Each connection has the grant's transforms of its own, below the framing: framing -> gzip -> AES ->
TCP (UFTPD's PConnector wraps each connector so).
"""
import socket
import struct
from typing import Generic, List, Optional, Protocol, Tuple, TypeVar

from .datastream import Transform

FRAME = struct.Struct(">HHIII")
FRAME_MAGIC = 0xCEBF
BLOCK = 16384  # UFTPD's block size with several streams, "compatibility with the Java parallel socket impl"


class FrameError(OSError):
    """A header out of step: the connections no longer carry one stream."""


class Stream(Protocol):
    """One connection of the set: ``read(n)`` gives n bytes unless the connection ended."""

    def read(self, length: int) -> bytes: ...

    def write(self, data: bytes) -> object: ...

    def close(self) -> object: ...


S = TypeVar("S", bound=Stream)


def split(block: bytes, count: int, seq: int) -> List[bytes]:
    """The frames (header + chunk) of ``block`` for each of ``count`` connections."""
    size, chunk = len(block), len(block) // count
    frames = []
    for index in range(count):
        length = size - index * chunk if index == count - 1 else chunk
        start = index * chunk
        frames.append(FRAME.pack(FRAME_MAGIC, index, seq, size, length) + block[start:start + length])
    return frames


def parse_header(header: bytes, index: int, seq: int) -> Tuple[int, int]:
    """``(block size, chunk length)`` of connection ``index``'s header for block ``seq``."""
    magic, position, number, size, length = FRAME.unpack(header)
    if magic != FRAME_MAGIC or position != index or number != seq:
        raise FrameError(f"I/O error reader {index} (bad multi-stream frame header)")
    return size, length


class MultiStreamData(Generic[S]):
    """The framing over ``streams``: ``write`` sends one block, ``read`` returns the next block (b"" at the end)."""

    def __init__(self, streams: List[S]):
        self.streams = streams
        self.seq = 0

    def write(self, block: bytes) -> int:
        for stream, frame in zip(self.streams, split(block, len(self.streams), self.seq)):
            stream.write(frame)
        self.seq += 1
        return len(block)

    def read(self, _length: int = BLOCK) -> bytes:
        block = bytearray()
        for index, source in enumerate(self.streams):
            header = source.read(FRAME.size)
            if not header and index == 0:
                return b""  # the end
            if len(header) < FRAME.size:
                raise FrameError(f"I/O error reader {index} (the connection ended inside block {self.seq})")
            size, length = parse_header(header, index, self.seq)
            if index == 0:
                block = bytearray(size)
            chunk = source.read(length)
            if len(chunk) < length:
                raise FrameError(f"I/O error reader {index} (the connection ended inside block {self.seq})")
            offset = index * (size // len(self.streams))
            block[offset:offset + length] = chunk
        self.seq += 1
        return bytes(block)

    def close(self) -> None:
        for stream in self.streams:
            stream.close()


class Connection:
    """The client's end of one connection of a set, with the grant's transforms of its own."""

    def __init__(self, sock: socket.socket, transform: Optional[Transform]):
        self.sock = sock
        self._encoder = transform.encoder() if transform is not None else None
        self._decoder = transform.decoder(framed=True) if transform is not None else None
        # UFTPD's reader takes an AES padding block after the last frame for a header (and its sender sends
        # none): framed AES data is whole blocks (hpcfs/uftp/session.py), its stream ends unpadded
        self._padded = transform is not None and transform.key is not None
        self._plain = bytearray()  # decoded bytes not yet read

    def write(self, frame: bytes) -> None:
        if self._encoder is not None:
            frame = self._encoder.update(frame) + self._encoder.sync()
        self.sock.sendall(frame)

    def read(self, length: int) -> bytes:
        if self._decoder is None:
            return self._received(length)
        while len(self._plain) < length:
            raw = self.sock.recv(1 << 16)
            if not raw:
                break
            self._plain += self._decoder.update(raw)
        data = bytes(self._plain[:length])
        del self._plain[:length]
        return data

    def _received(self, length: int) -> bytes:
        pieces, missing = [], length
        while missing:
            piece = self.sock.recv(missing, socket.MSG_WAITALL)
            if not piece:
                break
            pieces.append(piece)
            missing -= len(piece)
        return b"".join(pieces)

    def finish(self) -> None:
        """The end of what this side sends: gzip's end, then the connection's."""
        if self._encoder is not None and not self._padded:
            self.sock.sendall(self._encoder.finish())
        self.sock.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.sock.close()
