"""``hpcfs cp --checksum``: each copy's sha256 checked against the source's, the server computing its side
where it can; ``--resume --checksum`` skips by hash, as ``rsync -c``.  A damaged transfer comes from the
local UFTP server's ``corrupt_transfers`` knob (one byte flipped on the way)."""
import hashlib
import os

import pytest
from mounting import write_random
from test_cli import cli, isolated, ok, one_line_error, uftp  # noqa: F401  (fixtures)

from hpcfs.servers.firecrest.server import DOWNLOAD

CHECKSUM = "GET /filesystem/{system_name}/ops/checksum"


def sha256(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


@pytest.mark.parametrize("size, options", [((3 << 20) + 1, ["--checksum"]), ((17 << 20) + 1, ["--checksum"]),
                                           ((3 << 20) + 1, ["--resume", "--checksum"])],
                         ids=["one-stream", "in-ranges", "resume"])
def test_a_damaged_download_replaces_nothing_and_resume_checksum_repairs_it(cli, uftp, tmp_path, size, options):
    """The partial download is checked before its rename: the old destination keeps its bytes (with
    ``--resume`` too, which would otherwise continue a shorter destination as another tool's partial
    copy), the damaged partial is removed (no prefix to continue), and a second run copies the file whole."""
    source = write_random(uftp.local("data.bin"), size)
    copies = tmp_path / "copies"
    copies.mkdir()
    copy = write_random(copies / "data.bin", 1000)
    before = sha256(copy)
    uftp.handle.knobs.extra["corrupt_transfers"] = 1
    message = one_line_error(cli("cp", *options, uftp.url("data.bin"), str(copy), env=uftp.env), 1)
    assert str(copy) in message and "differs from the source's" in message, message
    assert sha256(copy) == before
    assert os.listdir(copies) == ["data.bin"], "the damaged partial is kept"
    ok(cli("cp", "--resume", "--checksum", uftp.url("data.bin"), str(copy), env=uftp.env))
    assert sha256(copy) == sha256(source)


def test_a_damaged_upload_is_refused_before_its_rename(cli, uftp, tmp_path):
    """A kept partial upload whose last block matches the source but whose start was damaged: ``--resume``
    continues it, and the check of the partial on the server catches it before the rename."""
    source = write_random(tmp_path / "up.bin", 3 << 20)
    old = write_random(uftp.local("up.bin"), 1000)
    before = sha256(old)
    kept = bytearray(open(source, "rb").read(2 << 20))
    kept[0] ^= 0xFF
    with open(uftp.local(".up.bin.hpcfs-partial"), "wb") as handle:
        handle.write(kept)
    message = one_line_error(cli("cp", "--resume", "--checksum", str(source), uftp.url("up.bin"), env=uftp.env), 1)
    assert "up.bin" in message and "differs from the source's" in message, message
    assert sha256(old) == before
    assert not os.path.exists(uftp.local(".up.bin.hpcfs-partial")), "the damaged partial is kept"
    ok(cli("cp", "--resume", "--checksum", str(source), uftp.url("up.bin"), env=uftp.env))
    assert sha256(uftp.local("up.bin")) == sha256(source)


def test_a_good_copy_is_checked_by_the_servers_hash_both_ways(cli, uftp, tmp_path):
    source = write_random(tmp_path / "up.bin", (2 << 20) + 3)
    uftp.handle.log.reset()
    ok(cli("cp", "-c", str(source), uftp.url("up.bin"), env=uftp.env))
    ok(cli("cp", "-c", uftp.url("up.bin"), str(tmp_path / "down.bin"), env=uftp.env))
    assert sha256(tmp_path / "down.bin") == sha256(source)
    assert uftp.handle.log.total("HASH") == 2
    upload_hash = next(detail for kind, detail in uftp.handle.log.entries if kind == "HASH")
    assert upload_hash.endswith("/.up.bin.hpcfs-partial"), "the upload was not checked before its rename"


def test_resume_checksum_decides_by_content_not_size_and_time(cli, uftp, tmp_path):
    """A destination of the right size and a newer time but other bytes: size and time say complete,
    the hash says copy again; identical bytes are skipped without a transfer."""
    source = write_random(uftp.local("data.bin"), 1 << 20)
    copy = write_random(tmp_path / "data.bin", 1 << 20)
    os.utime(copy, (os.path.getmtime(source) + 60,) * 2)
    ok(cli("cp", "--resume", uftp.url("data.bin"), str(copy), env=uftp.env))
    assert sha256(copy) != sha256(source), "the quick check should have skipped it"
    uftp.handle.log.reset()
    ok(cli("cp", "--resume", "--checksum", uftp.url("data.bin"), str(copy), env=uftp.env))
    assert sha256(copy) == sha256(source)
    # the source hashed once: for the skip check, and again for the copy's check, by that one hash
    assert uftp.handle.log.total("HASH") == 1 and uftp.handle.log.total("RETR") >= 1
    uftp.handle.log.reset()
    ok(cli("cp", "--resume", "--checksum", uftp.url("data.bin"), str(copy), env=uftp.env))
    assert uftp.handle.log.total("RETR") == 0 and uftp.handle.log.total("HASH") == 1


def test_firecrest_copies_are_checked_by_its_own_checksum(cli, firecrest_server, tmp_path):
    source = write_random(f"{firecrest_server.root}/data.bin", (1 << 20) + 5)
    firecrest_server.log.reset()
    ok(cli("cp", "--checksum", firecrest_server.plain_url("/data.bin"), str(tmp_path / "data.bin"),
           env=firecrest_server.env))
    assert sha256(tmp_path / "data.bin") == sha256(source)
    assert firecrest_server.log.total(CHECKSUM) == 1 and firecrest_server.log.total(DOWNLOAD) == 1
