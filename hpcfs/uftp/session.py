"""One UFTP control session and its keep-alive data connection.

A session is used by one thread at a time (the backend's pool hands it out).  It logs in with a secret
from the Auth server, then speaks UFTPD's FTP dialect (UFTPD 3.5, github.com/UNICORE-EU/uftpd):

- Replies end in ``\\n``; multi-line replies run from ``NNN-`` to ``NNN ``.
- UFTPD flushes every reply line on its own and leaves Nagle on, so each line after the first waits for
  our ACK.  ``TCP_QUICKACK`` is not sticky: it is re-armed after every send and every receive, which takes
  a ranged read from ~44 ms to well under a millisecond (§10).
- One data connection per session, opened once (``KEEP-ALIVE true``, ``NOOP 1``, ``EPSV``) and kept.
  With keep-alive the data connection never signals the end of a transfer, so byte counts must be exact:
  ``RANG a b`` is end-exclusive and ``RETR`` announces ``b-a`` even past the end of the file (callers
  clamp), and the control connection is watched during every transfer so that a file that shrank (an
  early ``226``) can never hang us or shift later transfers.
- With ``streams`` > 1 each file transfer has a set of data connections of its own (``NOOP n``, n passive
  connections, JPARSS framing: hpcfs/uftp/multistream.py), closed after it as UFTPD does without keep-alive.
  UFTPD 3.5 neither pads nor flushes a connection's AES stream at its end, and its reader cannot take a frame
  whose chunk is not whole AES blocks (pyuftp ``cp -n 2 -E`` corrupts such files): encrypted data travels
  framed only in whole blocks per connection, the rest of a transfer over one connection, and encrypted and
  compressed data (whose block boundaries nobody controls) over one connection.
- Anything out of step marks the session ``broken``; the pool then closes it instead of reusing it.
"""
import collections
import contextlib
import errno
import logging
import re
import select
import shlex
import socket
import struct
from typing import Callable, Deque, Iterable, List, Optional

from .. import errors
from .datastream import Decoder, Transform
from .listing import Features, Reply, banner_version, ends_reply, passive_address, reply_code, transfer_size
from .multistream import BLOCK, Connection, FrameError, MultiStreamData

QUICKACK = getattr(socket, "TCP_QUICKACK", None)  # Linux only
MAX_LINE = 1 << 20  # a reply line longer than this is not UFTPD talking
MAX_REPLY = 64 << 20  # nor a multi-line reply (a listing of about a million names) longer than this
CHUNK = 1 << 20  # data is moved in pieces of this size
# Commands after whose failure UFTPD closes the session's data connection (Session.py: a missing path for
# MLST, LIST or MLSD raises with ACTION_CLOSE_DATA)
CLOSES_DATA_ON_FAILURE = frozenset({"MLST", "LIST", "MLSD"})
DRAIN_GRACE = 1.0  # after an early 226, how long to wait for data still in flight
# The longest one blocking receive of a whole piece waits (SO_RCVTIMEO) before the receive loop takes over
# and watches the control connection again: bounds how late a server's early end of a transfer is seen.
PIECE_WAIT = struct.pack("ll", 0, 250_000)
HASH_WAIT = 75.0  # seconds: UFTPD sends a "213-" line after each 30 s of hashing, checked once per buffer
SENDFILE_ON = "OPTS SENDFILE_ENABLED true"
CIPHER_BLOCK = 16  # AES

log = logging.getLogger("hpcfs.uftp")


class SecretRejected(errors.AuthenticationFailed):
    """``530`` at login: the secret is unknown (expired, or the last session using it has ended)."""


class SessionLost(errors.Unavailable):
    """The control connection died or fell out of step: nothing more can be sent on this session."""


_ERRNO_CLASSES = {
    errno.ENOENT: errors.NotFound,
    errno.EEXIST: errors.AlreadyExists,
    errno.ENOTDIR: errors.NotADirectory,
    errno.EISDIR: errors.IsADirectory,
    errno.ENOTEMPTY: errors.DirectoryNotEmpty,
    errno.EACCES: errors.PermissionDenied,
    errno.EPERM: errors.PermissionDenied,
    errno.EROFS: errors.PermissionDenied,
    errno.EFBIG: errors.TooLarge,
    errno.ENOSPC: errors.NoSpace,
    errno.EDQUOT: errors.NoSpace,
    errno.ENAMETOOLONG: errors.InvalidPath,
    errno.EINVAL: errors.InvalidPath,
    errno.EXDEV: errors.NotSupported,
}


def reply_error(reply: Reply, path: Optional[str] = None) -> errors.HpcfsError:
    """The hpcfs error for a failure reply, with the server's message (never a credential: UFTPD does
    not echo the secret, and commands are not quoted)."""
    text = reply.text
    message = re.sub(r"^Error processing command '[^']*': ", "", text) or f"server replied {reply.code}"
    found = re.search(r"\[Errno (\d+)\]", text)
    if found and int(found.group(1)) in _ERRNO_CLASSES:
        return _ERRNO_CLASSES[int(found.group(1))](message, path)
    if reply.code == 530:
        return SecretRejected(message, path)
    if reply.code == 550 or "does not exist" in text or "No such" in text:
        return errors.NotFound(message, path)
    if reply.code == 534 or "Access denied" in text or "Forbidden" in text or "Rejecting connection" in text:
        return errors.PermissionDenied(message, path)
    if "Too many active" in text:
        return errors.Busy(message, path)
    if reply.code == 502:
        return errors.NotSupported(message, path)
    if reply.code in (501, 503):
        return errors.ProtocolError(message, path)
    return errors.HpcfsError(message, path)


def transfer_error(reply: Reply, path: Optional[str] = None) -> errors.HpcfsError:
    """A transfer the server failed: a broken data connection is the session's loss (worth one retry on
    another session); anything else is the file's own error."""
    found = re.search(r"\[Errno (\d+)\]", reply.text)
    if found and int(found.group(1)) in (errno.EPIPE, errno.ECONNRESET):
        return SessionLost(f"the data connection broke: {reply.text}", path)
    return reply_error(reply, path)


class ControlSession:
    """A logged-in UFTP session.  Methods take server paths (absolute, inside the session's base)."""

    def __init__(self, host: str, port: int, secret: str, *, timeout: float, features: Optional[Features] = None,
                 transform: Optional[Transform] = None, streams: int = 1):
        self.timeout = timeout
        self._transform = transform  # the grant's gzip/AES: each transfer then has a connection of its own
        self._streams = streams  # connections per file transfer (the grant's streamCount)
        self._framed: Optional[MultiStreamData[Connection]] = None  # the set of the framed transfer under way
        self.broken = False
        self._lines: Deque[bytes] = collections.deque()  # complete reply lines received but not yet consumed
        self._partial = b""  # the start of a line still arriving
        self._data: Optional[socket.socket] = None
        self._keep_alive_on = False
        self._sendfile_asked = False
        self._range_armed = False  # a RANG is still in force (the transfer it was for failed)
        self._ready: dict = {}  # what the last poll during a transfer found readable
        self._sock = self._connect(host, port)
        try:
            self.version = banner_version(self.expect(self.read_reply(), 220).lines[0])
            self._login(secret)
            self.features = features if features is not None else Features.parse(self.command("FEAT"))
        except BaseException:
            self.close()
            raise

    def __repr__(self):
        return f"<ControlSession {self.peer} {'broken' if self.broken else 'ok'}>"

    @property
    def peer(self):
        try:
            return "{}:{}".format(*self._sock.getpeername()[:2])
        except OSError:
            return "closed"

    # -- connection and login ---------------------------------------------------------------------------
    def _connect(self, host, port):
        try:
            sock = socket.create_connection((host, port), timeout=self.timeout)
        except socket.timeout:
            raise errors.TimedOut(f"no answer from UFTPD at {host}:{port} within {self.timeout:g} s") from None
        except OSError as exc:
            raise errors.Unavailable(f"cannot connect to UFTPD at {host}:{port}: {exc.strerror or exc}") from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        _quickack(sock)
        return sock

    def _login(self, secret):
        self.expect(self.command("USER anonymous"), 331)
        self.send("PASS " + secret)
        reply = self.read_reply()
        if reply.code != 230:
            raise reply_error(reply)

    # -- control channel --------------------------------------------------------------------------------
    def send(self, *commands: str):
        """Send one or more commands in a single segment (pipelining saves round trips)."""
        if any("\n" in command or "\r" in command for command in commands):
            raise errors.InvalidPath("names with line breaks cannot be sent over UFTP")
        for command in commands:
            log.debug("UFTPD <- %s", _shown(command))
        payload = "".join(command + "\r\n" for command in commands).encode("utf-8", "surrogateescape")
        try:
            self._sock.sendall(payload)
        except OSError as exc:
            raise self._lost(f"cannot send to UFTPD: {_reason(exc)}") from None
        _quickack(self._sock)

    def read_reply(self) -> Reply:
        line = self._read_line()
        try:
            code, last = reply_code(line)
        except errors.ProtocolError as exc:
            raise self._lost(str(exc)) from None
        lines = [line]
        held = len(line)
        while not last:
            line = self._read_line()
            held += len(line)
            if held > MAX_REPLY:
                raise self._lost(f"reply longer than {MAX_REPLY >> 20} MiB", errors.ProtocolError)
            lines.append(line)
            last = ends_reply(code, line)
        return Reply(code, tuple(lines))

    def command(self, command: str) -> Reply:
        return self.batch(command)[0]

    def batch(self, *commands: str) -> List[Reply]:
        """Send commands together and read one reply each."""
        self.send(*commands)
        replies = [self.read_reply() for _ in commands]
        if any(not reply.ok and command.split(" ", 1)[0] in CLOSES_DATA_ON_FAILURE
               for command, reply in zip(commands, replies)):
            # UFTPD has dropped the data connection: a transfer on ours would reach nobody.  Its EOF may
            # not have arrived yet (a link with latency), so the pool's idle check cannot be relied on.
            self._close_data()
        return replies

    def _read_line(self) -> str:
        while not self._lines:
            if len(self._partial) > MAX_LINE:
                raise self._lost("reply line too long")
            try:
                chunk = self._sock.recv(65536)
            except socket.timeout:
                raise self._lost(f"no reply from UFTPD within {self._sock.gettimeout():g} s", errors.TimedOut) from None
            except OSError as exc:
                raise self._lost(f"control connection failed: {_reason(exc)}") from None
            _quickack(self._sock)
            if not chunk:
                raise self._lost("UFTPD closed the control connection")
            *complete, self._partial = (self._partial + chunk).split(b"\n")
            self._lines.extend(complete)
        return self._lines.popleft().rstrip(b"\r").decode("utf-8", "surrogateescape")

    def expect(self, reply: Reply, *codes: int, path: Optional[str] = None) -> Reply:
        """``reply`` if its code is one of ``codes``; else the mapped error.  An unexpected *success*
        means we no longer know where the dialogue stands, so the session is given up."""
        if reply.code in codes:
            return reply
        if reply.ok:
            raise self._lost(f"unexpected reply from UFTPD: {reply.lines[0][:80]!r}", errors.ProtocolError)
        raise reply_error(reply, path)

    def _lost(self, message, kind=SessionLost):
        self.broken = True
        return kind(message)

    def hash(self, path: str, algorithm: str) -> str:
        """The hex digest UFTPD computes over the whole file with ``algorithm`` (its name: ``SHA-256``).  It
        answers only when done, with a ``213-`` line after each 30 s of hashing, hence the longer wait."""
        self._sock.settimeout(max(self.timeout, HASH_WAIT))
        try:
            *preliminaries, reply = self.batch(*self._range_reset(), f"OPTS HASH {algorithm}", f"HASH {path}")
        finally:
            self._sock.settimeout(self.timeout)
        for preliminary in preliminaries:
            self.expect(preliminary, 350, 200, path=path)  # the range reset's 350, then OPTS's 200
        fields = self.expect(reply, 213, path=path).lines[-1].split(" ", 4)  # 213 ALGO FIRST-LAST HEX PATH
        if len(fields) < 4 or fields[1].upper() != algorithm.upper():
            raise self._lost(f"unexpected HASH reply: {reply.lines[-1][:80]!r}", errors.ProtocolError)
        return fields[3].lower()

    # -- server-to-server copies ----------------------------------------------------------------------
    @property
    def transform(self) -> Optional[Transform]:
        """The transform of the grant this session logged in with."""
        return self._transform

    def offers_receive_file(self) -> bool:
        """Whether UFTPD takes ``RECEIVE-FILE`` here, asked without starting anything: UFTPD 3.5 refuses a
        wrong argument count (501) after checking write access and before forking, a server without the
        command answers 502.  Write access refused is the caller's error (534)."""
        reply = self.command("RECEIVE-FILE ?")
        if reply.code not in (501, 502):
            self.expect(reply)  # raises: an unexpected success, or a refusal
        return reply.code == 501

    def receive_file(self, path: str, source: str, server: str, secret: str) -> None:
        """UFTPD forks a transfer process that logs in at ``server`` (``host:port``) with the one-time
        ``secret``, fetches ``source`` there and writes it to ``path`` from its start, in order.  UFTPD says
        only that the process was forked: nobody is told how it ends (``RCP-STATUS`` is broken in 3.5)."""
        # The process copies the range in force on this session over the connections its last NOOP asked for:
        # any RANG left over is reset, and one connection asked for (UFTPD 3.5 garbles encrypted data sent
        # over several: see the module's doc).
        arguments = " ".join(shlex.quote(argument) for argument in (path, source, server, secret))
        *preliminaries, reply = self.batch(*self._range_reset(), "NOOP 1", f"RECEIVE-FILE {arguments}")
        for preliminary in preliminaries:
            self.expect(preliminary, 350, 222, path=path)
        self.expect(reply, 299, path=path)

    # -- data connection --------------------------------------------------------------------------------
    def _ensure_data(self):
        if self._data is not None:
            return
        # A transformed stream ends with its connection, so neither keep-alive nor sendfile (which UFTPD
        # skips for such streams) is asked for.
        # Several streams: each transfer has its own set, so a kept-alive single connection would be in the way.
        keep_alive = (self.features.keep_alive and not self._keep_alive_on and self._transform is None
                      and self._streams == 1)
        # UFTPD copies file data through a Python read/write loop unless asked to use sendfile(2) (off by
        # default); asked once per session, and a server that refuses it still serves.
        sendfile = not self._sendfile_asked and self._transform is None
        commands = [SENDFILE_ON] * sendfile + ["KEEP-ALIVE true"] * keep_alive + [
            "NOOP 1", "EPSV" if self.features.epsv else "PASV"]
        *preliminaries, passive = self.batch(*commands)
        if sendfile:
            self._sendfile_asked = True
            log.debug("UFTPD sendfile: %s", preliminaries.pop(0).lines[0][:80])
        if passive.code in (500, 501, 502) and commands[-1] == "EPSV":
            passive = self.command("PASV")
        self._data = self._connect_passive(passive)
        self._data.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, PIECE_WAIT)  # bounds _receive_piece
        refused = next((reply for reply in preliminaries if not reply.ok), None)
        if refused is not None:
            raise self._lost(f"UFTPD refused to set up the data connection: {refused.lines[0][:80]!r}")
        self._keep_alive_on = self._keep_alive_on or keep_alive

    def _connect_passive(self, passive: Reply) -> socket.socket:
        """The data connection a 227/229 reply announced."""
        self.expect(passive, 227, 229)
        # From here UFTPD blocks in accept(): anything but connecting leaves the session stuck.
        try:
            _, port = passive_address(passive)
        except errors.ProtocolError as exc:
            raise self._lost(str(exc), errors.ProtocolError) from None
        host = self._sock.getpeername()[0]  # UFTPD listens on this address; a 227 address may be NAT's
        try:
            sock = socket.create_connection((host, port), timeout=self.timeout)
        except OSError as exc:
            raise self._lost(f"cannot open the data connection to {host}:{port}: {_reason(exc)}") from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def _frames(self, length: Optional[int]) -> int:
        """How many bytes of a transfer of ``length`` (None: not known yet) go framed over several
        connections; 0 for none.  Encrypted: whole AES blocks on every connection (see the module's doc)."""
        if self._streams == 1:
            return 0
        if self._transform is None or self._transform.key is None:
            return -1 if length is None else length
        if self._transform.compress or length is None or BLOCK % (CIPHER_BLOCK * self._streams):
            return 0
        return length - length % (CIPHER_BLOCK * self._streams)

    def _open_streams(self) -> Optional[MultiStreamData[Connection]]:
        """A fresh set of ``streams`` data connections for one transfer; None (and one connection from now
        on) if the server grants fewer (``223``)."""
        self._close_data()  # a kept-alive single connection would be closed by UFTPD's next PASV anyway
        reply = self.command(f"NOOP {self._streams}")
        if reply.code != 222:
            self.expect(reply, 223)
            log.debug("UFTPD grants fewer streams: %s", reply.lines[0][:80])
            self._streams = 1
            return None
        connections: List[Connection] = []
        self._framed = MultiStreamData(connections)
        for _ in range(self._streams):
            passive = self.command("EPSV" if self.features.epsv else "PASV")
            connections.append(Connection(self._connect_passive(passive), self._transform))
        return self._framed

    @property
    def _open_data(self) -> socket.socket:
        """The data connection of the transfer under way (``_ensure_data`` opened it)."""
        if self._data is None:
            raise self._lost("no data connection for the transfer")
        return self._data

    def _close_data(self):
        if self._data is not None:
            _close(self._data)
            self._data = None
        if self._framed is not None:
            self._framed.close()
            self._framed = None

    # -- transfers --------------------------------------------------------------------------------------
    def retrieve(self, path: str, offset: int, length: int) -> bytes | bytearray:
        """Bytes ``[offset, offset+length)``, which the caller has clamped to the file's size.  Fewer come
        back only if the file shrank meanwhile; the session is then given up."""
        pieces: List[bytes | bytearray] = []
        self.retrieve_pieces(path, offset, length, length, pieces.append)  # one piece: received in place
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)  # two: an encrypted framed head and its tail

    def retrieve_pieces(self, path: str, offset: int, length: int, piece_size: int,
                        deliver: Callable[[bytes | bytearray], object]) -> int:
        """Bytes ``[offset, offset+length)`` in one transfer, handed to ``deliver`` as each ``piece_size``
        piece completes, each in its own buffer (the block cache keeps it without a copy).  Returns the
        bytes received; fewer only if the file shrank meanwhile (the session is then given up)."""
        return self._retrieve_range(path, offset, length, lambda view: deliver(_owned(view)), piece_size,
                                    fresh_buffers=True)

    def retrieve_stream(self, path: str, offset: int, length: int, write: Callable[[memoryview], object]) -> int:
        """Bytes ``[offset, offset+length)`` in one transfer, received into one reused ``CHUNK`` buffer
        whose contents ``write`` must use before it returns (``hpcfs cp`` writes it to disk): no buffer
        is allocated, zero-filled or copied per piece."""
        return self._retrieve_range(path, offset, length, write, CHUNK)

    def _retrieve_range(self, path: str, offset: int, length: int, consume: Callable[[memoryview], object],
                        chunk: int, fresh_buffers: bool = False) -> int:
        framed = self._frames(length)
        if framed and (streams := self._open_streams()) is not None:
            rest = bytearray()  # the framed part's short last piece: the rest's bytes complete it

            def gather(view: memoryview):
                rest.extend(view)
                _hand_over(rest, chunk, consume)

            received = self._retrieve_framed(streams, [f"RANG {offset} {offset + framed}", f"RETR {path}"],
                                             framed, consume, chunk, path, rest)
            if received == framed < length:
                received += self._retrieve_range(path, offset + framed, length - framed, gather, CHUNK)
            _hand_over(rest, chunk, consume, last=True)
            return received
        self._ensure_data()
        self._range_armed = True
        start = self._start_transfer([f"RANG {offset} {offset + length}", f"RETR {path}"], path)
        with self._transferring():
            announced = transfer_size(start)
            if announced != length:
                raise errors.ProtocolError(f"UFTPD announced {announced} bytes for a range of {length}", path)
            received = self._receive_any(length, consume, chunk, path, fresh_buffers)
        self._after_transfer(received == length)
        return received

    def retrieve_all(self, path: str, write: Callable[[memoryview], object]) -> int:
        """Stream the whole file to ``write``; returns the byte count."""
        if self._frames(None) and (streams := self._open_streams()) is not None:
            return self._retrieve_framed(streams, [*self._range_reset(), f"RETR {path}"], None, write, CHUNK, path)
        self._ensure_data()
        start = self._start_transfer([*self._range_reset(), f"RETR {path}"], path)
        with self._transferring():
            size = transfer_size(start)
            if size is None:
                raise errors.ProtocolError("UFTPD did not announce the file size", path)
            received = self._receive_any(size, write, CHUNK, path)
        self._after_transfer(received == size)
        return received

    def store(self, path: str, chunks: Iterable, size: int, offset: Optional[int] = None):
        """Send ``size`` bytes from ``chunks``: at ``offset`` in place (``RANG``), or as the whole new
        content (``ALLO``: the server truncates first; ``ALLO 0`` makes an empty file)."""
        framed = self._frames(size)
        if framed and (streams := self._open_streams()) is not None:
            if framed == size:
                return self._upload(path, size, offset, lambda: self._send_framed(streams, chunks, size, path))
            data = b"".join(chunks)  # an upload is one piece in memory (the backend's parts)
            self._upload(path, framed, offset, lambda: self._send_framed(streams, [data[:framed]], framed, path))
            return self.store(path, [data[framed:]], size - framed, (offset or 0) + framed)
        self._ensure_data()
        self._upload(path, size, offset, lambda: self._send_single(chunks, size, path))

    def _upload(self, path: str, size: int, offset: Optional[int], send: Callable[[], Reply]):
        """One upload: its commands, then ``send``, which gives the transfer's reply."""
        if offset is None:
            commands = [*self._range_reset(), f"ALLO {size}", f"STOR {path}"]
        else:
            self._range_armed = True
            commands = [f"RANG {offset} {offset + size}", f"STOR {path}"]
        self._start_transfer(commands, path)
        with self._transferring():
            reply = send()
        self._after_transfer(reply.code == 226)
        if reply.code != 226:
            raise transfer_error(reply, path) if not reply.ok else errors.ProtocolError(
                f"unexpected end of upload: {reply.lines[0][:80]!r}", path)

    def _send_single(self, chunks: Iterable, size: int, path) -> Reply:
        if self._transform is not None:
            return self._send_transformed(chunks, size, path)
        self._send_data(chunks, size, path)
        return self.read_reply()

    def _send_framed(self, streams: MultiStreamData[Connection], chunks: Iterable, size: int, path) -> Reply:
        """``chunks`` in blocks of at most ``BLOCK`` (UFTPD reads no more at once), then each connection's
        end (UFTPD reads an encrypted upload up to it); returns the transfer's reply."""
        sent = 0
        try:
            for chunk in chunks:
                view = memoryview(chunk)
                for start in range(0, len(view), BLOCK):
                    sent += streams.write(bytes(view[start:start + BLOCK]))
        except OSError as exc:
            reply = self._reply_after_failure()
            raise (transfer_error(reply, path) if reply and not reply.ok else
                   SessionLost(f"data connection failed: {_reason(exc)}", path)) from None
        for connection in streams.streams:
            # UFTPD reads an upload up to its announced size and may have closed a connection before its
            # end is sent: the reply says whether the server has the file
            with contextlib.suppress(OSError):
                connection.finish()
        reply = self.read_reply()
        if reply.code == 226 and sent != size:
            raise errors.HpcfsError(f"the source gave {sent} bytes where {size} were announced", path)
        return reply

    def _retrieve_framed(self, streams: MultiStreamData[Connection], commands: List[str], length: Optional[int],
                         consume: Callable[[memoryview], object], chunk: int, path,
                         rest: Optional[bytearray] = None) -> int:
        """One transfer over ``streams``: ``length`` bytes (None: the whole file, as announced) handed to
        ``consume`` in pieces of ``chunk``, each a buffer of its own, the short last one left in ``rest``
        if given; fewer only if the file shrank."""
        self._range_armed = length is not None
        start = self._start_transfer(commands, path)
        with self._transferring():
            announced = transfer_size(start)
            if announced is None or (length is not None and announced != length):
                raise errors.ProtocolError(f"UFTPD announced {announced} bytes for {length}", path)
            plain, received = bytearray() if rest is None else rest, 0
            while received < announced and (block := self._framed_block(streams, path)):
                received += len(block)
                plain += block
                _hand_over(plain, chunk, consume)
            if received > announced:
                raise errors.ProtocolError(f"UFTPD sent {received} bytes for {announced}", path)
            self._transfer_ended(self.read_reply(), path)
            _hand_over(plain, chunk, consume, last=rest is None)
        self._after_transfer(received == announced)
        return received

    def _framed_block(self, streams: MultiStreamData[Connection], path) -> bytes:
        try:
            return streams.read()
        except FrameError as exc:
            raise self._lost(str(exc), errors.ProtocolError) from None
        except socket.timeout:
            raise SessionLost(f"no data from UFTPD within {self.timeout:g} s", path) from None
        except OSError as exc:
            raise SessionLost(f"data connection failed: {_reason(exc)}", path) from None

    def _range_reset(self):
        """A failed transfer leaves its RANG in force, and ALLO or RETR would then use it."""
        if not self._range_armed:
            return []
        self._range_armed = False
        return ["RANG 1 0"]

    def _start_transfer(self, commands: List[str], path) -> Reply:
        """Send the commands that open a transfer; their ``150`` reply, or the first failure."""
        *preliminaries, start = self.batch(*commands)
        failed = next((reply for reply in preliminaries if not reply.ok), None)
        if failed is not None:
            if start.code == 150:  # a transfer began that we cannot frame: give the session up
                self.broken = True
            raise reply_error(failed, path)
        if start.code != 150:
            raise reply_error(start, path) if not start.ok else self._lost(
                f"unexpected reply to a transfer: {start.lines[0][:80]!r}", errors.ProtocolError)
        return start

    @contextlib.contextmanager
    def _transferring(self):
        """Between ``150`` and ``226`` any exit but a normal one leaves bytes unaccounted for on the data
        connection, so the session is given up (a failing sink or source included)."""
        try:
            yield
        except BaseException:
            self.broken = True
            self._close_data()
            raise

    def _after_transfer(self, complete: bool):
        self._range_armed = False
        if not complete:
            self.broken = True  # bytes may still be in flight on the data connection
        if not self._keep_alive_on or not complete:
            self._close_data()

    def _receive_any(self, count: int, consume: Callable[[memoryview], object], chunk: int, path,
                     fresh_buffers: bool = False) -> int:
        if self._transform is None:
            return self._receive(count, consume, chunk, path, fresh_buffers=fresh_buffers)
        return self._receive_transformed(count, consume, chunk, path)

    def _receive_transformed(self, count: int, consume: Callable[[memoryview], object], chunk: int, path) -> int:
        """A transformed transfer: the data connection read to its end, the grant's transform undone, the
        plain bytes handed to ``consume`` in pieces of ``chunk`` (the last one shorter), each a buffer of
        its own.  Returns the plain byte count (fewer than ``count`` only if the file shrank)."""
        assert self._transform is not None
        decoder, plain, handed = self._transform.decoder(), bytearray(), 0
        while raw := self._recv_to_end(path):
            plain += decoder.update(raw)
            handed += _hand_over(plain, chunk, consume)
        plain += self._decoded_end(decoder, path)
        handed += _hand_over(plain, chunk, consume, last=True)
        if handed > count:
            raise errors.ProtocolError(f"UFTPD sent {handed} bytes for {count}", path)
        self._transfer_ended(self.read_reply(), path)
        return handed

    @staticmethod
    def _transfer_ended(final: Reply, path) -> None:
        """A transfer's last reply must be ``226``: a refusal is its error, any other success a lost dialogue."""
        if final.code != 226:
            raise transfer_error(final, path) if not final.ok else errors.ProtocolError(
                f"unexpected end of transfer: {final.lines[0][:80]!r}", path)

    def _recv_to_end(self, path) -> bytes:
        """The next bytes of the data connection, b"" at its end."""
        try:
            return self._open_data.recv(CHUNK)
        except socket.timeout:
            raise SessionLost(f"no data from UFTPD within {self.timeout:g} s", path) from None
        except OSError as exc:
            raise SessionLost(f"data connection failed: {_reason(exc)}", path) from None

    def _decoded_end(self, decoder: Decoder, path) -> bytes:
        """The stream's last plain bytes; a stream cut short is the server's failure where it says so."""
        try:
            return decoder.finish()
        except errors.ProtocolError as exc:
            reply = self._reply_after_failure()
            raise (transfer_error(reply, path) if reply and not reply.ok else exc) from None

    def _receive(self, count: int, consume: Callable[[memoryview], object], chunk: int, path,
                 fresh_buffers: bool = False) -> int:
        """Read ``count`` bytes from the data connection into buffers of ``chunk`` bytes handed to
        ``consume`` (one reused buffer, or with ``fresh_buffers`` a new one per chunk that ``consume`` may
        keep), watching the control connection: a reply before the last byte means the server stopped
        early (the file shrank) or failed.  Returns the bytes received."""
        data = self._open_data
        received = filled = 0
        final = None
        buffer = None if fresh_buffers else memoryview(bytearray(max(1, min(count, chunk))))
        poller = select.poll()
        poller.register(data, select.POLLIN)
        poller.register(self._sock, select.POLLIN)
        # Blocking only for a whole piece at once (_receive_piece); otherwise non-blocking while bytes keep
        # coming: one recv_into per buffer-full of what has arrived, and a poll only once the socket is
        # drained (a socket with a timeout polls before every recv).
        data.settimeout(None)  # SO_RCVTIMEO, set once per connection, bounds the blocking receive
        try:
            while received < count:
                if final is None and self._lines:
                    final = self._early_reply(poller, path)
                    continue
                if buffer is None:  # fresh_buffers, at the start of a piece
                    piece = _receive_piece(data, min(chunk, count - received), path)
                    if len(piece) == min(chunk, count - received):
                        _quickack(data)  # as when the loop drains the socket: the sender may wait for our ACK
                        consume(memoryview(piece))
                        received += len(piece)
                        continue
                    buffer = memoryview(bytearray(min(chunk, count - received)))
                    buffer[:len(piece)] = piece
                    filled = len(piece)
                    received += len(piece)
                    continue
                want = min(len(buffer) - filled, count - received)
                try:
                    got = data.recv_into(buffer[filled:filled + want], 0, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    if not self._await_data(poller, final, path):
                        break  # the server ended early and nothing more is coming
                    if final is None and self._sock.fileno() in self._ready:
                        final = self._early_reply(poller, path)
                    continue
                except OSError as exc:
                    raise SessionLost(f"data connection failed: {_reason(exc)}", path) from None
                if not got:
                    break
                filled += got
                received += got
                if filled == len(buffer):
                    consume(buffer[:filled])
                    filled = 0
                    if fresh_buffers:
                        buffer = None
        finally:
            data.settimeout(self.timeout)
        self._transfer_ended(final or self.read_reply(), path)
        # The short last piece only now: after a failure it is not handed over, so a retry resumes at a
        # piece boundary (handing it over first put every later block of a read_pieces run off by its length).
        if filled:
            assert buffer is not None  # filled counts bytes in the buffer of the piece under way
            consume(buffer[:filled])
        return received

    def _await_data(self, poller, final: Optional[Reply], path) -> bool:
        """Wait until the data or the control connection has something (``self._ready``); False once the
        server has ended the transfer and nothing more arrives within the grace period."""
        _quickack(self._open_data)  # drained: the sender may be waiting for our ACK
        wait = self.timeout if final is None else min(DRAIN_GRACE, self.timeout)
        self._ready = dict(poller.poll(1000 * wait))
        if self._ready:
            return True
        if final is None:
            raise errors.TimedOut(f"transfer stalled for {self.timeout:g} s", path)
        return False

    def _early_reply(self, poller, path) -> Reply:
        """A reply during a transfer: a ``226`` (data may still be in flight), or the server's failure."""
        reply = self.read_reply()
        if not reply.ok:
            raise transfer_error(reply, path)
        poller.unregister(self._sock)
        return reply

    def _send_data(self, chunks: Iterable, size: Optional[int], path):
        sent = 0
        try:
            for chunk in chunks:
                self._open_data.sendall(chunk)
                sent += len(chunk)
        except OSError as exc:
            # The server stopped reading; its reply on the control connection says why.
            reply = self._reply_after_failure()
            raise (transfer_error(reply, path) if reply and not reply.ok else
                   SessionLost(f"data connection failed: {_reason(exc)}", path)) from None
        if size is not None and sent != size:
            raise errors.HpcfsError(f"the source gave {sent} bytes where {size} were announced", path)

    def _send_transformed(self, chunks: Iterable, size: int, path) -> Reply:
        """``chunks`` through the grant's transform, then the stream's end and the connection's (UFTPD reads
        an encrypted upload up to the end of its connection); returns the transfer's reply.  UFTPD reads a
        gzip-only upload up to its announced size and may close the connection before the stream's trailer
        is sent: a send that fails then is no failure, the reply says whether the server has the file."""
        assert self._transform is not None
        encoder, plain = self._transform.encoder(), 0
        data = self._open_data
        for chunk in chunks:
            plain += len(chunk)
            if not _sent(data, encoder.update(chunk)):
                break
        else:
            if _sent(data, encoder.finish()):
                with contextlib.suppress(OSError):
                    data.shutdown(socket.SHUT_WR)
        reply = self.read_reply()
        if reply.code == 226 and plain != size:
            raise errors.HpcfsError(f"the source gave {plain} bytes where {size} were announced", path)
        return reply

    def _reply_after_failure(self) -> Optional[Reply]:
        try:
            return self.read_reply()
        except errors.HpcfsError:
            return None

    # -- lifecycle --------------------------------------------------------------------------------------
    def idle_and_sound(self) -> bool:
        """Whether the session can take a request: nothing may have arrived while it sat idle (an EOF from
        a server that ended the session, or stray bytes)."""
        if self.broken or self._lines or self._partial:
            return False
        sockets = [self._sock] + ([self._data] if self._data is not None else [])
        poller = select.poll()
        for sock in sockets:
            poller.register(sock, select.POLLIN)
        return not poller.poll(0)

    def close(self):
        """QUIT (UFTPD never answers it) and close both connections."""
        try:
            self._sock.sendall(b"QUIT\r\n")
        except OSError:
            pass
        self._close_data()
        _close(self._sock)
        self.broken = True


def _sent(sock: socket.socket, payload: bytes) -> bool:
    """Whether ``payload`` went out; False once the peer has closed the connection."""
    try:
        sock.sendall(payload)
        return True
    except OSError as exc:
        log.debug("UFTPD closed the data connection during an upload: %s", _reason(exc))
        return False


def _hand_over(plain: bytearray, chunk: int, consume: Callable[[memoryview], object], last: bool = False) -> int:
    """Each whole ``chunk`` of ``plain`` (and with ``last`` the rest) taken off its front and consumed, in a
    buffer of its own; returns the bytes handed over."""
    handed = 0
    while len(plain) >= chunk or (last and plain):
        piece = bytes(plain[:chunk])
        del plain[:chunk]
        consume(memoryview(piece))
        handed += len(piece)
    return handed


def _owned(view: memoryview) -> bytes | bytearray:
    """The buffer behind ``view`` when the view covers all of it, else a copy of the part received."""
    whole = view.obj
    return whole if isinstance(whole, (bytes, bytearray)) and len(view) == len(whole) else bytearray(view)


def _receive_piece(data: socket.socket, size: int, path) -> bytes:
    """Up to ``size`` bytes in one blocking ``recv(MSG_WAITALL)``: into a new, uninitialised bytes object,
    so a block costs one copy (the kernel's), where ``recv_into`` needs a zero-filled buffer first (at this
    machine's memory bandwidth, zero-filling a 2 MiB block cost as much as receiving it).  Fewer bytes come
    back when ``PIECE_WAIT`` passes first (a slow link; the server ended early): the caller goes on
    watching both connections."""
    try:
        return data.recv(size, socket.MSG_WAITALL)
    except (BlockingIOError, InterruptedError):
        return b""
    except OSError as exc:
        raise SessionLost(f"data connection failed: {_reason(exc)}", path) from None


def _quickack(sock):
    if QUICKACK is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, QUICKACK, 1)
        except OSError:
            pass


def _close(sock):
    try:
        sock.close()
    except OSError:
        pass


def _reason(exc: OSError) -> str:
    return exc.strerror or exc.__class__.__name__


def _shown(command: str) -> str:
    """``command`` as a log line shows it: without the secret of a login or of a server-to-server copy."""
    if command.startswith("PASS "):
        return "PASS ***"
    if command.startswith("RECEIVE-FILE "):
        return command.rsplit(" ", 1)[0] + " ***"
    return command
