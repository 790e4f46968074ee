"""The official UNICORE client, PyUNICORE 2.0.2 unchanged, against ``hpcfs serve unicore``, with hpcfs on the
other side of every exchange: what one writes, the other reads byte for byte; a job PyUNICORE submits leaves
its output where hpcfs finds it.  PyUNICORE runs in its own venv (as in test_uftp_peers.py)."""
import hashlib
import json
import os
import subprocess
import textwrap
from pathlib import Path

import fs
import pytest

from fixtures_unicore import PASSWORD, USER

pytestmark = pytest.mark.timeout(90)
PEER_VENV = Path(__file__).resolve().parents[1] / ".venv-pyunicore"
PEER_PYTHON = PEER_VENV / "bin" / "python"
SIZE = 3_000_001  # not a multiple of any block or buffer
PRELUDE = """
import hashlib, json, os, sys
import pyunicore.client as uc
import pyunicore.credentials as uc_credentials
credential = uc_credentials.UsernamePassword(os.environ["UNICORE_USER"], os.environ["UNICORE_PASSWORD"])
client = uc.Client(credential, sys.argv[1])
home = [storage for storage in client.get_storages() if storage.resource_url.endswith("/HOME")][0]
"""


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def pyunicore(handle, script: str, *args: str):
    """Run ``script`` (after PRELUDE: ``client`` and storage ``home``) in PyUNICORE's venv; its one JSON line.
    Outside the repository and without PYTHONPATH, so nothing of hpcfs is importable there."""
    if not PEER_PYTHON.exists():
        pytest.fail(f"PyUNICORE venv missing: {PEER_VENV} (scripts/install makes it)")
    environment = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    environment.update(UNICORE_USER=USER, UNICORE_PASSWORD=PASSWORD)  # never in argv, where `ps` shows it
    code = PRELUDE + textwrap.dedent(script)
    result = subprocess.run([str(PEER_PYTHON), "-c", code, handle.base_url, *args],
                            env=environment, cwd=os.path.dirname(handle.root), capture_output=True, text=True,
                            timeout=80)
    assert result.returncode == 0, f"PyUNICORE failed:\n{result.stdout}\n{result.stderr}"
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_pyunicore_uploads_and_hpcfs_reads_the_same_bytes(unicore_server, tmp_path):
    local = tmp_path / "big.bin"
    local.write_bytes(os.urandom(SIZE))
    listed = pyunicore(unicore_server, """
        home.upload(sys.argv[2], destination="from-pyunicore/big.bin")  # the parent is made by the server
        print(json.dumps(sorted(home.listdir("from-pyunicore"))))
    """, str(local))
    assert listed == ["from-pyunicore/big.bin"]  # listing keys are storage paths (Storage.listdir)
    with fs.open_fs(unicore_server.url("/from-pyunicore")) as tree:
        assert tree.getsize("big.bin") == SIZE
        assert sha256(tree.readbytes("big.bin")) == sha256(local.read_bytes())
        with tree.openbin("big.bin") as handle:  # ranged reads
            handle.seek(SIZE - 1000)
            assert handle.read() == local.read_bytes()[-1000:]


def test_hpcfs_writes_and_pyunicore_downloads_the_same_bytes(unicore_server, tmp_path):
    data = os.urandom(SIZE)
    with fs.open_fs(unicore_server.url("/")) as tree:
        tree.makedirs("from-hpcfs/deeper")
        tree.writebytes("from-hpcfs/deeper/big.bin", data)
    seen = pyunicore(unicore_server, """
        path = home.stat("from-hpcfs/deeper/big.bin")
        path.download(sys.argv[2])
        with open(sys.argv[2], "rb") as handle:
            whole = handle.read()
        part = path.read(offset=1000, size=2000)  # PathFile.raw: Range bytes=1000-2999
        print(json.dumps({"isfile": path.isfile(), "size": path.size(), "sha": hashlib.sha256(whole).hexdigest(),
                          "part": hashlib.sha256(part).hexdigest(), "dir": home.stat("from-hpcfs").isdir(),
                          "listing": sorted(home.listdir("from-hpcfs/deeper"))}))
    """, str(tmp_path / "downloaded.bin"))
    assert seen == {"isfile": True, "size": SIZE, "sha": sha256(data), "part": sha256(data[1000:3000]),
                    "dir": True, "listing": ["from-hpcfs/deeper/big.bin"]}


def test_namespace_changes_of_each_side_are_seen_by_the_other(unicore_server):
    with fs.open_fs(unicore_server.url("/")) as tree:
        tree.writebytes("keep.txt", b"kept\n")
        tree.writebytes("gone.txt", b"to be removed\n")
    seen = pyunicore(unicore_server, """
        home.mkdir("made-by-pyunicore")
        home.rename("keep.txt", "made-by-pyunicore/renamed.txt")
        home.rm("gone.txt")
        print(json.dumps(sorted(home.listdir("/"))))
    """)
    assert seen == ["made-by-pyunicore"]
    with fs.open_fs(unicore_server.url("/")) as tree:
        assert tree.listdir("/") == ["made-by-pyunicore"]
        assert tree.readbytes("made-by-pyunicore/renamed.txt") == b"kept\n"


def test_a_job_pyunicore_submits_leaves_stdout_where_hpcfs_reads_it(unicore_server):
    job = pyunicore(unicore_server, """
        job = client.new_job({"Executable": "/bin/echo", "Arguments": ["hello", "unicore"]})
        job.poll(timeout=60)
        work_dir = job.working_dir
        with work_dir.stat("/stdout").raw() as response:  # PathFile.raw, a context manager in 2.0.2
            stdout = response.read()
        print(json.dumps({"status": str(job.status), "exit": job.exit_code, "stdout": stdout.decode(),
                          "work_dir": work_dir.resource_url}))
    """)
    assert job["status"] == "SUCCESSFUL" and job["exit"] == 0
    assert job["stdout"] == "hello unicore\n"
    storage = job["work_dir"].rsplit("/", 1)[1]
    assert storage.endswith("-uspace")
    with fs.open_fs(unicore_server.url("/", storage=storage)) as work_dir:
        assert sorted(work_dir.listdir("/")) == ["stderr", "stdout"]
        assert work_dir.readbytes("stdout") == b"hello unicore\n"


def test_a_job_gets_a_clean_environment(unicore_server, monkeypatch):
    monkeypatch.setenv("UNICORE_PASSWORD", "server-side-secret")  # the server runs in this process
    job = pyunicore(unicore_server, """
        job = client.new_job({"Executable": "env", "Environment": {"ASKED": "yes"}})
        job.poll(timeout=60)
        print(json.dumps(job.working_dir.resource_url.rsplit("/", 1)[1]))
    """)
    with fs.open_fs(unicore_server.url("/", storage=job)) as work_dir:
        variables = dict(line.partition("=")[::2] for line in work_dir.readtext("stdout").splitlines())
    assert variables["ASKED"] == "yes"
    assert set(variables) - {"ASKED", "PWD", "SHLVL", "_"} <= {"PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG"}
