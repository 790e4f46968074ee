"""The one command: options, then the run (servers up, workloads, report), everything stopped on the way out."""
import argparse
import atexit
import contextlib
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import benchmarks
from benchmarks.context import Context
from benchmarks.dataset import DataSet, private_directory
from benchmarks.disk import copies_directory
from benchmarks.facts import machine_facts, run_facts
from benchmarks.lines import line_iteration_rows
from benchmarks.mounts import unmount
from benchmarks.peers import PEER_NAMES, all_peers
from benchmarks.real_firecrest import real_firecrest_rows
from benchmarks.real_uftpd import real_uftpd_rows
from benchmarks.report import markdown, write_doc
from benchmarks.results import Results
from benchmarks.servers import Site
from benchmarks.settings import FULL, QUICK, REPO, RTTS, Sizes
from benchmarks.workloads import WORKLOADS, run

PROCESS_WORKLOADS = ("real-uftpd", "real-firecrest", "lines")  # rows outside the mount/RTT loop, run once on loopback


def parse_options(argv) -> argparse.Namespace:
    """The command line, checked, with what follows from it: ``sizes``, ``peer_list``, ``workload_list``,
    ``rtt_list`` and ``doc``."""
    parser = argparse.ArgumentParser(prog="scripts/bench", description=benchmarks.__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--peers", default=",".join(PEER_NAMES), help=f"subset of {','.join(PEER_NAMES)}")
    every_workload = [*WORKLOADS, *PROCESS_WORKLOADS]
    parser.add_argument("--workloads", default=",".join(every_workload), help=f"subset of {','.join(every_workload)}")
    parser.add_argument("--rtt", default="0,10", help="round trips in ms to run (0 and/or 10)")
    parser.add_argument("--doc", type=Path, help="write the results into this Markdown file "
                        "(default: docs/benchmarks.md for a full run of everything, none otherwise)")
    parser.add_argument("--copy-dir", type=Path, default=Path(os.environ.get("HPCFS_BENCH_COPY_DIR") or os.getcwd()),
                        help="copies to local disk land in a fresh private directory made here, as a user's copy "
                        "lands beside the working directory (default: $HPCFS_BENCH_COPY_DIR, else the directory "
                        "the bench runs in; scripts/bench runs in the checkout)")
    args = parser.parse_args(argv)
    args.sizes = QUICK if args.quick else FULL
    names = args.peers.split(",")
    args.peer_list = [p for p in all_peers() if p.name in names]
    args.with_pyuftp = "pyuftp" in names
    args.workload_list = [w for w in args.workloads.split(",") if w]
    unknown = [w for w in args.workload_list if w not in every_workload]
    args.rtt_list = [int(r) for r in args.rtt.split(",")]
    if unknown or any(r not in RTTS for r in args.rtt_list):
        parser.error(f"unknown workload or round trip: {unknown or args.rtt_list}")
    everything = (not args.quick and set(names) == set(PEER_NAMES)
                  and len(args.workload_list) == len(every_workload) and len(args.rtt_list) == 2)
    args.doc = args.doc or (REPO / "docs" / "benchmarks.md" if everything else None)
    return args


class SetupFailed(Exception):
    """The scratch or copies directory cannot be used; the message says why."""


@contextlib.contextmanager
def bench_context(sizes: Sizes, copy_dir: Path) -> Iterator[Context]:
    """A run's private scratch directory, data set, copies directory and servers (not started yet); on the
    way out every mount is unmounted, every server stopped and every written file removed."""
    scratch = Path(os.environ.get("HPCFS_BENCH_DIR", "/tmp/hpcfs-bench"))
    try:
        private_directory(scratch)
    except PermissionError as exc:
        raise SetupFailed(str(exc)) from None
    logs = scratch / "logs"
    logs.mkdir(mode=0o700, exist_ok=True)
    try:
        copies = copies_directory(copy_dir)
    except OSError as exc:
        raise SetupFailed(f"no directory for the copies to local disk in {copy_dir}: {exc}") from None
    atexit.register(shutil.rmtree, copies, True)
    data = DataSet(scratch, sizes)
    data.ensure()
    data.remove_incoming()
    sys.path.insert(0, str(REPO))
    run_dir = Path(tempfile.mkdtemp(prefix="hpcfs-bench-run-"))  # keys and certificates: this run's only
    atexit.register(shutil.rmtree, run_dir, True)
    ctx = Context(Site(data, run_dir, logs), data, scratch, logs, copies)
    try:
        yield ctx
    finally:
        unmount(ctx.mountpoint)
        ctx.site.stop()
        data.remove_incoming()
        shutil.rmtree(copies, ignore_errors=True)


def stop_on_sigterm():
    """Stopped with kill (or a CI timeout): unwind as on Ctrl-C, so that every mount is unmounted and every
    server and relay the bench started is stopped on the way out."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


def main(argv=None):
    args = parse_options(argv)
    stop_on_sigterm()
    try:
        with bench_context(args.sizes, args.copy_dir) as ctx:
            report = measure(ctx, args)
    except SetupFailed as exc:
        print(f"scripts/bench: {exc}", file=sys.stderr)
        return 1
    print()
    print(report)
    if args.doc:
        write_doc(args.doc, report)
        print(f"written to {args.doc}")
    return 0


def measure(ctx: Context, args: argparse.Namespace) -> str:
    """Start the servers, run the chosen workloads; the report."""
    results = Results()
    started, load_before = time.monotonic(), os.getloadavg()
    ctx.site.start()
    workloads = args.workload_list
    run(ctx, args.peer_list, args.with_pyuftp, [w for w in workloads if w in WORKLOADS], args.rtt_list, results)
    if "lines" in workloads:
        line_iteration_rows(ctx, results)
    if "real-uftpd" in workloads:
        real_uftpd_rows(ctx, results)
    if "real-firecrest" in workloads:
        real_firecrest_rows(ctx, results)
    facts = {**machine_facts(), **run_facts(load_before)}
    return markdown(results, facts, ctx, args.rtt_list, time.monotonic() - started)
