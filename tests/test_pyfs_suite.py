"""PyFilesystem2's own contract suite (``FSTestCases``) through ``fs.open_fs`` against the real servers of
``../shared/peers``: UFTPD and both FirecREST systems. The same suite runs against the emulators in
test_uftp_client.py, test_firecrest_pyfs.py and test_em_pyfs.py."""
import os
import unittest
import uuid

import fs
import pytest
from fs.test import FSTestCases

pytestmark = pytest.mark.timeout(120)


class RealPeerFSCases(FSTestCases):
    """Each case gets a fresh directory below the peer handle's ``root``; ``peer_fixture`` names the handle."""

    peer_fixture = ""

    @pytest.fixture(autouse=True)
    def _peer(self, request):
        self.peer = request.getfixturevalue(self.peer_fixture)

    def make_fs(self):
        case = f"/case-{uuid.uuid4().hex[:8]}"
        os.mkdir(self.peer.root + case)
        os.chmod(self.peer.root + case, 0o777)  # UFTPD sessions run as nobody
        opened = fs.open_fs(self.peer.url(case))
        assert type(opened).__module__ == "hpcfs.frontends.pyfs"  # our opener, not pyunicore's
        return opened


class TestRealUFTPFS(RealPeerFSCases, unittest.TestCase):
    peer_fixture = "real_uftp"


class TestRealFirecrestClusterFS(RealPeerFSCases, unittest.TestCase):
    peer_fixture = "real_firecrest_cluster"


def too_large_without_staging(name: str):
    """FSTestCases' upload/download cases move a 5.25 MiB file: more than ``cluster`` (no staging) moves."""
    def case(self):
        getattr(FSTestCases, name)(self)

    case.__name__ = name
    return pytest.mark.xfail(strict=True, reason="FirecREST `cluster` has no staging: nothing above "
                                                 "max_ops_file_size (5 MiB) moves")(case)


TOO_LARGE_CASES = [f"test_{kind}_{workers}" for kind in ("upload", "download") for workers in (0, 1, 2, 4)]
for _name in TOO_LARGE_CASES:
    setattr(TestRealFirecrestClusterFS, _name, too_large_without_staging(_name))

# The two FirecREST systems share the server and every direct operation; they differ in what moves files
# above 5 MiB. The whole suite on `cluster` repeats the one on `cluster-s3` for about four minutes of CI
# (renames and removals are scheduler jobs there), so by default `cluster` runs the cases where the
# systems differ and a few basic ones; HPCFS_ALL_PEER_CASES=1 runs all of them.
CLUSTER_CASES = {*TOO_LARGE_CASES, "test_basic", "test_getinfo", "test_listdir", "test_makedirs", "test_open",
                 "test_readbytes", "test_writebytes", "test_remove", "test_move"}
if not os.environ.get("HPCFS_ALL_PEER_CASES"):
    for _name in {name for name in dir(FSTestCases) if name.startswith("test_")} - CLUSTER_CASES:
        setattr(TestRealFirecrestClusterFS, _name, unittest.skip(
            "same server and direct operations as cluster-s3, where it runs (HPCFS_ALL_PEER_CASES=1 runs it "
            "here too)")(getattr(FSTestCases, _name)))


class TestRealFirecrestS3FS(RealPeerFSCases, unittest.TestCase):
    peer_fixture = "real_firecrest_s3"
