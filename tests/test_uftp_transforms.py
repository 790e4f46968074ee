"""Encrypted and compressed UFTP data (``encrypt``, ``compress``), against the local server, whose own cipher
and gzip layers (hpcfs/servers/uftp/wire.py) follow UFTPD's: bytes that went through a transform only one
side applies would not survive these round trips.  The real UFTPD's are in test_real_uftp.py."""
import hashlib
import os

import fs
import pytest
from mounting import write_random
from test_cli import cli, isolated, ok, uftp  # noqa: F401  (fixtures)

from hpcfs.core import open_tree

TRANSFORMS = {"encrypt": "encrypt=1", "compress": "compress=1", "both": "encrypt=1&compress=1"}


def sha256(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


@pytest.mark.parametrize("transform", TRANSFORMS)
def test_cp_both_ways(cli, uftp, tmp_path, transform):
    source = write_random(tmp_path / "up.bin", (9 << 20) + 5)  # above LARGE_WRITE: parts in parallel
    url = f"{uftp.url('data.bin')}?{TRANSFORMS[transform]}"
    ok(cli("cp", str(source), url, env=uftp.env))
    assert sha256(uftp.local("data.bin")) == sha256(source)
    ok(cli("cp", url, str(tmp_path / "down.bin"), env=uftp.env))  # ranges side by side
    assert sha256(tmp_path / "down.bin") == sha256(source)
    kinds = {"encrypt": "job data AES", "compress": "job data plain gzip", "both": "job data AES gzip"}
    grants = {kind: count for kind, count in uftp.handle.log.snapshot().items() if kind.startswith("job data")}
    assert grants == {kinds[transform]: 2}, grants  # one grant per cp, each asking for the transform


def test_ranged_reads_and_writes_through_the_core(uftp_server):
    data = os.urandom((6 << 20) + 17)
    with fs.open_fs(f"{uftp_server.url('/')}&encrypt=1&compress=1") as remote:
        remote.writebytes("/both.bin", data)
    assert uftp_server.log.snapshot()["job data AES gzip"] == 1
    tree = open_tree(f"{uftp_server.url('/')}&encrypt=1&compress=1", block_size="1M", readahead="4M")
    try:
        handle = tree.open("/both.bin")
        assert handle.read(5_000_000, 1_500_000) == data[5_000_000:6_500_000]  # a range across blocks
        assert b"".join(tree.chunks("/both.bin")) == data  # readahead: ranges on several sessions
    finally:
        tree.close()


def test_info_says_how_data_travels(cli, uftp):
    printed = ok(cli("info", f"{uftp.url()}?encrypt=1&compress=1", env=uftp.env)).stdout
    assert "encrypted (AES-256), compressed (gzip)" in printed, printed
    assert "plain" in ok(cli("info", uftp.url(), env=uftp.env)).stdout


def test_the_key_is_never_logged(cli, uftp, tmp_path, monkeypatch):
    keys = []  # as the Auth server passed them on (base64), noted when the job arrives: jobs are reaped later
    add_job = uftp.handle.server._add_job
    monkeypatch.setattr(uftp.handle.server, "_add_job", lambda request: keys.append(request["key"]) or add_job(request))
    source = write_random(tmp_path / "up.bin", 1000)
    result = ok(cli("-v", "cp", str(source), f"{uftp.url('x.bin')}?encrypt=1", env=uftp.env))
    assert keys and not any(key in result.stderr for key in keys), "key in the log"
