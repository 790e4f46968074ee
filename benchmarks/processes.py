"""Running the workloads' commands: each timed, bounded, stopped with its process group, its failure said."""
import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Dict, Optional

from benchmarks.settings import HPCFS_CODE


def stop_process(process: Optional[subprocess.Popen], grace: float = 10):
    """SIGTERM to the process group the bench started, then SIGKILL after ``grace`` seconds."""
    if process is None or process.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            process.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


class Failed(Exception):
    """A peer could not do a workload; the message goes into its row."""


def run_timed(argv, limit: float, env=None, stdout=subprocess.DEVNULL, stderr=None, cwd=None) -> float:
    """Run ``argv``; its wall time in seconds, or Failed (non-zero exit, or over ``limit`` seconds).
    stderr goes to the ``stderr`` file if given (and is read back for the failure message)."""
    start = time.perf_counter()
    process = subprocess.Popen(argv, stdout=stdout, stderr=stderr or subprocess.PIPE, env=env, cwd=cwd,
                               start_new_session=True)
    try:
        _, err = process.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        stop_process(process, grace=2)
        process.communicate()
        raise Failed(f"timed out after {limit:g} s") from None
    elapsed = time.perf_counter() - start
    if process.returncode != 0:
        text = Path(stderr.name).read_bytes() if stderr else err
        lines = [line for line in text.decode(errors="replace").splitlines() if line.strip()]
        raise Failed((lines[-1] if lines else f"exit status {process.returncode}")[:160])
    return elapsed


def env_for(client: str, env: Dict[str, str]) -> Dict[str, str]:
    """``env`` for a row's client: hpcfs runs this checkout's code, the official clients their own venv."""
    return {**env, **HPCFS_CODE} if client.startswith("hpcfs") else env
