"""``fs.open_fs("firecrest://...")`` passes PyFilesystem2's own test suite against the local server."""
import os
import shutil
import tempfile
import unittest
import uuid

import fs
from fs.test import FSTestCases

from fixtures_firecrest import start_firecrest


class TestFirecrestFS(FSTestCases, unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.root = tempfile.mkdtemp(prefix="hpcfs-firecrest-fstest-")
        cls.firecrest = start_firecrest(cls.root)

    @classmethod
    def tearDownClass(cls):
        cls.firecrest.server.stop()
        shutil.rmtree(cls.root, ignore_errors=True)

    def make_fs(self):
        subdirectory = f"/case-{uuid.uuid4().hex[:8]}"
        os.mkdir(self.root + subdirectory)
        return fs.open_fs(self.firecrest.url(subdirectory))
