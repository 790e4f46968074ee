"""The official client, pyfirecrest (PyPI), runs unchanged against ``hpcfs serve firecrest``.

pyfirecrest lives in its own venv, ``.venv-pyfirecrest`` at the repository root (it must not share hpcfs's
venv): ``python3 -m venv .venv-pyfirecrest && .venv-pyfirecrest/bin/pip install pyfirecrest``.  The script
below runs there as a subprocess; credentials travel in its environment, never in its argv.
"""
import hashlib
import json
import os
import subprocess

import pytest


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYFIRECREST_PYTHON = os.path.join(REPO, ".venv-pyfirecrest", "bin", "python")
MIB = 1024 * 1024

SCRIPT = r'''
import json, os, sys
import firecrest
from firecrest.v2 import Firecrest

system, work = sys.argv[1], sys.argv[2]
auth = firecrest.ClientCredentialsAuth(os.environ["FIRECREST_CLIENT_ID"], os.environ["FIRECREST_CLIENT_SECRET"],
                                       os.environ["AUTH_TOKEN_URL"])
client = Firecrest(os.environ["FIRECREST_URL"], auth)
client.timeout = 60
result = {"version": client.server_version(), "systems": [s["name"] for s in client.systems()]}
client.mkdir(system, "/pf/sub/deeper", create_parents=True)
client.upload(system, os.path.join(work, "small.bin"), "/pf", "small.bin")
client.upload(system, os.path.join(work, "big.bin"), "/pf", "big.bin")
result["listing"] = sorted(f["name"] for f in client.list_files(system, "/pf", show_hidden=True))
result["big_size"] = client.stat(system, "/pf/big.bin")["size"]
client.download(system, "/pf/small.bin", os.path.join(work, "small.out"))
client.download(system, "/pf/big.bin", os.path.join(work, "big.out"))
client.mv(system, "/pf/big.bin", "/pf/sub/moved.bin")
client.rm(system, "/pf/small.bin")
result["after"] = sorted(f["name"] for f in client.list_files(system, "/pf", recursive=True))
print(json.dumps(result))
'''


def sha256_file(path) -> str:
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


def test_pyfirecrest_unchanged(firecrest_server, tmp_path):
    if not os.path.exists(PYFIRECREST_PYTHON):
        pytest.fail(f"pyfirecrest's venv is missing ({PYFIRECREST_PYTHON}); create it with: "
                    "python3 -m venv .venv-pyfirecrest && .venv-pyfirecrest/bin/pip install pyfirecrest")
    firecrest_server.knobs.extra["max_part_size"] = MIB  # 3 MiB + 17 B upload in four parts
    small, big = os.urandom(200_000), os.urandom(3 * MIB + 17)  # pyfirecrest stages from 1 MiB on
    (tmp_path / "small.bin").write_bytes(small)
    (tmp_path / "big.bin").write_bytes(big)
    env = dict(os.environ, **firecrest_server.env)
    env.pop("PYTHONPATH", None)
    run = subprocess.run([PYFIRECREST_PYTHON, "-c", SCRIPT, "local", str(tmp_path)], env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    assert firecrest_server.secret not in run.stdout
    result = json.loads(run.stdout.strip().splitlines()[-1])

    assert result["version"] == "2.5.6" and result["systems"] == ["local"]
    assert result["listing"] == ["big.bin", "small.bin", "sub"] and result["big_size"] == len(big)
    assert sha256_file(tmp_path / "small.out") == sha256_file(tmp_path / "small.bin")
    assert sha256_file(tmp_path / "big.out") == sha256_file(tmp_path / "big.bin")
    moved = os.path.join(firecrest_server.root, "pf", "sub", "moved.bin")
    assert sha256_file(moved) == sha256_file(tmp_path / "big.bin")
    assert result["after"] == ["sub", "sub/deeper", "sub/moved.bin"]
    log = firecrest_server.log
    assert log.total("POST /filesystem/{system_name}/ops/upload") == 1
    assert log.total("POST /filesystem/{system_name}/transfer/upload") == 1
    assert log.total("PUT /{bucket}/{key:path}") == 4
    assert log.total("GET /filesystem/{system_name}/ops/download") == 1
    assert log.total("POST /filesystem/{system_name}/transfer/download") == 1
    assert log.total("POST /filesystem/{system_name}/transfer/mv") == 1
    assert log.total("DELETE /filesystem/{system_name}/ops/rm") == 1
