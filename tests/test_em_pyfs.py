"""``fs.open_fs("em://...")``: round-trip counts through the whole stack (core caches + EM backend) measured
by the server's request log, and EM's volumes.  PyFilesystem2's own suite runs on a volume in
test_pyfs_suite.py, as for every protocol."""
import hashlib
import os

import fs
import fs.errors
import pytest

from fixtures_em import VOLUMES


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def em_fs(em_server):
    with fs.open_fs(em_server.url()) as filesystem:
        yield filesystem


def test_probes_at_the_root_never_reach_the_server(em_server, em_fs):
    assert sorted(em_fs.listdir("/")) == ["_default", "pod-a", "pod-b"]
    before = em_server.log.total()
    for probe in (".Trash-1000", ".Trash", "autorun.inf", ".hidden", "desktop", ".git"):
        assert not em_fs.exists(probe)
        with pytest.raises(fs.errors.ResourceNotFound):
            em_fs.getinfo(f"{probe}/x")
    assert em_server.log.total() == before
    assert em_server.server.names_seen.keys() <= set(VOLUMES)


def test_a_recursive_listing_costs_one_request_per_volume(em_server, em_fs):
    for path in ("a", "b/c", "b/d/e", "f/g/h/i"):
        em_server.server.write_out_of_band("pod-b", path, path.encode())
    found = {path: info.size for path, info in em_fs.walk.info("/pod-b", namespaces=["details"]) if not info.is_dir}
    assert found == {"/pod-b/a": 1, "/pod-b/b/c": 3, "/pod-b/b/d/e": 5, "/pod-b/f/g/h/i": 7}
    assert em_server.log.counts["files/list"] == 1


def test_reading_a_file_twice_costs_one_download(em_server, em_fs):
    payload = os.urandom(1 << 20)
    em_server.server.write_out_of_band("pod-a", "twice.bin", payload)
    assert sha256(em_fs.readbytes("/pod-a/twice.bin")) == sha256(payload)
    assert sha256(em_fs.readbytes("/pod-a/twice.bin")) == sha256(payload)
    assert em_server.log.counts["files/downlink"] == 1


def test_written_files_round_trip_through_the_volume(em_server, em_fs):
    payload = os.urandom(200_000)
    em_fs.makedirs("/pod-b/out/deep")
    em_fs.writebytes("/pod-b/out/deep/data.bin", payload)
    with open(os.path.join(em_server.root, "pod-b", "out", "deep", "data.bin"), "rb") as stored:
        assert sha256(stored.read()) == sha256(payload)
    assert sha256(em_fs.readbytes("/pod-b/out/deep/data.bin")) == sha256(payload)
    em_fs.removetree("/pod-b/out")
    assert os.listdir(os.path.join(em_server.root, "pod-b")) == []
