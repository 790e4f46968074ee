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


class TestRealFirecrestS3FS(RealPeerFSCases, unittest.TestCase):
    peer_fixture = "real_firecrest_s3"
