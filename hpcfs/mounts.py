"""The kernel's mount table: is something mounted here, and taking it away.

Apart from the FUSE front end, so that ``hpcfs umount`` and the tests use them without loading libfuse.
"""
import os
import re
import subprocess

from . import errors


def is_mounted(mountpoint: str) -> bool:
    """Whether something is mounted at ``mountpoint``, judged by the kernel's mount table.

    ``os.path.ismount`` stats the mount's root, which fails while the server is gone: exactly when
    ``hpcfs umount`` must still work."""
    target = os.path.realpath(mountpoint)
    with open("/proc/self/mounts") as table:
        for line in table:
            fields = line.split()
            if len(fields) > 1 and _unescape_mount_path(fields[1]) == target:
                return True
    return False


def _unescape_mount_path(field: str) -> str:
    """/proc/mounts writes space, tab, newline and backslash in paths as octal escapes."""
    return re.sub(r"\\([0-7]{3})", lambda match: chr(int(match.group(1), 8)), field)


def detach(mountpoint: str) -> None:
    """Unmount; while programs still use the mount, detach it lazily (it ends when they let go)."""
    for command in (["fusermount3", "-u", "-q"], ["fusermount3", "-uz", "-q"]):
        if not is_mounted(mountpoint) or subprocess.run(command + [mountpoint], capture_output=True).returncode == 0:
            return


def unmount(mountpoint: str, shown: str, lazy: bool = False) -> None:
    """``hpcfs umount``: refuses a busy mount unless ``lazy``; a dead mount (server gone, process killed)
    still detaches lazily.  ``shown`` is how messages name the mountpoint."""
    for command in (["fusermount3", "-u"], ["fusermount", "-u"], ["umount"]):
        try:
            result = subprocess.run(command + [mountpoint], capture_output=True, text=True)
        except FileNotFoundError:
            continue
        if result.returncode == 0:
            return
        if "busy" in result.stderr.lower() and lazy is False:
            raise errors.HpcfsError(f"{shown} is busy (a process uses it); retry or use --lazy")
    for command in (["fusermount3", "-uz"], ["umount", "-l"]):
        if subprocess.run(command + [mountpoint], capture_output=True).returncode == 0:
            return
    raise errors.HpcfsError(f"could not unmount {shown}")
