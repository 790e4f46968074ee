"""The fsspec front end against the local servers: entry points, fsspec's own abstract test suite, exact
ranged reads, pandas through every writable protocol, and Dask reading 20 files in worker processes.  fsspec's
abstract suite runs once for every writable protocol of hpcfs/registry.py (tests/contract.py).  Bytes are
checked against the servers' directories."""
import hashlib
import io
import os
import posixpath
import random
import threading
from concurrent.futures import ThreadPoolExecutor

import dask
import dask.bag
import fsspec
import fsspec.tests.abstract as abstract
import pandas
import pytest

import contract
from fixtures_uftp import UFTP_USER
from hpcfs.frontends.fsspec import HpcfsFileSystem
from hpcfs.registry import WRITABLE_SCHEMES, protocol_for

PROTOCOLS = WRITABLE_SCHEMES  # every protocol whose local server takes writes (hpcfs/registry.py)


pytestmark = pytest.mark.usefixtures("close_cached_filesystems")  # tests/conftest.py


@pytest.fixture(params=PROTOCOLS)
def server(request):
    """``(handle, base)``: a running server and the directory below which files may be written."""
    handle = request.getfixturevalue(protocol_for(request.param).fixture)
    return handle, getattr(handle, "volume_path", "")


def write_server_file(handle, base, name, data):
    path = os.path.join(handle.root, base.strip("/"), name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as sink:
        sink.write(data)
    return f"{base}/{name}"


# -- registration -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_fsspec_finds_hpcfs_through_its_entry_point(protocol):
    assert fsspec.get_filesystem_class(protocol) is HpcfsFileSystem


def test_fsspec_open_resolves_to_hpcfs_and_reads_the_file(server):
    handle, base = server
    data = os.urandom(300_000)
    path = write_server_file(handle, base, "blob.bin", data)
    opened = fsspec.open(handle.url(path), "rb")
    assert isinstance(opened.fs, HpcfsFileSystem)
    with opened as source:
        assert hashlib.sha256(source.read()).digest() == hashlib.sha256(data).digest()


def test_text_write_then_read_through_fsspec_open(server):
    handle, base = server
    with fsspec.open(handle.url(f"{base}/notes.txt"), "wt", encoding="utf-8") as sink:
        sink.write("grüße\n" * 1000)
    with open(os.path.join(handle.root, base.strip("/"), "notes.txt"), encoding="utf-8") as written:
        assert written.read() == "grüße\n" * 1000
    with fsspec.open(handle.url(f"{base}/notes.txt"), "rt", encoding="utf-8") as source:
        assert source.readline() == "grüße\n"


def test_missing_file_is_file_not_found(server):
    handle, base = server
    with pytest.raises(FileNotFoundError):
        with fsspec.open(handle.url(f"{base}/no-such-file"), "rb") as source:
            source.read()


# -- ranged reads -----------------------------------------------------------------------------------------
def test_cat_file_returns_exactly_the_range(server):
    handle, base = server
    data = os.urandom(5 << 20)
    path = write_server_file(handle, base, "ranges.bin", data)
    filesystem, _ = fsspec.core.url_to_fs(handle.url(path))
    rng = random.Random(3)
    size = len(data)
    ranges = [(None, None), (0, 1), (17, 4096), (-1000, None), (None, -1000), (-300, -100), (size - 5, size + 50),
              (size + 10, None), (4000, 100), (0, size)]
    ranges += [tuple(sorted(rng.sample(range(size), 2))) for _ in range(20)]
    for start, end in ranges:
        assert filesystem.cat_file(path, start=start, end=end) == data[start:end], (start, end)


def test_seek_and_read_on_an_open_file(server):
    handle, base = server
    data = os.urandom(3 << 20)
    path = write_server_file(handle, base, "seek.bin", data)
    with fsspec.open(handle.url(path), "rb") as source:
        source.seek(2 << 20)
        assert source.read(1000) == data[2 << 20 : (2 << 20) + 1000]
        source.seek(-10, io.SEEK_END)
        assert source.read() == data[-10:]


def test_threads_share_one_tree_per_server(uftp_server):
    """fsspec keeps a filesystem instance per thread; they share one tree, so a Dask worker's threads hold
    one set of UFTP sessions, not one each (a tree holds a keeper at once, and two budget slots)."""
    together = threading.Barrier(4)  # four threads alive at once: four instances

    def open_filesystem(_):
        together.wait(timeout=30)
        return fsspec.core.url_to_fs(uftp_server.url("/"))[0]

    with ThreadPoolExecutor(4) as pool:
        instances = list(pool.map(open_filesystem, range(4)))
    assert len({id(instance) for instance in instances}) == 4
    assert len({id(instance.remote) for instance in instances}) == 1
    assert uftp_server.server.user_peaks[UFTP_USER] == 1  # one keeper: one tree logged in


# -- pandas and Dask --------------------------------------------------------------------------------------
def numbered_frame(rows, first=0):
    return pandas.DataFrame({"id": range(first, first + rows), "value": [i * 0.5 for i in range(first, first + rows)],
                             "label": [f"row-{i}" for i in range(first, first + rows)]})


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_pandas_reads_a_csv_with_credentials_from_the_environment(request, monkeypatch, protocol):
    handle = request.getfixturevalue(protocol_for(protocol).fixture)
    base = getattr(handle, "volume_path", "")
    for name, value in handle.env.items():
        monkeypatch.setenv(name, value)
    frame = numbered_frame(5000)
    write_server_file(handle, base, "table.csv", frame.to_csv(index=False).encode())
    assert "password" not in handle.plain_url() and "secret" not in handle.plain_url()
    read = pandas.read_csv(handle.plain_url(f"{base}/table.csv"))
    pandas.testing.assert_frame_equal(read, frame)


def test_pandas_writes_a_csv_and_reads_it_back(server):
    handle, base = server
    frame = numbered_frame(2000)
    frame.to_csv(handle.url(f"{base}/out.csv"), index=False)
    with open(os.path.join(handle.root, base.strip("/"), "out.csv"), "rb") as written:
        assert written.read() == frame.to_csv(index=False).encode()
    pandas.testing.assert_frame_equal(pandas.read_csv(handle.url(f"{base}/out.csv")), frame)


@pytest.mark.timeout(120)
def test_dask_reads_twenty_files_in_worker_processes(uftp_server):
    rows = 250
    frames = [numbered_frame(rows, first=index * rows) for index in range(20)]
    for index, frame in enumerate(frames):
        write_server_file(uftp_server, "", f"parts/part-{index:02d}.csv", frame.to_csv(index=False).encode())
    lines = dask.bag.read_text(uftp_server.url("/parts/part-*.csv"), files_per_partition=1)
    records = lines.map(str.rstrip).filter(lambda line: line and not line.startswith("id,")).map(str.split, ",")
    with dask.config.set(scheduler="processes", num_workers=4):  # each worker unpickles its own filesystem
        rows_read, id_sum, value_sum, worker_pids = dask.compute(
            records.count(), records.map(lambda r: int(r[0])).sum(), records.map(lambda r: float(r[1])).sum(),
            lines.map_partitions(lambda _: [os.getpid()]),
        )
    everything = pandas.concat(frames)
    assert lines.npartitions == 20
    assert os.getpid() not in worker_pids, "the files were read in this process, not by workers"
    assert rows_read == len(everything) == 20 * rows
    assert id_sum == everything["id"].sum()
    assert value_sum == pytest.approx(everything["value"].sum())


# -- fsspec's own abstract suite, for every writable protocol (tests/contract.py) ----------------------------
ABSTRACT_TARGETS = {target.name: target for target in contract.writable(contract.LOCAL + contract.REAL)}
# 96 of the suite's 137 tests are fsspec's glob edge cases: fsspec's own expansion of one tree of empty files
# through `find`, the same code for every protocol, whose listings the other tests cover on each.
GLOB_EDGE_CASES = {"test_copy_glob_edge_cases", "test_get_glob_edge_cases", "test_put_glob_edge_cases"}
# What the real servers run: uploads and exclusive creation, the front end's requests that the emulators
# might answer otherwise.  The rest is the same front end over the same backend as on each emulator, where
# it runs, and FSTestCases runs whole on the real servers (test_pyfs_suite.py).  Every tree the suite's
# fixtures make and remove costs seconds on the real FirecREST (an empty file waits for the command
# time-out, a removal or copy is a scheduler job): the 41 tests took 13 minutes on its two systems, and
# 50 s on the real UFTPD, whose tests run one after another (tests/conftest.py).
REAL_CASES = {"test_put_file_to_existing_directory", "test_put_file_to_file_in_existing_directory",
              "test_put_file_to_file_in_new_directory", "test_put_file_to_new_directory", "test_open_exclusive",
              "test_pipe_exclusive"}
SUBSETS = {  # target name -> (whether it runs a test, why not the others)
    "firecrest": (lambda test: test not in GLOB_EDGE_CASES,
                  "each empty file the FirecREST server creates costs its command time-out (an empty ops/upload "
                  "hangs until then): the glob edge cases run on the other protocols"),
    **{target.name: (REAL_CASES.__contains__, "a real server: the whole suite runs on its emulator")
       for target in contract.REAL},
}


def left_out(name: str, test: str) -> list:
    """The skip mark, with its reason, of a test that target ``name`` does not run (SUBSETS); else none."""
    runs, reason = SUBSETS.get(name, (lambda _: True, ""))
    return [] if runs(test) else [pytest.mark.skip(reason=reason)]


def pytest_generate_tests(metafunc):
    """Every writable target for each test of the abstract suite, less the subsets above."""
    if "contract_server" in metafunc.fixturenames:
        test = metafunc.function.__name__
        metafunc.parametrize("contract_server", [pytest.param(name, marks=left_out(name, test))
                                                 for name in ABSTRACT_TARGETS], indirect=True)


class ContractFixtures(abstract.AbstractFixtures):
    """The suite's filesystem is the target's server, each test's files in a fresh directory on it."""

    @pytest.fixture
    def contract_server(self, request):
        """``(target, handle)``."""
        target = ABSTRACT_TARGETS[request.param]
        return target, request.getfixturevalue(target.fixture)

    @pytest.fixture
    def fs(self, contract_server):
        target, handle = contract_server
        # auto_mkdir: the suite writes files into directories it never made, as object stores allow.
        filesystem = fsspec.filesystem(target.scheme, service_url=handle.url(), auto_mkdir=True,
                                       skip_instance_cache=True)
        yield filesystem
        filesystem.remote.close()

    @pytest.fixture
    def fs_join(self):
        return posixpath.join

    @pytest.fixture
    def fs_path(self, contract_server):
        return contract.fresh_directory(contract_server[1], "suite")


class TestAbstractCopy(abstract.AbstractCopyTests, ContractFixtures):
    pass


class TestAbstractGet(abstract.AbstractGetTests, ContractFixtures):
    pass


class TestAbstractPut(abstract.AbstractPutTests, ContractFixtures):
    pass


class TestAbstractOpen(abstract.AbstractOpenTests, ContractFixtures):
    pass


class TestAbstractPipe(abstract.AbstractPipeTests, ContractFixtures):
    pass
