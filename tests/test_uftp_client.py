"""The UFTP backend against the local UFTPD-faithful server, over real sockets on 127.0.0.1.

Bytes are checked by sha256 against the served directory; round trips are counted in the server's log.
"""
import base64
import hashlib
import io
import json
import logging
import os
import random
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from hpcfs import errors
from hpcfs.servers.uftp import UFTPServer
from hpcfs.uftp import auth as uftp_auth
from hpcfs.uftp.backend import split_auth_path
from hpcfs.urls import open_backend, parse

pytestmark = pytest.mark.timeout(60)
MiB = 1 << 20


def sha(data):
    return hashlib.sha256(data).hexdigest()


def local_bytes(root, path):
    with open(os.path.join(root, path.lstrip("/")), "rb") as handle:
        return handle.read()


@pytest.fixture
def backend(uftp_server):
    opened, root = open_backend(uftp_server.url())
    assert root == "/"
    yield opened
    opened.close()


@pytest.fixture
def big_file(uftp_server):
    data = random.Random(5).randbytes(5 * MiB + 123)
    uftp_server.put("/big.bin", data)
    return data


def kill_all_sessions(server):
    """Cut every control connection server-side and let UFTPD reap the jobs: every secret dies."""
    secrets = set(server.jobs)
    with server._lock:  # no public hook yet (see the report): the server's own list of live connections
        controls = list(server._controls)
    for control in controls:
        control.close()
    deadline = time.monotonic() + 5
    while secrets & set(server.jobs) and time.monotonic() < deadline:
        server.reap()
        time.sleep(0.02)
    assert not secrets & set(server.jobs)


# -- metadata ------------------------------------------------------------------------------------------
def test_list_is_one_stat_with_every_attribute(uftp_server, backend):
    uftp_server.put("/a.txt", b"hello")
    uftp_server.put("/with space.txt", b"12")
    os.mkdir(os.path.join(uftp_server.root, "sub"))
    backend.list("/sub")  # the first request also logs a worker session in
    uftp_server.log.reset()
    entries = {entry.name: entry for entry in backend.list("/")}
    assert uftp_server.log.snapshot() == {"STAT": 1}
    assert sorted(entries) == ["a.txt", "sub", "with space.txt"]
    assert entries["sub"].is_dir and not entries["a.txt"].is_dir
    for name, entry in entries.items():
        st = os.stat(os.path.join(uftp_server.root, name))
        assert entry.mtime == int(st.st_mtime)
        if not entry.is_dir:
            assert entry.size == st.st_size
    assert backend.list("/sub") == []


def test_stat_gives_mode_and_utc_mtime_in_one_round_trip(uftp_server, backend):
    local = uftp_server.put("/dir/f.bin", b"x" * 1000)
    os.chmod(local, 0o640)
    os.utime(local, (1600000000, 1600000000))
    backend.list("/")  # logs a worker session in
    uftp_server.log.reset()
    entry = backend.stat("/dir/f.bin")
    assert uftp_server.log.snapshot() == {"MLST": 1, "STAT": 1}
    assert (entry.name, entry.kind, entry.size, entry.mode, entry.mtime) == ("f.bin", "file", 1000, 0o640,
                                                                             1600000000.0)
    root = backend.stat("/")
    assert root.name == "" and root.is_dir
    assert backend.stat("/dir").is_dir


def test_listing_a_file_or_a_missing_path(uftp_server, backend):
    uftp_server.put("/f", b"1")
    uftp_server.put("/d/d", b"2")  # a directory holding one file of its own name looks like a file
    with pytest.raises(errors.NotADirectory):
        backend.list("/f")
    assert [entry.name for entry in backend.list("/d")] == ["d"]
    with pytest.raises(errors.NotFound):
        backend.list("/missing")
    with pytest.raises(errors.NotFound):
        backend.stat("/missing")


# -- reads ---------------------------------------------------------------------------------------------
def test_random_ranges_match_the_file(uftp_server, backend, big_file):
    backend.stat("/big.bin")
    rng = random.Random(7)
    uftp_server.log.reset()
    for _ in range(40):
        offset = rng.randrange(len(big_file))
        length = rng.choice([1, 4096, 65536, rng.randrange(1, 2 * MiB)])
        assert sha(backend.read_range("/big.bin", offset, length)) == sha(big_file[offset:offset + length])
    counts = uftp_server.log.snapshot()
    assert counts["RETR"] == counts["RANG"] == 40
    assert counts["STAT"] <= 40  # only reads reaching past the known size ask for it first
    assert counts["EPSV"] == 1  # one kept-alive data connection for all of them


def test_reads_past_the_end_are_clamped(uftp_server, backend, big_file):
    size = len(big_file)
    assert backend.read_range("/big.bin", size - 10, 100) == big_file[-10:]
    assert backend.read_range("/big.bin", size, 10) == b""
    assert backend.read_range("/big.bin", size + 5000, 10) == b""
    assert backend.read_range("/big.bin", 0, 0) == b""
    # the session is still in step: the next read gets the right bytes without a new login
    logins = uftp_server.log.snapshot()["PASS"]
    assert backend.read_range("/big.bin", 100, 50) == big_file[100:150]
    assert uftp_server.log.snapshot()["PASS"] == logins


def test_a_file_that_grew_is_read_to_its_new_end(uftp_server, backend):
    uftp_server.put("/grow", b"a" * 1000)
    assert backend.stat("/grow").size == 1000
    uftp_server.put("/grow", b"b" * 5000)
    assert backend.read_range("/grow", 500, 1000) == b"b" * 1000


def test_a_file_shrunk_behind_our_back_never_hangs_or_lies(uftp_server, backend, big_file):
    backend.stat("/big.bin")  # the backend now believes 5 MiB
    logins = uftp_server.log.snapshot()["PASS"]
    os.truncate(os.path.join(uftp_server.root, "big.bin"), 1000)
    started = time.monotonic()
    assert backend.read_range("/big.bin", 0, 65536) == big_file[:1000]  # UFTPD announced 65536, sent 1000
    assert time.monotonic() - started < 5
    assert backend.read_range("/big.bin", 500, 65536) == big_file[500:1000]
    assert backend.read_range("/big.bin", 10, 20) == big_file[10:30]
    assert uftp_server.log.snapshot()["PASS"] == logins + 1  # the out-of-step session was replaced once


def test_read_whole_streams_the_file(uftp_server, backend, big_file):
    sink = io.BytesIO()
    backend.read_whole("/big.bin", sink)
    assert sha(sink.getvalue()) == sha(big_file)
    with pytest.raises(errors.NotFound):
        backend.read_whole("/missing", io.BytesIO())


def test_a_broken_data_connection_is_retried_on_another_session(uftp_server, backend, big_file):
    backend.stat("/big.bin")
    logins = uftp_server.log.snapshot()["PASS"]
    uftp_server.knobs.drop_after_bytes = 100000  # the server cuts the next transfer, as a network failure
    assert sha(backend.read_range("/big.bin", 0, 2 * MiB)) == sha(big_file[:2 * MiB])
    data = random.Random(3).randbytes(MiB)
    uftp_server.knobs.drop_after_bytes = 1000
    backend.write_whole("/up", io.BytesIO(data), len(data))
    assert sha(local_bytes(uftp_server.root, "/up")) == sha(data)
    assert uftp_server.log.snapshot()["PASS"] == logins + 2


def test_a_failing_sink_does_not_poison_the_pool(uftp_server, backend, big_file):
    class Full(io.RawIOBase):
        def write(self, data):
            raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        backend.read_whole("/big.bin", Full())
    assert backend.read_range("/big.bin", 0, 100) == big_file[:100]


def test_reading_a_directory(uftp_server, backend):
    os.mkdir(os.path.join(uftp_server.root, "d"))
    with pytest.raises(errors.IsADirectory):
        backend.read_range("/d", 0, 10)


def test_parallel_readers_get_their_own_bytes(uftp_server, backend, big_file):
    ranges = [(random.Random(i).randrange(len(big_file)), random.Random(-i).randrange(1, 300000))
              for i in range(64)]
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda r: backend.read_range("/big.bin", *r), ranges))
    for (offset, length), data in zip(ranges, results):
        assert sha(data) == sha(big_file[offset:offset + length])
    assert uftp_server.log.snapshot()["PASS"] <= 1 + backend.capabilities.max_parallel


# -- writes --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [0, 1, MiB + 1, 20 * MiB])
def test_write_whole(uftp_server, backend, size):
    data = random.Random(size).randbytes(size)
    uftp_server.put("/target", b"old content that is longer than one byte")
    uftp_server.log.reset()
    backend.write_whole("/target", io.BytesIO(data), size)
    assert sha(local_bytes(uftp_server.root, "/target")) == sha(data)
    counts = uftp_server.log.snapshot()
    if size > backend.large_write:
        assert counts["STOR"] == 1 + -(-size // backend.piece_size)  # truncate, then the pieces in order
    else:
        assert counts["STOR"] == counts["ALLO"] == 1 and counts["RANG"] == 0
    assert backend.stat("/target").size == size


def test_write_whole_creates_and_rejects_a_short_source(uftp_server, backend):
    backend.write_whole("/new/../fresh", io.BytesIO(b"abc"), 3)
    assert local_bytes(uftp_server.root, "/fresh") == b"abc"
    with pytest.raises(errors.HpcfsError, match="short"):
        backend.write_whole("/fresh", io.BytesIO(b"ab"), 3)
    with pytest.raises(errors.NotFound):
        backend.write_whole("/no/such/dir/f", io.BytesIO(b"x"), 1)


def resume_upload(backend, path, offset, data):
    """An upload session that keeps the first ``offset`` bytes at ``path`` and writes ``data`` after them."""
    session = backend.begin_upload(path, None, resume_from=offset)
    session.put_part(offset, io.BytesIO(data), len(data))
    session.commit()


def test_an_upload_session_continues_a_kept_prefix_in_place(uftp_server, backend):
    uftp_server.put("/f", b"0123456789")
    uftp_server.log.reset()
    resume_upload(backend, "/f", 5, b"AB")
    assert local_bytes(uftp_server.root, "/f") == b"01234AB789"
    assert uftp_server.log.snapshot()["REST"] == 0
    resume_upload(backend, "/f", 12, b"Z")
    assert local_bytes(uftp_server.root, "/f") == b"01234AB789\0\0Z"
    assert backend.read_range("/f", 9, 10) == b"9\0\0Z"


# -- namespace -----------------------------------------------------------------------------------------
def test_directories(uftp_server, backend):
    backend.mkdir("/d")
    assert os.path.isdir(os.path.join(uftp_server.root, "d"))
    with pytest.raises(errors.AlreadyExists):
        backend.mkdir("/d")
    with pytest.raises(errors.NotFound):
        backend.mkdir("/x/y")
    uftp_server.put("/d/f", b"1")
    with pytest.raises(errors.DirectoryNotEmpty):
        backend.rmdir("/d")
    with pytest.raises(errors.NotADirectory):
        backend.rmdir("/d/f")
    with pytest.raises(errors.IsADirectory):
        backend.remove("/d")
    backend.remove("/d/f")
    with pytest.raises(errors.NotFound):
        backend.remove("/d/f")
    backend.rmdir("/d")
    assert not os.path.exists(os.path.join(uftp_server.root, "d"))


def test_rename_replaces_like_posix(uftp_server, backend):
    uftp_server.put("/a", b"new")
    uftp_server.put("/b", b"old")
    backend.rename("/a", "/b")
    assert local_bytes(uftp_server.root, "/b") == b"new"
    assert not os.path.exists(os.path.join(uftp_server.root, "a"))
    with pytest.raises(errors.NotFound):
        backend.rename("/a", "/c")
    os.mkdir(os.path.join(uftp_server.root, "dir"))
    backend.rename("/b", "/dir/b")
    assert backend.read_range("/dir/b", 0, 10) == b"new"


def test_chmod_and_set_mtime(uftp_server, backend):
    local = uftp_server.put("/a dir/f", b"x")
    backend.chmod("/a dir/f", 0o751)  # a space in the parent: reached by CWD and the bare name
    assert os.stat(local).st_mode & 0o7777 == 0o751
    backend.set_mtime("/a dir/f", 1234567890.7)
    assert os.stat(local).st_mtime == 1234567890
    assert backend.stat("/a dir/f").mode == 0o751
    plain = uftp_server.put("/f2", b"y")
    uftp_server.log.reset()
    backend.chmod("/f2", 0o600)
    assert os.stat(plain).st_mode & 0o7777 == 0o600
    assert uftp_server.log.snapshot()["CWD"] == 0
    backend.chmod("/a dir", 0o700)  # UFTPD splits MFF/MFMT arguments on spaces: sent as "a dir/."
    backend.set_mtime("/a dir", 1234567890)
    directory = os.stat(os.path.join(uftp_server.root, "a dir"))
    assert (directory.st_mode & 0o7777, directory.st_mtime) == (0o700, 1234567890)
    with pytest.raises(errors.NotFound):
        backend.chmod("/missing", 0o600)


def test_set_mtime_when_the_server_lives_in_another_time_zone(uftp_server, backend, monkeypatch):
    uftp_server.put("/f", b"x")
    monkeypatch.setenv("TZ", "America/St_Johns")  # UTC-3:30/-2:30: UFTPD reads MFMT as its local time
    time.tzset()
    try:
        for stamp in (1234567890, 1700000000):  # winter and summer
            backend.set_mtime("/f", stamp)
            assert os.stat(os.path.join(uftp_server.root, "f")).st_mtime == stamp
    finally:
        monkeypatch.undo()
        time.tzset()


def test_paths_the_wire_cannot_carry(uftp_server, backend):
    uftp_server.log.reset()
    for path in ("/a\nDELE b", "/a\rb", "/trailing "):
        with pytest.raises(errors.InvalidPath):
            backend.stat(path)
    with pytest.raises(errors.InvalidPath):
        backend.list("/../..")
    assert uftp_server.log.total("MLST", "STAT", "DELE") == 0


# -- sessions, secrets, errors -------------------------------------------------------------------------
def test_a_dead_secret_is_renewed_transparently(uftp_server, backend):
    uftp_server.put("/f", b"content")
    assert backend.read_range("/f", 0, 7) == b"content"
    kill_all_sessions(uftp_server.server)
    uftp_server.log.reset()
    assert backend.read_range("/f", 0, 7) == b"content"
    assert [entry.name for entry in backend.list("/")] == ["f"]
    counts = uftp_server.log.snapshot()
    assert counts["POST /rest/auth/{name}"] == 1  # one new secret, shared by keeper and workers


def test_a_refused_renewal_is_reported(uftp_server, backend):
    backend.list("/")
    kill_all_sessions(uftp_server.server)
    uftp_server.knobs.refuse_logins = True
    with pytest.raises(errors.AuthenticationFailed):
        backend.list("/")


def test_busy_server_is_retried_with_backoff(uftp_server, backend):
    uftp_server.put("/f", b"abc")
    uftp_server.knobs.busy_responses = 2  # the next two logins meet "500 Too many active ..."
    assert backend.read_range("/f", 0, 3) == b"abc"
    assert uftp_server.knobs.busy_responses == 0


def test_server_session_limit_caps_the_pool(tmp_path):
    server = UFTPServer(str(tmp_path), {"u": "p"}, tls_dir=str(tmp_path), session_limit=4).start()
    try:
        url = f"uftp://u:p@127.0.0.1:{server.auth_port}/rest/auth/TEST:/?ca_file={server.cert_file}"
        opened, _ = open_backend(url, sessions="8")
        assert opened.capabilities.max_parallel == 1  # the budget, 4 - 2, holds the keeper and one worker
        assert opened.describe()["session_limit"] == 4 and opened.describe()["session_budget"] == 2
        opened.close()
    finally:
        server.stop()


def test_close_quits_every_session(uftp_server, backend, big_file):
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda i: backend.read_range("/big.bin", i * 1000, 1000), range(16)))
    logins = uftp_server.log.snapshot()["PASS"]
    backend.close()
    deadline = time.monotonic() + 5
    while uftp_server.log.snapshot()["QUIT"] < logins and time.monotonic() < deadline:
        time.sleep(0.02)
    assert uftp_server.log.snapshot()["QUIT"] == logins
    with pytest.raises(errors.Unavailable):
        backend.list("/")


def test_missing_base_directory(uftp_server):
    with pytest.raises(errors.NotFound):
        open_backend(uftp_server.url("/no/such/base"))


def test_base_directory_is_the_root(uftp_server):
    uftp_server.put("/base dir/inner.txt", b"inside")
    opened, root = open_backend(uftp_server.url("/base dir"))
    try:
        assert root == "/"
        assert [entry.name for entry in opened.list("/")] == ["inner.txt"]
        assert opened.read_range("/inner.txt", 0, 100) == b"inside"
        assert opened.describe()["base_dir"] == "/base dir"
    finally:
        opened.close()


def test_describe_and_repr_never_show_secrets(uftp_server, backend, caplog):
    caplog.set_level(logging.DEBUG)
    backend.list("/")
    description = backend.describe()
    assert description["server_version"] == "3.5.3"
    assert any("KEEP-ALIVE" in line for line in description["features"])
    assert description["session_limit"] == 16 and description["base_dir"] == "/"
    text = repr(backend) + repr(description) + repr(backend._auth) + repr(backend._pool._current) + caplog.text
    for secret in list(uftp_server.server.jobs) + ["test123"]:
        assert secret not in text


def test_wrong_password_is_refused_without_echo(uftp_server):
    url = uftp_server.url().replace(":test123@", ":wrong-pass-123@")
    with pytest.raises(errors.AuthenticationFailed) as caught:
        open_backend(url)
    assert "wrong-pass-123" not in str(caught.value) and "wrong-pass-123" not in repr(caught.value)


def test_unknown_server_name(uftp_server):
    with pytest.raises(errors.NotFound, match="no such server 'NOPE'"):
        open_backend(uftp_server.url().replace("/rest/auth/TEST:", "/rest/auth/NOPE:"))


def test_tls_is_verified_by_default(uftp_server, monkeypatch):
    monkeypatch.delenv("HPCFS_CA_FILE", raising=False)
    plain = f"uftp://demo:test123@{uftp_server.netloc}/rest/auth/TEST:/"
    with pytest.raises(errors.Unavailable, match="TLS"):
        open_backend(plain)
    opened, _ = open_backend(plain + "?verify=false")
    opened.close()
    monkeypatch.setenv("HPCFS_CA_FILE", uftp_server.server.cert_file)
    opened, _ = open_backend(plain)
    opened.close()


def test_unreachable_auth_server_fails_fast():
    silent = socket.create_server(("127.0.0.1", 0))  # accepts connections, never answers
    try:
        started = time.monotonic()
        with pytest.raises(errors.TimedOut):
            open_backend(f"uftp://u:p@127.0.0.1:{silent.getsockname()[1]}/rest/auth/T:/", timeout="1")
        assert time.monotonic() - started < 5
    finally:
        silent.close()
    closed = socket.create_server(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    with pytest.raises(errors.Unavailable):
        open_backend(f"uftp://u:p@127.0.0.1:{port}/rest/auth/T:/", timeout="1")


# -- credentials and URLs ------------------------------------------------------------------------------
def test_credentials_from_the_environment(uftp_server, monkeypatch):
    for name, value in uftp_server.env.items():
        monkeypatch.setenv(name, value)
    opened, _ = open_backend(uftp_server.plain_url())
    opened.close()
    monkeypatch.delenv("UFTP_PASSWORD")
    with pytest.raises(errors.UsageError, match="no password"):
        open_backend(uftp_server.plain_url())
    monkeypatch.delenv("UFTP_USER")
    with pytest.raises(errors.UsageError, match="no UFTP credentials"):
        open_backend(uftp_server.plain_url())


def test_bearer_token_literal_file_and_variable(tmp_path, monkeypatch):
    (tmp_path / "root").mkdir()
    server = UFTPServer(str(tmp_path / "root"), {}, tokens={"tok-123": "demo"}, tls_dir=str(tmp_path)).start()
    try:
        base = f"uftp://127.0.0.1:{server.auth_port}/rest/auth/TEST:/?ca_file={server.cert_file}"
        (tmp_path / "token").write_text("tok-123\n")
        (tmp_path / "token").chmod(0o600)  # a token file others may read is refused (test_local_safety.py)
        monkeypatch.setenv("MY_TOKEN", "tok-123")
        for spec in ("tok-123", f"@{tmp_path}/token", "@@MY_TOKEN"):
            opened, _ = open_backend(base + "&token=" + spec)
            assert opened.list("/") == [] and "tok-123" not in repr(opened.describe())
            opened.close()
        with pytest.raises(errors.AuthenticationFailed):
            open_backend(base + "&token=wrong")
        with pytest.raises(errors.UsageError):
            open_backend(base + "&token=@@UNSET_VARIABLE_X")
    finally:
        server.stop()


@pytest.mark.parametrize("key_type", ["ed25519", "rsa", "ecdsa"])
def test_ssh_key_signed_jwt(tmp_path, monkeypatch, key_type):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    key = {"ed25519": lambda: ed25519.Ed25519PrivateKey.generate(),
           "rsa": lambda: rsa.generate_private_key(65537, 2048),
           "ecdsa": lambda: ec.generate_private_key(ec.SECP256R1())}[key_type]()
    home = tmp_path / "home"
    (home / ".uftp").mkdir(parents=True)
    (home / ".uftp" / "id").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
        serialization.BestAvailableEncryption(b"pass phrase")))
    (home / ".uftp" / "id").chmod(0o600)  # ssh's rule: a key others may read is refused
    authorized = tmp_path / "authorized_keys"
    authorized.write_bytes(key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                         serialization.PublicFormat.OpenSSH) + b" demo@host\n")
    monkeypatch.setenv("HOME", str(home))
    server = UFTPServer(str(tmp_path), {}, authorized_keys=str(authorized), tls_dir=str(tmp_path)).start()
    try:
        url = (f"uftp://demo:pass%20phrase@127.0.0.1:{server.auth_port}/rest/auth/TEST:/"
               f"?identity=id&ca_file={server.cert_file}")
        opened, _ = open_backend(url)  # "id" resolves to ~/.uftp/id, the password is the passphrase
        assert opened.describe()["credential"] == "ssh-key"
        opened.close()
        with pytest.raises(errors.UsageError, match="passphrase"):
            open_backend(url.replace("pass%20phrase", "wrong"))
    finally:
        server.stop()


def test_jwt_claims():
    from cryptography.hazmat.primitives.asymmetric import ed25519

    key = ed25519.Ed25519PrivateKey.generate()
    header, payload, signature = uftp_auth.signed_jwt("alice", key, now=1000).split(".")

    def decode(part):
        return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))

    assert json.loads(decode(header)) == {"alg": "EdDSA", "typ": "JWT"}
    assert json.loads(decode(payload)) == {"etd": "false", "sub": "alice", "iss": "alice", "iat": 1000, "exp": 1300}
    key.public_key().verify(decode(signature), f"{header}.{payload}".encode())  # raises if it does not match


@pytest.mark.parametrize("url, auth_url, base", [
    ("uftp://h:9000/rest/auth/TEST:/data", "https://h:9000/rest/auth/TEST", "/data"),
    ("uftp://h:9000/rest/auth/TEST", "https://h:9000/rest/auth/TEST", "/"),
    ("uftp://h:9000/rest/auth/TEST:/", "https://h:9000/rest/auth/TEST", "/"),
    ("uftp://h:8080/SITE/rest/auth/NAME:/home/u", "https://h:8080/SITE/rest/auth/NAME", "/home/u"),
    ("uftp://h:9000/rest/auth/TEST:/odd:/name", "https://h:9000/rest/auth/TEST", "/odd:/name"),
    ("uftp://u:p@h:9000/rest/auth/TEST:/with%20space", "https://h:9000/rest/auth/TEST", "/with space"),
])
def test_url_shapes(url, auth_url, base):
    assert split_auth_path(parse(url)) == (auth_url, base)


@pytest.mark.parametrize("url", ["uftp://h:9000/data", "uftp://h:9000/rest/auth/", "uftp://h:9000/rest/auth/:/x"])
def test_malformed_urls(url):
    with pytest.raises(errors.UsageError):
        split_auth_path(parse(url))


def test_backend_is_thread_safe_under_mixed_load(uftp_server, backend, big_file):
    """Readers, writers and listers at once: every byte stays right and no session is leaked."""
    failures = []

    def work(index):
        try:
            name = f"/w{index}"
            data = random.Random(index).randbytes(100000 + index)
            backend.write_whole(name, io.BytesIO(data), len(data))
            assert backend.read_range(name, 1000, 5000) == data[1000:6000]
            assert backend.read_range("/big.bin", index * 4096, 4096) == big_file[index * 4096:(index + 1) * 4096]
            assert name[1:] in {entry.name for entry in backend.list("/")}
        except Exception as exc:  # collected: pytest would not see a thread's assertion
            failures.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not failures and not any(thread.is_alive() for thread in threads)
    assert backend._pool._live <= backend.capabilities.max_parallel


def data_connection_survives_a_missing_path(backend, path: str, data: bytes) -> None:
    """On one session: a transfer (its data connection is kept), MLST of a missing path, another transfer.
    UFTPD drops the data connection when MLST fails; the session must not send the next transfer over it
    (before, the second RETR went to a connection the server had closed, and failed with UFTPD's
    "'NoneType' object has no attribute ..." whenever its EOF had not arrived yet: any link with latency)."""
    remote = backend._remote(path)[1]
    session = backend._pool.acquire()
    try:
        assert bytes(session.retrieve(remote, 0, 1000)) == data[:1000]
        assert not session.command(f"MLST {remote}.missing").ok
        assert bytes(session.retrieve(remote, 1000, 1000)) == data[1000:2000]
    finally:
        backend._pool.release(session)


def test_a_failed_mlst_drops_the_data_connection_as_uftpd_does(uftp_server, backend, big_file):
    data_connection_survives_a_missing_path(backend, "/big.bin", big_file)


def test_a_hash_after_a_failed_ranged_read_resets_the_range_first(uftp_server, big_file):
    """A ranged read that fails leaves its RANG in force; the HASH that follows on the same session resets it
    first, and the reset's 350 is not an error."""
    opened, _ = open_backend(uftp_server.url() + "&parallel=1")
    try:
        uftp_server.put("/gone.bin", b"x" * 100)
        assert opened.read_range("/gone.bin", 0, 10) == b"x" * 10  # its size is known now
        os.remove(os.path.join(uftp_server.root, "gone.bin"))
        with pytest.raises(errors.NotFound):
            opened.read_range("/gone.bin", 0, 10)  # RANG accepted, then RETR refused: the RANG stays in force
        assert uftp_server.log.total("RANG") == 2
        logins = uftp_server.log.total("PASS")
        assert opened.checksum("/big.bin", "sha256") == hashlib.sha256(big_file).hexdigest()
        assert uftp_server.log.total("PASS") == logins  # the session was kept: the reset's 350 is no surprise
    finally:
        opened.close()
