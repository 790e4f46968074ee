"""Side-by-side benchmark of hpcfs against sshfs, rclone mount, pyuftp cp and PyUNICORE 1.3.7's FUSE driver.

Everything runs on this machine and binds 127.0.0.1.  The local UFTP server runs inside this process (its
request log gives hpcfs's server request counts); a loopback OpenSSH sshd serves the same directory to the
SFTP peers.  Every workload runs twice: on plain loopback and with 10 ms round trip injected by user-space
delay relays (``_proxy`` below) that hold every chunk 5 ms in each direction: one in front of sshd, one in
front of the UFTP server's data ports; UFTP commands are delayed by the server's latency knob.  Each
measurement gets a fresh mount; every command has a time limit; every mount is unmounted and every process
this script started is stopped on the way out.

    .venv/bin/python scripts/bench.py [--quick] [--peers hpcfs,sshfs,...] [--workloads seq-read,...]

Internal helpers run as subprocesses of the same file: ``_proxy DELAY_MS WINDOW_BYTES READY_FD LISTEN:TARGET...``
and ``_randread FILE REFERENCE COUNT SEED``.
"""
import argparse
import asyncio
import atexit
import contextlib
import functools
import json
import os
import platform
import random
import re
import secrets
import select
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

REPO = Path(__file__).resolve().parents[1]
HPCFS = REPO / ".venv" / "bin" / "hpcfs"
# The venvs are shared by several checkouts: hpcfs commands run this checkout's code, not the installed one.
HPCFS_CODE = {"PYTHONPATH": str(REPO)}
PEER_VENV = REPO / ".venv-pyunicore"  # pyuftp (and pyunicore 2.x), as scripts/install makes it
FUSE_DRIVER_VENV = REPO / ".venv-pyunicore137"  # the last pyunicore with a FUSE driver
SFTP_SERVER = "/usr/lib/openssh/sftp-server"
MB = 1_000_000  # rates are in MB/s of 10^6 bytes, as dd prints them
MIB = 1 << 20
RTTS = (0, 10)  # round trips in ms: loopback, then injected
ONE_WAY_MS = 5  # the relays' delay in each direction: half of the injected round trip
# Bytes a relay direction holds from arrival until its "acknowledgement" would be back (one more one-way
# delay): a TCP window.  sshd's relay: generous, SSH's own 2 MiB channel window is what limits a channel.
SSH_RELAY_WINDOW = 16 * (1 << 20)
# UFTP data relay: Linux's default maximum TCP receive window (net.ipv4.tcp_rmem max, 6 MiB), so one long
# RETR through it tops out near 6 MiB per 10 ms round trip (about 630 MB/s), as one TCP stream on a real
# 10 ms link with default settings would.
DATA_RELAY_WINDOW = 6 * (1 << 20)
DATA_PORTS = 64  # the UFTP server's data port range (the real-uftpd kit gives UFTPD 64 too)
PEER_NAMES = ("hpcfs", "sshfs", "rclone", "rclone-hashcheck", "pyuftp", "pyunicore-fuse")
DOC_BEGIN, DOC_END = "<!-- bench:begin -->", "<!-- bench:end -->"


@dataclass(frozen=True)
class Sizes:
    big: int  # the sequential read / write file
    dirs: int  # the ls -lR tree: dirs x files_per_dir files of 100 bytes
    files_per_dir: int
    random_reads: int  # 4 KiB reads on loopback
    random_reads_rtt: int  # ... and with latency (each costs at least a round trip)
    small_files: int  # cp -r in and out, 4 KiB each

    @property
    def tree_files(self):
        return self.dirs * self.files_per_dir


FULL = Sizes(big=1 << 30, dirs=100, files_per_dir=100, random_reads=2000, random_reads_rtt=200, small_files=1000)
QUICK = Sizes(big=64 << 20, dirs=10, files_per_dir=100, random_reads=300, random_reads_rtt=50, small_files=100)


# -- data set ---------------------------------------------------------------------------------------------
class DataSet:
    """The served tree, made once per size in the scratch directory and reused: ``big.bin``, ``tree/`` of
    100-byte files, ``small/`` of 4 KiB files; writes land in ``in-*`` directories removed after each run."""

    def __init__(self, scratch: Path, sizes: Sizes):
        self.sizes = sizes
        self.root = scratch / ("data" if sizes == FULL else "data-quick")
        self.big = self.root / "big.bin"
        self.tree = self.root / "tree"
        self.small = self.root / "small"

    @functools.cached_property
    def big_sha256(self) -> str:
        return sha256_of(self.big)

    def ensure(self):
        stamp = self.root / ".complete"
        wanted = json.dumps(self.sizes.__dict__, sort_keys=True)
        if stamp.exists() and stamp.read_text() == wanted:
            return
        print(f"making the data set in {self.root} (once)", flush=True)
        shutil.rmtree(self.root, ignore_errors=True)
        self.root.mkdir(parents=True)
        with open(self.big, "wb") as handle:
            for offset in range(0, self.sizes.big, 16 * MIB):
                handle.write(os.urandom(min(16 * MIB, self.sizes.big - offset)))
        for d in range(self.sizes.dirs):
            directory = self.tree / f"d{d:03d}"
            directory.mkdir(parents=True)
            for f in range(self.sizes.files_per_dir):
                (directory / f"f{d * self.sizes.files_per_dir + f:05d}").write_bytes(os.urandom(100))
        self.small.mkdir()
        for index in range(self.sizes.small_files):
            (self.small / f"s{index:04d}.bin").write_bytes(os.urandom(4096))
        stamp.write_text(wanted)

    def incoming(self, name: str) -> Path:
        """A fresh, empty directory on the server side for one peer's writes."""
        path = self.root / f"in-{name}"
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir()
        return path

    def remove_incoming(self):
        for path in self.root.glob("in-*"):
            shutil.rmtree(path, ignore_errors=True)

    def tree_file_paths(self):
        """Server-side paths of the tree's files, as they appear in UFTP requests."""
        return {f"/tree/{p.parent.name}/{p.name}" for p in self.tree.glob("d*/f*")}


# -- servers ----------------------------------------------------------------------------------------------
def private_directory(path: Path) -> None:
    """Make ``path`` (mode 0700) or accept the one there only if it is a real directory owned by the runner
    that nobody else may write: the data set is reused between runs, and another local user must not be
    able to plant files or symlinks where this script (often root) writes."""
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700, parents=True)
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid() or info.st_mode & 0o022:
        raise PermissionError(f"{path} is not a directory of yours that only you can write; remove it or set "
                              "HPCFS_BENCH_DIR to another path")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def free_port_block(count: int, attempts: int = 100) -> int:
    """The first of ``count`` consecutive loopback ports that are all free now, drawn below the kernel's
    ephemeral range (so an outgoing connection cannot take one before its server binds it)."""
    with open("/proc/sys/net/ipv4/ip_local_port_range") as handle:
        ephemeral_low = int(handle.read().split()[0])
    for _ in range(attempts):
        first = random.randrange(10000, ephemeral_low - count)
        if all(port_is_free(port) for port in range(first, first + count)):
            return first
    raise RuntimeError(f"found no {count} consecutive free ports below {ephemeral_low}")


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers bind: TIME_WAIT is free
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def wait_for_port(port: int, process: subprocess.Popen, what: str, limit: float = 20):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with status {process.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on port {port} within {limit:g} s")


def stop_process(process: Optional[subprocess.Popen], grace: float = 10):
    """SIGTERM to the process group this script started, then SIGKILL after ``grace`` seconds."""
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


class Sshd:
    """A loopback OpenSSH sshd with its own host key, config and authorised client key (login by key only,
    sftp subsystem), plus the client's ssh config for sshfs.  Everything lives in this run's private
    directory (``mkdtemp``, 0700) with keys made fresh for the run, and sshd keeps ``StrictModes yes``: the
    authorised key comes from ``AuthorizedKeysCommand`` because StrictModes refuses any key file below the
    world-writable /tmp."""

    def __init__(self, run_dir: Path, logs: Path):
        self.dir = run_dir / "ssh"
        self.logs = logs
        self.key = self.dir / "client_key"
        self.port = free_port()
        self.user = os.environ.get("USER") or "root"
        self.process = None

    def start(self):
        self.dir.mkdir(mode=0o700)  # a fresh directory: fails if anything is already there
        for name in ("host_key", "client_key"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.dir / name)], check=True)
        config = self.dir / "sshd_config"
        config.write_text("\n".join([
            f"ListenAddress 127.0.0.1:{self.port}", f"HostKey {self.dir / 'host_key'}", "AuthorizedKeysFile none",
            f"AuthorizedKeysCommand /bin/cat {self.dir / 'client_key.pub'}", f"AuthorizedKeysCommandUser {self.user}",
            "PermitRootLogin prohibit-password",
            "PasswordAuthentication no", "KbdInteractiveAuthentication no", "UsePAM no", "StrictModes yes",
            "PidFile none", "MaxSessions 100", "MaxStartups 100", "LogLevel ERROR",
            f"Subsystem sftp {SFTP_SERVER}", "",
        ]))
        if os.geteuid() == 0:
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege separation directory
        with open(self.logs / "sshd.log", "ab") as log:
            self.process = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(config)], stdout=log,
                                            stderr=log, start_new_session=True)
        wait_for_port(self.port, self.process, "sshd")
        return self

    def client_config(self, ports: Dict[int, int]) -> Path:
        """An ssh config with one host alias per round trip (``bench-rtt0``, ``bench-rtt10``)."""
        path = self.dir / "ssh_config"
        blocks = []
        for rtt, port in ports.items():
            blocks += [f"Host bench-rtt{rtt}", "  HostName 127.0.0.1", f"  Port {port}", f"  User {self.user}",
                       f"  IdentityFile {self.key}", "  IdentitiesOnly yes", "  BatchMode yes",
                       "  StrictHostKeyChecking no", "  UserKnownHostsFile /dev/null", "  LogLevel ERROR"]
        path.write_text("\n".join(blocks) + "\n")
        return path

    def stop(self):
        stop_process(self.process)


class DelayProxy:
    """``_proxy`` in a subprocess: TCP relays from each listen port to its target port, holding every chunk
    ``delay_ms`` each way with at most ``window`` bytes in flight per direction; it logs to ``NAME.log``."""

    def __init__(self, routes: Dict[int, int], window: int, logs: Path, name: str, delay_ms: float = ONE_WAY_MS):
        self.routes, self.window, self.logs, self.name, self.delay_ms = routes, window, logs, name, delay_ms
        self.process: Optional[subprocess.Popen] = None

    @property
    def port(self) -> int:
        """The listen port of a relay with one route."""
        (port,) = self.routes
        return port

    def start(self, limit: float = 20):
        """Start the relay and wait until it listens on every port.  It says so on a pipe: a test connection
        would be relayed, and the UFTP server could take it for the next client's data connection."""
        routes = [f"{listen}:{target}" for listen, target in self.routes.items()]
        log_path = self.logs / f"{self.name}.log"
        ready, ready_for_child = os.pipe()
        with open(ready, "rb") as said:
            try:
                with open(log_path, "ab") as log:
                    self.process = subprocess.Popen(
                        [sys.executable, __file__, "_proxy", str(self.delay_ms), str(self.window),
                         str(ready_for_child), *routes],
                        stdout=log, stderr=log, start_new_session=True, pass_fds=(ready_for_child,))
            finally:
                os.close(ready_for_child)  # only the relay holds it now: its exit is an EOF here
            answered = select.select([said], [], [], limit)[0]
            if not answered or said.readline() != RELAY_READY:
                stop_process(self.process)
                raise RuntimeError(f"the delay relay {self.name} did not start within {limit:g} s (see {log_path})")
        return self

    def stop(self):
        stop_process(self.process)


class Site:
    """The servers of one run: UFTP in this process, sshd and the delay relays in subprocesses.  Each client
    gets its own UFTP user, so one peer's leaked sessions never count against another's session limit.

    The UFTP server's data listeners use a fixed port range; the data relay listens on the same range
    shifted by ``DATA_PORTS`` and forwards each port to its partner.  At 10 ms the server advertises the
    shifted ports in its 227/229 replies, so every UFTP client's data connections go through the relay."""

    CLIENTS = ("hpcfs", "pyuftp", "pyunicore")

    def __init__(self, data: DataSet, run_dir: Path, logs: Path):
        from hpcfs.servers.uftp import UFTPServer  # only the orchestrating process needs hpcfs

        self.data = data
        self.passwords = {name: secrets.token_urlsafe(12) for name in self.CLIENTS}
        tls = run_dir / "tls"
        tls.mkdir(mode=0o700)
        first = free_port_block(2 * DATA_PORTS)
        self.data_ports = range(first, first + DATA_PORTS)
        self.uftp = UFTPServer(str(data.root), dict(self.passwords), tls_dir=str(tls),
                               data_port_range=(self.data_ports[0], self.data_ports[-1]))
        self.sshd = Sshd(run_dir, logs)
        self.proxy = DelayProxy({free_port(): self.sshd.port}, SSH_RELAY_WINDOW, logs, "proxy")
        relayed = {port + DATA_PORTS: port for port in self.data_ports}
        self.data_relay = DelayProxy(relayed, DATA_RELAY_WINDOW, logs, "data-relay")
        self.ssh_config = None
        self.rtt = 0

    def start(self):
        self.uftp.start()
        self.sshd.start()
        self.proxy.start()
        self.ssh_config = self.sshd.client_config({0: self.sshd.port, 10: self.proxy.port})
        self.data_relay.start()
        return self

    def stop(self):
        for stop in (self.proxy.stop, self.data_relay.stop, self.sshd.stop, self.uftp.stop):
            with contextlib.suppress(Exception):
                stop()

    def set_rtt(self, rtt_ms: int):
        """UFTP: every command reply (control channel and Auth REST) waits one full round trip, and data
        connections go through the data relay.  SSH: the proxy is used instead of the direct port."""
        self.rtt = rtt_ms
        self.uftp.knobs.latency = rtt_ms / 1000.0
        self.uftp.knobs.extra["advertised_data_port_offset"] = DATA_PORTS if rtt_ms else 0

    @property
    def auth_url(self):
        return self.uftp.auth_url

    def uftp_env(self, client: str) -> Dict[str, str]:
        return {"UFTP_USER": client, "UFTP_PASSWORD": self.passwords[client], "HPCFS_CA_FILE": self.uftp.cert_file}

    @property
    def ssh_host(self):
        return f"bench-rtt{self.rtt}"

    @property
    def ssh_port(self):
        return self.sshd.port if self.rtt == 0 else self.proxy.port

    def requests(self) -> "RequestWindow":
        return RequestWindow(self.uftp.log.entries)


class RequestWindow:
    """The UFTP server's requests from now on, as ``(kind, detail)`` pairs."""

    def __init__(self, entries: list):
        self._entries = entries
        self._start = len(entries)

    def made(self) -> list:
        return self._entries[self._start:]


# -- commands and mounts ----------------------------------------------------------------------------------
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


@dataclass
class Context:
    site: Site
    data: DataSet
    scratch: Path
    logs: Path

    @property
    def mountpoint(self):
        return self.scratch / "mnt"


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


# -- results ----------------------------------------------------------------------------------------------
@dataclass
class Outcome:
    value: Optional[float] = None  # in the row's unit (MB/s, reads/s, s, files/s); None when it failed
    text: str = ""
    detail: str = ""
    peak_mib: Optional[float] = None  # VmHWM of the mount process after the workload
    start_mib: Optional[float] = None  # its VmRSS once mounted
    requests: str = ""  # UFTP server requests made, by command
    listings: Optional[int] = None  # ls -lR over UFTP: listing requests ...
    per_file: Optional[int] = None  # ... and requests naming one of the tree's files

    @classmethod
    def failed(cls, why: str):
        return cls(text=f"failed: {why}")


@dataclass
class Results:
    rows: Dict[tuple, Outcome] = field(default_factory=dict)  # (row, client, rtt) -> Outcome
    order: List[tuple] = field(default_factory=list)

    def put(self, row: str, client: str, rtt: int, outcome: Outcome):
        if (row, client) not in self.order:
            self.order.append((row, client))
        self.rows[(row, client, rtt)] = outcome

    def value(self, row, client, rtt) -> Optional[float]:
        outcome = self.rows.get((row, client, rtt))
        return outcome.value if outcome else None


def rate(nbytes: int, seconds: float) -> Outcome:
    return Outcome(nbytes / seconds / MB, f"{nbytes / seconds / MB:,.0f} MB/s", f"{seconds:.2f} s")


def describe_requests(made) -> str:
    """Counts by command, most frequent first, e.g. ``512 RANG, 512 RETR, 1 USER``."""
    counts: Dict[str, int] = {}
    for kind, detail in made:
        name = f"STAT {detail.split(' ', 1)[0]}" if kind == "STAT" and detail else kind
        counts[name] = counts.get(name, 0) + 1
    return ", ".join(f"{n} {k}" for k, n in sorted(counts.items(), key=lambda item: -item[1])) or "none"


def listing_counts(made, tree_files):
    """``(listing requests, requests naming one file of the tree)``; pyunicore sends paths without the
    leading slash."""
    listings = sum(1 for kind, detail in made
                   if (kind == "STAT" and detail.startswith("N ")) or kind in ("LIST", "MLSD"))
    per_file = sum(1 for _, detail in made if "/" + detail.split(" ")[-1].lstrip("/") in tree_files)
    return listings, per_file


# -- workloads --------------------------------------------------------------------------------------------
def measured(peer: Peer, ctx: Context, workload, row_names):
    """Mount, run ``workload(mount, ctx, peer, request window)``, attach the mount's memory; a failure
    fills every row of the workload that has no outcome yet."""
    outcomes = {}
    try:
        with peer.mounted(ctx) as mount:
            try:
                outcomes = workload(mount, ctx, peer, ctx.site.requests())
            except Failed as exc:
                outcomes = {row: mount.failed(exc) for row in row_names}
            peak = mount.memory_mib()
        for outcome in outcomes.values():
            outcome.peak_mib, outcome.start_mib = peak, mount.start_mib
    except Failed as exc:  # the mount itself
        return {row: Outcome.failed(str(exc)) for row in row_names}
    for row in row_names:
        outcomes.setdefault(row, Outcome.failed("not run (the step before it failed)"))
    return outcomes


def seq_read(mount, ctx, peer, window):
    size = ctx.data.sizes.big
    report = ctx.scratch / "dd.err"
    with open(report, "wb") as err:
        seconds = run_checked(["dd", f"if={mount.path / 'big.bin'}", "bs=1M"], peer.limit("seq-read"),
                             ctx.data.big_sha256, stderr=err)
    copied = re.search(r"^(\d+) bytes", report.read_text(), re.M)
    if not copied or int(copied.group(1)) != size:
        raise Failed(f"dd read {copied.group(1) if copied else 'no'} bytes of {size:,}")
    outcome = rate(size, seconds)
    if peer.protocol == "uftp":
        outcome.requests = describe_requests(window.made())
    return {"seq-read": outcome}


def random_read(mount, ctx, peer, window):
    count = ctx.data.sizes.random_reads if ctx.site.rtt == 0 else ctx.data.sizes.random_reads_rtt
    out = subprocess.run(
        [sys.executable, __file__, "_randread", str(mount.path / "big.bin"), str(ctx.data.big), str(count), "5"],
        capture_output=True, text=True, timeout=peer.limit("random-read") + 10)
    if out.returncode != 0:
        raise Failed((out.stderr.strip().splitlines() or ["randread failed"])[-1][:160])
    report = json.loads(out.stdout)
    if report["wrong"]:
        return {"random-read": Outcome.failed(f"{report['wrong']:,} of {count:,} reads returned wrong bytes")}
    per_second = count / report["seconds"]
    outcome = Outcome(per_second, f"{per_second:,.0f} reads/s",
                      f"{count:,}/{count:,} correct, {report['seconds']:.2f} s")
    if peer.protocol == "uftp":
        outcome.requests = describe_requests(window.made())
    return {"random-read": outcome}


def list_tree(mount, ctx, peer, window):
    outcomes = {}
    tree_files = ctx.data.tree_file_paths()
    for row in ("ls-cold", "ls-warm"):
        listing = ctx.scratch / "ls.out"
        these = ctx.site.requests()
        with open(listing, "wb") as out:
            try:
                seconds = run_timed(["stdbuf", "-oL", "ls", "-lR", str(mount.path / "tree")], peer.limit("ls"),
                                    stdout=out)
            except Failed as exc:
                listed = f"{count_listed(listing):,} of {ctx.data.sizes.tree_files:,} files listed by then"
                outcomes[row] = mount.failed(Failed(f"{exc} ({listed})"))
                return outcomes
        listed = count_listed(listing)
        if listed != ctx.data.sizes.tree_files:
            outcomes[row] = Outcome.failed(f"listed {listed:,} of {ctx.data.sizes.tree_files:,} files")
            return outcomes
        outcome = Outcome(seconds, f"{seconds:.2f} s")
        if peer.protocol == "uftp":
            outcome.listings, outcome.per_file = listing_counts(these.made(), tree_files)
            outcome.requests = describe_requests(these.made())
            outcome.detail = f"{outcome.listings} listings, {outcome.per_file} per-file requests"
        outcomes[row] = outcome
    return outcomes


def count_listed(listing: Path) -> int:
    with contextlib.suppress(OSError), open(listing, "rb") as handle:
        return sum(1 for line in handle if line.startswith(b"-"))
    return 0


def write_big(mount, ctx, peer, window):
    target = ctx.data.incoming(peer.name)
    seconds = run_timed(["cp", str(ctx.data.big), str(mount.path / target.name / "big.bin")], peer.limit("write"))
    outcome = rate(ctx.data.sizes.big, seconds)
    if peer.protocol == "uftp":
        outcome.requests = describe_requests(window.made())
    return {"write": outcome}


def copy_small(mount, ctx, peer, window):
    target = ctx.data.incoming(peer.name)
    count = ctx.data.sizes.small_files
    outcomes = {}
    out_dir = ctx.scratch / "out"
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir()
    for row, argv in (("cp-r-in", ["cp", "-r", str(ctx.data.small), str(mount.path / target.name)]),
                      ("cp-r-out", ["cp", "-r", str(mount.path / "small"), str(out_dir)])):
        these = ctx.site.requests()
        try:
            seconds = run_timed(argv, peer.limit("cp-r"))
        except Failed as exc:
            outcomes[row] = mount.failed(exc)
            continue
        outcomes[row] = Outcome(count / seconds, f"{count / seconds:,.0f} files/s", f"{seconds:.2f} s")
        if peer.protocol == "uftp":
            outcomes[row].requests = describe_requests(these.made())
    return outcomes


def verify_copies(ctx, peer, outcomes):
    """After unmounting: what was written must be on the server byte for byte, what was read must match."""
    checks = {
        "write": (ctx.data.big, ctx.data.root / f"in-{peer.name}" / "big.bin"),
        "cp-r-in": (ctx.data.small, ctx.data.root / f"in-{peer.name}" / "small"),
        "cp-r-out": (ctx.data.small, ctx.scratch / "out" / "small"),
    }
    for row, (expected, actual) in checks.items():
        outcome = outcomes.get(row)
        if outcome is None or outcome.value is None:
            continue
        problem = compare_paths(expected, actual)
        if problem:
            outcomes[row] = Outcome.failed(f"wrong result: {problem}")
    ctx.data.remove_incoming()
    shutil.rmtree(ctx.scratch / "out", ignore_errors=True)


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


WORKLOADS = {  # name -> (function, rows it fills)
    "seq-read": (seq_read, ["seq-read"]),
    "random-read": (random_read, ["random-read"]),
    "ls": (list_tree, ["ls-cold", "ls-warm"]),
    "write": (write_big, ["write"]),
    "cp-r": (copy_small, ["cp-r-in", "cp-r-out"]),
}
ROW_LABELS = {
    "seq-read": "sequential read (dd bs=1M)",
    "random-read": "4 KiB random reads, bytes checked",
    "ls-cold": "ls -lR cold",
    "ls-warm": "ls -lR warm",
    "write": "cp of the big file into the mount",
    "cp-r-in": "cp -r of 4 KiB files into the mount",
    "cp-r-out": "cp -r of 4 KiB files out of the mount",
    "real-uftpd-read": "real UFTPD 3.5: copy of the big file to local disk, sha256 checked (loopback)",
    "lines": "Python: iterate the lines of a 1 MiB text file (loopback)",
    "real-firecrest-download": "real FirecREST cluster-s3: download to local disk, sha256 checked (loopback)",
    "real-firecrest-upload": "real FirecREST cluster-s3: upload from local disk, sha256 checked (loopback)",
}
PROCESS_WORKLOADS = ("real-uftpd", "real-firecrest", "lines")  # rows outside the mount/RTT loop, run once on loopback


# pyuftp unchanged, with a stopwatch around its data phase (UFTP.copy_data: the bytes of one transfer).
PYUFTP_TIMED = """
import sys, time
from pyuftp.client import main
from pyuftp.uftp import UFTP
copy_data = UFTP.copy_data
def timed_copy_data(self, *args, **kwargs):
    start = time.perf_counter()
    try:
        return copy_data(self, *args, **kwargs)
    finally:
        print(f"data-phase-seconds {time.perf_counter() - start}", file=sys.stderr)
UFTP.copy_data = timed_copy_data
sys.argv[0] = "pyuftp"
sys.exit(main())
"""


def pyuftp_transfer(ctx, direction) -> Outcome:
    """``pyuftp cp`` of the big file, to /dev/null or up into an incoming directory.  The rate is that of
    its data phase (hpcfs's dd, too, starts on a mount that has already authenticated); the whole command's
    wall time, with interpreter start, authentication and login, is shown beside it."""
    url = ctx.site.auth_url
    env = {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, **ctx.site.uftp_env("pyuftp")}
    if direction == "read":
        arguments = ["cp", "-P", f"{url}:/big.bin", "-"]  # to stdout, checked afterwards as every mount's dd
    else:
        arguments = ["cp", "-P", str(ctx.data.big), f"{url}:/{ctx.data.incoming('pyuftp').name}/big.bin"]
    window = ctx.site.requests()
    stderr = ctx.scratch / "pyuftp.err"
    try:
        with open(stderr, "wb") as err:
            argv = [str(PEER_VENV / "bin" / "python"), "-c", PYUFTP_TIMED, *arguments]
            seconds = (run_checked(argv, 240, ctx.data.big_sha256, env=env, cwd=ctx.scratch, stderr=err)
                       if direction == "read" else run_timed(argv, 240, env=env, cwd=ctx.scratch, stderr=err))
        if direction == "write":
            problem = compare_paths(ctx.data.big, ctx.data.root / "in-pyuftp" / "big.bin")
            if problem:
                raise Failed(f"wrong result: {problem}")
    except Failed as exc:
        return Outcome.failed(str(exc))
    finally:
        ctx.data.remove_incoming()
    phases = [float(x) for x in re.findall(r"data-phase-seconds (\S+)", stderr.read_text())]
    if len(phases) != 1:
        return Outcome.failed(f"expected one data phase, saw {len(phases)}")
    outcome = rate(ctx.data.sizes.big, phases[0])
    outcome.detail = f"data phase {phases[0]:.2f} s, whole command {seconds:.2f} s"
    outcome.requests = describe_requests(window.made())
    return outcome


# -- Python front ends: line iteration -------------------------------------------------------------------------
def line_iteration_rows(ctx: Context, results: Results):
    """``for line in file`` over a 1 MiB text file through fsspec and PyFilesystem2's ``openbin``, in this
    process, against the local UFTP server; the lines joined must hash as the file does."""
    import hashlib

    import fs
    import fsspec

    text = b"".join(b"line %06d of a text file\n" % number for number in range(40_000))
    (ctx.data.root / "lines.txt").write_bytes(text)
    base = f"uftp://hpcfs:{ctx.site.passwords['hpcfs']}@{ctx.site.auth_url.split('://', 1)[1]}"
    ca_file = f"?ca_file={ctx.site.uftp.cert_file}"
    openers = {
        "hpcfs via fsspec.open": lambda: fsspec.open(f"{base}:/lines.txt{ca_file}", "rb"),
        "hpcfs via open_fs().openbin": lambda: fs.open_fs(f"{base}:/{ca_file}").openbin("/lines.txt"),
    }
    for client, opener in openers.items():
        start = time.perf_counter()
        with opener() as source:
            joined = b"".join(line for line in source)
        seconds = time.perf_counter() - start
        if hashlib.sha256(joined).digest() != hashlib.sha256(text).digest():
            results.put("lines", client, 0, Outcome.failed("the lines read differ from the file"))
            continue
        results.put("lines", client, 0, Outcome(seconds, f"{seconds:.2f} s", "40,000 lines, sha256 checked"))
    (ctx.data.root / "lines.txt").unlink()


# -- against the real UFTPD (../shared/peers) ------------------------------------------------------------
REAL_ROW = "real-uftpd-read"


def peers_bin() -> Optional[Path]:
    """The real-server kit's bin/: $HPCFS_PEERS_BIN, else ``shared/peers/bin`` beside the checkout."""
    candidates = [Path(os.environ["HPCFS_PEERS_BIN"])] if os.environ.get("HPCFS_PEERS_BIN") else []
    candidates += [parent / "shared" / "peers" / "bin" for parent in REPO.parents[:3]]
    return next((path for path in candidates if (path / "real-uftpd").exists()), None)


def real_peer_env(peer: str) -> Optional[Dict[str, str]]:
    """A running real server's settings (``real-uftpd env``, ``real-firecrest env``), or None when it is
    not running here."""
    kit = peers_bin()
    if kit is None or subprocess.run([str(kit / peer), "status"], capture_output=True).returncode:
        return None
    exported = subprocess.run([str(kit / peer), "env"], capture_output=True, text=True, check=True).stdout
    return {name: value.replace("\\ ", " ") for name, value in re.findall(r"^export (\w+)=(.*)$", exported, re.M)}


def sha256_of(path: Path) -> str:
    return subprocess.run(["sha256sum", str(path)], capture_output=True, text=True, check=True).stdout.split()[0]


def real_uftpd_rows(ctx: Context, results: Results):
    """The big file copied from the real UFTPD to local disk by hpcfs's mount (``cat``), ``hpcfs cp`` and
    ``pyuftp cp``, one after the other in one run, each copy's sha256 checked after its timed run."""
    env = real_peer_env("real-uftpd")
    if env is None:
        print("real UFTPD not running (../shared/peers/bin/real-uftpd start): its rows are skipped")
        return
    directory = Path(env["UFTP_DATA_DIR"]) / f"hpcfs-bench-{os.getpid()}"
    directory.mkdir(mode=0o755)
    try:
        source = directory / "big.bin"
        shutil.copyfile(ctx.data.big, source)
        source.chmod(0o644)  # UFTPD sessions run as nobody
        expected = sha256_of(source)
        server_path = f"{env['UFTP_AUTH_URL']}:{source}"
        client_env = {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, **env}
        copies = {
            "pyuftp cp": lambda out: [str(PEER_VENV / "bin" / "python"), "-c", PYUFTP_TIMED, "cp", "-P", server_path,
                                      str(out)],
            "hpcfs cp": lambda out: [str(HPCFS), "cp", "uftp://" + server_path.split("://", 1)[1], str(out)],
        }
        for client, argv in copies.items():
            results.put(REAL_ROW, client, 0, timed_checked_copy(ctx, argv, env_for(client, client_env), expected))
            if client == "pyuftp cp":
                pyuftp_data_phase(ctx, results)
        results.put(REAL_ROW, "hpcfs mount (cat)", 0, mounted_real_copy(ctx, env, client_env, directory, expected))
        results.put(REAL_ROW, "hpcfs mount -o direct_io (cat)", 0,
                    mounted_real_copy(ctx, env, client_env, directory, expected, ["-o", "direct_io"]))
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def pyuftp_data_phase(ctx: Context, results: Results):
    """pyuftp's data phase alone (its stopwatch line): what the mount row, timed on a mounted tree,
    compares with."""
    phases = re.findall(r"data-phase-seconds (\S+)", (ctx.scratch / "real-copy.err").read_text())
    whole = results.rows.get((REAL_ROW, "pyuftp cp", 0))
    if whole is None or whole.value is None or len(phases) != 1:
        results.put(REAL_ROW, "pyuftp cp (data phase)", 0, Outcome.failed("no data phase measured"))
        return
    outcome = rate(ctx.data.sizes.big, float(phases[0]))
    outcome.detail = f"{float(phases[0]):.2f} s of the command above"
    results.put(REAL_ROW, "pyuftp cp (data phase)", 0, outcome)


def timed_checked_copy(ctx: Context, argv, env, expected: str, size: Optional[int] = None) -> Outcome:
    """Run a copy to local disk (its stderr kept in real-copy.err); its rate, once its bytes are checked."""
    out = ctx.scratch / "real-copy.bin"
    out.unlink(missing_ok=True)
    try:
        with open(ctx.scratch / "real-copy.err", "wb") as err:
            seconds = run_timed(argv(out), 600 if size else 240, env=env, cwd=ctx.scratch, stderr=err)
        if sha256_of(out) != expected:
            raise Failed("the copy's sha256 differs from the source's")
    except Failed as exc:
        return Outcome.failed(str(exc))
    finally:
        out.unlink(missing_ok=True)
    outcome = rate(size or ctx.data.sizes.big, seconds)
    outcome.detail = f"{seconds:.2f} s, whole command (a mount: on the mounted tree), sha256 checked"
    return outcome


def mounted_real_copy(ctx: Context, env, client_env, directory: Path, expected: str, options=()) -> Outcome:
    url = f"uftp://{env['UFTP_AUTH_URL'].split('://', 1)[1]}:{directory}"
    argv = [str(HPCFS), "mount", "--foreground", url, str(ctx.mountpoint), *options]
    try:
        with mount_process(argv, {**client_env, **HPCFS_CODE}, ctx.mountpoint, ctx.logs / "hpcfs-real-uftpd.log"):
            return timed_checked_copy(ctx, lambda out: ["cp", str(ctx.mountpoint / "big.bin"), str(out)], None,
                                      expected)
    except Failed as exc:
        return Outcome.failed(str(exc))


# -- against the real FirecREST (../shared/peers), system cluster-s3 (staged transfers through S3) -------------
FIRECREST_ROW_DOWN, FIRECREST_ROW_UP = "real-firecrest-download", "real-firecrest-upload"
FIRECREST_SIZE = 256 * MIB  # staging is slow (tens of seconds per file): the big file's first 256 MiB at most
FIRECREST_VENV = REPO / ".venv-pyfirecrest"
FIRECREST_CONNECTION = ("FIRECREST_URL", "AUTH_TOKEN_URL", "FIRECREST_CLIENT_ID", "FIRECREST_CLIENT_SECRET")
PYFIRECREST_COPY = """
import os, sys
import firecrest
from firecrest.v2 import Firecrest
system, direction, remote, local = sys.argv[1:]
auth = firecrest.ClientCredentialsAuth(os.environ["FIRECREST_CLIENT_ID"], os.environ["FIRECREST_CLIENT_SECRET"],
                                       os.environ["AUTH_TOKEN_URL"])
client = Firecrest(os.environ["FIRECREST_URL"], auth)
if direction == "download":
    client.download(system, remote, local, blocking=True)
else:
    client.upload(system, local, os.path.dirname(remote), os.path.basename(remote), blocking=True)
"""


def real_firecrest_rows(ctx: Context, results: Results):
    """A file of up to 256 MiB downloaded from and uploaded to the real FirecREST's staged system by
    pyfirecrest (``Firecrest.download``/``upload``, blocking) and by ``hpcfs cp``, one after the other;
    every copy's sha256 checked after its timed run (an upload: the file on the cluster's disk)."""
    env = real_peer_env("real-firecrest")
    if env is None:
        print("real FirecREST not running (../shared/peers/bin/real-firecrest start): its rows are skipped")
        return
    system = env["FIRECREST_SYSTEM_S3"]
    directory = Path(env["FIRECREST_FS_ROOT"]) / f"hpcfs-bench-{os.getpid()}"
    directory.mkdir(mode=0o755)
    size = min(ctx.data.sizes.big, FIRECREST_SIZE)
    source = ctx.scratch / "firecrest-source.bin"
    try:
        with open(ctx.data.big, "rb") as big, open(source, "wb") as out:
            out.write(big.read(size))
        shutil.copyfile(source, directory / "big.bin")
        expected = sha256_of(source)
        client_env = {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
                      **{name: env[name] for name in FIRECREST_CONNECTION}}
        python = str(FIRECREST_VENV / "bin" / "python")
        remote = f"{directory}/big.bin"
        url = f"firecrest://{system}{directory}"
        downloads = {
            "pyfirecrest download": lambda out: [python, "-c", PYFIRECREST_COPY, system, "download", remote, str(out)],
            "hpcfs cp": lambda out: [str(HPCFS), "cp", f"{url}/big.bin", str(out)],
        }
        for client, argv in downloads.items():
            outcome = timed_checked_copy(ctx, argv, env_for(client, client_env), expected, size)
            results.put(FIRECREST_ROW_DOWN, client, 0, outcome)
        uploads = {
            "pyfirecrest upload": lambda name: [python, "-c", PYFIRECREST_COPY, system, "upload",
                                                f"{directory}/{name}", str(source)],
            "hpcfs cp": lambda name: [str(HPCFS), "cp", str(source), f"{url}/{name}"],
        }
        for client, argv in uploads.items():
            name = f"up-{client.split()[0]}.bin"
            outcome = timed_checked_upload(argv(name), env_for(client, client_env), directory / name, expected, size)
            results.put(FIRECREST_ROW_UP, client, 0, outcome)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
        source.unlink(missing_ok=True)


def timed_checked_upload(argv, env, landed: Path, expected: str, size: int) -> Outcome:
    try:
        seconds = run_timed(argv, 600, env=env)
        if not landed.exists() or sha256_of(landed) != expected:
            raise Failed("the uploaded file's sha256 differs from the source's")
    except Failed as exc:
        return Outcome.failed(str(exc))
    outcome = rate(size, seconds)
    outcome.detail = f"{seconds:.2f} s, whole command, sha256 checked on the cluster's disk"
    return outcome


# -- the run ----------------------------------------------------------------------------------------------
def all_peers():
    return [HpcfsPeer(), SshfsPeer(), RclonePeer(), RclonePeer(hash_check=True), PyunicoreFusePeer()]


def run(ctx: Context, peers, with_pyuftp, workloads, rtts, results: Results):
    for rtt in rtts:
        ctx.site.set_rtt(rtt)
        for name in workloads:
            function, rows = WORKLOADS[name]
            for peer in peers:
                if peer.workloads is not None and name not in peer.workloads:
                    continue
                print(f"[RTT {rtt:>2} ms] {name:<11} {peer.label} ...", end=" ", flush=True)
                outcomes = measured(peer, ctx, function, rows)
                verify_copies(ctx, peer, outcomes)
                for row, outcome in outcomes.items():
                    results.put(row, peer.label, rtt, outcome)
                print("; ".join(o.text for o in outcomes.values()), flush=True)
            if name in ("seq-read", "write") and with_pyuftp:
                direction = "read" if name == "seq-read" else "write"
                print(f"[RTT {rtt:>2} ms] {name:<11} pyuftp cp ...", end=" ", flush=True)
                outcome = pyuftp_transfer(ctx, direction)
                results.put(name, "pyuftp cp", rtt, outcome)
                print(outcome.text, flush=True)
            if name == "seq-read" and rtt == 0 and any(p.name == "hpcfs" for p in peers):
                bounded = HpcfsPeer(["cache_size=64M,readahead=16M"])
                print(f"[RTT {rtt:>2} ms] {name:<11} {bounded.label} ...", end=" ", flush=True)
                outcome = measured(bounded, ctx, function, rows)["seq-read"]
                results.put(name, bounded.label, rtt, outcome)
                print(outcome.text, flush=True)


# -- report -----------------------------------------------------------------------------------------------
@dataclass
class Target:
    text: str
    measured: str
    ratio: Optional[float]
    required: str
    met: Optional[bool]


def ratio_of(results: Results, row: str, ours: str, theirs: str, required: float, text: str) -> Target:
    mine, other = results.value(row, ours, 0), results.value(row, theirs, 0)
    if mine is None or other is None:
        return Target(text, "missing", None, f">= {required}", None)
    return Target(text, f"{mine:,.0f} vs {other:,.0f}", mine / other, f">= {required}", mine / other >= required)


def targets(results: Results, sizes: Sizes) -> List[Target]:
    value = results.value
    hp = "hpcfs"

    def ratio_target(text, row, rtt, other, required):
        ours, theirs = value(row, hp, rtt), value(row, other, rtt)
        if ours is None or theirs is None:
            return Target(text, "missing", None, f">= {required}", None)
        ratio = ours / theirs
        return Target(text, f"{ours:,.0f} vs {theirs:,.0f}", ratio, f">= {required}", ratio >= required)

    found = [
        ratio_target("sequential read vs sshfs, loopback", "seq-read", 0, "sshfs", 4),
        ratio_target("sequential read vs rclone, RTT 10 ms", "seq-read", 10, "rclone", 1.3),
        ratio_target("sequential read vs pyuftp cp, loopback", "seq-read", 0, "pyuftp cp", 0.6),
        ratio_target("sequential read vs pyuftp cp, RTT 10 ms", "seq-read", 10, "pyuftp cp", 0.6),
    ]
    for rtt in RTTS:
        cold = results.rows.get(("ls-cold", hp, rtt))
        if cold and cold.listings is not None:
            directories = sizes.dirs + 1
            found.append(Target(f"ls -lR cold: one listing per directory, no per-file requests, RTT {rtt} ms",
                                f"{cold.listings} listings for {directories} dirs, {cold.per_file} per-file", None,
                                f"{directories}, 0", cold.listings <= directories and cold.per_file == 0))
    warm_ours, warm_sshfs = value("ls-warm", hp, 0), value("ls-warm", "sshfs", 0)
    if warm_ours is not None and warm_sshfs is not None:
        found.append(Target("ls -lR warm vs sshfs warm, loopback (time)", f"{warm_ours:.2f} s vs {warm_sshfs:.2f} s",
                            warm_ours / warm_sshfs, "<= 1.5", warm_ours <= 1.5 * warm_sshfs))
    random_reads = results.rows.get(("random-read", hp, 0))
    if random_reads:
        met = random_reads.value is not None and random_reads.value >= 2000
        found.append(Target("random 4 KiB reads all correct, loopback", random_reads.text, None, ">= 2,000/s", met))
    found += memory_targets(results)
    found += [ratio_of(results, REAL_ROW, ours, theirs, required, f"real UFTPD: {ours} vs {theirs}")
              for ours, theirs, required in (("hpcfs mount (cat)", "pyuftp cp (data phase)", 1.0),
                                             ("hpcfs mount -o direct_io (cat)", "pyuftp cp (data phase)", 1.0),
                                             ("hpcfs cp", "pyuftp cp", 1.3))]
    found.append(ratio_of(results, FIRECREST_ROW_DOWN, "hpcfs cp", "pyfirecrest download", 1.0,
                          "real FirecREST cluster-s3 download: hpcfs cp vs pyfirecrest"))
    found.append(ratio_of(results, FIRECREST_ROW_UP, "hpcfs cp", "pyfirecrest upload", 1.0,
                          "real FirecREST cluster-s3 upload: hpcfs cp vs pyfirecrest"))
    for rtt in RTTS:
        write, read = value("write", hp, rtt), value("seq-read", hp, rtt)
        if write is not None and read is not None:
            found.append(Target(f"write vs own sequential read, RTT {rtt} ms", f"{write:,.0f} vs {read:,.0f} MB/s",
                                write / read, ">= 0.5", write / read >= 0.5))
    return found


FUSE_REQUESTS_IN_FLIGHT = 8  # read requests of up to 1 MiB the mount may serve at once (its FUSE threads)
PROCESS_SLACK = 8 << 20  # interpreter, thread stacks and allocator slack beyond the data


def memory_bound_mib(label: str) -> float:
    """How far hpcfs's memory may grow above its RSS at mount, by design (docs/benchmarks.md): the block
    cache (blocks in flight included: they are in its index), two copies of each 1 MiB read request in
    flight (the joined result and FUSE's reply buffer), one block per session (a slow block is moved once
    into its full-size buffer), and a fixed slack for the rest of the process."""
    from hpcfs.core.options import CoreOptions
    from hpcfs.uftp.backend import DEFAULT_SESSIONS

    values = dict(item.split("=", 1) for option in label.split(" -o ")[1:] for item in option.split(","))
    options = CoreOptions.from_strings(values)
    data = options.cache_size + 2 * FUSE_REQUESTS_IN_FLIGHT * MIB + DEFAULT_SESSIONS * options.block_size
    return (data + PROCESS_SLACK) / MIB


def memory_targets(results: Results) -> List[Target]:
    found = []
    for label in dict.fromkeys(client for _, client in results.order if client.startswith("hpcfs")):
        grown = [(o.peak_mib - o.start_mib, row, rtt) for (row, client, rtt), o in results.rows.items()
                 if client == label and o.peak_mib and o.start_mib]
        if not grown:
            continue
        most, row, rtt = max(grown)
        bound = memory_bound_mib(label)
        found.append(Target(f"{label}: peak memory above its RSS at mount, worst workload",
                            f"{most:,.0f} MiB ({ROW_LABELS[row]}, RTT {rtt} ms)", most / bound,
                            f"<= {bound:,.0f} MiB", most <= bound))
    return found


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


def commands_used(ctx: Context) -> List[str]:
    """The mount commands of this run on loopback, credentials left out (they travel in environment
    variables), and what changes at 10 ms."""
    ctx.site.set_rtt(0)
    lines = []
    for peer in all_peers() + [HpcfsPeer(["cache_size=64M,readahead=16M"])]:
        argv, env = peer.command(ctx)
        if isinstance(peer, PyunicoreFusePeer):
            argv = ["python", "-c", "'<authenticate for a persistent secret, then run uftpfuse.main()>'", *argv[3:]]
        shown = " ".join(str(a) for a in argv)
        names = " ".join(sorted(k for k in env if k.startswith(("UFTP", "HPCFS"))))
        lines.append(f"{peer.label}: `{shown}`" + (f" (with {names} in the environment)" if names else ""))
    ports = ctx.site.data_ports
    lines.append(f"at RTT 10 ms the UFTP commands are the same: the server's latency knob is set, and its "
                 f"227/229 replies name the data relay's ports {ports[0] + DATA_PORTS}-{ports[-1] + DATA_PORTS} "
                 f"instead of its own data ports {ports[0]}-{ports[-1]}, so every UFTP client's data goes through "
                 f"the relay; sshfs uses the host alias `bench-rtt10` and rclone `port={ctx.site.proxy.port}`, "
                 "the delay proxy")
    return lines


def markdown(results: Results, facts, ctx: Context, rtts, elapsed: float) -> str:
    sizes = ctx.data.sizes
    lines = [f"Run of {time.strftime('%Y-%m-%d %H:%M %Z')}, {elapsed / 60:.1f} minutes"
             + (" (--quick sizes)" if sizes != FULL else "") + ".", ""]
    lines += [f"- **{key}**: {value}" for key, value in facts.items()]
    lines += ["", f"Data: {sizes.big // MIB:,} MiB random file; {sizes.tree_files:,} files of 100 B in "
              f"{sizes.dirs} directories; {sizes.small_files:,} files of 4 KiB. Random reads: "
              f"{sizes.random_reads:,} on loopback, {sizes.random_reads_rtt:,} at RTT 10 ms. "
              "MB/s = 10^6 bytes/s. Peak = VmHWM of the mount process after the workload; in brackets its VmRSS "
              "right after mounting.", ""]
    header = "| workload | client | " + " | ".join(f"RTT {r} ms | peak MiB (at mount)" for r in rtts) + " |"
    lines += [header, "|" + "---|" * (2 + 2 * len(rtts))]
    notes = []
    for row, client in results.order:
        cells = []
        for rtt in rtts:
            outcome = results.rows.get((row, client, rtt))
            if outcome is None:
                cells += ["-", "-"]
                continue
            text = outcome.text + (f" ({outcome.detail})" if outcome.detail and outcome.value is not None else "")
            cells += [text, f"{outcome.peak_mib:,.0f} ({outcome.start_mib:,.0f})" if outcome.peak_mib else "-"]
            if outcome.requests:
                notes.append(f"- {ROW_LABELS.get(row, row)}, {client}, RTT {rtt} ms: {outcome.requests}")
        lines.append(f"| {ROW_LABELS.get(row, row)} | {client} | " + " | ".join(cells) + " |")
    lines += ["", "Targets (hpcfs against the peers, same run):", "",
              "| target | measured | ratio | required | met |", "|---|---|---|---|---|"]
    for target in targets(results, sizes):
        ratio = f"{target.ratio:.2f}x" if target.ratio is not None else ""
        met = {True: "yes", False: "**no**", None: "n/a"}[target.met]
        lines.append(f"| {target.text} | {target.measured} | {ratio} | {target.required} | {met} |")
    lines += ["", "UFTP server requests (from the local server's request log):", ""] + notes
    lines += ["", "Mount commands:", ""] + [f"- {line}" for line in commands_used(ctx)]
    return "\n".join(lines) + "\n"


def write_doc(path: Path, block: str):
    """Replace the generated block of ``path`` between the bench markers, keeping the text around it."""
    text = path.read_text() if path.exists() else f"# Benchmarks\n\n{DOC_BEGIN}\n{DOC_END}\n"
    if DOC_BEGIN not in text or DOC_END not in text:
        text = text.rstrip("\n") + f"\n\n{DOC_BEGIN}\n{DOC_END}\n"
    before, rest = text.split(DOC_BEGIN, 1)
    after = rest.split(DOC_END, 1)[1]
    path.write_text(f"{before}{DOC_BEGIN}\n{block}{DOC_END}{after}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--peers", default=",".join(PEER_NAMES), help=f"subset of {','.join(PEER_NAMES)}")
    every_workload = [*WORKLOADS, *PROCESS_WORKLOADS]
    parser.add_argument("--workloads", default=",".join(every_workload), help=f"subset of {','.join(every_workload)}")
    parser.add_argument("--rtt", default="0,10", help="round trips in ms to run (0 and/or 10)")
    parser.add_argument("--doc", type=Path, help="write the results into this Markdown file "
                        "(default: docs/benchmarks.md for a full run of everything, none otherwise)")
    args = parser.parse_args(argv)
    # Stopped with kill (or a CI timeout): unwind as on Ctrl-C, so that every mount is unmounted and every
    # server and relay the bench started is stopped on the way out.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    sizes = QUICK if args.quick else FULL
    names = args.peers.split(",")
    peers = [p for p in all_peers() if p.name in names]
    workloads = [w for w in args.workloads.split(",") if w]
    unknown = [w for w in workloads if w not in every_workload]
    rtts = [int(r) for r in args.rtt.split(",")]
    if unknown or any(r not in RTTS for r in rtts):
        parser.error(f"unknown workload or round trip: {unknown or rtts}")
    everything = (not args.quick and set(names) == set(PEER_NAMES) and len(workloads) == len(every_workload)
                  and len(rtts) == 2)
    doc = args.doc or (REPO / "docs" / "benchmarks.md" if everything else None)

    scratch = Path(os.environ.get("HPCFS_BENCH_DIR", "/tmp/hpcfs-bench"))
    try:
        private_directory(scratch)
    except PermissionError as exc:
        print(f"scripts/bench: {exc}", file=sys.stderr)
        return 1
    logs = scratch / "logs"
    logs.mkdir(mode=0o700, exist_ok=True)
    data = DataSet(scratch, sizes)
    data.ensure()
    data.remove_incoming()
    sys.path.insert(0, str(REPO))
    run_dir = Path(tempfile.mkdtemp(prefix="hpcfs-bench-run-"))  # keys and certificates: this run's only
    atexit.register(shutil.rmtree, run_dir, True)
    site = Site(data, run_dir, logs)
    ctx = Context(site, data, scratch, logs)
    results = Results()
    started, load_before = time.monotonic(), os.getloadavg()
    try:
        site.start()
        run(ctx, peers, "pyuftp" in names, [w for w in workloads if w in WORKLOADS], rtts, results)
        if "lines" in workloads:
            line_iteration_rows(ctx, results)
        if "real-uftpd" in workloads:
            real_uftpd_rows(ctx, results)
        if "real-firecrest" in workloads:
            real_firecrest_rows(ctx, results)
        facts = machine_facts()
        facts["ran as"] = ("root: every row (so hpcfs mounts raise their kernel readahead and get 1 MiB FUSE "
                           "requests)" if os.geteuid() == 0 else
                           f"uid {os.geteuid()}, not root: every row (hpcfs mounts get the kernel's 128 KiB "
                           "FUSE requests)")
        facts["load"] = (f"1-minute load average {load_before[0]:.2f} before the run, {os.getloadavg()[0]:.2f} "
                         "after (other work on the machine shows up here)")
        report = markdown(results, facts, ctx, rtts, time.monotonic() - started)
    finally:
        unmount(ctx.mountpoint)
        site.stop()
        data.remove_incoming()
    print()
    print(report)
    if doc:
        write_doc(doc, report)
        print(f"written to {doc}")
    return 0


# -- helpers run as subprocesses ----------------------------------------------------------------------------
def random_reads_main(path, reference, count, seed):
    """``count`` 4 KiB reads at random offsets of ``path``, each compared with ``reference``; prints JSON."""
    count, size = int(count), os.path.getsize(reference)
    rng = random.Random(int(seed))
    offsets = [rng.randrange(0, size - 4096) for _ in range(count)]
    with open(reference, "rb") as ref:
        expected = [os.pread(ref.fileno(), 4096, offset) for offset in offsets]
    fd = os.open(path, os.O_RDONLY)
    try:
        start = time.perf_counter()
        got = [os.pread(fd, 4096, offset) for offset in offsets]
        seconds = time.perf_counter() - start
    finally:
        os.close(fd)
    wrong = sum(1 for a, b in zip(got, expected) if a != b)
    print(json.dumps({"seconds": seconds, "wrong": wrong}))


# Largest chunk a relay reads and forwards at once, and its streams' buffer limit: 1 MiB rather than
# asyncio's 64 KiB default makes the Python relay about five times faster (fewer chunks per byte).
RELAY_CHUNK = 1 << 20
RELAY_READY = b"listening\n"  # what a relay writes to its readiness pipe once it listens on every port


async def _relay(reader, writer, delay: float, window: int):
    """Forward chunks in order, each ``delay`` after it entered the relay.  A chunk enters only while fewer
    than ``window`` bytes are in flight, and stays counted until its acknowledgement would be back (one more
    ``delay`` after it was forwarded), as bytes in a TCP window do: one connection moves at most
    ``window`` per ``2 * delay``, like one TCP stream on a link of that round trip."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    in_flight = 0
    acknowledged = asyncio.Event()

    def acknowledge(size: int):
        nonlocal in_flight
        in_flight -= size
        acknowledged.set()

    async def receive():
        nonlocal in_flight
        while True:
            try:
                data = await reader.read(min(RELAY_CHUNK, window))  # a chunk always fits an empty window
            except ConnectionError:  # a reset ends this direction like an EOF: send() must not wait forever
                data = b""
            while in_flight + len(data) > window:
                acknowledged.clear()
                await acknowledged.wait()
            in_flight += len(data)
            queue.put_nowait((loop.time() + delay, data))
            if not data:
                return

    async def send():
        while True:
            due, data = await queue.get()
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if not data:
                with contextlib.suppress(OSError):
                    writer.write_eof()
                return
            writer.write(data)
            await writer.drain()
            loop.call_later(delay, acknowledge, len(data))

    receiving = asyncio.ensure_future(receive())
    try:
        await send()
    finally:
        receiving.cancel()


async def _proxy(routes: Dict[int, int], delay: float, window: int, ready_fd: int):
    """Relay each listen port to its target port on 127.0.0.1.  A connection from another local user is
    closed unserved: the UFTP server checks the user of each data connection, and through the relay it sees
    only the relay's, so the relay makes the same check for its own user."""
    from hpcfs.servers.common import peer_uid

    async def connection(target_port, client_reader, client_writer):
        route = f"{client_writer.get_extra_info('sockname')[1]} -> {target_port}"
        uid = peer_uid(client_writer.get_extra_info("socket"))
        if uid != os.geteuid():
            print(f"{route}: refused a connection of uid {uid}", flush=True)
            client_writer.close()
            return
        try:
            server_reader, server_writer = await asyncio.open_connection("127.0.0.1", target_port, limit=RELAY_CHUNK)
        except OSError as exc:
            print(f"{route}: target refused ({exc.strerror})", flush=True)
            client_writer.close()
            return
        print(f"{route}: relaying", flush=True)
        for writer in (client_writer, server_writer):
            writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            await asyncio.gather(_relay(client_reader, server_writer, delay, window),
                                 _relay(server_reader, client_writer, delay, window), return_exceptions=True)
        finally:
            for writer in (client_writer, server_writer):
                writer.close()

    servers = [await asyncio.start_server(functools.partial(connection, target), "127.0.0.1", listen,
                                             limit=RELAY_CHUNK)
               for listen, target in routes.items()]
    os.write(ready_fd, RELAY_READY)
    os.close(ready_fd)
    await asyncio.gather(*(server.serve_forever() for server in servers))


def proxy_main(delay_ms, window, ready_fd, *routes):
    """``_proxy DELAY_MS WINDOW_BYTES READY_FD LISTEN:TARGET...``: one relay process, one event loop for every
    route; it writes ``RELAY_READY`` to the file descriptor READY_FD once it listens on every port."""
    sys.path.insert(0, str(REPO))  # the relay checks its clients' user with hpcfs's own helper
    pairs = dict(tuple(int(port) for port in route.split(":")) for route in routes)
    asyncio.run(_proxy(pairs, float(delay_ms) / 1000.0, int(window), int(ready_fd)))


if __name__ == "__main__":
    helpers = {"_proxy": proxy_main, "_randread": random_reads_main}
    if len(sys.argv) > 1 and sys.argv[1] in helpers:
        helpers[sys.argv[1]](*sys.argv[2:])
    else:
        sys.exit(main())
