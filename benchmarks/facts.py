"""The machine and the tools' versions, for the report."""
import os
import platform
import subprocess
from pathlib import Path
from typing import Dict

from benchmarks.settings import FUSE_DRIVER_VENV, PEER_VENV, REPO


def machine_facts() -> Dict[str, str]:
    def output(*argv):
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
            return (done.stdout + done.stderr).strip()
        except (OSError, subprocess.TimeoutExpired):
            return "n/a"

    def first_line(text):
        return text.splitlines()[0] if text else "n/a"

    def version_in(venv, *packages):
        code = "import importlib.metadata as m, sys; print(', '.join(p + ' ' + m.version(p) for p in sys.argv[1:]))"
        return output(str(venv / "bin" / "python"), "-c", code, *packages)

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    memory = int(Path("/proc/meminfo").read_text().split()[1]) // (1 << 20)
    os_name = next((line.split("=", 1)[1].strip('"') for line in Path("/etc/os-release").read_text().splitlines()
                    if line.startswith("PRETTY_NAME=")), "n/a")
    commit = output("git", "-C", str(REPO), "rev-parse", "--short", "HEAD")
    dirty = output("git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no")
    return {
        "machine": f"{cpu}, {os.cpu_count()} cores, {memory} GiB RAM",
        "system": f"{os_name}, kernel {platform.release()}, Python {platform.python_version()}",
        "hpcfs": f"commit {commit}{' (with local changes)' if dirty else ''}; "
                 + version_in(REPO / ".venv", "mfusepy"),
        "FUSE": first_line(output("fusermount3", "--version")) + "; libfuse2 "
                + output("dpkg-query", "-W", "-f=${Version}", "libfuse2"),
        "sshfs": next((line for line in output("sshfs", "--version").splitlines() if "SSHFS" in line), "n/a"),
        "rclone": first_line(output("rclone", "version")),
        "OpenSSH": first_line(output("ssh", "-V")),
        "pyuftp": version_in(PEER_VENV, "pyuftp"),
        "pyunicore FUSE": version_in(FUSE_DRIVER_VENV, "pyunicore", "fusepy"),
    }


def run_facts(load_before) -> Dict[str, str]:
    """Who ran the bench, and how busy the machine was (``os.getloadavg()`` before the run, and now)."""
    return {
        "ran as": ("root: every row (so hpcfs mounts raise their kernel readahead and get 1 MiB FUSE requests)"
                   if os.geteuid() == 0 else
                   f"uid {os.geteuid()}, not root: every row (hpcfs mounts get the kernel's 128 KiB FUSE requests)"),
        "load": (f"1-minute load average {load_before[0]:.2f} before the run, {os.getloadavg()[0]:.2f} after "
                 "(other work on the machine shows up here)"),
    }
