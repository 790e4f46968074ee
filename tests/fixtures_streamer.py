"""pytest fixture for a real FirecREST v2 with a ``cluster-streamer`` system (``data_transfer`` of type
``streamer``), started from a copy of ``../shared/peers`` in a temporary directory.

The shared kit carries only ``cluster`` and ``cluster-s3``; until it carries ``cluster-streamer`` too, the copy
gets ``data/peers-cluster-streamer.patch``: the system in the config template, a block of 8 ports for the
streamer jobs' websocket servers, a local package index the jobs ``pip install firecrest-streamer`` from,
and a clean PATH for fake-Slurm jobs (root's ``~/.bashrc`` may put pyenv shims first, and the job runs "the
newest pythonX.Y" it finds).  This peer has its own state directory and ports, so the shared running peer
is never disturbed; it reuses the shared peer's built venv when there is one (else builds its own, ~2.5 min).
Skipped, with the kit's reasons, without the kit or without root.
"""
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from fixtures_peers import PEERS_KIT, START_TIMEOUT, _kit_script, _read_env

KIT_PATCH = Path(__file__).parent / "data" / "peers-cluster-streamer.patch"
SHARED_STATE = Path(os.environ.get("HPCFS_PEERS_DIR") or "/var/tmp/hpcfs-peers")


def _kit_with_streamer(work: Path) -> Path:
    kit = work / "kit"
    shutil.copytree(PEERS_KIT, kit, symlinks=True)
    if "cluster-streamer" not in (kit / "lib" / "firecrest" / "config.yaml.in").read_text():
        subprocess.run(["patch", "-s", "-p1", "-d", str(kit), "-i", str(KIT_PATCH)], check=True, timeout=30)
    return kit


def _share_built_venvs(state: Path):
    """Link the shared peer's finished FirecREST venvs: the kit reuses one whose hash matches."""
    (state / "venv").mkdir(parents=True)
    for venv in (SHARED_STATE / "venv").glob("firecrest-*"):
        if (venv / ".complete").is_file():
            (state / "venv" / venv.name).symlink_to(venv)


@pytest.fixture(scope="session")
def streamer_firecrest_env(tmp_path_factory):
    """The ``real-firecrest env`` variables of a private FirecREST with ``cluster-streamer``
    (``FIRECREST_SYSTEM_STREAMER``); stopped at the end of the session."""
    _kit_script("real-firecrest")  # skips without the kit or root
    work = tmp_path_factory.mktemp("streamer-peer")
    script = _kit_with_streamer(work) / "bin" / "real-firecrest"
    state = work / "state"
    _share_built_venvs(state)
    environment = {**os.environ, "HPCFS_PEERS_DIR": str(state), "HPCFS_PEERS_FIRECREST_CMD_TIMEOUT": "20"}
    environment.pop("HPCFS_PEERS_FIRECREST_PORTS", None)  # fixed ports would be the shared peer's
    started = subprocess.run([script, "start"], capture_output=True, text=True, timeout=START_TIMEOUT,
                             env=environment)
    try:
        if started.returncode != 0:
            pytest.fail(f"FirecREST with cluster-streamer did not start:\n{started.stderr[-3000:]}")
        yield _read_env(script, environment)
    finally:
        subprocess.run([script, "stop"], capture_output=True, timeout=60, env=environment)
