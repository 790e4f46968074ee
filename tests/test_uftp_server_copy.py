"""Copies between two places of one UFTP server are made by UFTPD's own transfer process (``RECEIVE-FILE``
with a one-time secret for the source side): no byte of the file passes through hpcfs, and the copy is
renamed onto its destination only once it is whole.  Where the server has no such copy (our local UFTP
server), the file streams through hpcfs and ``-v`` says why.  Three real-UFTPD logins per copy at most."""
import hashlib
import logging
import os
import socket
from urllib.parse import urlencode, urlsplit

import pytest
from fixtures_peers import RealUFTPHandle
from mounting import write_random
from test_cli import cli, isolated, ok, uftp  # noqa: F401  (fixtures)

from hpcfs import errors, transfer
from hpcfs.targets import resolve

pytestmark = pytest.mark.timeout(300)

SIZE = (20 << 20) + 4099  # odd, so that UFTPD's log line of this copy is told apart from others'
TRANSFER_PROCESS_LINE = f"USAGE [Received] [{SIZE} bytes]"  # UFTPD's Transfer.log_usage: its own process only


def sha256(path):
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def uftpd_log(real_uftp: RealUFTPHandle) -> str:
    return os.path.join(os.path.dirname(real_uftp.peer_env["UFTP_DATA_DIR"]), "uftpd.log")


def log_size(path: str) -> int:
    return os.path.getsize(path)


def log_since(path: str, offset: int) -> str:
    with open(path, errors="replace") as handle:
        handle.seek(offset)
        return handle.read()


@pytest.fixture
def data_connections(real_uftp, monkeypatch):
    """The UFTP connections this process opens other than to UFTPD's listen port and the Auth server:
    data connections, over which any byte of a file would have to pass."""
    opened = []
    control_ports = {int(real_uftp.peer_env["UFTPD_LISTEN_PORT"]), urlsplit(real_uftp.auth_url).port}
    create_connection = socket.create_connection

    def noting(address, *args, **kwargs):
        if address[1] not in control_ports:
            opened.append(address)
        return create_connection(address, *args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", noting)
    for name, value in real_uftp.env.items():
        monkeypatch.setenv(name, value)
    return opened


def copy(real_uftp, source, destination, **options):
    query = f"?{urlencode(options)}" if options else ""
    transfer.copy_paths([resolve(real_uftp.plain_url(source) + query)],
                        resolve(real_uftp.plain_url(destination) + query))


def partials(directory):
    return [name for name in os.listdir(directory) if "hpcfs-partial" in name]


def test_a_copy_within_uftpd_is_made_by_the_server_and_replaces_the_destination(real_uftp, data_connections,
                                                                               caplog):
    source = write_random(f"{real_uftp.root}/a.bin", SIZE)
    write_random(f"{real_uftp.root}/b.bin", 10)  # replaced whole
    log_path = uftpd_log(real_uftp)
    offset = log_size(log_path)
    with caplog.at_level(logging.INFO, logger="hpcfs"):
        copy(real_uftp, "/a.bin", "/b.bin")
    assert sha256(f"{real_uftp.root}/b.bin") == sha256(source)
    assert data_connections == [], "file bytes passed through hpcfs"
    assert log_since(log_path, offset).count(TRANSFER_PROCESS_LINE) == 1, "UFTPD's transfer process made no copy"
    assert "copied on the server" in caplog.text
    assert not partials(real_uftp.root), "a partial was left behind"


def test_a_copy_that_stops_replaces_nothing(real_uftp, data_connections):
    source = write_random(f"{real_uftp.root}/locked.bin", SIZE)
    os.chmod(source, 0o600)  # root's: UFTPD's sessions (nobody) can list it but not read it
    write_random(f"{real_uftp.root}/kept.bin", 10)
    before = sha256(f"{real_uftp.root}/kept.bin")
    with pytest.raises(errors.TimedOut, match="UFTPD's copy stopped at 0 of"):  # it created the file, then failed
        copy(real_uftp, "/locked.bin", "/kept.bin", timeout=3)
    assert sha256(f"{real_uftp.root}/kept.bin") == before
    assert data_connections == [], "the copy was streamed, not made by the server"
    assert not partials(real_uftp.root), "a partial was left behind"


def test_without_receive_file_the_copy_streams_and_says_so(cli, uftp):
    source = write_random(uftp.local("a.bin"), (2 << 20) + 3)
    uftp.handle.log.reset()
    result = ok(cli("-v", "cp", uftp.url("a.bin"), uftp.url("b.bin"), env=uftp.env))
    assert sha256(uftp.local("b.bin")) == sha256(source)
    assert "not copied on the server (this UFTPD has no server-to-server copy (RECEIVE-FILE))" in result.stderr
    assert "streamed through here instead" in result.stderr
    log = uftp.handle.log.snapshot()
    assert log["RECEIVE-FILE"] == 1, log  # asked once, with no secret spent on it
    assert sum(count for kind, count in log.items() if kind.startswith("job")) == 1, log  # the pool's grant only
