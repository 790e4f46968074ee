"""The report: the Markdown table of a run, its targets and commands, and the generated block of
docs/benchmarks.md."""
import time
from pathlib import Path
from typing import List

from benchmarks.context import Context
from benchmarks.disk import filesystem_of, read_sink
from benchmarks.peers import HpcfsPeer, PyunicoreFusePeer, all_peers
from benchmarks.results import ROW_LABELS, Results
from benchmarks.settings import DATA_PORTS, FULL, MIB
from benchmarks.targets import targets

DOC_BEGIN, DOC_END = "<!-- bench:begin -->", "<!-- bench:end -->"


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


def written_to(ctx: Context) -> str:
    """The directories the rows wrote to, and their filesystems."""
    return (f"copies to local disk in {ctx.copies} ({filesystem_of(ctx.copies)}); the mount rows' sequential "
            f"reads to {read_sink()} ({filesystem_of(read_sink())}); writes into a mount to the served tree "
            f"{ctx.data.root} ({filesystem_of(ctx.data.root)})")


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
    lines += [f"Where bytes went: {written_to(ctx)}; a row's \"wrote to\" names the filesystem.", ""]
    header = ("| workload | client | wrote to | " + " | ".join(f"RTT {r} ms | peak MiB (at mount)" for r in rtts)
              + " |")
    lines += [header, "|" + "---|" * (3 + 2 * len(rtts))]
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
        sink = results.sink(row, client) or "-"
        lines.append(f"| {ROW_LABELS.get(row, row)} | {client} | {sink} | " + " | ".join(cells) + " |")
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
