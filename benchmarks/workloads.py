"""The workloads on a mount (sequential and random reads, ``ls -lR``, writes, ``cp -r``), each on a fresh
mount of every peer at every round trip, and the loop that runs them."""
import contextlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from benchmarks.checks import check_dd_count, compare_paths, run_checked
from benchmarks.context import Context
from benchmarks.disk import filesystem_of, read_sink
from benchmarks.peers import HpcfsPeer, Peer
from benchmarks.processes import Failed, run_timed
from benchmarks.pyuftp import pyuftp_transfer
from benchmarks.results import Outcome, Results, describe_requests, listing_counts, rate
from benchmarks.settings import HPCFS_CODE


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
    check_dd_count(report, size)
    outcome = rate(size, seconds)
    if peer.protocol == "uftp":
        outcome.requests = describe_requests(window.made())
    return {"seq-read": outcome}


def random_read(mount, ctx, peer, window):
    count = ctx.data.sizes.random_reads if ctx.site.rtt == 0 else ctx.data.sizes.random_reads_rtt
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.randread", str(mount.path / "big.bin"), str(ctx.data.big), str(count), "5"],
        capture_output=True, text=True, timeout=peer.limit("random-read") + 10, env={**os.environ, **HPCFS_CODE})
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


def row_sink(ctx: Context, row: str) -> str:
    """The filesystem a mount workload's row wrote its bytes to; nothing for rows that keep none."""
    served = f"the served tree, {filesystem_of(ctx.data.root)}"
    return {"seq-read": filesystem_of(read_sink()), "write": served, "cp-r-in": served,
            "cp-r-out": filesystem_of(ctx.scratch)}.get(row, "")


WORKLOADS = {  # name -> (function, rows it fills)
    "seq-read": (seq_read, ["seq-read"]),
    "random-read": (random_read, ["random-read"]),
    "ls": (list_tree, ["ls-cold", "ls-warm"]),
    "write": (write_big, ["write"]),
    "cp-r": (copy_small, ["cp-r-in", "cp-r-out"]),
}


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
                    outcome.sink = row_sink(ctx, row)
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
                outcome.sink = row_sink(ctx, name)
                results.put(name, bounded.label, rtt, outcome)
                print(outcome.text, flush=True)
