"""One mount suite for every protocol and server: ``hpcfs mount`` used with ordinary shell tools against
the local server of every protocol in hpcfs/registry.py and the real servers of ``../shared/peers`` (UFTPD,
FirecREST systems ``cluster`` and ``cluster-s3``), the targets of tests/contract.py; bytes checked by sha256
against the served directory.  Each server gets one mount for the whole module, on a fresh directory of its
own, and each test its own directory in it.  What a target can do comes from its backend's
``Capabilities``; a read-only protocol (Flux's tree of jobs) runs only the read-only part: every change
refused.  Protocol-specific checks (request counts, EM volumes, UFTP in-place writes, Flux's growing output)
stay in test_<protocol>_mount.py."""
import errno
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from typing import List, Tuple

import pytest
from handles import ServerHandle, starter
from mounting import (
    check_dd_at_random_offsets, copy_round_trip, hpcfs, mounted, served_digests, sh, sha256_file, tree_digests,
    write_random,
)

import contract
from hpcfs.backend import Capabilities
from hpcfs.urls import open_backend

pytestmark = [
    pytest.mark.timeout(300),
    pytest.mark.skipif(not os.access("/dev/fuse", os.R_OK | os.W_OK) or not shutil.which("fusermount3"),
                       reason="needs /dev/fuse and fusermount3"),
]
MIB = 1 << 20
NO_STAGING = "the server cannot move a file this large (FirecREST `cluster` has no staging: 5 MiB at most)"
NO_MTIMES = "the server cannot set modification times, so rsync -a finds every file changed"
# scheme -> {test name: (reason, strict)}, for its local server and its real one alike.  hpcfs refuses what
# UFTPD cannot do (the emulator copies that limit): not strict, so it flips when fixed.
XFAILS = {"uftp": {"test_attributes_of_names_with_spaces": (
    "UFTPD cannot MFMT/MFF a path with a space; fixed by real-peers-fixes", False)}}
TARGETS = {target.name: target for target in contract.LOCAL + contract.REAL}


@dataclass
class Target:
    """A server as the mount suite sees it: where its mount's root lies on this machine, and its limits."""

    name: str
    root: str  # the served directory that the mount's "/" shows
    plain_url: str
    env: dict
    capabilities: Capabilities
    xfail: dict = field(default_factory=dict)  # test name -> (reason, strict)
    mount_options: Tuple[str, ...] = ()
    listing_ttl: float = 0.0  # how long the mount may show a listing that predates a change on the server
    tree_files: int = 100  # files in the rsync and cp -r trees
    sample: str = ""  # a read-only tree's file, relative to its root (the suite cannot make one there)

    @property
    def set_mtime(self) -> bool:
        return self.capabilities.set_mtime

    @property
    def chmod(self) -> bool:
        return self.capabilities.chmod

    @property
    def largest_file(self) -> int:
        """Above it the server cannot move a file: the largest upload, and the largest whole-file read of a
        server that reads no ranges."""
        limits = [self.capabilities.max_upload]
        if not self.capabilities.ranged_reads:
            limits.append(self.capabilities.max_whole_read)
        return min((limit for limit in limits if limit is not None), default=1 << 40)


def capabilities(url: str) -> Capabilities:
    backend, _ = open_backend(url)
    try:
        return backend.capabilities
    finally:
        backend.close()


def target_for(target: contract.Target, handle: ServerHandle) -> Target:
    """The mount suite's view of ``handle``: a writable server's fresh directory (never one another module
    or an earlier run left files in), a read-only server's whole tree and a file of it."""
    path, sample = "/", ""
    if target.read_only:
        sample = handle.sample()[0].lstrip("/")
    else:
        path = contract.fresh_directory(handle, "mount")
    can = capabilities(handle.url(path))
    # on a real server each rename of rsync's temporary files is a scheduler job (sbatch, then polled)
    small_tree = target.real and can.rename == "job"
    return Target(target.name, os.path.join(handle.root, path.strip("/")), handle.plain_url(path), handle.env, can,
                  xfail=XFAILS.get(target.scheme, {}), mount_options=handle.mount_options,
                  listing_ttl=handle.listing_ttl, tree_files=4 if small_tree else 100, sample=sample)


def target_names(read_only: bool) -> List[str]:
    return [name for name, target in TARGETS.items() if target.read_only == read_only]


def pytest_generate_tests(metafunc):
    """A test that takes ``case`` writes, so it runs against every writable target; one that takes
    ``sample`` against every read-only one."""
    for fixture, read_only in (("case", False), ("sample", True)):
        if fixture in metafunc.fixturenames:
            metafunc.parametrize("target", target_names(read_only), indirect=True, scope="module")


@pytest.fixture(scope="module")
def target(request, tmp_path_factory):
    """A real server from its (session) fixture; a local one started for this module by its protocol's
    ``start_<scheme>`` (tests/handles.py), since its fixture lasts one test."""
    target = TARGETS[request.param]
    if target.real:
        yield target_for(target, request.getfixturevalue(target.fixture))
        return
    handle = starter(target.scheme)(str(tmp_path_factory.mktemp(f"{target.name}-root")))
    handle.allow_rapid_commands()
    try:
        yield target_for(target, handle)
    finally:
        handle.server.stop()


@pytest.fixture(scope="module")
def mount(target, tmp_path_factory):
    with mounted(target.plain_url, tmp_path_factory.mktemp(f"{target.name}-mnt") / "mnt",
                 env=target.env, options=target.mount_options) as mountpoint:
        yield mountpoint


@dataclass
class Case:
    """This test's directory: ``mnt`` through the mount, ``served`` on the server's disk."""

    mnt: str
    served: str
    target: Target


@pytest.fixture
def case(request, target, mount, tmp_path):
    """A fresh directory for the test, plus the target's expected failures for it."""
    name = request.node.originalname
    if name in target.xfail:
        reason, strict = target.xfail[name]
        request.applymarker(pytest.mark.xfail(reason=reason, strict=strict))
    served = os.path.join(target.root, name)
    os.mkdir(served)
    os.chmod(served, 0o777)  # real UFTPD sessions run as nobody
    time.sleep(target.listing_ttl)  # the mount has not seen it before the test makes its own files there
    return Case(os.path.join(mount, name), served, target)


def test_cp_both_ways_keeps_every_byte(case, tmp_path):
    copy_round_trip(case.mnt, case.served, str(tmp_path), {"empty": 0, "one-byte": 1, "mib-plus-one": MIB + 1})


def test_cp_of_100_mib_both_ways(case, tmp_path):
    if case.target.largest_file < 100 * MIB:
        pytest.skip(NO_STAGING)
    copy_round_trip(case.mnt, case.served, str(tmp_path), {"hundred-mib": 100 * MIB})


def test_dd_reads_at_random_offsets(case):
    check_dd_at_random_offsets(case.mnt, case.served, reads=30, size=min(8 * MIB, case.target.largest_file))


TREE_MTIME = 1_500_000_000  # 2017: never the second an upload happens in


def make_tree(top, files: int, spaces: bool = False):
    """``files`` small random files in ten sub-directories (names with spaces on request), all modified at
    TREE_MTIME: whether a server kept rsync's times must not depend on whether the copy ended in the second
    the files were made in."""
    for index in range(files):
        directory = top / (f"dir {index % 10}" if spaces else f"d{index % 10:02d}")
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / (f"file {index}.txt" if spaces else f"f{index:03d}.txt")
        path.write_bytes(os.urandom(index % 97 + 1))
        os.utime(path, (TREE_MTIME, TREE_MTIME))
    return top


# An executable and a private file among the 644 ones of a tree: rsync chmods a new file whose mode the
# mount shows otherwise (with -p or without), and with -p it also fchmods each temporary file it creates.
MODES = {"d01/f001.txt": 0o755, "d02/f002.txt": 0o600}


def with_modes(top):
    for name, mode in MODES.items():
        os.chmod(top / name, mode)
    return top


def rsync_flags(target: Target) -> Tuple[str, ...]:
    """What docs/guide/<protocol>.md recommends: ``-a`` where the server keeps times; else sizes only
    decide (uploads carry the server's time), no ``-t`` (nor ``-p`` without chmod) that would list every
    file as changed on each run, and writes in place (a rename is a job or a copy there)."""
    if target.set_mtime:
        return ("-a",)
    return ("-rlp" if target.chmod else "-r", "--size-only", "--inplace")


def rsync_round_trip(case: Case, source, back):
    """``rsync -a`` a tree in and out of the mount; both copies match the source byte for byte."""
    sh("rsync", "-a", f"{source}/", f"{case.mnt}/tree/")
    assert served_digests(os.path.join(case.served, "tree")) == tree_digests(source)
    sh("rsync", "-a", f"{case.mnt}/tree/", f"{back}/")
    assert tree_digests(back) == tree_digests(source)


def test_rsync_round_trip(case, tmp_path):
    """Plain ``rsync -a`` works everywhere: a mode or time the server cannot keep is accepted and ignored."""
    rsync_round_trip(case, with_modes(make_tree(tmp_path / "tree", case.target.tree_files)), tmp_path / "back")


def test_a_second_rsync_transfers_nothing(case, tmp_path):
    """With the flags the protocol's guide recommends, a second rsync finds nothing to send or change."""
    source = with_modes(make_tree(tmp_path / "tree", max(3, case.target.tree_files // 4)))
    flags = rsync_flags(case.target)
    sh("rsync", *flags, f"{source}/", f"{case.mnt}/tree/")
    served = os.path.join(case.served, "tree")
    assert served_digests(served) == tree_digests(source)
    if case.target.chmod:  # -a and -rlp keep modes
        assert {name: os.stat(os.path.join(served, name)).st_mode & 0o777 for name in MODES} == MODES
    again = sh("rsync", *flags, "--itemize-changes", "--stats", f"{source}/", f"{case.mnt}/tree/")
    assert "Number of regular files transferred: 0\n" in again, again
    changes = again.split("Number of files:")[0]  # --itemize-changes lists a change per line before the stats
    assert changes.strip() == "", f"a second rsync {' '.join(flags)} found differences:\n{changes}"


def test_attributes_of_names_with_spaces(case, tmp_path):
    if not case.target.set_mtime:
        pytest.skip(NO_MTIMES)
    source = make_tree(tmp_path / "tree", 12, spaces=True)
    rsync_round_trip(case, source, tmp_path / "back")
    again = sh("rsync", "-a", "--itemize-changes", f"{source}/", f"{case.mnt}/tree/")
    assert again.strip() == "", "a second rsync found differences (sizes or times not kept)"
    sh("touch", "-d", "@1500000000", f"{case.mnt}/tree/dir 1/file 1.txt")
    assert os.stat(os.path.join(case.served, "tree/dir 1/file 1.txt")).st_mtime == 1500000000
    sh("chmod", "600", f"{case.mnt}/tree/dir 1/file 1.txt")
    assert os.stat(os.path.join(case.served, "tree/dir 1/file 1.txt")).st_mode & 0o777 == 0o600


def test_namespace_operations(case):
    served, mnt = case.served, case.mnt
    sh("mkdir", "-p", f"{mnt}/a/b")
    assert os.path.isdir(f"{mnt}/a/b")
    sh("sh", "-c", f"echo hello > {mnt}/a/b/x.txt")
    assert open(os.path.join(served, "a/b/x.txt")).read() == "hello\n"
    sh("mv", f"{mnt}/a/b/x.txt", f"{mnt}/a/y.txt")
    assert sorted(os.listdir(f"{mnt}/a")) == ["b", "y.txt"]
    assert os.path.isfile(os.path.join(served, "a/y.txt")) and not os.path.exists(os.path.join(served, "a/b/x.txt"))
    assert sh("cat", f"{mnt}/a/y.txt") == "hello\n"
    sh("mkdir", "-p", f"{mnt}/a/c")
    sh("cp", f"{mnt}/a/y.txt", f"{mnt}/a/c/z.txt")
    sh("mv", f"{mnt}/a/c", f"{mnt}/a/d")
    assert open(os.path.join(served, "a/d/z.txt")).read() == "hello\n"
    assert not os.path.exists(os.path.join(served, "a/c"))
    result = subprocess.run(["rmdir", f"{mnt}/a"], capture_output=True)
    assert result.returncode != 0 and os.path.exists(os.path.join(served, "a", "y.txt"))
    sh("rm", "-r", f"{mnt}/a")
    assert not os.path.exists(os.path.join(served, "a"))


def test_chmod(case):
    sh("sh", "-c", f"echo hello > {case.mnt}/x.txt")
    before = sh("stat", "-c", "%a", f"{case.mnt}/x.txt").strip()
    sh("chmod", "640", f"{case.mnt}/x.txt")  # accepted everywhere
    if case.target.chmod:
        assert os.stat(os.path.join(case.served, "x.txt")).st_mode & 0o777 == 0o640
        assert sh("stat", "-c", "%a", f"{case.mnt}/x.txt").strip() == "640"
    else:  # and ignored where the server keeps no modes, as rclone does: the mount shows the server's
        assert sh("stat", "-c", "%a", f"{case.mnt}/x.txt").strip() == before


def test_touch(case):
    sh("touch", f"{case.mnt}/new.txt")
    assert os.path.getsize(os.path.join(case.served, "new.txt")) == 0
    if case.target.set_mtime:  # touch's "now" (UTIME_NOW) is now, not 1970
        assert abs(os.stat(os.path.join(case.served, "new.txt")).st_mtime - time.time()) < 120
    sh("touch", "-d", "@1500000000", f"{case.mnt}/new.txt")
    if case.target.set_mtime:
        assert os.stat(os.path.join(case.served, "new.txt")).st_mtime == 1500000000
        assert sh("stat", "-c", "%Y", f"{case.mnt}/new.txt").strip() == "1500000000"


def test_ls_lR_shows_every_entry_with_its_size(case):
    for path, size in {"top.bin": 10, "sub/one.bin": 1, "sub/deeper/two.bin": 2000}.items():
        os.makedirs(os.path.dirname(os.path.join(case.served, path)), mode=0o777, exist_ok=True)
        write_random(os.path.join(case.served, path), size)
    listing = sh("ls", "-lR", case.mnt)
    sizes = {line.split()[-1]: int(line.split()[4]) for line in listing.splitlines() if line.startswith("-")}
    assert sizes == {"top.bin": 10, "one.bin": 1, "two.bin": 2000}
    assert f"{case.mnt}/sub/deeper:" in listing


# -- the CLI against the same servers ---------------------------------------------------------------------
def test_cli_cp_recursive_both_ways_and_ls_long(case, tmp_path):
    target = case.target
    top = make_tree(tmp_path / "top", case.target.tree_files)
    write_random(top / "d00" / "big.bin", min(2 * MIB + 3, target.largest_file))
    url = target.plain_url.rstrip("/") + f"/{os.path.basename(case.served)}"
    hpcfs("cp", "-r", str(top), url, env=target.env)
    assert served_digests(os.path.join(case.served, "top")) == tree_digests(top)
    hpcfs("cp", "-r", f"{url}/top", str(tmp_path / "back"), env=target.env)
    assert tree_digests(tmp_path / "back") == tree_digests(top)
    total, *lines = hpcfs("ls", "-l", f"{url}/top/d00", env=target.env).stdout.splitlines()
    assert total.startswith("total ")
    sizes = {line.split()[-1]: int(line.split()[2]) for line in lines}  # mode, owner, size, time, name
    assert sizes == {path.name: path.stat().st_size for path in (top / "d00").iterdir()}
    assert sha256_file(os.path.join(case.served, "top/d00/big.bin")) == sha256_file(top / "d00" / "big.bin")


# -- a read-only tree ---------------------------------------------------------------------------------------
@pytest.fixture
def sample(target, mount):
    """A file of a read-only tree, through the mount."""
    return os.path.join(mount, target.sample)


def test_every_change_fails_with_erofs(sample):
    directory = os.path.dirname(sample)
    before = sh("cat", sample, binary=True)
    changes = [
        lambda: open(sample, "ab"),
        lambda: open(f"{directory}/new", "wb"),
        lambda: os.truncate(sample, 0),
        lambda: os.mkdir(f"{os.path.dirname(directory)}/new"),
        lambda: os.unlink(sample),
        lambda: os.rmdir(directory),
        lambda: os.rename(sample, f"{directory}/moved"),
        lambda: os.utime(sample, (0, 0)),
        lambda: os.chmod(sample, 0o666),
    ]
    for change in changes:
        with pytest.raises(OSError) as refused:
            change()
        assert refused.value.errno == errno.EROFS, refused.value
    shell = subprocess.run(["sh", "-c", f"echo x > {sample}"], capture_output=True, text=True)
    assert shell.returncode != 0 and "Read-only file system" in shell.stderr
    assert sh("cat", sample, binary=True) == before
