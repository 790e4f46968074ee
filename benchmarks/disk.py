"""Where the bytes of a row land (issue 22): a private directory on the disk the bench runs on, never only
tmpfs, for the copies to local disk; the filesystem each row wrote to; and a background writer that keeps
that disk busy during a copy."""
import functools
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Optional

from benchmarks.checks import READ_SINK_DIR
from benchmarks.processes import Failed, stop_process
from benchmarks.settings import MIB

DEV_NULL = "/dev/null"
BUSY_WRITER_MIB = 2000  # what the background writer writes, with conv=fsync, during each busy-disk copy
BUSY_HEAD_START = 1.0  # seconds it writes before the copy starts
BUSY_WRITER_LIMIT = 600.0  # seconds it may take in all


def copies_directory(parent: Path) -> Path:
    """A fresh private directory (0700) in ``parent``, where the copies to local disk land, as a user's copy
    lands beside the working directory."""
    return Path(tempfile.mkdtemp(prefix=".hpcfs-bench-copies-", dir=parent))


@functools.cache
def filesystem_of(path) -> str:
    """``TYPE at MOUNTPOINT`` of the filesystem that holds ``path`` (``df --output=fstype,target``)."""
    if str(path) == DEV_NULL:
        return "/dev/null (nothing kept)"
    try:
        done = subprocess.run(["df", "--output=fstype,target", str(path)], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown filesystem"
    fields = done.stdout.splitlines()[1:2]
    if done.returncode or not fields:
        return "unknown filesystem"
    fstype, _, target = fields[0].strip().partition(" ")
    return f"{fstype} at {target.strip()}"


def read_sink() -> str:
    """Where the mount rows' sequential reads write their bytes (``checks.run_checked``)."""
    return READ_SINK_DIR or tempfile.gettempdir()


def room_for_busy_copies(directory: Path, size: int) -> str:
    """Nothing when ``directory``'s disk has room for the writer's file and one copy of ``size`` bytes with
    1 GiB to spare; else why the busy-disk row cannot run."""
    needed = BUSY_WRITER_MIB * MIB + size + 1024 * MIB
    free = shutil.disk_usage(directory).free
    if free >= needed:
        return ""
    return f"not run: {free // MIB:,} MiB free on {filesystem_of(directory)}, {needed // MIB:,} MiB needed"


class BusyWriter:
    """Another writer on the disk a copy goes to: ``dd`` of ``BUSY_WRITER_MIB`` MiB of zeros with
    ``conv=fsync`` into ``directory``, started ``BUSY_HEAD_START`` seconds before the copy, as a login node's
    other writers or a machine still flushing its installs keep the kernel throttling dirty pages."""

    def __init__(self, directory: Path, log: Path):
        self.path = directory / "busy-writer.bin"
        self.log = log
        self.process: Optional[subprocess.Popen] = None
        self.outlasted_copy = False  # still writing when the copy ended

    def start(self) -> "BusyWriter":
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                ["dd", "if=/dev/zero", f"of={self.path}", "bs=1M", f"count={BUSY_WRITER_MIB}", "conv=fsync",
                 "status=none"], stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)
        time.sleep(BUSY_HEAD_START)
        return self

    def finish(self):
        """Once the copy has ended: wait for the writer and remove its file; Failed if it did not write
        everything (then the disk was not kept busy as the row says)."""
        assert self.process is not None
        self.outlasted_copy = self.process.poll() is None
        try:
            self.process.wait(BUSY_WRITER_LIMIT)
        except subprocess.TimeoutExpired:
            raise Failed(f"the background writer took over {BUSY_WRITER_LIMIT:g} s") from None
        finally:
            self.stop()
        if self.process.returncode:
            raise Failed(f"the background writer failed (exit status {self.process.returncode}, see {self.log})")

    def stop(self):
        stop_process(self.process, grace=2)
        self.path.unlink(missing_ok=True)
