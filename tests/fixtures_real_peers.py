"""Minimal session fixtures for the real upstream servers of ``../shared/peers`` (UFTPD 3.5.3, FirecREST v2).

``real_uftp`` / ``real_firecrest`` start the peer (idempotent: a running one is reused, never stopped, because
other test runs share it) and return the variables its ``env`` command prints.  They skip with one reason when
the kit is absent or the process is not root (the peers switch users), so a clone elsewhere still passes.
Import them into a test module: ``from fixtures_real_peers import real_uftp  # noqa: F401``.
"""
import os
import shlex
import subprocess
from pathlib import Path
from typing import Dict, Optional

import pytest

KIT_CANDIDATES = (Path(__file__).resolve().parents[1] / ".." / "shared" / "peers", Path("/work/shared/peers"))


def peers_kit() -> Optional[Path]:
    for candidate in KIT_CANDIDATES:
        if (candidate / "bin" / "real-uftpd").exists():
            return candidate.resolve()
    return None


def start_peer(script: str) -> Dict[str, str]:
    """Start ``bin/<script>`` (or skip with the reason) and return its ``env`` variables."""
    kit = peers_kit()
    if kit is None:
        pytest.skip("the real-server kit (../shared/peers) is not here")
    if os.geteuid() != 0:
        pytest.skip("the real servers need root (UFTPD sessions switch to nobody, sshd runs as root)")
    started = subprocess.run([str(kit / "bin" / script), "start"], capture_output=True, text=True, timeout=400)
    if started.returncode != 0:
        pytest.fail(f"{script} start failed:\n{started.stdout[-2000:]}\n{started.stderr[-2000:]}")
    printed = subprocess.run([str(kit / "bin" / script), "env"], capture_output=True, text=True, check=True,
                             timeout=60).stdout
    variables = {}
    for line in printed.splitlines():
        words = shlex.split(line)
        if len(words) == 2 and words[0] == "export" and "=" in words[1]:
            name, _, value = words[1].partition("=")
            variables[name] = value
    return variables


@pytest.fixture(scope="session")
def real_uftp() -> Dict[str, str]:
    return start_peer("real-uftpd")


@pytest.fixture(scope="session")
def real_firecrest() -> Dict[str, str]:
    return start_peer("real-firecrest")
