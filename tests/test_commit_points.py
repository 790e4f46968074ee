"""When the server's file changes: only when a complete new version is committed (docs/reliability.md).

Shells and ``dd`` open with ``O_TRUNC`` and close a duplicate descriptor before their first write; that
FUSE flush must not publish the still-empty file, or a write that fails afterwards (a full spool disk, a
cut connection) leaves the server's file empty for good.  A commit that failed and said so is not retried
behind the writer's back at release.  Names the server cannot take fail at ``open``, before anything is
spooled.  Real mounts against the local servers; faults are real (a small tmpfs, cut data connections).
"""
import ctypes
import errno
import glob
import hashlib
import mmap
import os
import subprocess
import time

import fs
import fsspec
import pytest

from hpcfs.registry import WRITABLE_SCHEMES, protocol_for
from hpcfs.servers.uftp import session as uftp_session
from hpcfs.servers.uftp.wire import DroppedConnection
from mounting import hpcfs, mounted, sha256_file, small_tmpfs, write_random

OLD = b"old content\n"  # 12 bytes the server has before every test


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def run(command: str, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=timeout)


def mount_log(tmp_path) -> str:
    return "".join(open(path).read() for path in glob.glob(str(tmp_path / "state" / "hpcfs" / "*.log")))


def wait_for(condition, what: str, seconds: float = 60):
    """Poll ``condition`` until it holds (its value), or fail after a generous bound."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def cut_every_transfer(uftp_server, monkeypatch):
    """Switches the server's fault knob to stay on: every data transfer is cut after 100 000 bytes (an
    empty one goes through), so no retry of a larger upload can succeed; ``False`` switches it off."""

    def switch(on: bool) -> None:
        if on:
            monkeypatch.setattr(uftp_server.knobs, "take_drop", lambda: 100_000)
        else:
            monkeypatch.undo()

    return switch


@pytest.fixture(params=WRITABLE_SCHEMES)
def service(request, tmp_path):
    """(server handle, the server's directory the mount's ``base`` shows, ``base``) with OLD in victim.bin."""
    handle = request.getfixturevalue(protocol_for(request.param).fixture)
    base = getattr(handle, "volume_path", "/").lstrip("/")
    served = os.path.join(handle.root, base)
    with open(os.path.join(served, "victim.bin"), "wb") as stored:
        stored.write(OLD)
    return handle, served, base


@pytest.fixture
def tiny_spool(tmp_path):
    with small_tmpfs(str(tmp_path / "tiny-spool"), "2M", mode="700") as directory:
        yield directory


# -- O_TRUNC and the duplicate descriptor --------------------------------------------------------------
WRITERS = {  # a shell redirect and dd: both close a duplicate of the new descriptor before writing
    "redirect": "head -c {size} {source} > {target}",
    "dd": "dd if={source} of={target} bs=1M status=none",
}


@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_a_write_the_spool_cannot_hold_keeps_the_old_file(service, tiny_spool, tmp_path, writer):
    handle, served, base = service
    source = write_random(str(tmp_path / "payload.bin"), 5_000_000)
    with mounted(handle.plain_url("/"), tmp_path / "mnt", env=handle.env,
                 options=[f"spool_dir={tiny_spool}"]) as mountpoint:
        target = os.path.join(mountpoint, base, "victim.bin")
        result = run(WRITERS[writer].format(size=5_000_000, source=source, target=target))
        assert result.returncode != 0, f"{writer} succeeded with a full spool disk"
        assert "No space left on device" in result.stderr, result.stderr
    assert sha256_file(os.path.join(served, "victim.bin")) == digest(OLD), "the old version was lost"
    assert os.listdir(served) == ["victim.bin"], os.listdir(served)


def test_a_redirect_whose_upload_is_cut_keeps_the_old_file(uftp_server, cut_every_transfer, tmp_path):
    with open(os.path.join(uftp_server.root, "victim.bin"), "wb") as stored:
        stored.write(OLD)
    source = write_random(str(tmp_path / "payload.bin"), 3_000_000)
    with mounted(uftp_server.plain_url("/"), tmp_path / "mnt", env=uftp_server.env) as mountpoint:
        cut_every_transfer(True)
        result = run(f"head -c 3000000 {source} > {mountpoint}/victim.bin")
        assert result.returncode != 0, "head reported success although every upload was cut"
        cut_every_transfer(False)
    assert sha256_file(os.path.join(uftp_server.root, "victim.bin")) == digest(OLD), "the old version was lost"
    assert "the written data is kept in" in mount_log(tmp_path)


def test_redirects_that_succeed_replace_empty_and_create(service, tmp_path):
    """The deferred commit still publishes: new content replaces the old at close, ``: > f`` empties a
    file (at its release), and a new file may appear empty at once."""
    handle, served, base = service
    source = write_random(str(tmp_path / "payload.bin"), 3_000_000)
    with mounted(handle.plain_url("/"), tmp_path / "mnt", env=handle.env) as mountpoint:
        view = os.path.join(mountpoint, base)
        result = run(f"head -c 3000000 {source} > {view}/victim.bin && : > {view}/new.txt")
        assert result.returncode == 0, result.stderr
        assert sha256_file(os.path.join(served, "victim.bin")) == sha256_file(source)
        assert os.path.getsize(os.path.join(served, "new.txt")) == 0
        assert run(f": > {view}/victim.bin").returncode == 0
        wait_for(lambda: os.path.getsize(os.path.join(served, "victim.bin")) == 0, "the emptied file")


libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]


def map_file(fd: int, length: int) -> int:
    """mmap(2) itself: Python's mmap keeps a duplicate descriptor, whose close would be one more flush."""
    address = libc.mmap(None, length, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
    if address in (None, ctypes.c_void_p(-1).value):
        raise OSError(ctypes.get_errno(), "mmap failed")
    return address


def test_a_failed_close_is_not_uploaded_again_at_release(uftp_server, cut_every_transfer, tmp_path):
    """close() reported the failure; the release that comes later (here: when a mapping of the file goes
    away) keeps the spool and the server's old version, although the server takes uploads again."""
    with open(os.path.join(uftp_server.root, "victim.bin"), "wb") as stored:
        stored.write(OLD)
    data = os.urandom(1 << 20)
    with mounted(uftp_server.plain_url("/"), tmp_path / "mnt", env=uftp_server.env) as mountpoint:
        fd = os.open(os.path.join(mountpoint, "victim.bin"), os.O_RDWR | os.O_TRUNC)
        os.write(fd, data)
        mapping = map_file(fd, len(data))  # holds the open file past close(), so only the release is left
        cut_every_transfer(True)
        with pytest.raises(OSError):
            os.close(fd)
        cut_every_transfer(False)
        libc.munmap(mapping, ctypes.c_size_t(len(data)))
        on_server = os.path.join(uftp_server.root, "victim.bin")
        wait_for(lambda: "not uploaded" in mount_log(tmp_path) or sha256_file(on_server) != digest(OLD),
                 "the release")
    assert sha256_file(os.path.join(uftp_server.root, "victim.bin")) == digest(OLD), "uploaded after all"
    spools = glob.glob(str(tmp_path / "state" / "cache" / "hpcfs" / "spool" / "victim.bin.*"))
    assert len(spools) == 1 and sha256_file(spools[0]) == digest(data), spools
    assert f"kept in {spools[0]}" in mount_log(tmp_path)


def test_a_shorter_truncate_reaches_the_server(service, tmp_path):
    handle, served, base = service
    with mounted(handle.plain_url("/"), tmp_path / "mnt", env=handle.env) as mountpoint:
        assert run(f"truncate -s 5 {os.path.join(mountpoint, base, 'victim.bin')}").returncode == 0
    with open(os.path.join(served, "victim.bin"), "rb") as stored:
        assert stored.read() == OLD[:5]


def test_a_rewrite_of_bytes_already_streamed_reaches_the_server(uftp_server, tmp_path):
    """A new file streams its parts while written; a write back into the last byte already sent must
    still end up on the server (streaming gives way to the whole spool)."""
    data = bytearray(os.urandom(8 << 20))
    with mounted(uftp_server.plain_url("/"), tmp_path / "mnt", env=uftp_server.env) as mountpoint:
        fd = os.open(os.path.join(mountpoint, "streamed.bin"), os.O_CREAT | os.O_WRONLY, 0o644)
        try:
            for offset in range(0, len(data), 1 << 20):
                os.pwrite(fd, data[offset:offset + (1 << 20)], offset)
            data[-1] ^= 0xFF  # both 4 MiB parts are sent by now
            os.pwrite(fd, data[-1:], len(data) - 1)
        finally:
            os.close(fd)
    assert sha256_file(os.path.join(uftp_server.root, "streamed.bin")) == digest(bytes(data))


# -- a failed part is never committed --------------------------------------------------------------------
SIZE = 20 * (1 << 20) + 123  # five 4 MiB parts and a short tail: more parts than go out at once


@pytest.fixture
def last_part_fails(monkeypatch):
    """The server cuts every transfer of the file's last part (a ranged STOR at its offset), so only the
    final wait for the parts in flight sees the failure."""
    receive = uftp_session.Session.receive_file

    def cut_the_tail(self, real):
        if self.have_range and self.offset >= SIZE - SIZE % (4 << 20):
            self.close_data()
            raise DroppedConnection()
        return receive(self, real)

    monkeypatch.setattr(uftp_session.Session, "receive_file", cut_the_tail)


@pytest.mark.parametrize("exists", [False, True], ids=["new", "replaced"])
def test_a_failed_last_part_is_reported_and_nothing_is_published(uftp_server, last_part_fails, tmp_path, exists):
    real = os.path.join(uftp_server.root, "big.bin")
    if exists:
        with open(real, "wb") as stored:
            stored.write(OLD)
    data = os.urandom(SIZE)
    with mounted(uftp_server.plain_url("/"), tmp_path / "mnt", env=uftp_server.env) as mountpoint, \
            pytest.raises(OSError), open(os.path.join(mountpoint, "big.bin"), "wb") as target:
        target.write(data)
    if exists:
        assert sha256_file(real) == digest(OLD), "a file with a failed part replaced the old one"
    else:
        assert not os.path.exists(real), "a file with a failed part was published"
    assert os.listdir(uftp_server.root) == (["big.bin"] if exists else []), "a partial file was left behind"


# -- names the server cannot take ------------------------------------------------------------------------
BAD_NAME = "trailing space "  # UFTPD strips a command line, so the name would lose its space


def test_a_name_the_server_cannot_take_fails_at_open_through_the_mount(uftp_server, tmp_path):
    spool = str(tmp_path / "spool")
    local = tmp_path / "local.txt"
    local.write_text("x\n")
    with open(os.path.join(uftp_server.root, "ok.txt"), "w") as stored:
        stored.write("ok\n")
    with mounted(uftp_server.plain_url("/"), tmp_path / "mnt", env=uftp_server.env,
                 options=[f"spool_dir={spool}"]) as mountpoint:
        os.listdir(mountpoint)  # a cached listing answers the lookup of the new name locally
        target = os.path.join(mountpoint, BAD_NAME)
        for command in (f'echo x > "{target}"', f'cp {local} "{target}"', f'mkdir "{target}"',
                        f'echo x > "{mountpoint}/line\nbreak"'):
            result = run(command)
            assert result.returncode != 0 and "Invalid argument" in result.stderr, (command, result)
        with pytest.raises(OSError) as raised:  # mv words EINVAL as "a subdirectory of itself"
            os.rename(os.path.join(mountpoint, "ok.txt"), target)
        assert raised.value.errno == errno.EINVAL
    assert sorted(os.listdir(uftp_server.root)) == ["ok.txt"], os.listdir(uftp_server.root)
    assert not glob.glob(os.path.join(spool, "*")), "the refused file went into the spool"


def test_a_name_the_server_cannot_take_fails_at_open_in_python_and_cp(uftp_server, tmp_path):
    spool = str(tmp_path / "spool")
    local = tmp_path / "local.txt"
    local.write_text("x\n")
    with fs.open_fs(uftp_server.url("/") + f"&spool_dir={spool}") as filesystem:
        for attempt in (lambda: filesystem.openbin(BAD_NAME, "w"), lambda: filesystem.makedir(BAD_NAME)):
            with pytest.raises(ValueError) as refused:  # PyFilesystem2's word for an invalid path
                attempt()
            assert refused.value.__cause__.errno == errno.EINVAL, refused.value
    with pytest.raises(OSError) as raised:
        fsspec.open(uftp_server.url("/" + BAD_NAME.replace(" ", "%20")) + f"&spool_dir={spool}", "wb").open()
    assert raised.value.errno == errno.EINVAL, raised.value
    result = hpcfs("cp", str(local), uftp_server.plain_url("/" + BAD_NAME.replace(" ", "%20")),
                   env=uftp_server.env, check=False)
    assert result.returncode != 0 and "white space" in result.stderr, result.stderr
    assert os.listdir(uftp_server.root) == [], os.listdir(uftp_server.root)
    assert not glob.glob(os.path.join(spool, "*")), "the refused file went into the spool"


# -- the mode of a new file ------------------------------------------------------------------------------
@pytest.mark.parametrize("umask, mode", [("077", 0o600), ("027", 0o640), ("022", 0o644)])
def test_a_new_file_gets_the_creators_umask_and_is_never_widened(uftp_server, tmp_path, umask, mode):
    with mounted(uftp_server.plain_url("/"), tmp_path / "mnt", env=uftp_server.env) as mountpoint:
        assert run(f"umask {umask} && echo x > {mountpoint}/new.txt").returncode == 0
    assert os.stat(os.path.join(uftp_server.root, "new.txt")).st_mode & 0o7777 == mode
