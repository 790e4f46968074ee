"""The README's first command works as written, and leaves nothing mounted or running behind."""
import os
import re
import subprocess

from hpcfs.mounts import is_mounted

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def hpcfs_mounts():
    with open("/proc/self/mounts") as table:
        return {line.split()[1] for line in table if " fuse.hpcfs " in line}


def test_scripts_demo_runs_and_cleans_up():
    before = hpcfs_mounts()
    result = subprocess.run(["./scripts/demo"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    digests = re.findall(r"^([0-9a-f]{64})  ", result.stdout, re.MULTILINE)
    assert len(digests) == 3 and len(set(digests)) == 1, "the copies through the mount differ"
    assert "uploaded.dat" in result.stdout and "Done." in result.stdout
    work = re.search(r"(/tmp/hpcfs-demo\.\w+)", result.stdout).group(1)
    assert not os.path.exists(work) and not is_mounted(os.path.join(work, "mnt"))
    # only the demo's own: other test workers mount and unmount meanwhile
    assert not {mount for mount in hpcfs_mounts() - before if mount.startswith(work)}
