"""``hpcfs mount`` of the local FirecREST server, used with ordinary shell tools; bytes checked by sha256,
round trips counted by the in-process server."""
import os
import shutil
import subprocess

import pytest
from mounting import check_dd_at_random_offsets, copy_round_trip, mounted, sh, tree_digests

from hpcfs.servers import firecrest as fc

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(not os.access("/dev/fuse", os.R_OK | os.W_OK) or not shutil.which("fusermount3"),
                       reason="needs /dev/fuse and fusermount3"),
]
SIZES = {"empty": 0, "one-mib": 1 << 20, "fifty-mib": 50 << 20}  # the last one goes through S3 staging


@pytest.fixture
def mount(firecrest_server, tmp_path):
    with mounted(firecrest_server.plain_url("/"), tmp_path / "mnt", env=firecrest_server.env) as mountpoint:
        yield mountpoint


def test_cp_in_and_out_keeps_every_byte(firecrest_server, mount, tmp_path):
    copy_round_trip(mount, firecrest_server.root, str(tmp_path), SIZES)


def test_dd_reads_at_random_offsets(firecrest_server, mount):
    check_dd_at_random_offsets(mount, firecrest_server.root, reads=30)


def test_rsync_round_trip_of_300_files(firecrest_server, mount, tmp_path):
    source = tmp_path / "tree"
    for index in range(300):
        directory = source / f"d{index % 10:02d}"
        directory.mkdir(parents=True, exist_ok=True)
        (directory / f"f{index:03d}.txt").write_bytes(os.urandom(index % 97 + 1))
    sh("rsync", "-a", f"{source}/", f"{mount}/tree/")
    assert tree_digests(os.path.join(firecrest_server.root, "tree")) == tree_digests(source)
    back = tmp_path / "back"
    sh("rsync", "-a", f"{mount}/tree/", f"{back}/")
    assert tree_digests(back) == tree_digests(source)


def test_rename_and_namespace(firecrest_server, mount):
    root = firecrest_server.root
    sh("mkdir", "-p", f"{mount}/a/b")
    sh("sh", "-c", f"echo hello > {mount}/a/b/x.txt")
    sh("mv", f"{mount}/a/b/x.txt", f"{mount}/a/y.txt")
    assert sorted(os.listdir(os.path.join(root, "a"))) == ["b", "y.txt"]
    assert sh("cat", f"{mount}/a/y.txt") == "hello\n"
    sh("mv", f"{mount}/a/b", f"{mount}/a/c")
    assert sorted(os.listdir(os.path.join(root, "a"))) == ["c", "y.txt"]
    sh("chmod", "640", f"{mount}/a/y.txt")
    assert os.stat(os.path.join(root, "a/y.txt")).st_mode & 0o777 == 0o640
    result = subprocess.run(["rmdir", f"{mount}/a"], capture_output=True)
    assert result.returncode != 0 and os.path.exists(os.path.join(root, "a", "y.txt"))
    sh("rm", "-r", f"{mount}/a")
    assert not os.path.exists(os.path.join(root, "a"))


def test_request_counts(firecrest_server, mount):
    os.mkdir(os.path.join(firecrest_server.root, "counted"))
    for index in range(20):
        with open(os.path.join(firecrest_server.root, "counted", f"f{index}"), "wb") as handle:
            handle.write(b"x" * (index + 1))
    log = firecrest_server.log
    sh("stat", f"{mount}/counted")  # the directory itself, through its parent's listing
    log.reset()
    listing = sh("ls", "-l", f"{mount}/counted")
    assert listing.count("\n") == 21
    assert log.total() == log.total(fc.LS) == 1, log.snapshot()
    log.reset()
    assert sh("stat", "-c", "%s", f"{mount}/counted/f4").strip() == "5"
    assert log.total() == 0, log.snapshot()
    assert sh("cat", f"{mount}/counted/f9") == "x" * 10
    assert log.total() == log.total(fc.DOWNLOAD) == 1, log.snapshot()
