"""``hpcfs mount`` of the local FirecREST server: round trips counted by the in-process server. The
shell-tool suite every server passes is test_mount_suite.py."""
import os
import shutil

import pytest
from mounting import mounted, sh

from hpcfs.servers.firecrest import server as fc

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(not os.access("/dev/fuse", os.R_OK | os.W_OK) or not shutil.which("fusermount3"),
                       reason="needs /dev/fuse and fusermount3"),
]


@pytest.fixture
def mount(firecrest_server, tmp_path):
    with mounted(firecrest_server.plain_url("/"), tmp_path / "mnt", env=firecrest_server.env) as mountpoint:
        yield mountpoint


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
