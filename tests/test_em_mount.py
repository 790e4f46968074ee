"""``hpcfs mount`` of the whole EM tree, driven by ordinary shell tools, with request counts read from the
in-process server: no unknown volume is ever named, ``ls -lR`` costs one listing, a second read costs
no download, and a file a pod writes shows up once the cache period has passed."""
import os
import shutil
import subprocess
from pathlib import Path
import time

import pytest

import mounting
from fixtures_em import VOLUMES

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(not os.access("/dev/fuse", os.R_OK | os.W_OK) or not shutil.which("fusermount3"),
                       reason="needs /dev/fuse and fusermount3"),
]
TTL = 1.0  # seconds for listings, attributes and negative answers, so out-of-band changes show quickly


def lists_of(handle, volume):
    return sum(1 for kind, detail in handle.log.entries if kind == "files/list" and detail == volume)


@pytest.fixture
def mounted(em_server, tmp_path):
    options = [f"listing_ttl={TTL},attr_ttl={TTL},negative_ttl={TTL}"]
    with mounting.mounted(em_server.plain_url("/"), tmp_path / "mnt", env=em_server.env, options=options) as path:
        yield Path(path)
    assert em_server.server.names_seen.keys() <= set(VOLUMES)


def test_probes_at_the_root_never_name_a_volume(em_server, mounted):
    """Desktops and shells probe names at a mount's root; none of them may reach the server as a volume
    (the fixture checks ``names_seen`` at unmount). Copies and the other shell tools: test_mount_suite.py."""
    assert sorted(os.listdir(mounted)) == ["_default", "pod-a", "pod-b"]
    for probe in (".Trash-1000", ".Trash", "autorun.inf", ".hidden", "desktop"):
        assert not os.path.exists(mounted / probe)


def test_request_counts_through_the_mount(em_server, mounted):
    for path in ("r1.txt", "d/r2.txt", "d/e/r3.bin"):
        em_server.server.write_out_of_band("pod-b", path, path.encode() * 100)
    listing = subprocess.run(["ls", "-lR", str(mounted / "pod-b")], check=True, capture_output=True, text=True)
    assert "r3.bin" in listing.stdout and lists_of(em_server, "pod-b") == 1
    for _ in range(2):
        with open(mounted / "pod-b" / "d" / "e" / "r3.bin", "rb") as handle:
            assert handle.read() == b"d/e/r3.bin" * 100
    assert em_server.log.counts["files/downlink"] == 1


def test_a_file_written_by_a_pod_appears_after_the_cache_period(em_server, mounted):
    assert os.listdir(mounted / "pod-b") == []
    em_server.server.write_out_of_band("pod-b", "result.dat", b"written out of band")
    deadline = time.monotonic() + 10 * TTL
    while not os.path.exists(mounted / "pod-b" / "result.dat") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert (mounted / "pod-b" / "result.dat").read_bytes() == b"written out of band"
