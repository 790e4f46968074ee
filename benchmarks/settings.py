"""The bench's fixed settings: where the checkout and the peers' virtualenvs are, units, round trips, the
delay relays' windows and the data set's sizes."""
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HPCFS = REPO / ".venv" / "bin" / "hpcfs"
# The venvs are shared by several checkouts: hpcfs commands run this checkout's code, not the installed one.
HPCFS_CODE = {"PYTHONPATH": str(REPO)}
PEER_VENV = REPO / ".venv-pyunicore"  # pyuftp (and pyunicore 2.x), as scripts/install makes it
FUSE_DRIVER_VENV = REPO / ".venv-pyunicore137"  # the last pyunicore with a FUSE driver
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
