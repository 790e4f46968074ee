"""What a run measured: one outcome per row, client and round trip, and the rows' labels."""
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from benchmarks.settings import MB


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
    sink: str = ""  # the filesystem the row wrote its bytes to ("" when it kept none)

    @classmethod
    def failed(cls, why: str, sink: str = ""):
        return cls(text=f"failed: {why}", sink=sink)


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

    def sink(self, row, client) -> str:
        """Where a row's client wrote, at whichever round trip says so."""
        return next((o.sink for (r, c, _), o in self.rows.items() if (r, c) == (row, client) and o.sink), "")


def rate(nbytes: int, seconds: float, detail: str = "", sink: str = "") -> Outcome:
    """MB/s of ``nbytes`` in ``seconds``; the detail says the seconds unless given."""
    return Outcome(nbytes / seconds / MB, f"{nbytes / seconds / MB:,.0f} MB/s", detail or f"{seconds:.2f} s",
                   sink=sink)


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


ROW_LABELS = {
    "seq-read": "sequential read (dd bs=1M)",
    "random-read": "4 KiB random reads, bytes checked",
    "ls-cold": "ls -lR cold",
    "ls-warm": "ls -lR warm",
    "write": "cp of the big file into the mount",
    "cp-r-in": "cp -r of 4 KiB files into the mount",
    "cp-r-out": "cp -r of 4 KiB files out of the mount",
    "real-uftpd-read": "real UFTPD 3.5: copy of the big file to local disk, idle, sha256 checked (loopback)",
    "real-uftpd-transformed": "real UFTPD 3.5: copy of the big file to local disk, data gzipped or over 4 TCP "
                              "streams of one session, sha256 checked (loopback)",
    "real-uftpd-encrypted-upload": "real UFTPD 3.5: upload of the big file from local disk, data encrypted "
                                   "(AES-256), sha256 checked on the server's disk (loopback)",
    "real-uftpd-devnull": "real UFTPD 3.5: the big file to /dev/null, bytes counted (loopback)",
    "real-uftpd-busy": "real UFTPD 3.5: copy of the big file to local disk while dd writes 2,000 MiB with "
                       "conv=fsync to it, sha256 checked (loopback)",
    "lines": "Python: iterate the lines of a 1 MiB text file (loopback)",
    "real-firecrest-download": "real FirecREST cluster-s3: download to local disk, sha256 checked (loopback)",
    "real-firecrest-upload": "real FirecREST cluster-s3: upload from local disk, sha256 checked (loopback)",
}
