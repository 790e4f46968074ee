"""FUSE mounts: start a peer's foreground mount process, wait for the mount, always unmount and stop it."""
import contextlib
import os
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from benchmarks.processes import Failed, stop_process
from benchmarks.results import Outcome


@dataclass
class Mounted:
    path: Path
    process: subprocess.Popen
    log_path: Path
    log_offset: int  # where this mount's part of the (appended) log starts

    def failed(self, exc: Exception) -> "Outcome":
        """A failed row, with the mount process's last error line when it logged one."""
        with open(self.log_path, "rb") as log:
            log.seek(self.log_offset)
            lines = log.read().decode(errors="replace").splitlines()
        errors = [line.strip() for line in lines if re.search(r"error|exception", line, re.I)]
        return Outcome.failed(f"{exc}" + (f"; mount log: {errors[-1][:200]}" if errors else ""))

    start_mib: Optional[float] = None  # resident memory once mounted, before the workload

    def memory_mib(self, field="VmHWM") -> Optional[float]:
        """VmHWM (peak resident memory) or VmRSS of the mount process."""
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
        return None


def unmount(path: Path):
    for command in (["fusermount3", "-u"], ["fusermount3", "-uz"]):
        if not os.path.ismount(path):
            return
        subprocess.run(command + [str(path)], capture_output=True, timeout=30)
        time.sleep(0.1)


@contextlib.contextmanager
def mount_process(argv, env, mountpoint: Path, log_path: Path, limit: float = 60):
    """Start a foreground FUSE process, wait until ``mountpoint`` is mounted, always unmount and stop it."""
    if os.path.ismount(mountpoint):
        unmount(mountpoint)
    mountpoint.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        log_offset = log.tell()
        process = subprocess.Popen(argv, env={**os.environ, **env}, stdin=subprocess.DEVNULL, stdout=log,
                                   stderr=log, start_new_session=True)
    try:
        deadline = time.monotonic() + limit
        while not os.path.ismount(mountpoint):
            if process.poll() is not None or time.monotonic() > deadline:
                tail = log_path.read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
                raise Failed(f"mount did not come up: {tail[0][:160]}")
            time.sleep(0.05)
        mounted = Mounted(mountpoint, process, log_path, log_offset)
        mounted.start_mib = mounted.memory_mib("VmRSS")
        yield mounted
    finally:
        unmount(mountpoint)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            stop_process(process)
