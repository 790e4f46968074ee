"""The local UFTP server, driven over raw sockets and compared with the real UFTPD 3.5.x replies
(github.com/UNICORE-EU/uftpd; tests/test_differential_uftp.py runs the real one), byte for byte where the
bytes are fixed."""
import base64
import hashlib
import json
import os
import pwd
import re
import socket
import struct
import subprocess
import sys
import time
import zlib

import pytest
import requests
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from hpcfs.servers.uftp import UFTPServer

pytestmark = pytest.mark.timeout(30)
USER, PASSWORD = "demo", "test123"
BASE = "/srv/uftp/data"  # the transcript's base dir, recreated inside the served root
SPEC_FEAT = [
    b"211-Features:\n", b" PASV\n", b" EPSV\n", b" RANG STREAM\n", b" REST STREAMMFMT\n", b" MLSD\n",
    b" MLST\n", b" APPE\n", b" MFF Modify;UNIX.mode;KEEP-ALIVE\n", b" ARCHIVE\n", b" UTF-8\n",
    b" HASH MD5*;SHA-1;SHA-256;SHA-512\n", b"211 END\n",
]


# -- helpers --------------------------------------------------------------------------------------------
class Wire:
    """A raw control connection; replies are kept as the exact bytes received."""

    def __init__(self, port, source_ip=None):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10,
                                             source_address=(source_ip, 0) if source_ip else None)
        self.input = self.sock.makefile("rb")

    def reply(self):
        """All lines of one reply (multi-line until 'NNN ')."""
        lines = []
        while True:
            line = self.input.readline()
            lines.append(line)
            if not line or (line[:3].isdigit() and line[3:4] == b" "):
                return lines

    def cmd(self, text):
        self.sock.sendall(text.encode() + b"\r\n")
        return self.reply()

    def one(self, text):
        lines = self.cmd(text)
        assert len(lines) == 1, lines
        return lines[0]

    def login(self, secret, greeting=None):
        first = self.reply()
        if greeting is not None:
            assert first == [greeting]
        assert self.one("USER anonymous") == b"331 Please specify the password\n"
        return self.one(f"PASS {secret}")

    def data(self, command="EPSV", source_ip=None):
        reply = self.one(command)
        if command == "EPSV":
            port = int(re.fullmatch(rb"229 Entering Extended Passive Mode \(\|\|\|(\d+)\|\)\n", reply).group(1))
        else:
            numbers = re.fullmatch(rb"227 Entering Passive Mode \(127,0,0,1,(\d+),(\d+)\)\n", reply).groups()
            port = int(numbers[0]) * 256 + int(numbers[1])
        return socket.create_connection(("127.0.0.1", port), timeout=10,
                                        source_address=(source_ip, 0) if source_ip else None)

    def closed(self):
        return self.input.read() == b""

    def close(self):
        self.sock.close()


def read_exactly(sock, count):
    chunks, have = [], 0
    while have < count:
        chunk = sock.recv(min(1 << 20, count - have))
        if not chunk:
            break
        chunks.append(chunk)
        have += len(chunk)
    return b"".join(chunks)


def read_all(sock):
    return read_exactly(sock, 1 << 40)


def auth(server, body=None, user=USER, password=PASSWORD, headers=None, name=None):
    url = server.auth_url if name is None else server.auth_url.rsplit("/", 1)[0] + "/" + name
    headers = headers or {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}
    return requests.post(url, json=body or {}, headers=headers, verify=server.cert_file, timeout=10)


def secret_for(server, base=BASE + "/", **body):
    reply = auth(server, {"serverPath": base, **body})
    assert reply.status_code == 200, reply.text
    return reply.json()["secret"]


def session(server, base=BASE + "/", **body):
    wire = Wire(server.listen_port)
    assert wire.login(secret_for(server, base, **body)) == b"230 Login successful\n"
    return wire


@pytest.fixture
def tree(tmp_path):
    """The transcript's files, with fixed modes and a fixed mtime an hour ago."""
    root = tmp_path / "root"
    base = root / BASE.lstrip("/")
    (base / "sub").mkdir(parents=True)
    (base / "hello.txt").write_bytes(b"hello uftp\n")
    (base / "with space.txt").write_bytes(b"x\n")
    (base / "big.bin").write_bytes(os.urandom(5_000_000))
    mtime = int(time.time()) - 3600
    for path in (base / "hello.txt", base / "with space.txt", base / "big.bin"):
        path.chmod(0o666)
        os.utime(path, (mtime, mtime))
    (base / "sub").chmod(0o777)
    os.utime(base / "sub", (mtime, mtime))
    return root, base, mtime


@pytest.fixture
def server(tree, tmp_path):
    srv = UFTPServer(str(tree[0]), {USER: PASSWORD}, version="DEV", tls_dir=str(tmp_path),
                     cleanup_interval=0.1).start()
    yield srv
    srv.stop()


def modify(mtime):
    return time.strftime("%Y%m%d%H%M%S", time.localtime(mtime))


# -- the transcript, replayed ---------------------------------------------------------------------------
def test_transcript_login_feat_metadata(server, tree):
    _, base, mtime = tree
    wire = Wire(server.listen_port)
    assert wire.reply() == [b"220 UFTPD DEV, https://www.unicore.eu\n"]
    assert wire.one("SYST") == b"215 Unix Type: L8\n"
    assert wire.one("USER anonymous") == b"331 Please specify the password\n"
    assert wire.one("PASS " + secret_for(server)) == b"230 Login successful\n"
    assert wire.cmd("FEAT") == SPEC_FEAT
    assert wire.one("PWD") == b'257 "/srv/uftp/data"\n'
    assert wire.one("TYPE I") == b"200 OK\n"
    assert wire.one("OPTS") == b"500 Error processing command 'OPTS': 'NoneType' object has no attribute 'split'\n"
    assert wire.one("OPTS BUFFER_SIZE 1048576") == b"200 BUFFER_SIZE=1048576\n"
    assert wire.cmd("OPTS HASH") == [
        b"211-OPTS\n", b" RATE_LIMIT 0\n", b" FILE_READ_BUFFER_SIZE 1048576\n", b" FILE_WRITE_BUFFER_SIZE 1048576\n",
        b" BUFFER_SIZE 1048576\n", b" SENDFILE_ENABLED False\n", b" HASH MD5\n", b"211 END\n"]
    stamp, ms = modify(mtime).encode(), str(1000 * mtime).encode()
    dir_size = str(os.stat(base / "sub").st_size).encode()
    assert wire.cmd("MLST hello.txt") == [
        b"250- Listing /srv/uftp/data/hello.txt\n",
        b" size=11;modify=" + stamp + b";type=file;perm=rw;UNIX.mode=100666; hello.txt\n", b"250 End\n"]
    assert wire.cmd("MLST sub") == [
        b"250- Listing /srv/uftp/data/sub\n",
        b" size=" + dir_size + b";modify=" + stamp + b";type=dir;perm=lwe;UNIX.mode=40777; sub\n", b"250 End\n"]
    assert wire.one("MLST nope.txt") == (
        b"550 Error processing command 'MLST': Directory/file does not exist or cannot be accessed!\n")
    assert wire.one("SIZE big.bin") == (
        b"500 Error processing command 'SIZE': Connector.write_message() got an unexpected keyword argument 'msg'\n")
    assert wire.cmd("STAT F hello.txt") == [
        b"211- Sending file list\n", b" -rw- 11 " + ms + b" hello.txt\n", b"211 End of file list\n"]
    listing = wire.cmd("STAT N .")
    assert listing[0] == b"211- Sending file list\n" and listing[-1] == b"211 End of file list\n"
    assert sorted(listing[1:-1]) == sorted([
        b" -rw- 11 " + ms + b" hello.txt\n", b" drwx " + dir_size + b" " + ms + b" sub\n",
        b" -rw- 2 " + ms + b" with space.txt\n", b" -rw- 5000000 " + ms + b" big.bin\n"])
    assert wire.one("HASH hello.txt") == b"213 MD5 0-10 f1648fd1ea0805927d1847a10051a5d7 /srv/uftp/data/hello.txt\n"
    assert [wire.one(c) for c in ("NOOP", "NOOP 1", "NOOP 8", "NOOP 1")] == [
        b"200 OK\n", b"222 Opening 1 data connections\n", b"223 Opening 4 data connections\n",
        b"222 Opening 1 data connections\n"]
    wire.sock.sendall(b"QUIT\r\n")
    assert wire.closed()  # QUIT gets no reply at all


def test_transcript_transfers_keep_alive(server, tree):
    _, base, mtime = tree
    big = (base / "big.bin").read_bytes()
    wire = session(server)
    assert wire.one("KEEP-ALIVE true") == b"200 OK\n"
    data = wire.data("EPSV")
    assert wire.one("RANG 10 20") == b"350 Restarting at 10. End byte range at 20\n"
    assert wire.one("RETR big.bin") == b"150 OK 10 bytes available for reading.\n"
    assert read_exactly(data, 10) == big[10:20]
    assert wire.reply() == [b"226 File transfer successful\n"]
    assert wire.one("RANG 0 5") == b"350 Restarting at 0. End byte range at 5\n"
    assert wire.one("RETR hello.txt") == b"150 OK 5 bytes available for reading.\n"
    assert read_exactly(data, 5) == b"hello"
    assert wire.reply() == [b"226 File transfer successful\n"]
    assert wire.one("REST 6") == b"350 Restarting at 6.\n"
    assert wire.one("RETR hello.txt") == b"150 OK 11 bytes available for reading.\n"  # full size, 5 follow
    assert read_exactly(data, 5) == b"uftp\n"
    assert wire.reply() == [b"226 File transfer successful\n"]
    assert wire.one("ALLO 4") == b"200 OK Will read up to 4 bytes from data connection.\n"
    assert wire.one("STOR up.txt") == b"150 OK\n"
    data.sendall(b"abcd")
    assert wire.reply() == [b"226 File transfer successful\n"]
    assert (base / "up.txt").read_bytes() == b"abcd"
    assert wire.one("RANG 1 0") == b"350 Resetting range\n"
    assert wire.one("MLSD") == b"150 OK\n"
    lines = read_all(data).split(b"\n")  # the listing closes even a keep-alive connection
    assert wire.reply() == [b"226 File transfer successful\n"]
    up_mode = f"{os.stat(base / 'up.txt').st_mode:o}".encode()
    assert lines[-1] == b"" and len(lines) == 6
    assert b"size=4;modify=" + modify(os.stat(base / "up.txt").st_mtime).encode() + \
        b";type=file;perm=rw;UNIX.mode=" + up_mode + b"; up.txt" in lines
    assert b"size=2;modify=" + modify(mtime).encode() + b";type=file;perm=rw;UNIX.mode=100666; with space.txt" in lines

    data = wire.data("PASV")
    assert wire.one("KEEP-ALIVE false") == b"200 OK\n"
    assert wire.one("MLSD") == b"150 OK\n"
    assert len(read_all(data).split(b"\n")) == 6
    assert wire.reply() == [b"226 File transfer successful\n"]
    data = wire.data("EPSV")
    assert wire.one("LIST") == b"150 OK\n"
    listing = read_all(data)
    assert wire.reply() == [b"226 File transfer successful\n"]
    date = time.strftime("%b %d %H:%M", time.localtime(mtime)).encode()
    assert b"-rw-------   1 dummy dummy 11 " + date + b" hello.txt\r\n" in listing
    assert b"-rw-------   1 dummy dummy 2 " + date + b" with space.txt\r\n" in listing
    assert b"drwx------   3 dummy dummy " in listing


def test_transcript_namespace_and_errors(server, tree):
    _, base, _ = tree
    (base / "up.txt").write_bytes(b"abcd")
    wire = session(server)
    assert wire.one("MKD newdir") == b'257 "/srv/uftp/data/newdir" directory created\n'
    assert wire.one("RNFR up.txt") == b"350 File action OK Please send rename-to\n"
    assert wire.one("RNTO newdir/up2.txt") == b"200 OK\n"
    assert wire.one("MFMT 20200101120000 newdir/up2.txt") == b"213 Modify=20200101120000; newdir/up2.txt\n"
    assert wire.one("MFF UNIX.mode=600; newdir/up2.txt") == b"213 UNIX.mode=600; newdir/up2.txt\n"
    assert wire.cmd("MLST newdir/up2.txt") == [
        b"250- Listing /srv/uftp/data/newdir/up2.txt\n",
        b" size=4;modify=20200101120000;type=file;perm=rw;UNIX.mode=100600; up2.txt\n", b"250 End\n"]
    assert wire.one("DELE newdir/up2.txt") == b"200 OK\n"
    assert wire.one("RMD newdir") == b"200 OK\n"
    assert wire.one("CWD sub") == b"200 OK\n"
    assert wire.one("PWD") == b'257 "/srv/uftp/data/sub"\n'
    assert wire.one("CDUP") == b"200 OK\n"
    assert wire.one("CDUP") == b"534 Error processing command 'CDUP': Can't cd up, already at base directory\n"
    assert wire.one("CWD /etc") == b"534 Error processing command 'CWD': Forbidden: /etc not in /srv/uftp/data\n"
    assert wire.one("RETR /etc/passwd") == (
        b"534 Error processing command 'RETR': Forbidden: /etc/passwd not in /srv/uftp/data\n")
    assert wire.one("APPE hello.txt") == (
        b"500 Error processing command 'APPE': tuple indices must be integers or slices, not str\n")
    assert wire.one("FOO") == b"502 Command not implemented.\n"
    wire.sock.sendall(b"QUIT\r\n")
    assert wire.closed()


# -- semantics beyond the transcript (reference §4-5) ---------------------------------------------------
def test_rang_past_end_announces_the_range_and_sends_what_exists(server):
    wire = session(server)
    data = wire.data()
    assert wire.one("RANG 5 100") == b"350 Restarting at 5. End byte range at 100\n"
    assert wire.one("RETR hello.txt") == b"150 OK 95 bytes available for reading.\n"
    assert read_all(data) == b" uftp\n"  # without keep-alive the connection closes after the bytes
    assert wire.reply() == [b"226 File transfer successful\n"]


@pytest.mark.parametrize("setup, payload, expected", [
    (["RANG 5 7"], b"AB", b"01234AB789"),  # in place, no truncation
    (["ALLO 2"], b"AB", b"AB"),  # ALLO alone truncates
    (["REST 5"], b"AB", b"\0\0\0\0\0AB"),  # REST truncates, then writes at the offset
    (["RANG 5 7", "ALLO 1"], b"AB", b"01234A6789"),  # ALLO overrides the range's count
    ([], b"new", b"new"),  # bare STOR reads to EOF and truncates
])
def test_store_semantics(server, tree, setup, payload, expected):
    target = tree[1] / "digits.txt"
    target.write_bytes(b"0123456789")
    wire = session(server)
    data = wire.data()
    for command in setup:
        assert wire.one(command).startswith((b"350 ", b"200 "))
    assert wire.one("STOR digits.txt") == b"150 OK\n"
    data.sendall(payload)
    data.close()
    assert wire.reply() == [b"226 File transfer successful\n"]
    assert target.read_bytes() == expected


def test_empty_files_and_allo_zero(server, tree):
    (tree[1] / "empty").write_bytes(b"")
    wire = session(server)
    assert wire.one("KEEP-ALIVE true") == b"200 OK\n"
    data = wire.data()
    assert wire.one("RETR empty") == b"150 OK 0 bytes available for reading.\n"
    assert wire.reply() == [b"226 File transfer successful\n"]
    assert wire.one("ALLO 0") == b"200 OK Will read up to 0 bytes from data connection.\n"
    assert wire.one("STOR made-empty") == b"150 OK\n"
    assert wire.reply() == [b"226 File transfer successful\n"]
    assert (tree[1] / "made-empty").read_bytes() == b""
    assert wire.one("HASH empty") == b"213 MD5 0-0 d41d8cd98f00b204e9800998ecf8427e /srv/uftp/data/empty\n"
    assert wire.one("OPTS HASH SHA-256") == b"200 HASH=SHA-256\n"
    assert wire.one("RANG 0 5") == b"350 Restarting at 0. End byte range at 5\n"
    digest = hashlib.sha256(b"hello").hexdigest().encode()
    assert wire.one("HASH hello.txt") == b"213 SHA-256 0-4 " + digest + b" /srv/uftp/data/hello.txt\n"
    assert data.fileno() != -1


def test_error_replies(server, tree):
    (tree[1] / "full").mkdir()
    (tree[1] / "full" / "f").write_bytes(b"1")
    wire = session(server)
    expected = {
        "RMD full": b"500 Error processing command 'RMD': [Errno 39] Directory not empty: '/srv/uftp/data/full'\n",
        "DELE nope": b"500 Error processing command 'DELE': [Errno 2] No such file or directory: "
                     b"'/srv/uftp/data/nope'\n",
        "MKD sub": b"500 Error processing command 'MKD': [Errno 17] File exists: '/srv/uftp/data/sub'\n",
        "RNTO x": b"500 Error processing command 'RNTO': 'Session' object has no attribute 'rename_from_path'\n",
        "RANG a b": b"501 Error processing command 'RANG': Argument syntax error\n",
        "REST x": b"501 Error processing command 'REST': Argument syntax error\n",
        "CWD nope": b"550 Error processing command 'CWD': Can't cwd to directory: [Errno 2] No such file or "
                    b"directory: '/srv/uftp/data/nope'\n",
        "STAT F nope": b"500 Error processing command 'STAT': Directory/file does not exist or cannot be accessed!\n",
        "RETR nope": b"550 Error processing command 'RETR': Directory/file does not exist or cannot be accessed!\n",
        "SIZE nope": b"550 Error processing command 'SIZE': Directory/file does not exist or cannot be accessed!\n",
        "MFMT 2020 x y": b"500 Error processing command 'MFMT': too many values to unpack (expected 2)\n",
        "MFF Foo=1; hello.txt": b"500 Error processing command 'MFF': Not supported: 'Foo'\n",
        "OPTS NOPE 1": b"500 Error processing command 'OPTS': Unknown option 'NOPE'\n",
        "KEEP-ALIVE": b"500 Error processing command 'KEEP-ALIVE': 'NoneType' object has no attribute 'lower'\n",
        "EPSV ALL": b"200 OK\n",
        "abor": b"502 Command not implemented.\n",
    }
    for command, reply in expected.items():
        assert wire.one(command) == reply, command
    assert wire.one("RNFR hello.txt") == b"350 File action OK Please send rename-to\n"
    assert wire.one("RNTO ../../x") == b"534 Error processing command 'RNTO': Forbidden: /srv/x not in /srv/uftp/data\n"
    # the real base check is a plain prefix test: a sibling sharing the prefix is reachable
    assert wire.one("MLST ../data2") == (
        b"550 Error processing command 'MLST': Directory/file does not exist or cannot be accessed!\n")
    # a failed bare APPE leaves the byte count set, so the next APPE goes ahead (and fails on the file)
    assert wire.one("APPE hello.txt").endswith(b"tuple indices must be integers or slices, not str\n")
    assert wire.cmd("APPE nope") == [b"150 OK\n"]
    assert wire.reply() == [
        b"500 Error processing command 'APPE': [Errno 2] No such file or directory: '/srv/uftp/data/nope'\n"]


def test_listing_a_file_is_an_error_and_closes_the_data_connection(server):
    wire = session(server)
    data = wire.data()
    assert wire.one("MLSD hello.txt") == b"550 Error processing command 'MLSD': Directory does not exist.\n"
    assert read_all(data) == b""


def test_login_rules(server):
    before_login = Wire(server.listen_port)
    before_login.reply()
    assert before_login.one("PWD") == b"500 Protocol error\n"
    assert before_login.closed()
    wrong_user = Wire(server.listen_port)
    wrong_user.reply()
    assert wrong_user.one("USER Anonymous") == b"500 Client login does not comply with protocol.\n"
    assert wrong_user.closed()
    wrong_secret = Wire(server.listen_port)
    assert wrong_secret.login("abcdefghijklmnopqrst") == b"530 Not logged in: no matching transfer request found\n"
    assert wrong_secret.closed()


def test_served_root_is_slash_and_symlinks_cannot_escape(server, tree, tmp_path):
    root, base, _ = tree
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"s")
    (root / "escape").symlink_to(outside)
    (root / "inside").symlink_to(base / "hello.txt")
    wire = session(server, base="/")
    assert wire.one("PWD") == b'257 "/"\n'
    assert wire.cmd("MLST /")[1].endswith(b"; /\n")
    assert wire.one("RETR escape/secret") == b"534 Error processing command 'RETR': Forbidden: /escape/secret not in /\n"
    assert wire.one("CWD ../..") == b"200 OK\n"  # ".." above "/" stays at "/", like a real root
    assert wire.cmd("MLST inside")[1].startswith(b" size=11;")


def test_missing_base_dir_ends_the_session_after_login(server):
    wire = Wire(server.listen_port)
    assert wire.login(secret_for(server, base="/no/such/dir/")) == b"230 Login successful\n"
    assert wire.closed()


def test_peer_ip_checked_for_control_and_data(server):
    elsewhere = Wire(server.listen_port)
    assert elsewhere.login(secret_for(server, client="10.1.2.3")) == (
        b"500 Error establishing connection: Rejecting connection for 'demo' from 127.0.0.1, allowed: ['10.1.2.3']\n")
    wire = session(server)
    reply = wire.one("EPSV")
    port = int(re.search(rb"\|\|\|(\d+)\|", reply).group(1))
    socket.create_connection(("127.0.0.1", port), timeout=5, source_address=("127.0.0.2", 0))
    assert wire.reply() == [b"500 Error processing command 'EPSV': Rejecting connection from unexpected host "
                            b"127.0.0.2 - expected 127.0.0.1\n"]
    assert wire.one("NOOP") == b"200 OK\n"


def test_non_persistent_secret_allows_one_session(server):
    secret = secret_for(server)
    first = Wire(server.listen_port)
    assert first.login(secret) == b"230 Login successful\n"
    second = Wire(server.listen_port)
    assert second.login(secret) == b"500 Session for these credentials is already running\n"


def test_persistent_secret_serves_many_sessions_and_dies_with_the_last(server):
    secret = secret_for(server, persistent="true")
    sessions = [Wire(server.listen_port) for _ in range(3)]
    assert [s.login(secret) for s in sessions] == [b"230 Login successful\n"] * 3
    for s in sessions[:2]:
        s.sock.sendall(b"QUIT\r\n")
        assert s.closed()
    time.sleep(0.5)  # a few cleanup polls: one session still holds the secret
    still = Wire(server.listen_port)
    assert still.login(secret) == b"230 Login successful\n"
    for s in (sessions[2], still):
        s.sock.sendall(b"QUIT\r\n")
        assert s.closed()
    time.sleep(0.5)
    late = Wire(server.listen_port)
    assert late.login(secret) == b"530 Not logged in: no matching transfer request found\n"


def test_session_limit_counts_jobs_and_sessions(server):
    server.knobs.extra["session_limit"] = 2
    secret = secret_for(server, persistent=True)
    secret_for(server)
    refused = auth(server, {"serverPath": BASE + "/"})
    assert refused.status_code == 500
    assert refused.json()["errorMessage"] == "Too many active sessions for 'demo' - server limit is 2"
    first, second = Wire(server.listen_port), Wire(server.listen_port)
    assert first.login(secret) == b"230 Login successful\n"
    assert second.login(secret) == (
        b"500 Too many active transfer requests / sessions for 'demo' - server limit is 2\n")


def test_unused_secret_expires(server):
    server.knobs.extra["secret_lifetime"] = 0.2
    secret = secret_for(server)
    time.sleep(0.6)
    assert Wire(server.listen_port).login(secret) == b"530 Not logged in: no matching transfer request found\n"
    assert server.user_counts["demo"] == 0


def test_multi_stream_framing_both_ways(server, tree):
    big = (tree[1] / "big.bin").read_bytes()[:100_000]
    (tree[1] / "part.bin").write_bytes(big)
    wire = session(server)
    assert wire.one("NOOP 2") == b"222 Opening 2 data connections\n"
    streams = [wire.data(), wire.data()]
    assert wire.one("RETR part.bin") == b"150 OK 100000 bytes available for reading.\n"
    received, seq = bytearray(), 0
    while True:
        headers = [read_exactly(s, 16) for s in streams]
        if not headers[0]:
            break
        block = bytearray()
        for index, (stream, header) in enumerate(zip(streams, headers)):
            magic, position, got_seq, size, length = struct.unpack(">HHIII", header)
            assert (magic, position, got_seq) == (0xCEBF, index, seq) and size <= 16384
            block += read_exactly(stream, length)
        received += block
        seq += 1
    assert wire.reply() == [b"226 File transfer successful\n"]
    assert hashlib.sha256(received).digest() == hashlib.sha256(big).digest()

    assert wire.one("NOOP 2") == b"222 Opening 2 data connections\n"
    streams = [wire.data(), wire.data()]
    assert wire.one("STOR upload.bin") == b"150 OK\n"
    for seq, start in enumerate(range(0, len(big), 16384)):
        block = big[start:start + 16384]
        half = len(block) // 2
        for index, chunk in enumerate((block[:half], block[half:])):
            streams[index].sendall(struct.pack(">HHIII", 0xCEBF, index, seq, len(block), len(chunk)) + chunk)
    for stream in streams:
        stream.close()
    assert wire.reply() == [b"226 File transfer successful\n"]
    assert (tree[1] / "upload.bin").read_bytes() == big


def test_gzip_and_aes_layers(server, tree):
    """compress=true: RETR is a gzip stream ended by closing; an AES key: STOR is one CBC stream whose
    PKCS#5 padding ends it (reference §5.6); FEAT advertises the cipher."""
    hello = (tree[1] / "hello.txt").read_bytes()
    wire = session(server, compress=True)
    data = wire.data()
    assert wire.one("RETR hello.txt") == b"150 OK 11 bytes available for reading.\n"
    assert zlib.decompress(read_all(data), wbits=31) == hello
    assert wire.reply() == [b"226 File transfer successful\n"]

    key = os.urandom(16 + 32)
    wire = session(server, encryptionKey=base64.b64encode(key).decode(), encryptionAlgorithm="AES")
    assert b" CRYPTED-AES\n" in wire.cmd("FEAT")
    data = wire.data()
    assert wire.one("STOR secret.bin") == b"150 OK\n"
    encryptor = Cipher(algorithms.AES(key[16:]), modes.CBC(key[:16])).encryptor()
    payload = os.urandom(1000)
    data.sendall(encryptor.update(payload + bytes([8]) * 8) + encryptor.finalize())
    data.close()
    assert wire.reply() == [b"226 File transfer successful\n"]
    assert (tree[1] / "secret.bin").read_bytes() == payload


# -- Auth REST and the command port ---------------------------------------------------------------------
def test_auth_errors_info_and_tokens(server):
    wrong = auth(server, password="nope")
    assert wrong.status_code == 401 and "errorMessage" in wrong.json()
    assert auth(server, name="OTHER").status_code == 404
    good = auth(server, {"serverPath": "/", "persistent": "true", "streamCount": 2}).json()
    assert good["success"] is True and good["reason"] == "" and good["serverPort"] == server.listen_port
    assert re.fullmatch("[a-z]{20}", good["secret"]) and good["serverHost"] == "127.0.0.1"
    basic = {"Authorization": "Basic " + base64.b64encode(b"demo:test123").decode()}
    info = requests.get(server.auth_url.rsplit("/", 1)[0], headers=basic, verify=server.cert_file, timeout=10).json()
    assert info["TEST"]["sessionLimit"] == 16 and info["TEST"]["uftpdServerVersion"] == "DEV"
    token = requests.get(server.auth_url.rsplit("/", 1)[0] + "/token", headers=basic, verify=server.cert_file,
                         timeout=10).text
    assert auth(server, headers={"Authorization": f"Bearer {token}"}).status_code == 200
    assert auth(server, headers={"Authorization": "Bearer not-a-token"}).status_code == 401
    server.knobs.refuse_logins = True
    assert auth(server).status_code == 401


def _jwt(private_key, alg, sub, lifetime=300):
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, padding
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

    def b64(raw):
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    now = int(time.time())
    claims = {"etd": "false", "sub": sub, "iss": sub, "iat": now, "exp": now + lifetime}
    signed = f"{b64(json.dumps({'alg': alg, 'typ': 'JWT'}).encode())}.{b64(json.dumps(claims).encode())}"
    if alg == "RS256":
        signature = private_key.sign(signed.encode(), padding.PKCS1v15(), hashes.SHA256())
    elif alg == "ES256":
        r, s = decode_dss_signature(private_key.sign(signed.encode(), ec.ECDSA(hashes.SHA256())))
        signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    else:
        signature = private_key.sign(signed.encode())
    return f"{signed}.{b64(signature)}"


def test_ssh_key_jwt_logins(server, tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    keys = {"RS256": rsa.generate_private_key(65537, 2048), "ES256": ec.generate_private_key(ec.SECP256R1()),
            "EdDSA": ed25519.Ed25519PrivateKey.generate()}
    lines = [k.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
             .decode() + " user@host" for k in keys.values()]
    authorized = tmp_path / "authorized_keys"
    authorized.write_text('from="127.0.0.1" ' + "\n".join(lines) + "\n")
    server.authorized_keys = str(authorized)
    for alg, key in keys.items():
        reply = auth(server, headers={"Authorization": f"Bearer {_jwt(key, alg, 'demo')}"})
        assert reply.status_code == 200, alg
    expired = _jwt(keys["EdDSA"], "EdDSA", "demo", lifetime=-10)
    assert auth(server, headers={"Authorization": f"Bearer {expired}"}).status_code == 401
    stranger = _jwt(ed25519.Ed25519PrivateKey.generate(), "EdDSA", "demo")
    assert auth(server, headers={"Authorization": f"Bearer {stranger}"}).status_code == 401


def _command_port(server, text):
    with socket.create_connection(("127.0.0.1", server.cmd_port), timeout=5) as sock:
        sock.sendall(text.encode())
        sock.shutdown(socket.SHUT_WR)
        return sock.makefile("rb").read()


@pytest.fixture
def command_port_server(tree, tmp_path):
    srv = UFTPServer(str(tree[0]), {USER: PASSWORD}, version="DEV", tls_dir=str(tmp_path), cmd_port=0).start()
    yield srv
    srv.stop()


def test_command_port_is_closed_unless_asked_for(server):
    assert server.cmd_port is None and server.log.total("uftp-transfer-request") == 0


def test_command_port_refuses_requests_without_its_secret(command_port_server, tree):
    server = command_port_server
    assert oct(os.stat(server.cmd_secret_file).st_mode & 0o777) == "0o600"
    job = f"request-type=uftp-transfer-request\nclient-ip=127.0.0.1\nuser=demo\nsecret=pushedsecret\nfile={BASE}/\n"
    refused = b"ERROR::Unauthorized: this command port needs the line command-secret=<its secret>\n"
    assert _command_port(server, job + "END\n") == refused
    assert _command_port(server, job + "command-secret=guess\nEND\n") == refused
    wire = Wire(server.listen_port)  # the pushed secret logs nobody in
    assert wire.login("pushedsecret") == b"530 Not logged in: no matching transfer request found\n"
    (tree[1] / "hello.txt").read_bytes() == b"hello uftp\n"


def test_command_port_speaks_the_uftpd_protocol(command_port_server, tree):
    server = command_port_server
    with open(server.cmd_secret_file) as handle:
        authorized = f"command-secret={handle.read().strip()}\n"
    job = f"request-type=uftp-transfer-request\nclient-ip=127.0.0.1\nuser=demo\nsecret=pushedsecret\nfile={BASE}/\n"
    assert _command_port(server, authorized + job + "END\n") == f"OK::{server.listen_port}\n".encode()
    assert _command_port(server, authorized + job + "END\n") == b"ERROR::Duplicate secret - this is not allowed.\n"
    assert _command_port(server, authorized + "request-type=uftp-ping-request\nEND\n") == (
        f"Version: DEV\nListenPort: {server.listen_port}\nListenAddress: 127.0.0.1\n"
        f"MaxSessionsPerClient: 16\n\n").encode()
    assert _command_port(server, authorized + "request-type=nope\nEND\n") == (
        b"ERROR::Unsupported request type 'nope'\n")
    # a request cut off before END is answered, not spun on (the real UFTPD loops forever on it)
    assert _command_port(server, authorized + "request-type=uftp-ping-request\n").startswith(b"Version: DEV\n")
    wire = Wire(server.listen_port)
    assert wire.login("pushedsecret") == b"230 Login successful\n"
    assert wire.one("PWD") == b'257 "/srv/uftp/data"\n'


INTRUDER = """
import encodings.idna, os, socket, sys  # (imported while the files are still readable)
os.setuid(65534)  # another user of the same machine
sock = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=10)
print("connected", flush=True)
received = b""
while True:
    chunk = sock.recv(65536)
    if not chunk:
        break
    received += chunk
print(len(received), flush=True)
"""


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to act as a second local user")
def test_data_connection_belongs_to_the_session_user(server, tree):
    """Another local user who connects first to the announced data port gets nothing; the client's own
    connection, from the same host, still carries the transfer."""
    big = (tree[1] / "big.bin").read_bytes()
    wire = session(server)
    port = int(re.search(rb"\|\|\|(\d+)\|", wire.one("EPSV")).group(1))
    intruder = subprocess.Popen([sys.executable, "-c", INTRUDER, str(port)], stdout=subprocess.PIPE, text=True)
    try:
        assert intruder.stdout.readline() == "connected\n"
        own = socket.create_connection(("127.0.0.1", port), timeout=10)
        assert wire.one("RETR big.bin") == b"150 OK 5000000 bytes available for reading.\n"
        assert hashlib.sha256(read_all(own)).hexdigest() == hashlib.sha256(big).hexdigest()
        assert wire.reply() == [b"226 File transfer successful\n"]
        assert intruder.stdout.readline() == "0\n"
    finally:
        intruder.kill()
        intruder.wait()
    assert server.log.snapshot()["data-refused"] == 1


# -- knobs and the request log --------------------------------------------------------------------------
def test_knobs_latency_drop_busy_and_log(server, tree):
    big = (tree[1] / "big.bin").read_bytes()
    wire = session(server)
    server.knobs.latency = 0.05
    started = time.monotonic()
    wire.one("NOOP")
    assert time.monotonic() - started >= 0.05
    server.knobs.latency = 0
    server.knobs.drop_after_bytes = 1000
    data = wire.data()
    assert wire.one("RETR big.bin") == b"150 OK 5000000 bytes available for reading.\n"
    assert read_all(data) == big[:1000]
    assert wire.reply() == [b"500 Error processing command 'RETR': [Errno 104] Connection reset by peer\n"]
    server.knobs.extra["data_chunk_latency"] = 0.01
    data = wire.data()
    assert wire.one("RANG 0 3000000") == b"350 Restarting at 0. End byte range at 3000000\n"
    started = time.monotonic()
    assert wire.one("RETR big.bin") == b"150 OK 3000000 bytes available for reading.\n"
    assert read_all(data) == big[:3000000]
    assert wire.reply() == [b"226 File transfer successful\n"] and time.monotonic() - started >= 0.03
    server.knobs.busy_responses = 1
    assert Wire(server.listen_port).login(secret_for(server)) == (
        b"500 Too many active transfer requests / sessions for 'demo' - server limit is 16\n")
    counts = server.log.snapshot()
    assert counts["RETR"] == 2 and counts["NOOP"] == 1 and counts["auth"] == 2 and counts["PASS"] == 2
    assert all("PASS" not in kind or not detail for kind, detail in server.log.entries)


def _serve_uftp(*arguments, env=None):
    script = ("import argparse, sys; from hpcfs.servers import uftp; p = argparse.ArgumentParser(); "
              "uftp.add_arguments(p); uftp.serve(p.parse_args(sys.argv[1:]))")
    return subprocess.Popen([sys.executable, "-c", script, *arguments], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def _banner(process, count):
    try:
        return "".join(process.stdout.readline() for _ in range(count))
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_cli_prints_endpoints_but_no_password(tree, tmp_path):
    users = tmp_path / "users"
    users.write_text("demo:s3cr3t-pw\n")
    users.chmod(0o600)
    output = _banner(_serve_uftp("--root", str(tree[0]), "--users-file", str(users), "--auth-port", "0",
                                 "--listen-port", "0"), 5)
    assert re.search(r"https://127\.0\.0\.1:\d+/rest/auth/TEST", output)
    assert re.search(r"uftp://USER@127\.0\.0\.1:\d+/rest/auth/TEST:/", output)
    assert "cert.pem" in output and "s3cr3t-pw" not in output
    assert "UFTPD command port: closed" in output


def test_cli_takes_no_passwords_on_the_command_line(tree, tmp_path):
    refused = subprocess.run([sys.executable, "-m", "hpcfs", "serve", "uftp", "--root", str(tree[0]),
                              "--users", "demo:s3cr3t-pw"], capture_output=True, text=True, timeout=30)
    assert refused.returncode == 2 and refused.stdout == ""
    assert len(refused.stderr.splitlines()) == 1 and "--users-file" in refused.stderr
    users = tmp_path / "users"
    users.write_text("demo:s3cr3t-pw\n")
    users.chmod(0o644)
    open_file = subprocess.run([sys.executable, "-m", "hpcfs", "serve", "uftp", "--root", str(tree[0]),
                                "--users-file", str(users)], capture_output=True, text=True, timeout=30)
    assert open_file.returncode == 2 and open_file.stderr.splitlines() == [
        f"hpcfs: error: the users file {users} is open to other users (mode 0644, owner uid {os.getuid()}): "
        f"run 'chmod 600 {users}' as its owner"]


def test_cli_without_users_generates_a_password_and_cleans_up(tree):
    env = {k: v for k, v in os.environ.items() if k not in ("UFTP_USER", "UFTP_PASSWORD")}
    process = _serve_uftp("--root", str(tree[0]), "--auth-port", "0", "--listen-port", "0", env=env)
    output = _banner(process, 6)
    credentials = re.search(r"generated a password for (\S+) in (\S+) ", output)
    assert credentials, output
    user, path = credentials.groups()
    assert user == pwd.getpwuid(os.getuid()).pw_name and path.endswith("/credentials")
    assert "alice" not in output and "secret" not in output.replace("command-secret", "")
    assert not os.path.exists(os.path.dirname(path))  # the key, certificate and password went with the server


def test_cli_names_a_port_in_use(tree, tmp_path):
    users = tmp_path / "users"
    users.write_text("demo:pw\n")
    users.chmod(0o600)
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        failed = subprocess.run([sys.executable, "-m", "hpcfs", "serve", "uftp", "--root", str(tree[0]),
                                 "--users-file", str(users), "--auth-port", "0", "--listen-port", str(port)],
                                capture_output=True, text=True, timeout=30)
    assert failed.returncode == 2 and failed.stderr.splitlines() == [
        f"hpcfs: error: port {port} on 127.0.0.1 is already in use (another server running?): choose another "
        f"with --listen-port PORT, or --listen-port 0 for any free port"]


# -- SSH-key logins with the key in ssh-agent ----------------------------------------------------------
@pytest.fixture
def ssh_agent(tmp_path, monkeypatch):
    """A real ssh-agent of this test's own, on a private socket, as SSH_AUTH_SOCK."""
    sock = tmp_path / "agent.sock"
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while not sock.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    monkeypatch.setenv("SSH_AUTH_SOCK", str(sock))
    yield sock
    agent.terminate()
    agent.wait(timeout=10)


def _ssh_keygen(path, key_type, passphrase=""):
    size = ["-b", "2048"] if key_type == "rsa" else []
    subprocess.run(["ssh-keygen", "-q", "-t", key_type, *size, "-N", passphrase, "-C", "demo@host", "-f", str(path)],
                   check=True, timeout=30)
    return path.with_name(path.name + ".pub")


@pytest.mark.parametrize("key_type", ["rsa", "ed25519"])
def test_ssh_key_login_signed_by_ssh_agent(server, tmp_path, ssh_agent, key_type):
    from hpcfs.uftp.auth import AuthClient, SSHKeyCredential

    key = tmp_path / f"id_{key_type}"
    public = _ssh_keygen(key, key_type)
    subprocess.run(["ssh-add", "-q", str(key)], check=True, timeout=30, capture_output=True)
    fingerprint = subprocess.run(["ssh-keygen", "-lf", str(public)], check=True, capture_output=True,
                                 text=True).stdout.split()[1]
    key.unlink()  # from now on only the agent has the private key
    server.authorized_keys = str(public)
    for identity in (str(public), fingerprint):  # like ssh -i key.pub, or the agent's name for the key
        client = AuthClient(server.auth_url, SSHKeyCredential("demo", identity), verify=server.cert_file)
        grant = client.authenticate(BASE)
        client.close()
        assert Wire(grant.port).login(grant.secret) == b"230 Login successful\n", identity
    assert server.log.snapshot()["auth"] == 2


def test_ssh_key_files_open_to_others_and_unknown_agent_keys_are_refused(tmp_path, ssh_agent):
    from hpcfs import errors
    from hpcfs.uftp.auth import SSHKeyCredential

    key = tmp_path / "id_ed25519"
    _ssh_keygen(key, "ed25519")
    key.chmod(0o644)
    with pytest.raises(errors.UsageError) as refused:
        SSHKeyCredential("demo", str(key))
    assert str(refused.value) == (f"UNPROTECTED PRIVATE KEY FILE: permissions 0644 for '{key}' are too open "
                                  f"(other users could read the key); run 'chmod 600 {key}'")
    with pytest.raises(errors.UsageError, match="no key with fingerprint SHA256:nope in the ssh-agent"):
        SSHKeyCredential("demo", "SHA256:nope")


def test_an_encrypted_key_file_asks_for_its_passphrase_on_a_terminal(tmp_path, monkeypatch):
    import pty

    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    key = tmp_path / "id_ed25519"
    public = _ssh_keygen(key, "ed25519", passphrase="correct horse")
    script = ("import sys; from hpcfs.uftp.auth import SSHKeyCredential; "
              "print('SIGNED', SSHKeyCredential('demo', sys.argv[1]).header().count('.'))")
    child, terminal = pty.fork()
    if child == 0:  # on the terminal, as a user typing the command
        os.execv(sys.executable, [sys.executable, "-c", script, str(public)])
    seen = b""
    while b"Enter passphrase for key" not in seen:
        seen += os.read(terminal, 1024)
    assert f"'{key}'".encode() in seen
    os.write(terminal, b"correct horse\n")
    while True:
        try:
            chunk = os.read(terminal, 1024)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        seen += chunk
    assert os.waitpid(child, 0)[1] == 0 and b"SIGNED 2" in seen
