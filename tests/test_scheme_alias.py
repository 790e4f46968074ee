"""The unambiguous schemes ``hpcfs+<scheme>`` (issue 24, item 7): PyUNICORE registers a ``uftp`` opener for
PyFilesystem2 too, and ``open_fs("uftp://...")`` gets whichever entry point comes first.  ``hpcfs+uftp://``
always opens hpcfs (open_fs and fsspec), and ``hpcfs info`` says whose opener ``open_fs`` would use.  The
clash is made real with a second installed distribution that registers ``uftp`` and comes first on the path."""
import os
import subprocess
import sys
import textwrap

import fs
import fsspec
import pytest

from hpcfs.frontends.fsspec import HpcfsFileSystem
from hpcfs.frontends.pyfs import HpcfsFS
from mounting import hpcfs


pytestmark = pytest.mark.usefixtures("close_cached_filesystems")  # tests/conftest.py


@pytest.fixture
def other_uftp_opener(tmp_path):
    """A directory for PYTHONPATH holding a distribution whose ``uftp`` opener shadows hpcfs's, as PyUNICORE's
    does when it comes first."""
    site = tmp_path / "site"
    (site / "otheruftp-1.0.dist-info").mkdir(parents=True)
    (site / "otheruftp-1.0.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: otheruftp\nVersion: 1.0\n")
    (site / "otheruftp-1.0.dist-info" / "entry_points.txt").write_text("[fs.opener]\nuftp = otheruftp:Opener\n")
    (site / "otheruftp.py").write_text(textwrap.dedent("""\
        from fs.memoryfs import MemoryFS
        from fs.opener import Opener

        class Opener(Opener):
            protocols = ["uftp"]

            def open_fs(self, fs_url, parse_result, writeable, create, cwd):
                return MemoryFS()
    """))
    return str(site)


def _alias(url: str) -> str:
    return "hpcfs+" + url


def test_the_alias_opens_hpcfs_in_open_fs_and_fsspec(uftp_server):
    with open(os.path.join(uftp_server.root, "data.txt"), "wb") as sink:
        sink.write(b"through the alias")
    with fs.open_fs(_alias(uftp_server.url("/"))) as opened:
        assert isinstance(opened, HpcfsFS)
        assert opened.readbytes("data.txt") == b"through the alias"
    with fsspec.open(_alias(uftp_server.url("/data.txt")), "rb") as source:
        assert source.read() == b"through the alias"
    assert isinstance(fsspec.core.url_to_fs(_alias(uftp_server.url("/data.txt")))[0], HpcfsFileSystem)


def test_with_a_clashing_opener_first_only_the_alias_opens_hpcfs(uftp_server, other_uftp_opener, tmp_path):
    with open(os.path.join(uftp_server.root, "data.txt"), "wb") as sink:
        sink.write(b"hpcfs")
    code = textwrap.dedent(f"""\
        import fs
        print(type(fs.open_fs({uftp_server.url("/")!r})).__name__)
        print(fs.open_fs({_alias(uftp_server.url("/"))!r}).readtext("data.txt"))
    """)
    # Run outside the checkout: its own hpcfs.egg-info would come first on the path ('' leads sys.path).
    result = subprocess.run([sys.executable, "-W", "ignore", "-c", code], capture_output=True, text=True,
                            timeout=120, env={**os.environ, "PYTHONPATH": other_uftp_opener}, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["MemoryFS", "hpcfs"]


def test_hpcfs_info_says_which_opener_open_fs_uses(uftp_server, other_uftp_opener, tmp_path):
    alone = hpcfs("info", uftp_server.plain_url("/"), env=uftp_server.env, cwd=tmp_path).stdout
    assert "open_fs uftp://: hpcfs.frontends.pyfs:UFTPOpener (hpcfs)\n" in alone
    shadowed = hpcfs("info", uftp_server.plain_url("/"), env={**uftp_server.env, "PYTHONPATH": other_uftp_opener},
                     cwd=tmp_path)
    assert ("open_fs uftp://: otheruftp:Opener (otheruftp); also registered: hpcfs.frontends.pyfs:UFTPOpener "
            "(hpcfs); hpcfs+uftp:// always opens hpcfs\n") in shadowed.stdout
