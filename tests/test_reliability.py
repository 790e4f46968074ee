"""Faults, expiry, bad input and concurrency through real mounts: nothing lost, nothing wrong, no hangs.

The per-protocol suites test each client's retries in detail; this file checks what a user of the mount
sees, across protocols where the case applies.  docs/reliability.md lists the cases and guarantees.
"""
import concurrent.futures
import errno
import glob
import hashlib
import itertools
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import tracemalloc

import pytest

from mounting import small_tmpfs

from hpcfs.servers.uftp import UFTPServer
from hpcfs.mounts import is_mounted
from hpcfs.registry import WRITABLE_SCHEMES, protocol_for
from mounting import hpcfs, mounted, sha256_file, write_random

PROTOCOLS = WRITABLE_SCHEMES  # every protocol whose local server takes writes (hpcfs/registry.py)


@pytest.fixture(params=PROTOCOLS)
def service(request):
    """(server handle, the directory of the tree where files may be written) for each protocol."""
    handle = request.getfixturevalue(protocol_for(request.param).fixture)
    return handle, getattr(handle, "volume_path", "/")


@pytest.fixture
def mount(service, tmp_path):
    handle, base = service
    with mounted(handle.plain_url("/"), tmp_path / "mnt", env=handle.env) as mountpoint:
        yield os.path.join(mountpoint, base.lstrip("/")), os.path.join(handle.root, base.lstrip("/"))


def digest(data):
    return hashlib.sha256(data).hexdigest()


def test_many_readers_and_writers_at_once(mount):
    """16 readers and 4 writers on different files, and 8 readers on one file, all at the same time."""
    view, served = mount
    contents = {f"in{index}.bin": os.urandom(256 << 10) for index in range(16)}
    contents["shared.bin"] = os.urandom(1 << 20)
    for name, data in contents.items():
        with open(os.path.join(served, name), "wb") as handle:
            handle.write(data)
    written = {f"out{index}.bin": os.urandom(512 << 10) for index in range(4)}

    def read(name):
        with open(os.path.join(view, name), "rb") as handle:
            return name, digest(handle.read())

    def write(name):
        with open(os.path.join(view, name), "wb") as handle:
            handle.write(written[name])
        return name, None

    with concurrent.futures.ThreadPoolExecutor(28) as pool:
        jobs = [pool.submit(read, f"in{index}.bin") for index in range(16)]
        jobs += [pool.submit(read, "shared.bin") for _ in range(8)]
        jobs += [pool.submit(write, name) for name in written]
        results = [job.result(timeout=120) for job in jobs]
    for name, seen in results:
        if seen is not None:
            assert seen == digest(contents[name]), name
    for name, data in written.items():
        assert sha256_file(os.path.join(served, name)) == digest(data), name


def test_two_writers_of_one_file_last_close_wins(mount):
    view, served = mount
    path = os.path.join(view, "contested.txt")
    first, second = open(path, "wb"), open(path, "wb")
    first.write(b"first writer\n")
    second.write(b"second writer, longer\n")
    first.close()
    second.close()
    with open(os.path.join(served, "contested.txt"), "rb") as stored:
        assert stored.read() == b"second writer, longer\n"


# Names a protocol cannot carry, refused with EINVAL before anything is sent: UFTP's control channel is
# line-based, the EM API's upload mangles unprintable characters, and the real FirecREST server fails
# (500) on paths containing a quote.
REFUSED = {("uftp", "new\nline.txt"), ("em", "new\nline.txt"), ("firecrest", "it's.txt")}


@pytest.mark.parametrize("name", ["it's.txt", "ünïcødé ✓.txt", "sp ace.txt", "new\nline.txt"])
def test_unusual_names_round_trip_or_are_refused_cleanly(request, mount, name):
    view, served = mount
    protocol = request.node.callspec.params["service"]
    try:
        with open(os.path.join(view, name), "wb") as handle:
            handle.write(b"payload")
    except OSError as exc:
        assert (protocol, name) in REFUSED and exc.errno == errno.EINVAL, exc
        assert not os.path.exists(os.path.join(served, name))
        return
    assert os.path.exists(os.path.join(served, name)), os.listdir(served)
    assert name in os.listdir(view)
    with open(os.path.join(view, name), "rb") as handle:
        assert handle.read() == b"payload"


def test_names_that_must_not_reach_the_server(service, mount, tmp_path):
    handle, base = service
    view, served = mount
    # A name that is not UTF-8 cannot be sent as any protocol's text: EINVAL, nothing created.
    with pytest.raises(OSError) as raised:
        with open(os.path.join(os.fsencode(view), b"bad-\xff-name"), "wb") as stream:
            stream.write(b"x")
    assert raised.value.errno == errno.EINVAL
    assert not any(b"\xff" in entry for entry in os.listdir(os.fsencode(served)))
    # ".." that would leave the tree is refused before anything is sent.
    local = tmp_path / "payload.txt"
    local.write_text("x")
    escape = handle.plain_url(base.rstrip("/") + "/../../../escape.txt")
    result = hpcfs("cp", str(local), escape, env=handle.env, check=False)
    assert result.returncode != 0 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "leaves the root" in result.stderr
    assert not glob.glob(os.path.join(os.path.dirname(handle.root.rstrip("/")), "**", "escape.txt"), recursive=True)


# -- UFTP: faults under a live mount -----------------------------------------------------------------------
def restart(server):
    """Stop ``server`` and start a new one on the same ports and root, as after a reboot."""
    server.stop()
    return UFTPServer(server.root, dict(server.users), auth_port=server.auth_port, listen_port=server.listen_port,
                      cmd_port=server.cmd_port, tls_dir=server.tls_dir).start()


def test_mount_survives_a_server_restart(uftp_server, tmp_path):
    with open(os.path.join(uftp_server.root, "before.txt"), "w") as handle:
        handle.write("before\n")
    with mounted(uftp_server.plain_url("/"), tmp_path / "mnt", env=uftp_server.env,
                 options=["attr_ttl=0"]) as mountpoint:
        assert open(os.path.join(mountpoint, "before.txt")).read() == "before\n"
        uftp_server.server = restart(uftp_server.server)
        with open(os.path.join(uftp_server.root, "after.txt"), "w") as handle:
            handle.write("after\n")
        assert open(os.path.join(mountpoint, "after.txt")).read() == "after\n"
        with open(os.path.join(mountpoint, "written.txt"), "w") as handle:
            handle.write("written\n")
        assert open(os.path.join(uftp_server.root, "written.txt")).read() == "written\n"
    uftp_server.server.stop()


def test_server_gone_fails_within_the_timeout_and_umount_works(uftp_server, tmp_path):
    mountpoint = tmp_path / "mnt"
    with mounted(uftp_server.plain_url("/"), mountpoint, env=uftp_server.env,
                 options=["timeout=3", "attr_ttl=0"]) as view:
        os.listdir(view)
        uftp_server.server.stop()
        started = time.monotonic()
        listing = subprocess.run(["ls", "-l", view], capture_output=True, text=True, timeout=120)
        assert listing.returncode != 0, "ls of a dead server succeeded"
        assert time.monotonic() - started < 60, "the failure took longer than a few timeouts"
        result = hpcfs("umount", view, check=False)
        assert result.returncode == 0, result.stderr
    assert not is_mounted(str(mountpoint)), "umount did not detach the mount"


def test_a_failed_upload_keeps_the_data_and_says_where(uftp_server, tmp_path):
    state = tmp_path / "state"
    data = os.urandom(3 << 20)
    with mounted(uftp_server.plain_url("/"), tmp_path / "mnt", env=uftp_server.env,
                 options=["timeout=3"]) as mountpoint:
        handle = open(os.path.join(mountpoint, "precious.bin"), "wb")
        handle.write(data)
        uftp_server.server.stop()
        with pytest.raises(OSError):
            handle.close()
    spools = glob.glob(str(state / "cache" / "hpcfs" / "spool" / "precious.bin.*"))
    assert len(spools) == 1, "the written data was not kept"
    assert sha256_file(spools[0]) == digest(data)
    log_text = "".join(open(path).read() for path in glob.glob(str(state / "hpcfs" / "*.log")))
    assert spools[0] in log_text, "the log does not say where the data is"


@pytest.fixture
def tiny_spool(tmp_path):
    """A 2 MiB tmpfs to spool on: a local disk that fills up."""
    with small_tmpfs(str(tmp_path / "tiny-spool"), "2M", mode="700") as directory:
        yield directory


def test_a_full_spool_disk_publishes_nothing_and_says_where(service, tmp_path, tiny_spool):
    """A file the spool could not hold is never uploaded: no truncated file under the real name, the old
    version untouched, and the error and the log name the spool."""
    handle, base = service
    served = os.path.join(handle.root, base.lstrip("/"))
    old = os.urandom(100_000)
    with open(os.path.join(served, "kept.bin"), "wb") as stored:
        stored.write(old)
    payload = write_random(tmp_path / "big.bin", 5 << 20)
    with mounted(handle.plain_url("/"), tmp_path / "mnt", env=handle.env,
                 options=[f"spool_dir={tiny_spool}"]) as mountpoint:
        view = os.path.join(mountpoint, base.lstrip("/"))
        for name in ("kept.bin", "new.bin"):
            result = subprocess.run(["cp", str(payload), os.path.join(view, name)], capture_output=True,
                                    text=True, timeout=120)
            assert result.returncode != 0, f"cp onto {name} succeeded with a full spool disk"
            assert "No space left on device" in result.stderr, result.stderr
    assert sha256_file(os.path.join(served, "kept.bin")) == digest(old), "the old version was replaced"
    assert not os.path.exists(os.path.join(served, "new.bin")), "a truncated file was published"
    assert [name for name in os.listdir(served) if name != "kept.bin"] == [], os.listdir(served)
    log_text = "".join(open(path).read() for path in glob.glob(str(tmp_path / "state" / "hpcfs" / "*.log")))
    spools = glob.glob(os.path.join(tiny_spool, "*kept.bin.*"))
    assert len(spools) == 1 and f"kept in {spools[0]}" in log_text, (spools, log_text[-2000:])


def test_a_dropped_data_connection_is_retried_with_correct_bytes(uftp_server, tmp_path):
    data = os.urandom(6 << 20)
    with open(os.path.join(uftp_server.root, "big.bin"), "wb") as handle:
        handle.write(data)
    with mounted(uftp_server.plain_url("/"), tmp_path / "mnt", env=uftp_server.env) as mountpoint:
        uftp_server.knobs.drop_after_bytes = 300_000
        assert sha256_file(os.path.join(mountpoint, "big.bin")) == digest(data)
        uftp_server.knobs.drop_after_bytes = 100_000
        payload = write_random(tmp_path / "up.bin", 5 << 20)
        subprocess.run(["cp", str(payload), mountpoint], check=True, timeout=120)
        assert sha256_file(os.path.join(uftp_server.root, "up.bin")) == sha256_file(payload)


def test_revoked_password_gives_permission_denied_not_a_hang(uftp_server, tmp_path):
    with mounted(uftp_server.plain_url("/"), tmp_path / "mnt", env=uftp_server.env,
                 options=["attr_ttl=0", "timeout=5"]) as mountpoint:
        os.listdir(mountpoint)
        uftp_server.knobs.refuse_logins = True
        uftp_server.server = restart(uftp_server.server)  # every session ends: a new login is needed
        uftp_server.server.knobs.refuse_logins = True
        result = subprocess.run(["ls", mountpoint], capture_output=True, text=True, timeout=120)
        assert result.returncode != 0 and "Permission denied" in result.stderr, result.stderr
    uftp_server.server.stop()


# -- secrets -------------------------------------------------------------------------------------------
def test_secrets_stay_out_of_argv_logs_and_errors(uftp_server, tmp_path):
    password = uftp_server.env["UFTP_PASSWORD"]
    with mounted(uftp_server.plain_url("/"), tmp_path / "mnt", env=uftp_server.env) as mountpoint:
        os.listdir(mountpoint)
        pids = subprocess.run(["pgrep", "-f", f"hpcfs mount --foreground.*{mountpoint}"],
                              capture_output=True, text=True).stdout.split()
        assert pids, "no mount process found"
        for pid in pids:
            with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
                assert password.encode() not in cmdline.read()
    verbose = hpcfs("-v", "ls", uftp_server.plain_url("/"), env=uftp_server.env)
    wrong = hpcfs("-v", "ls", uftp_server.plain_url("/"), env={**uftp_server.env, "UFTP_PASSWORD": "s3cr3t-x"},
                  check=False)
    logs = "".join(open(path).read() for path in glob.glob(str(tmp_path / "state" / "hpcfs" / "*.log")))
    for text in (verbose.stdout, verbose.stderr, wrong.stderr, logs):
        assert password not in text and "s3cr3t-x" not in text
    assert wrong.returncode == 1


def mount_options_of(mountpoint):
    with open("/proc/self/mounts") as mounts:
        for line in mounts:
            fields = line.split()
            if fields[1] == str(mountpoint):
                return set(fields[3].split(","))
    raise AssertionError(f"{mountpoint} is not mounted")


def as_nobody(*command):
    return subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", *command],
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("sharing", ["allow_other", "allow_root"])
def test_a_shared_mount_lets_the_kernel_check_permissions(uftp_server, sharing):
    """allow_other/allow_root without default_permissions would let every local user act with the
    mounter's remote identity; hpcfs always adds default_permissions."""
    workdir = tempfile.mkdtemp(prefix="hpcfs-shared-")  # pytest's tmp_path is private to root
    os.chmod(workdir, 0o755)
    try:
        for name, mode in (("private.txt", 0o600), ("public.txt", 0o644)):
            path = os.path.join(uftp_server.root, name)
            with open(path, "w") as stored:
                stored.write(f"{name}\n")
            os.chmod(path, mode)
        with mounted(uftp_server.plain_url("/"), os.path.join(workdir, "mnt"), env=uftp_server.env,
                     options=[sharing]) as mountpoint:
            assert "default_permissions" in mount_options_of(mountpoint), mount_options_of(mountpoint)
            if sharing == "allow_other":
                public = as_nobody("cat", os.path.join(mountpoint, "public.txt"))
                assert public.returncode == 0 and public.stdout == "public.txt\n", public.stderr
                private = as_nobody("cat", os.path.join(mountpoint, "private.txt"))
                assert private.returncode != 0 and "Permission denied" in private.stderr, private
                created = as_nobody("touch", os.path.join(mountpoint, "planted.txt"))
                assert created.returncode != 0 and not os.path.exists(os.path.join(uftp_server.root, "planted.txt"))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def test_local_servers_listen_on_loopback_only(uftp_server, firecrest_server, em_server):
    """Every listening TCP socket of this process (all three servers run in it) is bound to 127.0.0.1."""
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    listening = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as handle:
            for line in handle.readlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and fields[9] in inodes:  # 0A = LISTEN
                    listening.append(fields[1])
    assert len(listening) >= 5, listening  # uftp auth+listen+cmd, firecrest, em
    assert all(address.startswith("0100007F:") for address in listening), listening


# -- credentials expiring under a live mount ---------------------------------------------------------
def test_firecrest_tokens_expire_under_a_live_mount(tmp_path):
    from fixtures_firecrest import start_firecrest

    (tmp_path / "root").mkdir()
    handle = start_firecrest(tmp_path / "root", token_lifetime=33, min_token_ttl=30)
    try:
        with mounted(handle.plain_url("/"), tmp_path / "mnt", env=handle.env, options=["attr_ttl=0"]) as view:
            for round_ in range(3):
                with open(os.path.join(handle.root, f"file{round_}"), "w") as stream:
                    stream.write("x")
                assert f"file{round_}" in os.listdir(view)
                time.sleep(2.5)  # past the token's last usable second after two rounds
        assert handle.log.snapshot()["POST /token"] >= 2, "the token was never renewed"
    finally:
        handle.server.stop()


def test_em_tokens_expire_under_a_live_mount(make_em_server, tmp_path):
    handle = make_em_server(access_lifetime=1.0, refresh_lifetime=2.0)
    volume = handle.volume_path.strip("/")
    options = ["attr_ttl=0", "listing_ttl=0"]
    with mounted(handle.plain_url("/"), tmp_path / "mnt", env=handle.env, options=options) as view:
        for round_ in range(3):
            handle.server.write_out_of_band(volume, f"file{round_}", b"x")
            time.sleep(2.5)  # access and refresh tokens both expired: a new login is needed
            assert f"file{round_}" in os.listdir(os.path.join(view, volume))


# -- hostile or broken servers: memory stays bounded ---------------------------------------------------
class HostileServer:
    """A real TCP server on 127.0.0.1 whose ``answer(connection)`` misbehaves; counts the bytes it sent."""

    def __init__(self, answer):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sent = 0
        self.thread = threading.Thread(target=self._serve, args=(answer,), daemon=True)
        self.thread.start()

    def _serve(self, answer):
        connection, _ = self.listener.accept()
        with connection:
            try:
                answer(self, connection)
            except OSError:  # the client hung up: what the test expects
                pass

    def send(self, connection, data):
        connection.sendall(data)
        self.sent += len(data)

    def close(self):
        self.listener.close()
        self.thread.join(30)
        assert not self.thread.is_alive(), "the hostile server never saw the client hang up"


def endless_listing(server, connection):
    """UFTPD's login dialogue, then a STAT reply whose lines never end."""
    control = connection.makefile("rb")
    server.send(connection, b"220 UFTPD 3.5.3, https://www.unicore.eu\r\n")
    for line in control:
        if line.startswith(b"USER"):
            server.send(connection, b"331 Please specify the password\r\n")
        elif line.startswith(b"PASS"):
            server.send(connection, b"230 Login successful\r\n")
        elif line.startswith(b"FEAT"):
            server.send(connection, b"211-Features:\r\n211 End\r\n")
        else:
            server.send(connection, b"211-Sending listing\r\n")
            entry = b" -rw-r--r-- 1 0 0 1 Jan 1 00:00 file-with-a-long-name-%08d\r\n"
            for index in itertools.count():  # "endless": ends only so that a broken client fails, not swaps
                server.send(connection, b"".join(entry % (index * 64 + n) for n in range(64)))
                if server.sent > 16 * server.limit:
                    server.send(connection, b"211 End of listing\r\n")
                    break


def test_an_endless_uftp_reply_is_an_error_not_a_memory_leak(monkeypatch):
    from hpcfs.uftp import session as uftp_session
    from hpcfs.uftp.session import ControlSession

    MAX_REPLY = 2 << 20  # the real cap (64 MiB) works the same, only slower under tracemalloc
    monkeypatch.setattr(uftp_session, "MAX_REPLY", MAX_REPLY, raising=False)
    server = HostileServer(endless_listing)
    server.limit = MAX_REPLY
    tracemalloc.start()
    try:
        session = ControlSession("127.0.0.1", server.port, "secret", timeout=10)
        with pytest.raises(OSError) as raised:
            session.command("STAT N /")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        session.close()
        server.close()
    assert raised.value.errno == errno.EIO and "reply longer than" in str(raised.value), raised.value
    assert peak < 3 * MAX_REPLY, f"held {peak >> 20} MiB for a reply capped at {MAX_REPLY >> 20} MiB"
    socket_buffers = 12 << 20  # what the kernel accepts from the server without the client reading
    assert server.sent < MAX_REPLY + socket_buffers, "the client kept reading past the cap"


def range_ignored(server, connection):
    """An object store that answers every ranged GET with 200 and a 1 GiB body (byte i is i % 251)."""
    request = b""
    while b"\r\n\r\n" not in request:
        request += connection.recv(4096)
    assert b"Range: bytes=" in request
    size = 1 << 30
    server.send(connection, b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
    pattern = bytes(index % 251 for index in range(251 * 1024))
    while server.sent < size:
        server.send(connection, pattern)


def test_a_staging_server_that_ignores_range_is_read_only_up_to_the_range():
    import requests
    from hpcfs.firecrest.client import FirecrestClient

    server = HostileServer(range_ignored)
    client = FirecrestClient("http://127.0.0.1:1", "system", None, requests.Session(), timeout=30)
    offset, length = 3 * 251 * 1024 + 17, 1 << 20
    tracemalloc.start()
    try:
        data = client.staged_range(f"http://127.0.0.1:{server.port}/bucket/object", offset, length)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        server.close()
    expected = bytes((offset + index) % 251 for index in range(length))
    assert digest(data) == digest(expected)
    assert peak < 8 * length, f"held {peak >> 20} MiB for a 1 MiB range"
    assert server.sent < 64 << 20, f"read {server.sent >> 20} MiB of a 1 GiB body for a 1 MiB range"
