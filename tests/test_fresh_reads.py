"""Close-to-open consistency in the Python front ends (issue 24, item 4): opening a file for reading asks the
server for its current attributes (exactly one stat, the cached entry bypassed), so a file changed on the
server reads as its new version at once, while listings stay cached for ``attr_ttl``.  Files are changed
on the servers' own disks; requests are counted in the servers' logs."""
import os

import fs
import fsspec
import pytest

from hpcfs.registry import protocol_for
from hpcfs.servers.firecrest.server import DOWNLOAD as FIRECREST_DOWNLOAD, STAT as FIRECREST_STAT

# what one backend stat costs on each wire: UFTP sends MLST and STAT F in one batch, FirecREST one ops/stat
STAT_REQUEST = {"uftp": "MLST", "firecrest": FIRECREST_STAT}
# how each server logs a file's data being sent
DATA_REQUEST = {"uftp": "RETR", "firecrest": FIRECREST_DOWNLOAD}


pytestmark = pytest.mark.usefixtures("close_cached_filesystems")  # tests/conftest.py


@pytest.fixture(params=sorted(STAT_REQUEST))
def server(request):
    return request.param, request.getfixturevalue(protocol_for(request.param).fixture)


def _fsspec_readers(url):
    filesystem, path = fsspec.core.url_to_fs(url)

    def with_open():
        with filesystem.open(path, "rb") as source:
            return source.read()

    return filesystem.ls, [with_open, lambda: filesystem.cat_file(path)]


def _pyfs_readers(url):
    filesystem = fs.open_fs(url.replace("/data.txt", "/", 1))
    return filesystem.listdir, [lambda: filesystem.readbytes("data.txt"),
                                lambda: filesystem.readtext("data.txt").encode()]


def _change(path: str, data: bytes, mtime_step: int) -> None:
    """Rewrite the file on the server's disk with a new mtime (a same-size change is seen by it alone)."""
    before = os.stat(path).st_mtime
    with open(path, "wb") as sink:
        sink.write(data)
    os.utime(path, (before + mtime_step, before + mtime_step))


@pytest.mark.parametrize("front_end", [_fsspec_readers, _pyfs_readers], ids=["fsspec", "pyfs"])
def test_a_changed_file_reads_as_its_new_version_at_the_next_open(server, front_end):
    scheme, handle = server
    local = os.path.join(handle.root, "data.txt")
    with open(local, "wb") as sink:
        sink.write(b"version1")
    list_parent, readers = front_end(handle.url("/data.txt"))
    list_parent("/")  # the directory listing caches the file's attributes for attr_ttl
    versions = [b"version2, longer", b"version3, longer"]  # the size changes, then only the mtime
    for reader in readers:
        assert reader() == b"version1"
    for step, version in enumerate(versions, start=1):
        _change(local, version, mtime_step=10 * step)
        for reader in readers:
            handle.log.reset()
            assert reader() == version
            assert handle.log.counts[STAT_REQUEST[scheme]] == 1, handle.log.counts


def test_an_unchanged_file_costs_one_stat_per_open_and_no_data(server):
    scheme, handle = server
    with open(os.path.join(handle.root, "data.txt"), "wb") as sink:
        sink.write(b"version1")
    filesystem, path = fsspec.core.url_to_fs(handle.url("/data.txt"))
    assert filesystem.cat_file(path) == b"version1"
    assert handle.log.counts[DATA_REQUEST[scheme]] == 1
    handle.log.reset()
    for _ in range(3):
        assert filesystem.cat_file(path) == b"version1"
    assert handle.log.counts[STAT_REQUEST[scheme]] == 3
    assert handle.log.counts[DATA_REQUEST[scheme]] == 0  # the cached copy of this version is read
