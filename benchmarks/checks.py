"""Checking bytes after the timed part: a read's bytes kept and hashed, sha256 of a file, a copy compared with
its source, dd's byte count."""
import os
import re
import subprocess
import tempfile
from pathlib import Path

from benchmarks.processes import Failed, run_timed


def compare_paths(expected: Path, actual: Path) -> str:
    if expected.is_dir():
        names = sorted(p.name for p in expected.iterdir())
        if not actual.is_dir() or sorted(p.name for p in actual.iterdir()) != names:
            found = len(list(actual.iterdir())) if actual.is_dir() else 0
            return f"{found:,} of {len(names):,} files arrived"
        bad = [name for name in names if (expected / name).read_bytes() != (actual / name).read_bytes()]
        return f"{len(bad):,} files differ" if bad else ""
    if not actual.exists():
        return "file missing"
    if actual.stat().st_size != expected.stat().st_size:
        return f"{actual.stat().st_size:,} of {expected.stat().st_size:,} bytes"
    if subprocess.run(["cmp", "-s", str(expected), str(actual)]).returncode != 0:
        return "bytes differ"
    return ""


def sha256_of(path: Path) -> str:
    return subprocess.run(["sha256sum", str(path)], capture_output=True, text=True, check=True).stdout.split()[0]


def check_dd_count(report: Path, size: int):
    """Failed unless dd's report (its stderr) says it copied ``size`` bytes."""
    copied = re.search(r"^(\d+) bytes", report.read_text(), re.M)
    if not copied or int(copied.group(1)) != size:
        raise Failed(f"dd read {copied.group(1) if copied else 'no'} bytes of {size:,}")


# Where a read's bytes go: tmpfs, so that writing them costs every peer the same memory copy and no disk
# writeback runs on into the next measurement.
READ_SINK_DIR = "/dev/shm" if os.path.isdir("/dev/shm") else None


def run_checked(argv, limit: float, expected: str, env=None, stderr=None, cwd=None) -> float:
    """``run_timed`` with the command's stdout written to a private file in memory, whose sha256 is checked
    after the timed run: a read whose bytes differ from ``expected`` is Failed, whatever its speed.  (The
    check used to run in a pipe during the read: on a CPU without SHA instructions, sha256sum's 190 MB/s
    capped every peer's rate.)"""
    with tempfile.NamedTemporaryFile(dir=READ_SINK_DIR, prefix="hpcfs-bench-read-") as sink:
        seconds = run_timed(argv, limit, env=env, stdout=sink, stderr=stderr, cwd=cwd)
        if sha256_of(Path(sink.name)) != expected:
            raise Failed("the bytes read differ from the file (sha256)")
    return seconds
