"""UFTPD's wire pieces: file facts in its listing formats, the control connection's line I/O and the data
connections (plain, gzip, encrypted; the JPARSS multi-stream framing over them is the client's,
hpcfs/uftp/multistream.py; reference §5.5-5.6)."""
import errno
import os
import posixpath
import socket
import stat
import time
import zlib

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

try:
    from cryptography.hazmat.decrepit.ciphers.algorithms import Blowfish
except ImportError:  # cryptography < 43
    from cryptography.hazmat.primitives.ciphers.algorithms import Blowfish


# -- file facts in the real server's formats ------------------------------------------------------------
def _perm(real, letters, empty):
    modes = (os.R_OK, os.W_OK, os.X_OK)
    return "".join(letter if os.access(real, mode) else empty for letter, mode in zip(letters, modes))


def _display_name(virtual):
    return "/" if virtual == "/" else posixpath.basename(virtual)


def mlst_facts(real, virtual):
    st = os.stat(real)
    is_dir = stat.S_ISDIR(st.st_mode)
    perm = _perm(real, "lwe" if is_dir else "rwx", "")
    modify = time.strftime("%Y%m%d%H%M%S", time.localtime(st.st_mtime))
    kind = "dir" if is_dir else "file"
    facts = f"size={st.st_size};modify={modify};type={kind};perm={perm};UNIX.mode={st.st_mode:o}"
    return f"{facts}; {_display_name(virtual)}"


def stat_line(real, virtual):
    st = os.stat(real)
    kind = "d" if stat.S_ISDIR(st.st_mode) else "-"
    return f"{kind}{_perm(real, 'rwx', '-')} {st.st_size} {1000 * int(st.st_mtime)} {_display_name(virtual)}"


def ls_line(real, virtual):
    st = os.stat(real)
    is_dir = stat.S_ISDIR(st.st_mode)
    half_a_year = 15811200
    fmt = "%b %d %Y" if st.st_mtime < int(time.time()) - half_a_year else "%b %d %H:%M"
    date = time.strftime(fmt, time.localtime(st.st_mtime))
    kind, links = ("d", 3) if is_dir else ("-", 1)
    name = posixpath.basename(virtual)
    return f"{kind}{_perm(real, 'rwx', '-')}------   {links} dummy dummy {st.st_size} {date} {name}\r"


# -- the control connection ----------------------------------------------------------------------------
class ControlConnection:
    """Line I/O as the real server does it: ``\n`` endings, one send per reply line, Nagle left on (so
    clients meet the same delayed-ACK stalls as with UFTPD)."""

    def __init__(self, sock):
        self.sock = sock
        self._input = sock.makefile("rb")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)

    def read_line(self):
        """The next command line, stripped; None at EOF."""
        try:
            line = self._input.readline(8192)
        except OSError:
            return None
        return line.decode("utf-8", "replace").strip() if line else None

    def reply(self, line):
        self.sock.sendall(line.encode("utf-8") + b"\n")

    def peer_ip(self):
        return self.sock.getpeername()[0]

    def local_ip(self):
        return self.sock.getsockname()[0]

    def close(self):
        close_socket(self.sock)


# -- data connections --------------------------------------------------------------------------------------
# Every stream offers read(n) (n bytes unless EOF), read_some(n) (at least one unless EOF), write, close.
class PlainData:
    """A single data connection."""

    def __init__(self, sock):
        self.sock = sock
        self._input = sock.makefile("rb")

    def write(self, data):
        self.sock.sendall(data)
        return len(data)

    def read(self, length):
        return self._input.read(length)

    def read_some(self, length):
        return self._input.read1(length)

    def close(self):
        close_socket(self.sock)


class GzipLayer:
    """gzip (zlib wbits=31) over a stream; the trailer goes out on close, so the transfer ends there."""

    def __init__(self, inner):
        self.inner = inner
        self.compressor = zlib.compressobj(wbits=31)
        self.decompressor = zlib.decompressobj(wbits=31)
        self.pending = b""
        self.wrote = False

    def write(self, data):
        self.wrote = True
        self.inner.write(self.compressor.compress(data))
        return len(data)

    def read(self, length):
        while len(self.pending) < length:
            chunk = self.inner.read_some(1 << 16)
            self.pending += self.decompressor.decompress(chunk) if chunk else self.decompressor.flush()
            if not chunk:
                break
        data, self.pending = self.pending[:length], self.pending[length:]
        return data

    read_some = read

    def close(self):
        if self.wrote:
            _quietly(self.inner.write, self.compressor.flush())
        self.inner.close()


class CipherLayer:
    """The whole transfer as one cipher stream (Blowfish-ECB, or AES-CBC with key blob = IV || key),
    PKCS#5-style padding only at the end; so it ends with the connection.  ``framed`` (one of several
    streams): as UFTPD's PConnector, no padding sent (nor a last partial block) and none taken off."""

    def __init__(self, inner, key, algo, framed=False):
        self.inner = inner
        self.framed = framed
        self.cipher = _cipher(key, algo)
        self.block = self.cipher.algorithm.block_size // 8
        self.encryptor = self.decryptor = None
        self.written = 0
        self.held = self.plain = b""
        self.at_eof = False

    def write(self, data):
        self.encryptor = self.encryptor or self.cipher.encryptor()
        self.written += len(data)
        self.inner.write(self.encryptor.update(data))
        return len(data)

    def read(self, length):
        self.decryptor = self.decryptor or self.cipher.decryptor()
        while len(self.plain) < length and not self.at_eof:
            chunk = self.inner.read_some(1 << 16)
            data = self.held + chunk
            if chunk:  # hold back the last block: it may carry the padding
                keep = len(data) % self.block or self.block
                self.plain += self.decryptor.update(data[:-keep])
                self.held = data[-keep:]
            else:
                self.at_eof = True
                last = self.decryptor.update(data) + self.decryptor.finalize()
                self.plain += last[:-last[-1]] if last and not self.framed else last
        data, self.plain = self.plain[:length], self.plain[length:]
        return data

    read_some = read

    def close(self):
        if self.encryptor is not None and not self.framed:
            pad = self.block - self.written % self.block
            _quietly(self.inner.write, self.encryptor.update(bytes([pad]) * pad) + self.encryptor.finalize())
        self.inner.close()


def _cipher(key, algo):
    if algo == "AES":
        return Cipher(algorithms.AES(key[16:]), modes.CBC(key[:16]))
    return Cipher(Blowfish(key), modes.ECB())


def data_stream(sock, key=None, algo=None, compress=False, framed=False):
    """One data connection with the job's layers: plaintext -> gzip -> encryption -> TCP."""
    stream = PlainData(sock)
    if key is not None:
        stream = CipherLayer(stream, key, algo, framed)
    return GzipLayer(stream) if compress else stream


def _quietly(action, *args):
    try:
        action(*args)
    except OSError:  # the peer may already be gone
        pass


def close_socket(sock):
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


class DroppedConnection(ConnectionResetError):
    """The ``drop_after_bytes`` knob cut a transfer, as a network failure would."""

    def __init__(self):
        super().__init__(errno.ECONNRESET, os.strerror(errno.ECONNRESET))
