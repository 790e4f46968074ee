"""The real servers' kit (``../shared/peers``): where it is, and a running server's settings."""
import os
import re
import subprocess
from pathlib import Path
from typing import Dict, Optional

from benchmarks.settings import REPO


def peers_bin() -> Optional[Path]:
    """The real-server kit's bin/: $HPCFS_PEERS_BIN, else ``shared/peers/bin`` beside the checkout."""
    candidates = [Path(os.environ["HPCFS_PEERS_BIN"])] if os.environ.get("HPCFS_PEERS_BIN") else []
    candidates += [parent / "shared" / "peers" / "bin" for parent in REPO.parents[:3]]
    return next((path for path in candidates if (path / "real-uftpd").exists()), None)


def real_peer_env(peer: str) -> Optional[Dict[str, str]]:
    """A running real server's settings (``real-uftpd env``, ``real-firecrest env``), or None when it is
    not running here."""
    kit = peers_bin()
    if kit is None or subprocess.run([str(kit / peer), "status"], capture_output=True).returncode:
        return None
    exported = subprocess.run([str(kit / peer), "env"], capture_output=True, text=True, check=True).stdout
    return {name: value.replace("\\ ", " ") for name, value in re.findall(r"^export (\w+)=(.*)$", exported, re.M)}
