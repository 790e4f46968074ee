"""EM directories made by ``hpcfs mkdir`` last beyond the process that made them (issue 24, item 5): the API
keeps only path prefixes of files, so mkdir uploads an empty marker file that every listing leaves out.
Each command below is its own process, as a user types them."""
import os

from hpcfs.em.backend import MARKER
from mounting import hpcfs


def names(em_server, path: str) -> list:
    """What ``hpcfs ls -a`` lists in ``path``, without ``.`` and ``..``."""
    listed = hpcfs("ls", "-a", em_server.plain_url(path), env=em_server.env).stdout.split()
    return [name for name in listed if name not in (".", "..")]


def test_mkdir_then_cp_into_it_then_ls_across_processes(em_server, tmp_path):
    source = tmp_path / "result.txt"
    source.write_bytes(b"copied into a new directory")
    env = em_server.env
    hpcfs("mkdir", em_server.plain_url("/pod-a/newdir"), env=env)
    assert names(em_server, "/pod-a/newdir") == []  # empty: the marker is hidden, even from -a
    hpcfs("cp", str(source), em_server.plain_url("/pod-a/newdir/"), env=env)
    with open(os.path.join(em_server.root, "pod-a", "newdir", "result.txt"), "rb") as copied:
        assert copied.read() == b"copied into a new directory"
    assert names(em_server, "/pod-a/newdir") == ["result.txt"]
    assert names(em_server, "/pod-a") == ["newdir"]
    assert MARKER not in hpcfs("ls", "-a", "-R", em_server.plain_url("/pod-a"), env=env).stdout
