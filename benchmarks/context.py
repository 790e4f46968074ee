"""What every workload is handed: the run's servers, its data set and where it may write."""
from dataclasses import dataclass
from pathlib import Path

from benchmarks.dataset import DataSet
from benchmarks.servers import Site


@dataclass
class Context:
    site: Site
    data: DataSet
    scratch: Path
    logs: Path
    copies: Path  # where copies to local disk land: a private directory on the disk the bench runs on

    @property
    def mountpoint(self):
        return self.scratch / "mnt"
