"""PyFilesystem2's own contract suite (``FSTestCases``) through ``fs.open_fs``, written once and run for every
protocol of hpcfs/registry.py against its local server, and against the real servers of ``../shared/peers``
(UFTPD and both FirecREST systems): one class per target of tests/contract.py, each case on a fresh
directory. A read-only protocol (Flux's tree of jobs) runs the read-only part instead: its files read back
and every change refused before anything is sent. Protocol-specific checks (request counts, EM volumes)
stay in test_<protocol>_pyfs.py."""
import os
import posixpath
import unittest

import fs
import fs.errors
import pytest
from fs.test import FSTestCases

import contract

pytestmark = pytest.mark.timeout(120)

# FSTestCases' upload/download cases copy a tree whose largest file is 5.25 MiB
LARGE_CASES = frozenset(f"test_{kind}_{workers}" for kind in ("upload", "download") for workers in (0, 1, 2, 4))
LARGEST_FILE = len(FSTestCases.data4)


def gates(capabilities) -> dict:
    """Case name -> why it must fail where the backend declares it cannot do what the case needs (strict
    xfails: a case that starts to pass is noticed).  Everything else FSTestCases asks of a filesystem (times
    it cannot set, modes it cannot keep) the front end already answers the way PyFilesystem2 allows."""
    if capabilities.max_upload is not None and capabilities.max_upload < LARGEST_FILE:
        reason = (f"the server takes no upload above {capabilities.max_upload} bytes (max_upload; FirecREST without "
                  f"staging: max_ops_file_size), and these cases copy a file of {LARGEST_FILE}")
        return dict.fromkeys(LARGE_CASES, reason)
    return {}


class ContractFSCases(FSTestCases):
    """Each case gets its target's server (the handle of ``target.fixture``) and a fresh directory on it."""

    target: contract.Target

    @pytest.fixture(autouse=True)
    def _server(self, request):
        self.request = request
        self.handle = request.getfixturevalue(self.target.fixture)

    def make_fs(self):
        opened = fs.open_fs(self.handle.url(contract.fresh_directory(self.handle)))
        assert type(opened).__module__ == "hpcfs.frontends.pyfs"  # our opener, not pyunicore's
        reason = gates(opened.remote.capabilities).get(self._testMethodName)
        if reason:
            self.request.applymarker(pytest.mark.xfail(strict=True, reason=reason))
        return opened


# The two FirecREST systems share the server and every direct operation; they differ in what moves files
# above 5 MiB. The whole suite on `cluster` repeats the one on `cluster-s3` for about four minutes of CI
# (renames and removals are scheduler jobs there), so by default `cluster` runs the cases where the
# systems differ and a few basic ones; HPCFS_ALL_PEER_CASES=1 runs all of them.
SUBSETS = {  # target name -> (the cases it runs, why not the others)
    "real-firecrest-cluster": (
        {*LARGE_CASES, "test_basic", "test_getinfo", "test_listdir", "test_makedirs", "test_open", "test_readbytes",
         "test_writebytes", "test_remove", "test_move"},
        "same server and direct operations as cluster-s3, where it runs (HPCFS_ALL_PEER_CASES=1 runs it here too)"),
}
ALL_CASES = frozenset(name for name in dir(FSTestCases) if name.startswith("test_"))


def case_class(target: contract.Target) -> type:
    """``Test<Target>FS``: the whole of FSTestCases against ``target`` (or its subset, the rest skipped with
    the reason)."""
    attributes: dict = {"target": target}
    cases, reason = SUBSETS.get(target.name, (ALL_CASES, ""))
    if not os.environ.get("HPCFS_ALL_PEER_CASES"):
        attributes.update((name, unittest.skip(reason)(getattr(FSTestCases, name))) for name in ALL_CASES - cases)
    name = "Test" + "".join(part.capitalize() for part in target.name.split("-")) + "FS"
    return type(name, (ContractFSCases, unittest.TestCase), attributes)


for _target in contract.writable(contract.LOCAL + contract.REAL):
    _class = case_class(_target)
    globals()[_class.__name__] = _class
del _target, _class  # pytest collects every TestCase it finds in the module, whatever its name


# -- a read-only tree ---------------------------------------------------------------------------------------
@pytest.fixture(params=[target for target in contract.LOCAL if target.read_only], ids=lambda target: target.name)
def read_only(request):
    """``(handle, filesystem, path, data)``: a read-only target's tree and one file of it (``handle.sample()``:
    the suite cannot make one there)."""
    handle = request.getfixturevalue(request.param.fixture)
    path, data = handle.sample()
    with fs.open_fs(handle.url()) as filesystem:
        yield handle, filesystem, path, data


def test_a_read_only_tree_reads_back(read_only):
    _, filesystem, path, data = read_only
    parent, name = posixpath.split(path)
    assert filesystem.readbytes(path) == data
    assert filesystem.getinfo(path, ["details"]).size == len(data)
    assert filesystem.isdir(parent) and name in filesystem.listdir(parent)
    assert path in set(filesystem.walk.files(parent))
    assert not filesystem.exists(f"{parent}/missing")
    with filesystem.openbin(path) as source:
        source.seek(1)
        assert source.read() == data[1:]


def test_every_change_to_a_read_only_tree_is_refused_before_it_is_sent(read_only):
    """Each change on a tree opened just for it: nothing cached may stand in for the refusal."""
    handle, filesystem, path, data = read_only
    parent = posixpath.dirname(path)
    changes = [
        lambda tree: tree.writebytes(f"{parent}/new", b"x"),
        lambda tree: tree.writebytes(path, b"x"),
        lambda tree: tree.appendtext(path, "x"),
        lambda tree: tree.open(path, "r+b"),
        lambda tree: tree.makedir(f"{parent}/new"),
        lambda tree: tree.remove(path),
        lambda tree: tree.removedir(parent),
        lambda tree: tree.move(path, f"{parent}/moved"),
        lambda tree: tree.settimes(path),
        lambda tree: tree.setinfo(path, {"details": {"modified": 0}}),
    ]
    for change in changes:
        with fs.open_fs(handle.url()) as fresh:
            before = handle.log.total()
            with pytest.raises(fs.errors.ResourceReadOnly):
                change(fresh)
            assert handle.log.total() == before  # refused here, never sent
    assert filesystem.readbytes(path) == data
