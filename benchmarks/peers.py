"""The clients that mount the served tree (hpcfs, sshfs, rclone, PyUNICORE 1.3.7's FUSE driver), each as the
command line of its foreground mount process."""
from typing import Dict

from benchmarks.context import Context
from benchmarks.mounts import mount_process
from benchmarks.settings import FUSE_DRIVER_VENV, HPCFS, HPCFS_CODE

PEER_NAMES = ("hpcfs", "sshfs", "rclone", "rclone-hashcheck", "pyuftp", "pyunicore-fuse")


class Peer:
    """A client that mounts the served tree."""

    name = label = ""
    protocol = ""  # "uftp" or "sftp"
    time_limit = 240.0  # seconds for any one command of a workload
    limits: Dict[str, float] = {}
    workloads = None  # names of the workloads this peer runs; None: all

    def limit(self, workload: str) -> float:
        return self.limits.get(workload, self.time_limit)

    def command(self, ctx: Context):
        """``(argv, extra environment)`` of the foreground mount process."""
        raise NotImplementedError

    def mounted(self, ctx: Context):
        argv, env = self.command(ctx)
        return mount_process(argv, env, ctx.mountpoint, ctx.logs / f"{self.name}.log")


class HpcfsPeer(Peer):
    protocol = "uftp"

    def __init__(self, options=()):
        self.options = list(options)
        self.name = "hpcfs" + "".join(f"-{o}" for o in self.options).replace(",", "-").replace("=", "")
        self.label = "hpcfs" + "".join(f" -o {o}" for o in self.options)

    def command(self, ctx):
        url = "uftp://" + ctx.site.auth_url.removeprefix("https://") + ":/"
        argv = [str(HPCFS), "mount", "--foreground", url, str(ctx.mountpoint)]
        for option in self.options:
            argv += ["-o", option]
        state = ctx.scratch / "state"
        env = {**ctx.site.uftp_env("hpcfs"), "XDG_STATE_HOME": str(state), "XDG_CACHE_HOME": str(state / "cache"),
               **HPCFS_CODE}
        return argv, env


class SshfsPeer(Peer):
    name = label = "sshfs"
    protocol = "sftp"

    def command(self, ctx):
        return ["sshfs", "-f", "-F", str(ctx.site.ssh_config), f"{ctx.site.ssh_host}:{ctx.data.root}",
                str(ctx.mountpoint)], {}


class RclonePeer(Peer):
    """``rclone mount`` of an sftp remote.  By default rclone runs ``md5sum FILE`` in a remote shell each
    time a file it read or wrote whole is closed (~90 ms a file here, ~2 s a GiB); the main row turns that
    off with ``--sftp-disable-hashcheck``, which only makes rclone faster."""

    protocol = "sftp"

    def __init__(self, hash_check=False):
        self.hash_check = hash_check
        self.name = "rclone-hashcheck" if hash_check else "rclone"
        self.label = "rclone (default hash check)" if hash_check else "rclone"
        self.workloads = ("seq-read",) if hash_check else None

    def command(self, ctx):
        remote = (f":sftp,host=127.0.0.1,port={ctx.site.ssh_port},user={ctx.site.sshd.user},"
                  f"key_file={ctx.site.sshd.key}:{ctx.data.root}")
        return ["rclone", "mount", remote, str(ctx.mountpoint), "--config", "/dev/null",
                "--cache-dir", str(ctx.scratch / "rclone-cache")] + ([] if self.hash_check else
                                                                   ["--sftp-disable-hashcheck"]), {}


# PyUNICORE's own uftpmount opener does this: authenticate for a persistent secret, then run the driver.
FUSE_DRIVER_LAUNCHER = """
import os, sys
from pyunicore.credentials import UsernamePassword
from pyunicore.uftp.uftp import UFTP
from pyunicore.uftp import uftpfuse
host, port, secret = UFTP().authenticate(
    UsernamePassword(os.environ["UFTP_USER"], os.environ["UFTP_PASSWORD"]), sys.argv[1], "/")
os.environ["UFTP_PASSWORD"] = secret
sys.argv = ["unicore-fusedriver", "-f", f"{host}:{port}", sys.argv[2]]
uftpfuse.main()
"""


class PyunicoreFusePeer(Peer):
    name = "pyunicore-fuse"
    label = "pyunicore 1.3.7 FUSE"
    protocol = "uftp"
    time_limit = 60.0  # single-threaded, one MLST per getattr: bounded so it cannot eat the run
    limits = {"ls": 20.0}

    def command(self, ctx):
        python = FUSE_DRIVER_VENV / "bin" / "python"
        return [str(python), "-c", FUSE_DRIVER_LAUNCHER, ctx.site.auth_url, str(ctx.mountpoint)], \
            ctx.site.uftp_env("pyunicore")


def all_peers():
    return [HpcfsPeer(), SshfsPeer(), RclonePeer(), RclonePeer(hash_check=True), PyunicoreFusePeer()]
