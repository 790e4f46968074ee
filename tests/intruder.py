"""A second local user for the tests of "nobody in": the attacks of an audit run as ``hpcfs-intruder``
(``runuser``), not as the owner of the server or the files, so they test what the kernel and the servers
really let another user do on a shared login node.

Only root can create and become that user; elsewhere the tests that need it are skipped with one reason.
"""
import fcntl
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Sequence

import pytest

INTRUDER = "hpcfs-intruder"


def _ensure_user() -> None:
    if os.geteuid() != 0 or not shutil.which("runuser") or not shutil.which("useradd"):
        pytest.skip("a second local user needs root, runuser and useradd")
    with open(os.path.join(tempfile.gettempdir(), "hpcfs-tests-intruder.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two xdist workers must not both create the user
        if subprocess.run(["id", "-u", INTRUDER], capture_output=True).returncode != 0:
            subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", INTRUDER],
                           check=True, capture_output=True)


def run_as_intruder(command: Sequence[str], timeout: float = 60, **kwargs) -> subprocess.CompletedProcess:
    """Run ``command`` as the intruder, in a clean environment (no secret of ours leaks into it)."""
    environment = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/nonexistent", "LANG": "C.UTF-8"}
    runuser = shutil.which("runuser") or "/usr/sbin/runuser"  # the clean PATH below has no sbin
    return subprocess.run([runuser, "-u", INTRUDER, "--", *command], capture_output=True, text=True,
                          timeout=timeout, env=environment, **kwargs)


@pytest.fixture
def intruder():
    """``run_as_intruder``, once the user exists."""
    _ensure_user()
    return run_as_intruder


@pytest.fixture
def shared_dir(intruder):
    """A directory both users can write, like a group project directory without the sticky bit (mode 0777
    below a world-traversable parent): where a planted file or symlink can wait for the owner."""
    parent = Path(tempfile.mkdtemp(prefix="hpcfs-shared-", dir="/tmp"))
    parent.chmod(0o755)
    shared = parent / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    yield shared
    shutil.rmtree(parent, ignore_errors=True)
