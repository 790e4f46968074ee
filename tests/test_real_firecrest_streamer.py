"""hpcfs against a real FirecREST v2 whose system offers the ``streamer`` data path (``cluster-streamer``).

Files above the direct limits (``max_ops_file_size`` 5 MiB) travel whole over a websocket to a streamer job
that the server submits per transfer.  Each job first builds a venv and installs ``firecrest-streamer``:
about 10 s on an idle machine, up to 30 s on a loaded one, so these tests transfer as little as they can.
"""
import hashlib
import http
import io
import logging
import os
import secrets
import shutil
import threading

import pytest
from websockets.sync.server import serve

from hpcfs import errors
from hpcfs.firecrest import streamer
from hpcfs.urls import open_backend

from fixtures_streamer import streamer_firecrest_env  # noqa: F401  (the session fixture)
from mounting import hpcfs, mounted

pytestmark = pytest.mark.timeout(400)
MIB = 1 << 20
CONNECTION = ("FIRECREST_URL", "AUTH_TOKEN_URL", "FIRECREST_CLIENT_ID", "FIRECREST_CLIENT_SECRET")


@pytest.fixture
def streamer_system(streamer_firecrest_env):  # noqa: F811
    """``(served directory, firecrest:// URL of it, environment)`` on ``cluster-streamer``."""
    served = os.path.join(streamer_firecrest_env["FIRECREST_FS_ROOT"], f"streamer-{secrets.token_hex(4)}")
    os.makedirs(served)
    env = {name: streamer_firecrest_env[name] for name in CONNECTION}
    try:
        yield served, f"firecrest://{streamer_firecrest_env['FIRECREST_SYSTEM_STREAMER']}{served}", env
    finally:
        shutil.rmtree(served, ignore_errors=True)


def write_random(path: str, size: int) -> str:
    data = os.urandom(size)
    with open(path, "wb") as handle:
        handle.write(data)
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def test_cp_of_12_mib_both_ways_goes_through_the_streamer(streamer_system, tmp_path):
    """The upload replaces an older file: the streamer job itself refuses existing targets."""
    served, url, env = streamer_system
    assert "staging: streamer" in hpcfs("info", url, env=env).stdout
    write_random(os.path.join(served, "big.bin"), 6 * MIB)
    digest = write_random(str(tmp_path / "big.bin"), 12 * MIB)
    hpcfs("cp", str(tmp_path / "big.bin"), f"{url}/big.bin", env=env, timeout=300)
    assert sha256_file(os.path.join(served, "big.bin")) == digest
    assert os.listdir(served) == ["big.bin"], "the upload's temporary name was left behind"
    hpcfs("cp", f"{url}/big.bin", str(tmp_path / "back.bin"), env=env, timeout=300)
    assert sha256_file(str(tmp_path / "back.bin")) == digest


def test_mount_reads_a_12_mib_file_through_the_streamer(streamer_system, tmp_path):
    served, url, env = streamer_system
    digest = write_random(os.path.join(served, "big.bin"), 12 * MIB)
    with mounted(url, tmp_path / "mnt", env=env) as mountpoint:
        assert sha256_file(os.path.join(mountpoint, "big.bin")) == digest


def test_a_path_the_streamer_job_would_mangle_is_refused_in_one_line(streamer_system, tmp_path):
    """The job script puts the path unquoted into a shell command line: refused before any job starts."""
    served, url, env = streamer_system
    write_random(os.path.join(served, "two words.bin"), 6 * MIB)
    jobs = os.path.join(os.path.dirname(os.path.dirname(served)), "jobs")  # the kit's fake Slurm records
    jobs_before = len(os.listdir(jobs))
    result = hpcfs("cp", f"{url}/two words.bin", str(tmp_path / "copy.bin"), env=env, check=False, timeout=60)
    assert result.returncode != 0
    assert result.stderr.count("\n") == 1 and "two words.bin" in result.stderr, result.stderr
    assert "streamer" in result.stderr and "Traceback" not in result.stderr
    assert not os.path.exists(tmp_path / "copy.bin")
    assert len(os.listdir(jobs)) == jobs_before, "a transfer job was submitted for the path"


def test_a_broken_upload_leaves_the_old_file_and_no_partial_one(streamer_system, monkeypatch):
    """The job keeps what arrived before a connection broke, and logs it as received: hpcfs removes
    that partial file, and the target, only replaced by a rename after the sha256 matched, is intact."""
    served, url, env = streamer_system
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    old_digest = write_random(os.path.join(served, "kept.bin"), 6 * MIB)
    backend, root = open_backend(url)
    try:
        short_source = io.BytesIO(os.urandom(7 * MIB))  # announced as 12 MiB
        with pytest.raises(errors.ProtocolError, match="shorter than announced"):
            backend.write_whole(f"{root.rstrip('/')}/kept.bin", short_source, 12 * MIB)
    finally:
        backend.close()
    assert sha256_file(os.path.join(served, "kept.bin")) == old_digest
    assert os.listdir(served) == ["kept.bin"], "the partial upload was left behind"


def test_the_transfer_secret_stays_out_of_debug_logs(caplog):
    """``hpcfs -v`` logs at DEBUG, where websockets would print the handshake's bearer secret.  A real
    websocket server that refuses it (as a streamer of another transfer does) is swept once."""
    secret = secrets.token_urlsafe(16)
    refuse = lambda connection, request: connection.respond(http.HTTPStatus.FORBIDDEN, "Invalid secret\n")  # noqa: E731
    quiet = logging.getLogger("test.streamer.server")  # the test server's own log is not hpcfs's
    quiet.setLevel(logging.INFO)
    with serve(lambda connection: None, "127.0.0.1", 0, process_request=refuse, logger=quiet) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        port = server.socket.getsockname()[1]
        coordinates = streamer.Coordinates(["127.0.0.1"], port, port, secret)

        def job_ended():
            raise errors.NotFound("the job ended")

        caplog.set_level(logging.DEBUG)
        with pytest.raises(errors.NotFound):
            streamer.open_stream(coordinates, job_ended, deadline=0, timeout=5, path="/x")
        server.shutdown()
    assert "Authorization" not in caplog.text and secret not in caplog.text
