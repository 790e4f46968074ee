"""Acceptance tests of "Share the server": many hpcfs processes of one user on one machine against one UFTPD.

UFTPD allows a user 16 sessions and counts an ended one until its next reap, every 5 s.  The hpcfs processes
of a machine share that limit through one budget (hpcfs/net/slots.py; docs/reliability.md, *Sharing the
server*).  These tests load it the ways users do: a Dask cluster of worker processes, parallel ``hpcfs cp``
runs, big copies in a row followed at once by ``hpcfs ls`` and the official pyuftp (not in the budget: the
2 sessions it leaves are for such tools).  Bytes are checked by sha256, sums by value.

Each test runs against the local UFTP server (limit 16, as UFTPD's; it records every login it refused, and
there must be none) and against the real UFTPD of ../shared/peers if that already runs: never started or
stopped here, else skipped.  The real-peer cases have ``[real-uftp`` in their ids, which puts them in the
xdist group of every real-UFTPD test (tests/conftest.py), so under ``--dist loadgroup`` they never run beside
another one.  Against the real peers:

    .venv/bin/python -m pytest -p no:cacheprovider -n 2 --dist loadgroup tests/test_sharing_real_uftpd.py \
        -k "not emulator"
"""
import os
import random
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Dict, List, Tuple

import fsspec
import pandas as pd
import pytest

from fixtures_uftp import UFTPHandle
from mounting import CREDENTIAL_VARIABLES, HPCFS, sha256_file, write_random
from test_uftp_peers import PEER_VENV

CSV_FILES = 32
CSV_ROWS = 125_000  # about 2 MiB of "id,value" lines
COPY_SIZE = 64 << 20
BIG_SIZE = 512 << 20
SUBPROCESS_SECONDS = 600  # the longest any one command may take before it is killed and the test fails


@pytest.fixture(params=["emulator", "real-uftp"])
def target(request):
    """The server under load: the local UFTP server, or the real UFTPD if it runs."""
    return request.getfixturevalue("uftp_server" if request.param == "emulator" else "running_real_uftp")


@pytest.fixture
def area(target) -> Tuple[str, str]:
    """``(path in the tree, path on this machine)`` of a fresh directory in the served tree, removed with
    everything in it afterwards (the real UFTPD's data directory outlives the run)."""
    name = f"/sharing-{uuid.uuid4().hex[:8]}"
    local = target.root + name
    os.mkdir(local)
    os.chmod(local, 0o777)  # the real UFTPD's sessions write as nobody
    yield name, local
    shutil.rmtree(local, ignore_errors=True)


@pytest.fixture
def scratch(tmp_path) -> Path:
    """A local directory for sources and copies, removed afterwards: GiBs must not stay in pytest's kept
    temporary directories."""
    path = tmp_path / "scratch"
    path.mkdir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def cli_env(target, tmp_path) -> Dict[str, str]:
    """A command's environment: the target's credentials and CA file, no profile of the test runner's."""
    env = {name: value for name, value in os.environ.items() if name not in CREDENTIAL_VARIABLES}
    env.update(target.env, XDG_CONFIG_HOME=str(tmp_path / "config"))
    return env


def start(args: List[str], env: Dict[str, str], cwd=None) -> subprocess.Popen:
    return subprocess.Popen(args, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(run: subprocess.Popen) -> str:
    """The command's output once it exited 0; killed after SUBPROCESS_SECONDS."""
    try:
        out, err = run.communicate(timeout=SUBPROCESS_SECONDS)
    except subprocess.TimeoutExpired:
        run.kill()
        run.communicate()
        raise
    assert run.returncode == 0, f"{run.args[:4]} exited {run.returncode}:\n{err[-3000:]}"
    return out


def never_refused(target) -> None:
    """The local server counts the logins it refused with "Too many active sessions": the budget must have
    kept every process within the limit, with no retry needed.  UFTPD keeps no such count."""
    if isinstance(target, UFTPHandle):
        assert target.log.snapshot()["too-many"] == 0, "the server refused sessions: the budget let too many out"


def column_sum(url: str) -> int:
    """On a Dask worker: the sum of a CSV file's ``value`` column, read through fsspec."""
    with fsspec.open(url, "rb") as handle:
        return int(pd.read_csv(handle)["value"].sum())


def write_csv(path: str, seed: int) -> int:
    """A CSV file of ``CSV_ROWS`` random values; returns their sum."""
    rng = random.Random(seed)
    values = [rng.randrange(10**9) for _ in range(CSV_ROWS)]
    with open(path, "w") as handle:
        handle.write("id,value\n")
        handle.writelines(f"{index},{value}\n" for index, value in enumerate(values))
    return sum(values)


@pytest.mark.timeout(SUBPROCESS_SECONDS)
def test_a_dask_cluster_of_worker_processes_sums_csv_files_read_over_uftp(target, area, monkeypatch):
    import dask
    from distributed import Client, LocalCluster, wait

    remote, local = area
    expected = [write_csv(os.path.join(local, f"part-{index:02d}.csv"), index) for index in range(CSV_FILES)]
    for name, value in target.env.items():
        monkeypatch.setenv(name, value)  # worker processes inherit the credentials, as on a login node
    sums = [dask.delayed(column_sum)(target.plain_url(f"{remote}/part-{index:02d}.csv")) for index in range(CSV_FILES)]
    with LocalCluster(n_workers=4, threads_per_worker=2, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        futures = client.compute(sums)
        wait(futures, timeout=SUBPROCESS_SECONDS / 2)
        assert client.gather(futures) == expected
    never_refused(target)


@pytest.mark.timeout(SUBPROCESS_SECONDS)
def test_six_cp_processes_started_at_once_all_copy_every_byte(target, area, scratch, cli_env):
    """Three uploads and three downloads of 64 MiB: each process would use a keeper and 4 data sessions,
    30 in all, on a budget of 14."""
    remote, local = area
    copies = []  # (source argument, destination argument, source file, destination file)
    for index in range(3):
        source = write_random(str(scratch / f"up-{index}.bin"), COPY_SIZE + index * 4099)
        copies.append((source, target.plain_url(f"{remote}/up-{index}.bin"), source, f"{local}/up-{index}.bin"))
        served = write_random(f"{local}/down-{index}.bin", COPY_SIZE - index * 4099)
        copies.append((target.plain_url(f"{remote}/down-{index}.bin"), str(scratch / f"down-{index}.bin"), served,
                       str(scratch / f"down-{index}.bin")))
    runs = [start([*HPCFS, "cp", source, destination], cli_env) for source, destination, _, _ in copies]
    for run in runs:
        finish(run)
    for _, _, source, destination in copies:
        assert sha256_file(destination) == sha256_file(source), destination
    never_refused(target)


@pytest.mark.timeout(4 * SUBPROCESS_SECONDS)
def test_big_copies_in_a_row_then_ls_and_pyuftp_at_once(target, area, scratch, cli_env):
    """Up, down and up again, each process starting while UFTPD still counts the sessions of the one before
    (the budget waits for their reap); then, while it counts the last one's, ``hpcfs ls`` and pyuftp."""
    remote, local = area
    source = write_random(str(scratch / "big.bin"), BIG_SIZE)
    back = str(scratch / "big-back.bin")
    for step in ([source, target.plain_url(f"{remote}/big-1.bin")], [target.plain_url(f"{remote}/big-1.bin"), back],
                 [back, target.plain_url(f"{remote}/big-2.bin")]):
        finish(start([*HPCFS, "cp", *step], cli_env))
    pyuftp_url = target.plain_url(f"{remote}/big-2.bin").replace("uftp://", "https://", 1)
    peer_env = {name: value for name, value in cli_env.items() if name != "PYTHONPATH"}  # pyuftp must not see hpcfs
    listing = start([*HPCFS, "ls", "-l", target.plain_url(remote)], cli_env)
    official = start([str(PEER_VENV / "bin" / "pyuftp"), "cp", "-P", pyuftp_url, str(scratch / "pyuftp.bin")],
                     peer_env, cwd=scratch)
    listed, _ = finish(listing), finish(official)
    assert "big-1.bin" in listed and "big-2.bin" in listed and str(BIG_SIZE) in listed, listed
    expected = sha256_file(source)
    for copy in (f"{local}/big-1.bin", back, f"{local}/big-2.bin", str(scratch / "pyuftp.bin")):
        assert sha256_file(copy) == expected, copy
    never_refused(target)
