"""Where the time goes: ``python -m benchmarks.profile [--quick]``.

Against the bench's local UFTP server, on loopback, hpcfs mounts the served tree and runs three workloads:
a sequential read (``dd bs=1M`` to /dev/null), 4 KiB random reads (``benchmarks.randread``) and a write into
the mount (``dd bs=1M`` from the big file, timed to the end of ``close``); sshfs runs the random reads too.
Every workload runs twice, each time on a fresh mount:

- traced: ``strace -c -f -p`` on the mount process and on the server (the local UFTP server is this very
  process; for sshfs, its ``ssh`` client, the ``sshd`` session and ``sftp-server``), and the UFTP server's
  commands from its request log;
- sampled: the processes' CPU time from ``/proc/PID/stat``, and ``py-spy record --gil --nonblocking``
  on the mount and on this process (the server), which sees the FUSE callbacks libfuse runs on its own C threads,
  where cProfile sees nothing.  Without py-spy (``pip install -r requirements/bench.txt``) only the CPU
  times are shown.

Everything is printed per MiB moved (per read for random reads), so that the counts do not depend on how
busy the machine is; times are shares.  Markdown on standard output."""
import argparse
import contextlib
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Tuple

from benchmarks.checks import check_dd_count
from benchmarks.cli import SetupFailed, bench_context, stop_on_sigterm
from benchmarks.context import Context
from benchmarks.mounts import Mounted
from benchmarks.peers import HpcfsPeer, Peer, SshfsPeer
from benchmarks.processes import Failed, run_timed
from benchmarks.settings import FULL, MIB, QUICK, REPO
from benchmarks.workloads import random_read

PY_SPY = Path(sys.executable).with_name("py-spy")  # requirements/bench.txt, in the bench's own venv
SAMPLE_RATE = 1000  # py-spy samples a second: the GIL is held for short spells, and few samples say little
TOP_SYSCALLS, TOP_FUNCTIONS = 8, 15
TOOL_START_LIMIT = 30.0  # seconds for strace or py-spy to attach
# Below every thread's stack: in the cumulative list they would only crowd out the functions that say something.
THREAD_FRAMES = {f"Thread.{name} (threading.py)" for name in ("_bootstrap", "_bootstrap_inner", "run")}


@dataclass
class Workload:
    title: str
    unit: str  # what the counts are divided by: "MiB" or "read"
    units: int  # how many of them one run moves
    run: Callable[[Mounted, Context, Peer], str]  # runs it on a mount; a line saying what it did


@dataclass
class Measured:
    """One workload, one client: what its traced and its sampled run saw."""

    summary: List[str] = field(default_factory=list)
    syscalls: Dict[str, List["SyscallRow"]] = field(default_factory=dict)  # process -> strace -c rows
    commands: Counter = field(default_factory=Counter)  # UFTP server commands
    ranged: int = 0  # bytes the RANG commands named
    cpu: Dict[str, Tuple[float, float]] = field(default_factory=dict)  # process -> (user, system) seconds
    samples: Dict[str, Counter] = field(default_factory=dict)  # process -> py-spy stack -> samples


@dataclass
class SyscallRow:
    name: str
    calls: int
    seconds: float  # system time in the call, as strace -c counts it


# -- the workloads -------------------------------------------------------------------------------------------------
def sequential_read(mib: int) -> Workload:
    def run(mount: Mounted, ctx: Context, peer: Peer) -> str:
        report = ctx.scratch / "dd.err"
        with open(report, "wb") as err:
            seconds = run_timed(["dd", f"if={mount.path / 'big.bin'}", "of=/dev/null", "bs=1M", f"count={mib}"],
                                peer.limit("seq-read"), stderr=err)
        check_dd_count(report, mib * MIB)
        return f"{mib * MIB / seconds / 1e6:,.0f} MB/s ({seconds:.2f} s)"
    return Workload(f"sequential read of {mib} MiB (dd bs=1M to /dev/null)", "MiB", mib, run)


def random_reads(count: int) -> Workload:
    def run(mount: Mounted, ctx: Context, peer: Peer) -> str:
        outcome = random_read(mount, ctx, peer, ctx.site.requests())["random-read"]
        if outcome.value is None:
            raise Failed(outcome.text)
        return f"{outcome.text} ({outcome.detail})"
    return Workload(f"{count:,} random 4 KiB reads (benchmarks.randread)", "read", count, run)


def write(mib: int) -> Workload:
    def run(mount: Mounted, ctx: Context, peer: Peer) -> str:
        target = mount.path / ctx.data.incoming(peer.name).name / "big.bin"
        report = ctx.scratch / "dd.err"
        with open(report, "wb") as err:  # dd returns after close(), i.e. after hpcfs's upload at flush
            seconds = run_timed(["dd", f"if={ctx.data.big}", f"of={target}", "bs=1M", f"count={mib}"],
                                peer.limit("write"), stderr=err)
        check_dd_count(report, mib * MIB)
        return f"{mib * MIB / seconds / 1e6:,.0f} MB/s ({seconds:.2f} s)"
    return Workload(f"write of {mib} MiB into the mount (dd bs=1M from the big file, to the end of close)",
                    "MiB", mib, run)


# -- the processes and the tools on them --------------------------------------------------------------------------
def children(pid: int) -> List[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        with contextlib.suppress(OSError):
            found += [int(child) for child in task.read_text().split()]
    return found


def descendant_named(pid: int, comm: str) -> Optional[int]:
    for child in children(pid):
        with contextlib.suppress(OSError):
            if Path(f"/proc/{child}/comm").read_text().strip() == comm:
                return child
        found = descendant_named(child, comm)
        if found:
            return found
    return None


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def process_running(needle: str) -> Optional[int]:
    """The process whose command line names ``needle`` (sshfs's ssh client leaves sshfs's process tree)."""
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            if entry.name.isdigit() and needle.encode() in (entry / "cmdline").read_bytes():
                return int(entry.name)
    return None


def processes_of(mount: Mounted, ctx: Context, peer: Peer) -> Dict[str, int]:
    """The processes whose work a workload is: the client's and the server's.  For sshfs the SSH
    encryption runs in two more: the ``ssh`` client and the ``sshd`` session above ``sftp-server``."""
    if peer.protocol == "uftp":
        return {"mount": mount.process.pid, "server": os.getpid()}  # the local UFTP server runs in here
    sshd = ctx.site.sshd.process
    sftp_server = descendant_named(sshd.pid, "sftp-server") if sshd else None
    ssh = process_running(f"-F{ctx.site.ssh_config}")  # as sshfs passes its -F on to ssh
    if sftp_server is None or ssh is None:
        raise Failed("found no sftp-server or ssh client of the sshfs mount")
    return {"mount": mount.process.pid, "ssh client": ssh, "sshd session": parent_of(sftp_server),
            "server": sftp_server}


def cpu_seconds(pid: int) -> Tuple[float, float]:
    """User and system CPU seconds of every thread of ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / ticks, int(fields[12]) / ticks


@contextlib.contextmanager
def attached(argv: List[str], ready: str, log: Path) -> Iterator[None]:
    """Run a tool that attaches to a process (strace, py-spy) until the block ends, then stop it with SIGINT,
    on which both write what they collected.  The block starts once the tool said ``ready``."""
    with open(log, "wb") as err:
        tool = subprocess.Popen(argv, stdout=err, stderr=err, start_new_session=True)  # py-spy talks on stdout
    try:
        deadline = time.monotonic() + TOOL_START_LIMIT
        while ready not in log.read_text(errors="replace"):
            if tool.poll() is not None or time.monotonic() > deadline:
                raise Failed(f"{argv[0]} did not start: {log.read_text(errors='replace').strip()[-200:]}")
            time.sleep(0.05)
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            tool.send_signal(signal.SIGINT)
        try:
            tool.wait(60)
        except subprocess.TimeoutExpired:
            tool.kill()
            tool.wait()


@contextlib.contextmanager
def all_attached(tools: List[Tuple[List[str], str, Path]]) -> Iterator[None]:
    with contextlib.ExitStack() as stack:
        for argv, ready, log in tools:
            stack.enter_context(attached(argv, ready, log))
        yield


def parse_strace_summary(text: str) -> List[SyscallRow]:
    """The rows of ``strace -c``: ``% time  seconds  usecs/call  calls  [errors]  syscall``."""
    rows = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 5 and re.fullmatch(r"[\d.]+", parts[0]) and parts[-1] != "total":
            rows.append(SyscallRow(parts[-1], int(parts[3]), float(parts[1])))
    return rows


def parse_raw_stacks(text: str) -> Counter:
    """py-spy's ``--format raw``: one ``frame;frame;... COUNT`` line per distinct stack."""
    stacks: Counter = Counter()
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stacks[stack] += int(count)
    return stacks


def ranged_bytes(detail: str) -> int:
    """The length of a ``RANG start end`` (``1 0``, a reset, names none)."""
    start, end = (int(token) for token in detail.split()[:2])
    return max(end - start, 0)


# -- the two runs of a workload ------------------------------------------------------------------------------------
def traced(workload: Workload, peer: Peer, ctx: Context, measured: Measured):
    """strace -c on every process of the workload, and the UFTP server's commands."""
    with peer.mounted(ctx) as mount:
        pids = processes_of(mount, ctx, peer)
        outputs = {name: ctx.scratch / f"strace-{name}.txt" for name in pids}
        # --detach-on=execve: the workload's commands, forked by this process (the server's), are not counted
        tools = [(["strace", "-c", "-f", "--detach-on=execve", "-o", str(outputs[name]), "-p", str(pid)], "attached",
                  ctx.scratch / f"strace-{name}.log") for name, pid in pids.items()]
        window = ctx.site.requests()
        with all_attached(tools):
            measured.summary.append(f"under strace: {workload.run(mount, ctx, peer)}")
        measured.commands = Counter(kind for kind, _ in window.made())
        measured.ranged = sum(ranged_bytes(detail) for kind, detail in window.made() if kind == "RANG")
    measured.syscalls = {name: parse_strace_summary(path.read_text()) for name, path in outputs.items()}
    ctx.data.remove_incoming()


def sampled(workload: Workload, peer: Peer, ctx: Context, measured: Measured):
    """CPU seconds of every process of the workload and, with py-spy, where the Python ones spent them."""
    with peer.mounted(ctx) as mount:
        pids = processes_of(mount, ctx, peer)
        python = list(pids) if peer.protocol == "uftp" and PY_SPY.exists() else []  # sshfs's processes are C
        outputs = {name: ctx.scratch / f"py-spy-{name}.txt" for name in python}
        # --gil: only the thread holding the GIL, so that samples are time in the interpreter (without it,
        # py-spy counts threads blocked in recv as running, more thread-seconds than the CPU time)
        tools = [([str(PY_SPY), "record", "--nonblocking", "--gil", "--format", "raw", "--rate", str(SAMPLE_RATE),
                   "-o", str(outputs[name]), "-p", str(pids[name])], "Sampling process",
                  ctx.scratch / f"py-spy-{name}.log") for name in python]
        with all_attached(tools):
            before = {name: cpu_seconds(pid) for name, pid in pids.items()}
            commands_before = resource.getrusage(resource.RUSAGE_CHILDREN)
            measured.summary.append(f"sampled: {workload.run(mount, ctx, peer)}")
            commands_after = resource.getrusage(resource.RUSAGE_CHILDREN)
            after = {name: cpu_seconds(pid) for name, pid in pids.items()}
    measured.cpu = {name: (after[name][0] - before[name][0], after[name][1] - before[name][1]) for name in pids}
    # the workload's own command (dd, the random reader): the only child reaped during the run
    measured.cpu["dd or reader"] = (commands_after.ru_utime - commands_before.ru_utime,
                                    commands_after.ru_stime - commands_before.ru_stime)
    measured.samples = {name: parse_raw_stacks(path.read_text()) for name, path in outputs.items() if path.exists()}
    if "server" in measured.samples:  # this process: the profiler's own thread is not the server's work
        measured.samples["server"] = Counter({stack: n for stack, n in measured.samples["server"].items()
                                              if "(benchmarks/" not in stack})
    ctx.data.remove_incoming()


# -- the report ---------------------------------------------------------------------------------------------------
def per(value: float, units: int) -> str:
    share = value / units
    if share == 0:
        return "0"
    return f"{share:,.0f}" if share >= 100 else f"{share:,.2f}" if share >= 0.1 else f"{share:.3f}"


def syscall_table(rows: List[SyscallRow], workload: Workload) -> List[str]:
    """The top syscalls by count and by time, with their counts per unit and their shares."""
    calls, seconds = sum(r.calls for r in rows) or 1, sum(r.seconds for r in rows) or 1.0
    by_count = sorted(rows, key=lambda r: -r.calls)[:TOP_SYSCALLS]
    by_time = sorted(rows, key=lambda r: -r.seconds)[:TOP_SYSCALLS]
    shown = by_count + [r for r in by_time if r not in by_count]
    lines = [f"| syscall | calls | per {workload.unit} | share of calls | share of syscall time |",
             "|---|---|---|---|---|"]
    lines += [f"| {r.name} | {r.calls:,} | {per(r.calls, workload.units)} | {r.calls / calls:.0%} | "
              f"{r.seconds / seconds:.0%} |" for r in shown]
    lines.append(f"| all ({len(rows)} kinds) | {sum(r.calls for r in rows):,} | "
                 f"{per(sum(r.calls for r in rows), workload.units)} | | |")
    return lines


def function_of(frame: str) -> str:
    """``name (file:line)`` -> ``name (file)``, so that a function's lines count as one."""
    return re.sub(r":\d+\)$", ")", frame)


def function_table(stacks: Counter, workload: Workload) -> List[str]:
    """The top functions by self and by cumulative samples (a function counts once per sample)."""
    total = sum(stacks.values()) or 1
    own: Counter = Counter()
    cumulative: Counter = Counter()
    for stack, count in stacks.items():
        functions = [function_of(frame) for frame in stack.split(";")]
        own[functions[-1]] += count
        for function in set(functions):
            cumulative[function] += count
    by_self = [name for name, _ in own.most_common(TOP_FUNCTIONS)]
    by_cumulative = [name for name, _ in cumulative.most_common(TOP_FUNCTIONS + len(THREAD_FRAMES))
                     if name not in by_self and name not in THREAD_FRAMES][:TOP_FUNCTIONS]
    lines = ["| function | self | cumulative | self, per unit |", "|---|---|---|---|"]
    lines += [f"| `{name}` | {own[name] / total:.0%} | {cumulative[name] / total:.0%} | "
              f"{cpu_per(own[name] / SAMPLE_RATE, workload)} |" for name in by_self + by_cumulative]
    return lines


def cpu_per(seconds: float, workload: Workload) -> str:
    """Seconds of CPU as microseconds per read or milliseconds per MiB."""
    if workload.unit == "read":
        return f"{per(seconds * 1e6, workload.units)} us per read"
    return f"{per(seconds * 1e3, workload.units)} ms per MiB"


def cpu_line(measured: Measured, workload: Workload) -> str:
    return "CPU time: " + "; ".join(f"{name} {cpu_per(user, workload)} user + {cpu_per(system, workload)} system"
                                    for name, (user, system) in measured.cpu.items())


def section(label: str, workload: Workload, measured: Measured) -> List[str]:
    lines = [f"### {workload.title}: {label}", ""]
    lines += [f"- {line}" for line in measured.summary]
    if measured.cpu:
        lines.append(f"- {cpu_line(measured, workload)}")
    if measured.commands:
        counts = ", ".join(f"{per(n, workload.units)} {kind}" for kind, n in measured.commands.most_common())
        lines.append(f"- server commands per {workload.unit}: {counts} ({sum(measured.commands.values()):,} in all)")
    if measured.ranged:
        size = "KiB" if workload.unit == "read" else "MiB"
        scale = 1024 if workload.unit == "read" else MIB
        named = per(measured.ranged / scale, workload.units)
        lines.append(f"- bytes named by RANG per {workload.unit}: {named} {size}")
    for name, rows in measured.syscalls.items():
        lines += ["", f"Syscalls of the {name} process (`strace -c -f`):", ""] + syscall_table(rows, workload)
    for name, stacks in measured.samples.items():
        seconds = sum(stacks.values()) / SAMPLE_RATE
        lines += ["", f"Python of the {name} process (`py-spy --gil`, {SAMPLE_RATE}/s, the thread holding the GIL: "
                  f"{seconds:.2f} s, {cpu_per(seconds, workload)}):", ""]
        lines += function_table(stacks, workload)
    return lines + [""]


# -- the run ------------------------------------------------------------------------------------------------------
def plan(quick: bool) -> List[Tuple[Workload, List[Peer]]]:
    mib = 16 if quick else 256
    sizes = QUICK if quick else FULL
    # sshfs: the peer that met the random-read goal; scripts/install --bench installs it
    random_peers: List[Peer] = [HpcfsPeer(), *([SshfsPeer()] if shutil.which("sshfs") else [])]
    return [(sequential_read(mib), [HpcfsPeer()]), (random_reads(sizes.random_reads), random_peers),
            (write(mib), [HpcfsPeer()])]


def facts(load_before: Tuple[float, ...]) -> List[str]:
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    tools = "strace and py-spy" if PY_SPY.exists() else "strace (py-spy not installed: no Python profile)"
    return [f"- commit {commit or 'unknown'}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
            f"{os.cpu_count()} cores; {tools}",
            f"- 1-minute load average {load_before[0]:.2f} before, {os.getloadavg()[0]:.2f} after"]


def profile(ctx: Context, quick: bool) -> str:
    load_before = os.getloadavg()
    ctx.site.start()
    lines: List[str] = []
    for workload, peers in plan(quick):
        for peer in peers:
            print(f"{workload.title}: {peer.label} ...", file=sys.stderr, flush=True)
            measured = Measured()
            traced(workload, peer, ctx, measured)
            sampled(workload, peer, ctx, measured)
            lines += section(peer.label, workload, measured)
    return "\n".join(facts(load_before) + [""] + lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="16 MiB and 300 reads instead of 256 MiB and 2,000")
    args = parser.parse_args(argv)
    if not shutil.which("strace"):
        print("benchmarks.profile: needs strace (apt-get install strace)", file=sys.stderr)
        return 1
    stop_on_sigterm()
    try:
        with bench_context(QUICK if args.quick else FULL, Path(tempfile.gettempdir())) as ctx:
            report = profile(ctx, args.quick)
    except SetupFailed as exc:
        print(f"benchmarks.profile: {exc}", file=sys.stderr)
        return 1
    print()
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
