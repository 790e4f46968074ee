"""Copies between two places of one FirecREST system are made by the server (its ``transfer/cp`` job, to a
partial name, then renamed): no byte of the file passes through hpcfs.  The real FirecREST's are in
test_real_firecrest.py."""
import hashlib
import os

from mounting import write_random
from test_cli import cli, isolated, ok  # noqa: F401  (fixtures)

from hpcfs.servers.firecrest.server import DOWNLOAD, STAGED_GET, UPLOAD

COPY_JOB = "POST /filesystem/{system_name}/transfer/cp"
BYTES_THROUGH_US = (DOWNLOAD, UPLOAD, STAGED_GET)


def sha256(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_a_copy_within_the_system_is_made_by_the_server(cli, firecrest_server):
    root = firecrest_server.root
    source = write_random(f"{root}/a.bin", (1 << 20) + 7)
    write_random(f"{root}/b.bin", 10)  # replaced whole, never half way
    firecrest_server.log.reset()
    result = ok(cli("-v", "cp", firecrest_server.plain_url("/a.bin"), firecrest_server.plain_url("/b.bin"),
                    env=firecrest_server.env))
    assert sha256(f"{root}/b.bin") == sha256(source)
    assert firecrest_server.log.total(COPY_JOB) == 1 and firecrest_server.log.total(*BYTES_THROUGH_US) == 0
    assert "copied on the server" in result.stderr
    assert not [name for name in os.listdir(root) if "hpcfs-partial" in name], "a partial was left behind"


def test_a_tree_is_copied_file_by_file_on_the_server(cli, firecrest_server):
    root = firecrest_server.root
    for name in ("d/one.txt", "d/sub/two.txt", "d/sub/three.bin"):
        os.makedirs(os.path.dirname(f"{root}/{name}"), exist_ok=True)
        write_random(f"{root}/{name}", 1000)
    firecrest_server.log.reset()
    ok(cli("cp", "-r", firecrest_server.plain_url("/d"), firecrest_server.plain_url("/e"), env=firecrest_server.env))
    for name in ("one.txt", "sub/two.txt", "sub/three.bin"):
        assert sha256(f"{root}/e/{name}") == sha256(f"{root}/d/{name}")
    assert firecrest_server.log.total(COPY_JOB) == 3 and firecrest_server.log.total(*BYTES_THROUGH_US) == 0
