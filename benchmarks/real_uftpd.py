"""Rows against the real UFTPD (``../shared/peers``): the big file copied by ``pyuftp cp``, ``hpcfs cp`` and an
``hpcfs mount`` to local disk (idle, then kept busy by another writer) and to /dev/null."""
import os
import pwd
import shutil
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Dict

from benchmarks.checks import check_dd_count, sha256_of
from benchmarks.context import Context
from benchmarks.copies import copy_on_busy_disk, timed_checked_copy, timed_checked_upload
from benchmarks.disk import BUSY_WRITER_MIB, DEV_NULL, filesystem_of, room_for_busy_copies
from benchmarks.kit import real_peer_env
from benchmarks.mounts import mount_process
from benchmarks.processes import Failed, env_for, run_timed
from benchmarks.pyuftp import PYUFTP_TIMED, data_phase
from benchmarks.results import Outcome, Results, rate
from benchmarks.settings import FULL, HPCFS, HPCFS_CODE, PEER_VENV

REAL_ROW = "real-uftpd-read"  # to local disk, nothing else writing to it
DEVNULL_ROW = "real-uftpd-devnull"
BUSY_ROW = "real-uftpd-busy"  # to local disk while a BusyWriter writes to it
TRANSFORMED_ROW = "real-uftpd-transformed"  # compressed or multi-stream data, to local disk
ENCRYPTED_ROW = "real-uftpd-encrypted-upload"  # encrypted data, from local disk
# client -> (pyuftp's flags, hpcfs's URL query)
TRANSFORMS = {"compressed": (("-C",), "compress=1"), "4 streams": (("-n", "4"), "streams=4")}
BUSY_ROUNDS = 3  # busy-disk copies of each client (--quick: 1), the order alternated from round to round


@dataclass
class Served:
    """The big file in the real UFTPD's data directory (``directory/big.bin``), and how clients reach it."""

    env: Dict[str, str]  # ``real-uftpd env``
    directory: Path
    expected: str  # its sha256

    @property
    def client_env(self) -> Dict[str, str]:
        return {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, **self.env}

    def copy_command(self, client: str, transform: str = ""):
        """``argv(OUT)`` of ``pyuftp cp`` or ``hpcfs cp`` of the file to OUT, with a ``TRANSFORMS`` key's
        data transform."""
        flags, query = TRANSFORMS.get(transform, ((), ""))
        server_path = f"{self.env['UFTP_AUTH_URL']}:{self.directory / 'big.bin'}"
        if client.startswith("pyuftp cp"):
            return lambda out: [str(PEER_VENV / "bin" / "python"), "-c", PYUFTP_TIMED, "cp", "-P",
                                *flags, server_path, str(out)]
        url = "uftp://" + server_path.split("://", 1)[1] + (f"?{query}" if query else "")
        return lambda out: [str(HPCFS), "cp", url, str(out)]

    def mounted(self, ctx: Context, options=()):
        url = f"uftp://{self.env['UFTP_AUTH_URL'].split('://', 1)[1]}:{self.directory}"
        argv = [str(HPCFS), "mount", "--foreground", url, str(ctx.mountpoint), *options]
        return mount_process(argv, {**self.client_env, **HPCFS_CODE}, ctx.mountpoint,
                             ctx.logs / "hpcfs-real-uftpd.log")


def real_uftpd_rows(ctx: Context, results: Results):
    """The big file from the real UFTPD: to local disk by hpcfs's mount (``cat``), ``hpcfs cp`` and ``pyuftp
    cp``; to /dev/null; to local disk kept busy by another writer.  One copy after the other in one run, each
    copy's bytes checked after its timed part."""
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
        served = Served(env, directory, sha256_of(source))
        idle_disk_rows(ctx, results, served)
        transformed_rows(ctx, results, served)
        encrypted_upload_rows(ctx, results, served)
        dev_null_rows(ctx, results, served)
        busy_disk_rows(ctx, results, served)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def idle_disk_rows(ctx: Context, results: Results, served: Served):
    for client in ("pyuftp cp", "hpcfs cp"):
        outcome = timed_checked_copy(ctx, served.copy_command(client), env_for(client, served.client_env),
                                     served.expected)
        results.put(REAL_ROW, client, 0, outcome)
        if client == "pyuftp cp":
            results.put(REAL_ROW, "pyuftp cp (data phase)", 0, pyuftp_data_phase(ctx, outcome))
    results.put(REAL_ROW, "hpcfs mount (cat)", 0, mounted_real_copy(ctx, served))
    results.put(REAL_ROW, "hpcfs mount -o direct_io (cat)", 0, mounted_real_copy(ctx, served, ["-o", "direct_io"]))


def transformed_rows(ctx: Context, results: Results, served: Served):
    """The same copy with the data gzipped or over 4 TCP streams of one session, each client as its users ask."""
    for transform in TRANSFORMS:
        for client in ("pyuftp cp", "hpcfs cp"):
            outcome = timed_checked_copy(ctx, served.copy_command(client, transform),
                                         env_for(client, served.client_env), served.expected)
            results.put(TRANSFORMED_ROW, f"{client} ({transform})", 0, outcome)


def encrypted_upload_rows(ctx: Context, results: Results, served: Served):
    """The big file uploaded with its data AES-256-encrypted (``pyuftp cp -E``, ``hpcfs cp ...?encrypt=1``).
    Uploads, because pyuftp 1.1.1 cannot download encrypted data: it drops its decrypting reader
    (``pyuftp/uftp.py:261``) and writes the ciphertext."""
    incoming = served.directory / "incoming"
    incoming.mkdir()
    nobody = pwd.getpwnam("nobody")  # UFTPD's sessions run as nobody: the directory must be theirs to write
    os.chown(incoming, nobody.pw_uid, nobody.pw_gid)
    env = {**served.client_env, "UFTP_ENCRYPTION_ALGORITHM": "AES"}
    remote = f"{served.env['UFTP_AUTH_URL']}:{incoming}"
    commands = {
        "pyuftp cp (encrypted)": lambda name: [str(PEER_VENV / "bin" / "python"), "-c", PYUFTP_TIMED, "cp", "-P", "-E",
                                               str(ctx.data.big), f"{remote}/{name}"],
        "hpcfs cp (encrypted)": lambda name: [str(HPCFS), "cp", str(ctx.data.big),
                                              f"uftp://{remote.split('://', 1)[1]}/{name}?encrypt=1"],
    }
    for client, argv in commands.items():
        name = f"up-{client.split()[0]}.bin"
        outcome = timed_checked_upload(argv(name), env_for(client, env), incoming / name, served.expected,
                                       ctx.data.sizes.big)
        results.put(ENCRYPTED_ROW, client, 0, outcome)
        (incoming / name).unlink(missing_ok=True)


def pyuftp_data_phase(ctx: Context, whole: Outcome) -> Outcome:
    """pyuftp's data phase alone (its stopwatch line): what the mount row, timed on a mounted tree,
    compares with."""
    try:
        if whole.value is None:
            raise Failed("no data phase measured")
        seconds, _ = data_phase(ctx.scratch / "real-copy.err")
    except Failed:
        return Outcome.failed("no data phase measured", whole.sink)
    return rate(ctx.data.sizes.big, seconds, f"{seconds:.2f} s of the command above", whole.sink)


def mounted_real_copy(ctx: Context, served: Served, options=()) -> Outcome:
    try:
        with served.mounted(ctx, options):
            return timed_checked_copy(ctx, lambda out: ["cp", str(ctx.mountpoint / "big.bin"), str(out)], None,
                                      served.expected)
    except Failed as exc:
        return Outcome.failed(str(exc), filesystem_of(ctx.copies))


# -- to /dev/null -----------------------------------------------------------------------------------------
def dev_null_rows(ctx: Context, results: Results, served: Served):
    """The same file to /dev/null, a row of its own: the clients without a disk behind them.  Nothing is kept
    to hash, so the bytes are counted (pyuftp's data phase, dd's report); the disk rows check their sha256."""
    size, sink = ctx.data.sizes.big, filesystem_of(DEV_NULL)
    try:
        with open(ctx.scratch / "real-copy.err", "wb") as err:  # "-": to stdout, which is /dev/null
            seconds = run_timed(served.copy_command("pyuftp cp")("-"), 240, env=served.client_env, cwd=ctx.scratch,
                                stderr=err)
        phase, moved = data_phase(ctx.scratch / "real-copy.err")
        if moved != size:
            raise Failed(f"pyuftp moved {moved} bytes of {size:,}")
    except Failed as exc:
        for client in ("pyuftp cp", "pyuftp cp (data phase)"):
            results.put(DEVNULL_ROW, client, 0, Outcome.failed(str(exc), sink))
    else:
        results.put(DEVNULL_ROW, "pyuftp cp", 0,
                    rate(size, seconds, f"{seconds:.2f} s, whole command, {size:,} bytes counted", sink))
        results.put(DEVNULL_ROW, "pyuftp cp (data phase)", 0,
                    rate(size, phase, f"{phase:.2f} s of the command above", sink))
    results.put(DEVNULL_ROW, "hpcfs mount (dd bs=1M)", 0, mounted_to_null(ctx, served))


def mounted_to_null(ctx: Context, served: Served) -> Outcome:
    """``dd bs=1M`` of the file from a fresh ``hpcfs mount`` to /dev/null, timed on the mounted tree."""
    size, sink = ctx.data.sizes.big, filesystem_of(DEV_NULL)
    report = ctx.scratch / "dd.err"
    try:
        with served.mounted(ctx), open(report, "wb") as err:
            seconds = run_timed(["dd", f"if={ctx.mountpoint / 'big.bin'}", f"of={DEV_NULL}", "bs=1M"], 240,
                                stderr=err)
        check_dd_count(report, size)
    except Failed as exc:
        return Outcome.failed(str(exc), sink)
    return rate(size, seconds, f"{seconds:.2f} s on the mounted tree, dd's count of {size:,} bytes checked", sink)


# -- to a busy disk ---------------------------------------------------------------------------------------
def busy_disk_rows(ctx: Context, results: Results, served: Served):
    """``hpcfs cp`` and ``pyuftp cp`` to local disk while another writer keeps that disk busy: ``dd`` of
    2,000 MiB with ``conv=fsync`` into the copies directory, started 1 s before each copy.  The clients take
    turns, the order alternated from round to round; the row's rate is the median copy's, whole commands;
    each copy's sha256 is checked after its timed part, once the writer is done."""
    clients = ["hpcfs cp", "pyuftp cp"]
    sink = f"{filesystem_of(ctx.copies)}, busy"
    problem = room_for_busy_copies(ctx.copies, ctx.data.sizes.big)
    if problem:
        for client in clients:
            results.put(BUSY_ROW, client, 0, Outcome.failed(problem, sink))
        return
    rounds = BUSY_ROUNDS if ctx.data.sizes == FULL else 1
    times: Dict[str, list] = {client: [] for client in clients}
    outlasted = dict.fromkeys(clients, 0)  # copies during which the writer never stopped
    failures: Dict[str, str] = {}
    for index in range(rounds):
        for client in clients if index % 2 == 0 else clients[::-1]:
            if client in failures:
                continue
            try:
                seconds, busy_throughout = copy_on_busy_disk(ctx, served.copy_command(client),
                                                             env_for(client, served.client_env), served.expected)
            except Failed as exc:
                failures[client] = str(exc)
                continue
            times[client].append(seconds)
            outlasted[client] += busy_throughout
    for client in clients:
        if client in failures:
            results.put(BUSY_ROW, client, 0, Outcome.failed(failures[client], sink))
            continue
        detail = (f"median of {', '.join(f'{s:.2f}' for s in times[client])} s, whole commands, order "
                  f"alternated; writer ({BUSY_WRITER_MIB:,} MiB, conv=fsync) still writing at the end of "
                  f"{outlasted[client]} of {rounds}; sha256 checked")
        results.put(BUSY_ROW, client, 0, rate(ctx.data.sizes.big, statistics.median(times[client]), detail, sink))
