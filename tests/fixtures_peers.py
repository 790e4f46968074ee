"""pytest fixtures for the real upstream servers of ``../shared/peers`` (UFTPD 3.5.3, FirecREST v2).

The kit's scripts start each peer once per test session on loopback (``start`` is idempotent); peers that
were already running are left running, the ones this session started are stopped at its end. Without the
kit (a clone outside this project; ``HPCFS_PEERS_KIT`` overrides the path) or without root, every test
that needs a peer is skipped with one reason.

Each handle works in its own directory below the served tree and offers what the emulator handles offer:
``root`` (the directory on this machine), ``url``/``plain_url`` and ``env``. UFTPD sessions run as
``nobody``: that directory is world-writable and files written into it by root stay world-readable.
All UFTP logins share one unix user, so UFTPD's per-user limit (16 sessions) counts the whole run.
"""
import fcntl
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Optional
from urllib.parse import quote, urlencode, urlsplit

import pytest
from handles import ServerHandle

PEERS_KIT = Path(os.environ.get("HPCFS_PEERS_KIT") or Path(__file__).resolve().parents[1].parent / "shared" / "peers")
START_TIMEOUT = 400  # a cold FirecREST start builds its venv (~2.5 min)


def _kit_script(name: str) -> Path:
    script = PEERS_KIT / "bin" / name
    if not script.is_file():
        pytest.skip(f"real peers kit not found at {PEERS_KIT} (set HPCFS_PEERS_KIT)")
    if os.geteuid() != 0:
        pytest.skip("the real peers need root (UFTPD sessions switch to nobody)")
    return script


class PeerEnv(dict):
    """A peer's environment; its repr masks the secrets, for it is shown in the tracebacks of failing tests
    (CI logs)."""

    def __repr__(self) -> str:
        return repr({key: "***" if SECRET_KEY.search(key) else value for key, value in self.items()})


SECRET_KEY = re.compile(r"PASSWORD|SECRET|TOKEN", re.IGNORECASE)


def _read_env(script: Path, environment: Optional[dict] = None) -> PeerEnv:
    """The ``export K=V`` lines of ``script env`` as a dict (values are shell-quoted)."""
    output = subprocess.run([script, "env"], check=True, capture_output=True, text=True, timeout=30,
                            env=environment).stdout
    pairs = (shlex.split(line)[-1].split("=", 1) for line in output.splitlines() if line.startswith("export "))
    return PeerEnv(pairs)


def _run_peer(name: str):
    """Start peer ``name`` unless it runs; yield its environment; stop it if this session started it --
    unless this is one of several xdist workers, which share the peer (scripts/test starts and stops the
    peers around the whole run)."""
    script = _kit_script(name)
    with open(os.path.join(tempfile.gettempdir(), f"hpcfs-tests-{name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # workers starting one peer at once would race for its ports
        already_running = subprocess.run([script, "status"], capture_output=True, timeout=30).returncode == 0
        if not already_running:
            started = subprocess.run([script, "start"], capture_output=True, text=True, timeout=START_TIMEOUT)
            if started.returncode != 0:
                pytest.fail(f"{name} start failed:\n{started.stdout[-2000:]}\n{started.stderr[-2000:]}")
    try:
        yield _read_env(script)
    finally:
        if not already_running and "PYTEST_XDIST_WORKER" not in os.environ:
            subprocess.run([script, "stop"], capture_output=True, timeout=60)


def _scratch_directory(served_root: str) -> str:
    """A fresh directory for this session below the served tree, writable by UFTPD's ``nobody``."""
    path = os.path.join(served_root, f"hpcfs-tests-{uuid.uuid4().hex[:8]}")
    os.mkdir(path)
    os.chmod(path, 0o777)
    return path


@dataclass
class RealUFTPHandle(ServerHandle):
    """The real UFTPD behind the kit's Auth stand-in; ``root`` is this session's directory in its data dir."""

    peer_env: dict
    root: str
    name = "real-uftp"

    @property
    def auth_url(self) -> str:
        return self.peer_env["UFTP_AUTH_URL"]

    @property
    def env(self) -> dict:
        return PeerEnv({key: self.peer_env[key] for key in ("UFTP_USER", "UFTP_PASSWORD", "HPCFS_CA_FILE")})

    def plain_url(self, path: str = "/") -> str:
        parts = urlsplit(self.auth_url)
        return f"uftp://{parts.netloc}{parts.path}:{quote(self.root + path)}"

    def url(self, path: str = "/") -> str:
        """With the credentials and the CA file embedded, for ``fs.open_fs``/``open_backend``."""
        userinfo = f"{quote(self.peer_env['UFTP_USER'], safe='')}:{quote(self.peer_env['UFTP_PASSWORD'], safe='')}@"
        return f"{self.plain_url(path).replace('uftp://', 'uftp://' + userinfo, 1)}?ca_file={quote(self.env['HPCFS_CA_FILE'])}"


@dataclass
class RealFirecrestHandle(ServerHandle):
    """One system (``cluster`` or ``cluster-s3``) of the real FirecREST; both share one file-system root."""

    peer_env: dict
    system: str
    root: str

    @property
    def name(self) -> str:
        return f"real-firecrest-{self.system}"

    @property
    def staging(self) -> bool:
        return self.system == self.peer_env["FIRECREST_SYSTEM_S3"]

    @property
    def env(self) -> dict:
        keys = ("FIRECREST_URL", "AUTH_TOKEN_URL", "FIRECREST_CLIENT_ID", "FIRECREST_CLIENT_SECRET")
        return PeerEnv({key: self.peer_env[key] for key in keys})

    def plain_url(self, path: str = "/") -> str:
        return f"firecrest://{self.system}{quote(self.root + path)}"

    def url(self, path: str = "/") -> str:
        query = urlencode({"url": self.env["FIRECREST_URL"], "token_url": self.env["AUTH_TOKEN_URL"],
                           "client_id": self.env["FIRECREST_CLIENT_ID"],
                           "client_secret": self.env["FIRECREST_CLIENT_SECRET"]})
        return f"{self.plain_url(path)}?{query}"


@pytest.fixture(scope="session")
def real_uftpd_env():
    yield from _run_peer("real-uftpd")


@pytest.fixture(scope="session")
def real_firecrest_env():
    yield from _run_peer("real-firecrest")


@pytest.fixture(scope="session")
def real_uftp(real_uftpd_env) -> RealUFTPHandle:
    root = _scratch_directory(real_uftpd_env["UFTP_DATA_DIR"])
    yield RealUFTPHandle(real_uftpd_env, root)
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def running_real_uftp() -> RealUFTPHandle:
    """The real UFTPD only if it already runs, else a skip: never started or stopped here, for tests long
    enough to be run on purpose against peers that someone started (``real-uftpd start``)."""
    script = _kit_script("real-uftpd")
    if subprocess.run([script, "status"], capture_output=True, timeout=30).returncode != 0:
        pytest.skip(f"the real UFTPD is not running (start it with: {script} start)")
    peer_env = _read_env(script)
    root = _scratch_directory(peer_env["UFTP_DATA_DIR"])
    yield RealUFTPHandle(peer_env, root)
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def real_firecrest_root(real_firecrest_env) -> str:
    root = _scratch_directory(real_firecrest_env["FIRECREST_FS_ROOT"])
    yield root
    shutil.rmtree(root, ignore_errors=True)


def _firecrest_system(peer_env: dict, shared_root: str, key: str) -> RealFirecrestHandle:
    """System ``peer_env[key]`` in its own directory of the shared file-system root."""
    system = peer_env[key]
    root = os.path.join(shared_root, system)
    os.makedirs(root, exist_ok=True)
    return RealFirecrestHandle(peer_env, system, root)


@pytest.fixture(scope="session")
def real_firecrest_cluster(real_firecrest_env, real_firecrest_root) -> RealFirecrestHandle:
    """``cluster``: direct ops only, nothing above ``max_ops_file_size`` (5 MiB) moves."""
    return _firecrest_system(real_firecrest_env, real_firecrest_root, "FIRECREST_SYSTEM")


@pytest.fixture(scope="session")
def real_firecrest_s3(real_firecrest_env, real_firecrest_root) -> RealFirecrestHandle:
    """``cluster-s3``: direct ops plus S3-staged transfers."""
    return _firecrest_system(real_firecrest_env, real_firecrest_root, "FIRECREST_SYSTEM_S3")
