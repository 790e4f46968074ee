"""One budget of UFTP sessions per (user, server) on the machine, shared by every hpcfs process of the user
(hpcfs/net/slots.py, used by hpcfs/uftp/backend.py's SessionPool).

Against the local UFTP server, which counts jobs and sessions per user as UFTPD does (an ended session
counts until the next 5 s reap) and records its high-water mark and every "Too many active sessions" it
answers.  The tests assert those: the server never had to refuse anyone, so nobody relied on retries."""
import logging
import os
import signal
import stat
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import fs
import pytest

from fixtures_uftp import UFTP_USER, UFTPHandle
from hpcfs.servers.uftp import UFTPServer
from hpcfs.urls import open_backend
from mounting import CREDENTIAL_VARIABLES, HPCFS, sha256_file, write_random


@pytest.fixture
def runtime_dir(tmp_path, monkeypatch):
    """A private XDG_RUNTIME_DIR, so the budget's slot files are this test's alone."""
    path = tmp_path / "run"
    path.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(path))
    return path


def limited_server(tmp_path, limit):
    root = tmp_path / "uftp-root"
    root.mkdir()
    server = UFTPServer(str(root), {UFTP_USER: "test123"}, tls_dir=str(tmp_path), session_limit=limit).start()
    return UFTPHandle(server, str(root))


def never_refused(handle, limit):
    assert handle.log.snapshot()["too-many"] == 0, "the server refused sessions: the budget let too many out"
    assert 0 < handle.server.user_peaks[UFTP_USER] <= limit


def test_parallel_cp_processes_share_the_session_limit(tmp_path, runtime_dir):
    """Six `hpcfs cp` uploads at once, each wanting a keeper and 4 workers (above 8 MiB a file goes in parallel
    pieces): 30 sessions against a limit of 8.  The budget (8 - 2) lets each start with two and grow only into
    free slots; the rest wait."""
    handle = limited_server(tmp_path, 8)
    try:
        env = {name: value for name, value in os.environ.items() if name not in CREDENTIAL_VARIABLES}
        env.update(handle.env, XDG_CONFIG_HOME=str(tmp_path / "config"))
        sources = [write_random(str(tmp_path / f"src{i}.bin"), (9 << 20) + i * 4099) for i in range(6)]
        runs = [subprocess.Popen(HPCFS + ["cp", source, handle.plain_url(f"/dst{i}.bin")], env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for i, source in enumerate(sources)]
        for run in runs:
            _, stderr = run.communicate(timeout=120)
            assert run.returncode == 0, stderr
        for i, source in enumerate(sources):
            assert sha256_file(os.path.join(handle.root, f"dst{i}.bin")) == sha256_file(source)
        never_refused(handle, 8)
    finally:
        handle.server.stop()


def test_open_and_close_in_a_row_waits_for_reaped_slots(tmp_path, runtime_dir, caplog):
    """Twenty open_fs/close cycles, as a test suite's cases do: every closed session still counts until
    UFTPD's reap, so without the grace the server would refuse within a few cycles."""
    handle = limited_server(tmp_path, 16)
    caplog.set_level(logging.INFO, logger="hpcfs")
    try:
        for cycle in range(20):
            with fs.open_fs(handle.url("/")) as opened:
                opened.writebytes(f"/f{cycle}", b"x" * cycle)
                assert opened.readbytes(f"/f{cycle}") == b"x" * cycle
        never_refused(handle, 16)
        assert any("waiting for 2 of the 14 UFTP sessions" in record.getMessage() for record in caplog.records)
    finally:
        handle.server.stop()


def test_several_trees_in_one_process_share_the_budget(tmp_path, runtime_dir):
    """Threads of one process opening trees at once contend like processes: the budget is per machine."""
    handle = limited_server(tmp_path, 10)
    try:
        def cycle(index):
            backend, _ = open_backend(handle.url("/"))
            try:
                backend.list("/")
            finally:
                backend.close()

        with ThreadPoolExecutor(4) as pool:
            list(pool.map(cycle, range(8)))
        never_refused(handle, 10)
    finally:
        handle.server.stop()


HOLDER = """
import sys, time
from hpcfs.urls import open_backend
backend, _ = open_backend(sys.argv[1])
backend.list("/")
print("holding", flush=True)
time.sleep(120)
"""


def test_a_killed_holder_frees_its_slots_after_the_grace(tmp_path, runtime_dir, caplog):
    """A process killed outright cannot give its slots back: the kernel drops its locks, and the next taker
    waits out the reap of the sessions UFTPD still counts instead of meeting "Too many active sessions"."""
    handle = limited_server(tmp_path, 2)  # one tree's keeper and worker fill it
    caplog.set_level(logging.INFO, logger="hpcfs")
    try:
        holder = subprocess.Popen([sys.executable, "-c", HOLDER, handle.url("/")], stdout=subprocess.PIPE,
                                  text=True)
        try:
            assert holder.stdout.readline() == "holding\n"
        finally:
            holder.send_signal(signal.SIGKILL)
            holder.wait(timeout=30)
        backend, _ = open_backend(handle.url("/"))
        try:
            assert backend.list("/") == []
        finally:
            backend.close()
        never_refused(handle, 2)
        assert any("waiting for 2 of the 2 UFTP sessions" in record.getMessage() for record in caplog.records)
    finally:
        handle.server.stop()


def test_slot_directory_is_private_and_never_follows_a_symlink(tmp_path, runtime_dir, uftp_server, caplog):
    def use_once():
        backend, _ = open_backend(uftp_server.url("/"))
        try:
            backend.list("/")
        finally:
            backend.close()

    use_once()
    shared = runtime_dir / "hpcfs"
    (budget,) = shared.iterdir()
    for directory in (shared, budget):
        info = os.lstat(directory)
        assert stat.S_ISDIR(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o700
        assert info.st_uid == os.getuid()
    slots = sorted(budget.iterdir())
    assert slots and all(stat.S_IMODE(os.lstat(slot).st_mode) == 0o600 for slot in slots)

    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    (budget / "0").unlink()
    (budget / "0").symlink_to(victim)
    caplog.set_level(logging.WARNING, logger="hpcfs")
    use_once()
    assert victim.read_bytes() == b"precious" and (budget / "0").is_symlink()
    assert "slot file 0 cannot be used" in caplog.text

    # the whole directory planted as a symlink to one open to everyone: not used, nothing written there
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o777)
    os.chmod(elsewhere, 0o777)
    os.rename(shared, tmp_path / "old-slots")
    shared.symlink_to(elsewhere)
    use_once()
    assert list(elsewhere.iterdir()) == []
    assert "is not a private directory of this user" in caplog.text


def test_max_sessions_sets_the_budget(uftp_server, runtime_dir):
    backend, _ = open_backend(uftp_server.url("/"), max_sessions="3", parallel="8")
    try:
        description = backend.describe()
        assert description["session_budget"] == 3 and description["sessions"] == 2  # the keeper takes one
    finally:
        backend.close()
