"""The targets: hpcfs's ratios against the peers of the same run, and its memory against the declared bound."""
from dataclasses import dataclass
from typing import List, Optional

from benchmarks.real_firecrest import FIRECREST_ROW_DOWN, FIRECREST_ROW_UP
from benchmarks.real_uftpd import BUSY_ROW, DEVNULL_ROW, ENCRYPTED_ROW, REAL_ROW, TRANSFORMED_ROW
from benchmarks.results import ROW_LABELS, Results
from benchmarks.settings import MIB, RTTS, Sizes


@dataclass
class Target:
    text: str
    measured: str
    ratio: Optional[float]
    required: str
    met: Optional[bool]


def ratio_of(results: Results, row: str, ours: str, theirs: str, required: float, text: str,
             rtt: int = 0) -> Target:
    mine, other = results.value(row, ours, rtt), results.value(row, theirs, rtt)
    if mine is None or other is None:
        return Target(text, "missing", None, f">= {required}", None)
    return Target(text, f"{mine:,.0f} vs {other:,.0f}", mine / other, f">= {required}", mine / other >= required)


def targets(results: Results, sizes: Sizes) -> List[Target]:
    value = results.value
    hp = "hpcfs"

    def ratio_target(text, row, rtt, other, required):
        return ratio_of(results, row, hp, other, required, text, rtt)

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
    found.append(ratio_target("4 KiB random reads (all correct) vs sshfs, loopback", "random-read", 0, "sshfs", 1.0))
    found += memory_targets(results)
    found += real_server_targets(results)
    for rtt in RTTS:
        write, read = value("write", hp, rtt), value("seq-read", hp, rtt)
        if write is not None and read is not None:
            found.append(Target(f"write vs own sequential read, RTT {rtt} ms", f"{write:,.0f} vs {read:,.0f} MB/s",
                                write / read, ">= 0.8", write / read >= 0.8))
    return found


# (row, ours, theirs, required, text) against the real servers, loopback (issues 13 and 22)
REAL_SERVER_TARGETS = (
    (REAL_ROW, "hpcfs mount (cat)", "pyuftp cp (data phase)", 1.0, "real UFTPD: hpcfs mount (cat) vs pyuftp cp "
     "(data phase)"),
    (REAL_ROW, "hpcfs mount -o direct_io (cat)", "pyuftp cp (data phase)", 1.0, "real UFTPD: hpcfs mount -o "
     "direct_io (cat) vs pyuftp cp (data phase)"),
    (REAL_ROW, "hpcfs cp", "pyuftp cp", 1.3, "real UFTPD, idle disk: hpcfs cp vs pyuftp cp"),
    (BUSY_ROW, "hpcfs cp", "pyuftp cp", 1.0, "real UFTPD, busy disk: hpcfs cp vs pyuftp cp"),
    (ENCRYPTED_ROW, "hpcfs cp (encrypted)", "pyuftp cp (encrypted)", 1.0, "real UFTPD, AES-256 data, upload: hpcfs "
     "cp vs pyuftp cp -E"),
    (TRANSFORMED_ROW, "hpcfs cp (4 streams)", "pyuftp cp (4 streams)", 1.0, "real UFTPD, 4 streams of one session: "
     "hpcfs cp vs pyuftp cp -n 4"),
    (TRANSFORMED_ROW, "hpcfs cp (compressed)", "pyuftp cp (compressed)", 1.0, "real UFTPD, gzipped data: hpcfs cp "
     "vs pyuftp cp -C"),
    (DEVNULL_ROW, "hpcfs mount (dd bs=1M)", "pyuftp cp (data phase)", 1.2, "real UFTPD to /dev/null: hpcfs mount "
     "(dd bs=1M) vs pyuftp cp (data phase)"),
    (FIRECREST_ROW_DOWN, "hpcfs cp", "pyfirecrest download", 1.0, "real FirecREST cluster-s3 download: hpcfs cp "
     "vs pyfirecrest"),
    (FIRECREST_ROW_UP, "hpcfs cp", "pyfirecrest upload", 1.0, "real FirecREST cluster-s3 upload: hpcfs cp vs "
     "pyfirecrest"),
    (FIRECREST_ROW_DOWN, "hpcfs mount (cat)", "hpcfs cp", 0.77, "real FirecREST cluster-s3: hpcfs mount (cat) vs "
     "hpcfs cp (<= 1.3x the time)"),
)


def real_server_targets(results: Results) -> List[Target]:
    return [ratio_of(results, row, ours, theirs, required, text)
            for row, ours, theirs, required, text in REAL_SERVER_TARGETS]


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
