"""One UFTP (UFTPD 3.5.x compatible) FTP session: the command table, paths, ranges and transfers.

Reply texts, codes and quirks follow the real UFTPD 3.5.3 (github.com/UNICORE-EU/uftpd; compared with
it by tests/test_differential_uftp.py).  The served root is the session's "/": every path the client sees
is a virtual absolute path, and every local path goes through ``common.confine``.
"""
import errno
import hashlib
import os
import posixpath
import random
import socket
import sys
import tarfile
import time

from ...uftp.multistream import BLOCK as MULTI_STREAM_BLOCK
from ...uftp.multistream import MultiStreamData
from ..common import OutsideRoot, confine, open_for_writing, peer_uid
from .wire import DroppedConnection, PlainData, close_socket, data_stream, ls_line, mlst_facts, stat_line

NOT_ACCESSIBLE = "Directory/file does not exist or cannot be accessed!"
# Replies of real UFTPD 3.5.x bugs, kept so clients are tested against what they will meet.
SIZE_BUG = "Connector.write_message() got an unexpected keyword argument 'msg'"
APPE_BUG = "tuple indices must be integers or slices, not str"
RNTO_BUG = "'Session' object has no attribute 'rename_from_path'"  # RNTO before any RNFR
FEATURES = [  # the glued entries are the real server's missing commas
    "PASV", "EPSV", "RANG STREAM", "REST STREAMMFMT", "MLSD", "MLST", "APPE",
    "MFF Modify;UNIX.mode;KEEP-ALIVE", "ARCHIVE", "UTF-8",
]
HASHES = {"MD5": hashlib.md5, "SHA-1": hashlib.sha1, "SHA-256": hashlib.sha256, "SHA-512": hashlib.sha512}
DEFAULT_BUFFER = 1 << 20


class UFTPError(Exception):
    """A command failure with its FTP code; ``close_data`` mirrors the real server dropping the data conns."""

    def __init__(self, message, code=500, close_data=False):
        super().__init__(message)
        self.code = code
        self.close_data = close_data


class EndSession(Exception):
    """QUIT/BYE, or a data connection that never came: the control connection closes without a reply."""


def normalize_path(path):
    path = posixpath.normpath(path)
    while path.startswith("//"):
        path = path[1:]
    return path


# -- the session ---------------------------------------------------------------------------------------
class Session:
    """Serves one logged-in control connection until QUIT or EOF.  ``server`` gives root, knobs and log."""

    def __init__(self, server, control, job):
        self.server = server
        self.control = control
        self.job = job
        self.base, self.cwd = self._initial_dirs(job.base_file)
        self.max_streams = server.setting("max_streams")
        self.num_streams = job.streams
        self.connectors = []
        self.data = None
        self.rename_from = None
        self.keep_alive = False
        self.archive_mode = False
        self.hash_algorithm = "MD5"
        self.options = {"RATE_LIMIT": 0, "FILE_READ_BUFFER_SIZE": DEFAULT_BUFFER,
                        "FILE_WRITE_BUFFER_SIZE": DEFAULT_BUFFER, "BUFFER_SIZE": DEFAULT_BUFFER,
                        "SENDFILE_ENABLED": False}
        self.reset_range()
        self.commands = {
            "BYE": self.quit, "QUIT": self.quit, "SYST": self.syst, "FEAT": self.feat, "NOOP": self.noop,
            "PWD": self.pwd, "CWD": self.cwd_cmd, "CDUP": self.cdup, "MKD": self.mkd, "DELE": self.dele,
            "RNFR": self.rnfr, "RNTO": self.rnto, "RMD": self.rmd, "PASV": self.pasv, "EPSV": self.epsv,
            "LIST": self.list_cmd, "STAT": self.stat_cmd, "MLST": self.mlst, "MLSD": self.mlsd,
            "SIZE": self.size, "RANG": self.rang, "REST": self.rest, "RETR": self.retr, "ALLO": self.allo,
            "STOR": self.stor, "APPE": self.appe, "MFMT": self.mfmt, "MFF": self.mff, "TYPE": self.type_cmd,
            "KEEP-ALIVE": self.keep_alive_cmd, "OPTS": self.opts, "HASH": self.hash_cmd,
        }

    def _initial_dirs(self, base_file):
        """Base dir = dirname of the job's ``file``; none means "/" with the start in $HOME (here "/")."""
        dirname = posixpath.dirname(base_file)
        if not dirname:
            return "/", "/"
        base = normalize_path(dirname if dirname.startswith("/") else "/" + dirname)
        if not os.path.isdir(self.local(base)):
            raise UFTPError(f"No such directory: {base}", 550)
        return base, base

    # -- plumbing ----------------------------------------------------------------------------------------
    def reply(self, line):
        self.control.reply(line)

    def run(self):
        try:
            while True:
                line = self.control.read_line()
                if line is None:
                    break
                if line:
                    self.handle(line)
        except EndSession:
            pass
        finally:
            self.close_data()

    def handle(self, line):
        verb, has_params, params = line.partition(" ")
        verb = verb.upper()
        # A bare verb gets params None: handlers that need them fail with Python's own error text, which
        # is exactly what the real server replies (e.g. "'NoneType' object has no attribute 'split'").
        params = params if has_params else None
        self.server.log.record(verb, params or "")
        self.server.knobs.delay()
        handler = self.commands.get(verb)
        if handler is None:
            return self.reply("502 Command not implemented.")
        try:
            handler(params)
        except EndSession:
            raise
        except UFTPError as exc:
            self.fail(exc.code, verb, str(exc), exc.close_data)
        except Exception as exc:
            self.fail(500, verb, self.error_text(exc))

    def fail(self, code, verb, message, close_data=False):
        try:
            self.reply(f"{code} Error processing command '{verb}': {message}")
        except OSError:  # the control connection itself is gone
            raise EndSession() from None
        if close_data:
            self.close_data()

    def error_text(self, exc):
        """``str(exc)``, with local paths in OSErrors shown as the client's virtual paths."""
        if not isinstance(exc, OSError) or exc.errno is None:
            return str(exc)
        text = f"[Errno {exc.errno}] {exc.strerror}"
        if exc.filename is not None:
            text += f": {self.virtual(exc.filename)!r}"
        if exc.filename2 is not None:
            text += f" -> {self.virtual(exc.filename2)!r}"
        return text

    # -- paths -------------------------------------------------------------------------------------------
    def makeabs(self, path):
        """The virtual absolute path for a client path; 534 outside the base dir or the served root."""
        path = path.strip()
        virtual = normalize_path(path if path.startswith("/") else self.cwd + "/" + path)
        # A plain prefix test, as the real server does: base /data also admits /data2 (the served root
        # still confines everything below).
        if not virtual.startswith(self.base):
            raise UFTPError(f"Forbidden: {virtual} not in {self.base}", 534)
        try:
            confine(self.server.root, virtual)
        except OutsideRoot:
            raise UFTPError(f"Forbidden: {virtual} not in {self.base}", 534) from None
        return virtual

    def local(self, virtual):
        return os.path.join(self.server.real_root, virtual.lstrip("/"))

    def virtual(self, local):
        local = str(local)
        root = self.server.real_root
        if local == root:
            return "/"
        return local[len(root):] if local.startswith(root + os.sep) else local

    def target(self, params):
        virtual = self.makeabs(params)
        return virtual, self.local(virtual)

    # -- simple commands ---------------------------------------------------------------------------------
    def quit(self, _):
        self.close_data()
        raise EndSession()

    def syst(self, _):
        self.reply("215 Unix Type: L8")

    def feat(self, _):
        self.reply("211-Features:")
        for feature in FEATURES:
            self.reply(f" {feature}")
        if self.job.key is not None:
            self.reply(f" CRYPTED-{self.job.algo}")
        algos = ";".join(name + ("*" if name == self.hash_algorithm else "") for name in HASHES)
        self.reply(f" HASH {algos}")
        self.reply("211 END")

    def noop(self, params):
        try:
            wanted = int(params)
        except (TypeError, ValueError):
            return self.reply("200 OK")
        self.num_streams = min(wanted, self.max_streams)
        code = "222" if wanted == self.num_streams else "223"
        self.reply(f"{code} Opening {self.num_streams} data connections")

    def pwd(self, _):
        self.reply(f'257 "{self.cwd}"')

    def cwd_cmd(self, params):
        virtual, real = self.target(params)
        if not os.path.isdir(real):
            code = errno.ENOTDIR if os.path.exists(real) else errno.ENOENT
            error = OSError(code, os.strerror(code), real)
            raise UFTPError(f"Can't cwd to directory: {self.error_text(error)}", 550)
        self.cwd = virtual
        self.reply("200 OK")

    def cdup(self, _):
        if self.cwd == self.base:
            raise UFTPError("Can't cd up, already at base directory", 534)
        self.cwd = posixpath.dirname(self.cwd)
        self.reply("200 OK")

    def mkd(self, params):
        virtual, real = self.target(params)
        os.mkdir(real)
        self.reply(f'257 "{virtual}" directory created')

    def dele(self, params):
        os.unlink(self.target(params)[1])
        self.reply("200 OK")

    def rmd(self, params):
        os.rmdir(self.target(params)[1])
        self.reply("200 OK")

    def rnfr(self, params):
        self.rename_from = self.target(params)[1]
        self.reply("350 File action OK Please send rename-to")

    def rnto(self, params):
        real = self.target(params)[1]
        if self.rename_from is None:
            raise AttributeError(RNTO_BUG)
        os.rename(self.rename_from, real)  # like the real server, RNFR is not forgotten afterwards
        self.reply("200 OK")

    def type_cmd(self, params):
        mode = params.strip()
        if mode in ("ARCHIVE", "NORMAL"):
            self.archive_mode = mode == "ARCHIVE"
        self.reply("200 OK")

    def keep_alive_cmd(self, params):
        self.keep_alive = params.lower() in ("true", "yes", "1")
        self.reply("200 OK")

    def opts(self, params):
        tokens = params.split(" ", 2)
        option = tokens[0].upper()
        if len(tokens) == 1:
            self.reply("211-OPTS")
            for name, value in self.options.items():
                self.reply(f" {name} {value}")
            self.reply(f" HASH {self.hash_algorithm}")
            return self.reply("211 END")
        self.set_option(option, tokens[1])
        self.reply(f"200 {option}={tokens[1]}")

    def set_option(self, option, value):
        flag = value.lower() in ("true", "1", "yes")
        if option == "HASH":
            if value.upper() not in HASHES:
                raise ValueError(f"Unsupported hash algorithm '{value.upper()}'")
            self.hash_algorithm = value.upper()
        elif option == "KEEP_ALIVE":
            self.keep_alive = flag
        elif option == "ARCHIVE":
            self.archive_mode = flag
        elif option == "SENDFILE_ENABLED":
            self.options[option] = flag
        elif option in self.options:
            number = int(value)
            if number < 0:
                raise ValueError("Need positive value")
            self.options[option] = number
        else:
            raise ValueError(f"Unknown option '{option}'")

    def mfmt(self, params):
        mtime, path = params.split(" ", 2)
        real = self.target(path)[1]
        self._set_mtime(real, mtime)
        self.reply(f"213 Modify={mtime}; {path}")

    def mff(self, params):
        facts, path = params.split(" ", 2)
        real = self.target(path)[1]
        applied = []
        for fact in filter(None, facts.split(";")):
            key, value = fact.split("=")
            if key.lower() == "modify":
                self._set_mtime(real, value)
            elif key.lower() == "unix.mode":
                os.chmod(real, int(value, 8))
            else:
                raise ValueError(f"Not supported: '{key}'")
            applied.append(fact)
        self.reply(f"213 {';'.join(applied)}; {path}")

    @staticmethod
    def _set_mtime(real, mtime):
        seconds = time.mktime(time.strptime(mtime, "%Y%m%d%H%M%S"))  # server local time, as the real one
        os.utime(real, (seconds, seconds))

    # -- metadata on the control channel -----------------------------------------------------------------
    def stat_cmd(self, params):
        tokens = (params or "").split(" ", 1)
        as_file = tokens[0] != "N"
        virtual, real = self.target(tokens[1] if len(tokens) > 1 else ".")
        if not os.path.exists(real):
            raise OSError(NOT_ACCESSIBLE)
        entries = [(real, virtual)]
        if not as_file and os.path.isdir(real):
            entries = [(os.path.join(real, name), posixpath.join(virtual, name)) for name in os.listdir(real)]
        self.reply("211- Sending file list")
        for entry in entries:
            try:
                line = stat_line(*entry)
            except OSError:  # vanished or dangling: skipped, as the real server does
                continue
            self.reply(f" {line}")
        self.reply("211 End of file list")

    def mlst(self, params):
        virtual, real = self.target(params if params is not None else ".")
        if not os.path.exists(real):
            raise UFTPError(NOT_ACCESSIBLE, 550, close_data=True)
        self.reply(f"250- Listing {virtual}")
        self.reply(f" {mlst_facts(real, virtual)}")
        self.reply("250 End")

    def size(self, params):
        real = self.target(params)[1]
        if not os.path.exists(real):
            raise UFTPError(NOT_ACCESSIBLE, 550)
        raise TypeError(SIZE_BUG)

    # -- data connections --------------------------------------------------------------------------------
    def pasv(self, _):
        self.add_data_connection(extended=False)

    def epsv(self, params):
        if params and params.strip().upper() == "ALL":
            return self.reply("200 OK")
        self.add_data_connection(extended=True)

    def add_data_connection(self, extended):
        if len(self.connectors) == self.num_streams:
            self.close_data()
        my_ip = self.control.local_ip()
        with self.data_listener(my_ip) as listener:
            port = listener.getsockname()[1] + self.server.setting("advertised_data_port_offset")
            if extended:
                self.reply(f"229 Entering Extended Passive Mode (|||{port}|)")
            else:
                self.reply(f"227 Entering Passive Mode ({my_ip.replace('.', ',')},{port // 256},{port % 256})")
            sock = self.accept_own_data_connection(listener)
        self.connectors.append(sock)
        if len(self.connectors) == self.num_streams:
            framed = self.num_streams > 1
            streams = [data_stream(s, self.job.key, self.job.algo, self.job.compress, framed) for s in self.connectors]
            self.data = streams[0] if self.num_streams == 1 else MultiStreamData(streams)

    def data_listener(self, host: str) -> socket.socket:
        """A listener for one data connection: any free port, or with ``data_port_range`` the first free one
        from a random port of the range on, wrapping around (UFTPD's ``setup_data_server_socket``)."""
        port_range = self.server.setting("data_port_range")
        if port_range is None:
            return socket.create_server((host, 0))
        lowest, highest = port_range
        count = highest - lowest + 1
        first = random.randrange(count)
        for step in range(count):
            try:
                return socket.create_server((host, lowest + (first + step) % count))
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    raise
        raise UFTPError(f"Cannot set up data connection - no free ports in range {lowest}:{highest}")

    def accept_own_data_connection(self, listener):
        """The connection from this session's client to ``listener``.  Another host is refused as UFTPD does
        (a 500 that ends the command); on this machine the peer must also be the control connection's local
        user, so another user of a shared login node who races for the announced port is closed unserved
        and the wait goes on."""
        deadline = time.monotonic() + self.server.setting("data_accept_timeout")
        expected_ip, expected_uid = self.control.peer_ip(), peer_uid(self.control.sock)
        while True:
            listener.settimeout(max(deadline - time.monotonic(), 0.001))
            try:
                sock, address = listener.accept()
            except socket.timeout:
                raise EndSession() from None
            if address[0] != expected_ip:
                sock.close()
                raise Exception(f"Rejecting connection from unexpected host {address[0]} - expected {expected_ip}")
            if expected_uid is None or peer_uid(sock) == expected_uid:
                sock.settimeout(None)
                return sock
            self.server.log.record("data-refused", f"uid {peer_uid(sock)}")
            close_socket(sock)

    def close_data(self):
        self.num_streams = 1
        if self.data is not None:
            self.data.close()
        else:
            for sock in self.connectors:
                close_socket(sock)
        self.connectors = []
        self.data = None

    def after_transfer(self, close_first):
        """Range state resets after every transfer; without keep-alive the data connection closes, after the
        226 -- unless ``close_first`` (the real server's order after receiving, or to end a gzip or cipher
        stream after sending)."""
        self.reset_range()
        if close_first:
            self.close_data()
        self.reply("226 File transfer successful")
        if not self.keep_alive:
            self.close_data()

    # -- listings over the data connection ---------------------------------------------------------------
    def list_cmd(self, params):
        path = params if params and params != "-a" else "."
        self.send_listing(path, ls_line)

    def mlsd(self, params):
        self.send_listing(params or ".", mlst_facts)

    def send_listing(self, path, formatter):
        virtual, real = self.target(path)
        if not os.path.isdir(real):
            raise UFTPError("Directory does not exist.", 550, close_data=True)
        names = os.listdir(real)
        self.reply("150 OK")
        for name in names:
            try:
                line = formatter(os.path.join(real, name), posixpath.join(virtual, name))
                self.data.write((line + "\n").encode())
            except (OSError, AttributeError):  # per-entry failures are skipped, as the real server does
                continue
        self.reset_range()
        self.reply("226 File transfer successful")
        self.close_data()  # listings always end the data connection

    # -- ranges and transfers ----------------------------------------------------------------------------
    def reset_range(self):
        self.offset, self.number_of_bytes, self.have_range = 0, -1, False

    def rang(self, params):
        tokens = params.split(" ")
        try:
            start, end = int(tokens[0]), int(tokens[1])
        except (ValueError, IndexError):
            raise UFTPError("Argument syntax error", 501) from None
        if (start, end) == (1, 0):
            self.reset_range()
            return self.reply("350 Resetting range")
        self.offset, self.number_of_bytes, self.have_range = start, end - start, True
        self.reply(f"350 Restarting at {start}. End byte range at {end}")

    def rest(self, params):
        try:
            offset = int(params)
        except (TypeError, ValueError):
            raise UFTPError("Argument syntax error", 501) from None
        self.offset, self.have_range = offset, False
        self.reply(f"350 Restarting at {offset}.")

    def allo(self, params):
        count = int(params)
        if self.have_range:
            self.number_of_bytes = count
        else:  # ALLO alone: write from 0, truncating
            self.offset, self.number_of_bytes = 0, count
        self.reply(f"200 OK Will read up to {self.number_of_bytes} bytes from data connection.")

    def readable(self, params):
        virtual, real = self.target(params)
        if not (os.path.exists(real) and os.access(real, os.R_OK)):
            raise UFTPError(NOT_ACCESSIBLE, 550)
        return virtual, real

    def announced_size(self, real):
        """With RANG the range length (even past EOF); else the file size (even after REST)."""
        if self.have_range:
            return self.number_of_bytes
        size = os.path.getsize(real)
        self.number_of_bytes = size - self.offset
        return size

    def retr(self, params):
        _, real = self.readable(params)
        self.reply(f"150 OK {self.announced_size(real)} bytes available for reading.")
        self.transfer(lambda: self.send_file(real), close_first=self.job.layered)

    def stor(self, params):
        real = self.target(params)[1]
        if self.number_of_bytes == -1:
            self.number_of_bytes = sys.maxsize
        with open_for_writing(self.server.root, self.virtual(real), "ab"):
            os.utime(real)  # "touch", as the real server does before 150
        self.reply("150 OK")
        self.transfer(lambda: self.receive_file(real), close_first=not self.keep_alive)

    def appe(self, params):
        real = self.target(params)[1]
        if self.number_of_bytes == -1:
            self.number_of_bytes = sys.maxsize  # left set by the failure below, so a following APPE proceeds
            os.stat(real)
            raise TypeError(APPE_BUG)
        self.reply("150 OK")
        self.transfer(lambda: self.receive_file(real), close_first=not self.keep_alive)

    def transfer(self, move, close_first):
        try:
            move()
        except Exception:
            self.close_data()
            raise
        self.after_transfer(close_first)

    def send_file(self, real):
        drop_at = self.server.knobs.take_drop()
        count = self.number_of_bytes if drop_at is None else min(self.number_of_bytes, drop_at)
        corrupt = self.server.take_corruption()
        with open(real, "rb") as source:
            source.seek(self.offset)
            if corrupt and count > 0:
                first = source.read(1)
                self.data.write(bytes([first[0] ^ 0xFF]))
                count -= 1
            if isinstance(self.data, PlainData) and not self.server.setting("data_chunk_latency"):
                if count > 0:  # socket.sendfile takes count 0 as "to EOF"
                    self.data.sock.sendfile(source, source.tell(), count)
            else:
                self.copy(source, self.data, count)
        if drop_at is not None and drop_at < self.number_of_bytes:
            self.close_data()
            raise DroppedConnection()

    def receive_file(self, real):
        if self.archive_mode:
            return self.receive_archive(real)
        if self.job.key is not None:  # a cipher stream ends only with the connection
            self.number_of_bytes = sys.maxsize
        drop_at = self.server.knobs.take_drop()
        count = self.number_of_bytes if drop_at is None else min(self.number_of_bytes, drop_at)
        with open_for_writing(self.server.root, self.virtual(real), "r+b") as target:
            if not self.have_range:
                target.truncate(0)
            target.seek(self.offset)
            received = self.copy(self.data, target, count)
        if drop_at is not None and received == drop_at:
            self.close_data()
            raise DroppedConnection()

    def receive_archive(self, real_dir):
        """TYPE ARCHIVE: unpack a tar stream below the target, each member confined like any path."""
        with tarfile.open(mode="r|", fileobj=self.data) as tar:
            for member in tar:
                if not member.isfile():
                    continue
                virtual, real = self.target(posixpath.join(self.virtual(real_dir), member.name))
                os.makedirs(os.path.dirname(real), exist_ok=True)
                with open_for_writing(self.server.root, virtual, "wb") as target:
                    self.copy(tar.extractfile(member), target, member.size)

    def copy(self, source, target, count):
        block = MULTI_STREAM_BLOCK if isinstance(self.data, MultiStreamData) else self.options["BUFFER_SIZE"]
        pause = self.server.setting("data_chunk_latency")
        total = 0
        while total < count:
            data = source.read(min(block, count - total))
            if not data:
                break
            target.write(data)
            total += len(data)
            if pause:
                time.sleep(pause)
        return total

    def hash_cmd(self, params):
        virtual, real = self.readable(params)
        self.announced_size(real)
        digest = HASHES[self.hash_algorithm]()
        last_keepalive = time.monotonic()
        with open(real, "rb") as source:
            source.seek(self.offset)
            remaining = self.number_of_bytes
            while remaining > 0:
                data = source.read(min(DEFAULT_BUFFER, remaining))
                if not data:
                    break
                digest.update(data)
                remaining -= len(data)
                if time.monotonic() - last_keepalive > 30:  # keep the client entertained, as the real one
                    self.reply("213-")
                    last_keepalive = time.monotonic()
        last_byte = max(0, self.offset + self.number_of_bytes - 1)
        self.reply(f"213 {self.hash_algorithm} {self.offset}-{last_byte} {digest.hexdigest()} {virtual}")
        self.reset_range()
