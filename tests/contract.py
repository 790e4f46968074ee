"""The targets of the suites written once and run for every protocol: PyFilesystem2's ``FSTestCases``
(test_pyfs_suite.py) and fsspec's abstract suite (test_fsspec.py); the mount suite (test_mount_suite.py) and
the CLI round trips (test_cli.py) derive theirs from the same registry.

A target is the local server of a protocol of hpcfs/registry.py, asked for by its record's ``fixture``, or a
real server of ``../shared/peers`` that speaks one of them.  A new protocol gets every suite from its registry
record and its fixture (a handle as tests/handles.py describes); what its backend declares it cannot do
(``Capabilities``) is gated in the suite, with the reason, never skipped silently.
"""
import os
import uuid
from dataclasses import dataclass
from typing import List, Tuple

from hpcfs.registry import PROTOCOLS, protocol_for


@dataclass(frozen=True)
class Target:
    name: str  # in test ids: the scheme for a local server, ``real-...`` for a peer (tests/conftest.py groups those)
    scheme: str
    fixture: str  # the pytest fixture that gives the running server's handle

    @property
    def read_only(self) -> bool:
        return protocol_for(self.scheme).read_only

    @property
    def real(self) -> bool:
        return self.name != self.scheme


LOCAL: Tuple[Target, ...] = tuple(Target(p.scheme, p.scheme, p.fixture) for p in PROTOCOLS)
# the real servers of ../shared/peers (tests/fixtures_peers.py), all writable; they skip where the kit is missing
REAL: Tuple[Target, ...] = (
    Target("real-uftp", "uftp", "real_uftp"),
    Target("real-firecrest-cluster", "firecrest", "real_firecrest_cluster"),
    Target("real-firecrest-s3", "firecrest", "real_firecrest_s3"),
)


def writable(targets) -> List[Target]:
    return [target for target in targets if not target.read_only]


def fresh_directory(handle, prefix: str = "case") -> str:
    """A new empty directory where the handle's server takes files (an EM volume, the root elsewhere), open
    to everyone (real UFTPD sessions run as ``nobody``); its path in the handle's URL tree."""
    path = f"{getattr(handle, 'volume_path', '')}/{prefix}-{uuid.uuid4().hex[:8]}"
    served = os.path.join(handle.root, path.strip("/"))
    os.mkdir(served)
    os.chmod(served, 0o777)
    return path
