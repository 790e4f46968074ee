"""One budget of UFTP sessions per (user, server) on the machine, shared by every hpcfs process of the user
(hpcfs/net/slots.py, used by hpcfs/uftp/backend.py's SessionPool).

Against the local UFTP server, which counts jobs and sessions per user as UFTPD does (an ended session
counts until the next 5 s reap) and records its high-water mark and every "Too many active sessions" it
answers.  The tests assert those: the server never had to refuse anyone, so nobody relied on retries."""
import contextlib
import logging
import os
import random
import signal
import stat
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import fs
import pytest

from fixtures_uftp import UFTP_USER, UFTPHandle
from hpcfs.servers.uftp import UFTPServer
from hpcfs.uftp import backend as uftp_backend
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


# -- giving back what a process grew into -------------------------------------------------------------------
def slots_held(runtime_dir, pid=None) -> int:
    """Slots of the one budget in ``runtime_dir`` whose file says they are held (by ``pid``, if given)."""
    budget, = (runtime_dir / "hpcfs").iterdir()
    words = [slot.read_bytes().split() for slot in budget.iterdir()]
    return sum(1 for word in words if word[:1] == [b"held"] and (pid is None or word[1:] == [str(pid).encode()]))


def sessions_open(server) -> int:
    """Sessions logged in at the local server and not ended (an ended one counts against its limit until the
    next reap, but is not open)."""
    with server._lock:
        return sum(not ended.is_set() for job in server.jobs.values() for ended in job.sessions)


def eventually(check, what, seconds=60.0):
    """Wait for ``check()`` to hold, up to a generous bound: what is tested is that it happens."""
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, f"{what}: not within {seconds:g} s"
        time.sleep(0.05)


@contextlib.contextmanager
def sessions_held(backend, files):
    """Reads of every file of ``files`` ({path: content}) at once, each holding its session until the ``with``
    block ends (a barrier in the middle of its transfer): the pool grows to one worker per file.  The bytes
    are checked on leaving."""
    arrived, go = threading.Barrier(len(files) + 1, timeout=60), threading.Event()

    def read(path):
        pieces = []

        def deliver(piece):
            if not pieces:
                arrived.wait()
                go.wait(60)
            pieces.append(bytes(piece))

        backend.read_pieces(path, 0, len(files[path]), 64 << 10, deliver)
        return b"".join(pieces)

    with ThreadPoolExecutor(len(files)) as pool:
        reads = {path: pool.submit(read, path) for path in files}
        try:
            arrived.wait()
            yield
        finally:
            go.set()
        for path, done in reads.items():
            assert done.result(60) == files[path], path


def test_a_process_started_later_gets_the_sessions_another_grew_into(tmp_path, runtime_dir):
    """Process A (this one) reads 13 files at once and grows to the whole budget (14 of 16: its keeper and 13
    workers); B, an ``hpcfs cp`` started while A holds them all, waits.  Once A is idle, its pool closes the
    workers beyond its first and gives their slots back: B gets two as soon as UFTPD has reaped those sessions
    (IDLE_CLOSE + REAP_GRACE), inside its timeout, and copies every byte.  A keeps its keeper and one worker
    and grows again when it reads again.  Before pools gave back sessions, B waited its 30 s and failed."""
    handle = limited_server(tmp_path, 16)
    try:
        files = {f"/a{i}.bin": random.Random(i).randbytes(256 << 10) for i in range(13)}
        for path, data in files.items():
            with open(os.path.join(handle.root, path[1:]), "wb") as out:
                out.write(data)
        served = write_random(os.path.join(handle.root, "b.bin"), (5 << 20) + 4099)
        env = {name: value for name, value in os.environ.items() if name not in CREDENTIAL_VARIABLES}
        env.update(handle.env, XDG_CONFIG_HOME=str(tmp_path / "config"))
        copied = str(tmp_path / "b.bin")
        a, _ = open_backend(handle.url("/"), parallel="13")
        try:
            assert a.capabilities.max_parallel == 13 and a.session_budget == 14
            with sessions_held(a, files):
                assert slots_held(runtime_dir, os.getpid()) == 14 and sessions_open(handle.server) == 14
                b = subprocess.Popen(HPCFS + ["--verbose", "cp", handle.plain_url("/b.bin"), copied], env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                seen = []
                for line in b.stderr:  # ends when B exits: then the assertion below says why
                    seen.append(line)
                    if "waiting for 2 of the 14 UFTP sessions" in line:
                        break
                assert "waiting for" in seen[-1], "".join(seen)[-3000:]
            # A is idle from here on; B still waits
            _, rest = b.communicate(timeout=120)
            assert b.returncode == 0, ("".join(seen) + rest)[-3000:]
            assert sha256_file(copied) == sha256_file(served)
            eventually(lambda: slots_held(runtime_dir, os.getpid()) == 2 and sessions_open(handle.server) == 2,
                       "A down to its keeper and one worker")
            with sessions_held(a, dict(list(files.items())[:4])):
                assert slots_held(runtime_dir, os.getpid()) == 5
        finally:
            a.close()
        never_refused(handle, 16)
    finally:
        handle.server.stop()


def test_the_idle_reaper_never_closes_a_session_in_use(tmp_path, runtime_dir, monkeypatch):
    """Workers idle for 5 ms are closed, and sixteen threads pause about that long between requests, so the
    reaper and ``acquire`` keep reaching for the same idle sessions, and the pool shrinks and grows again
    all the time (the server's limit is high, so that slots cooling after a close do not stop it growing).
    MKD is never retried: a session closed under it would fail it.  Once all are idle the pool is down to
    its keeper and one worker, and stays there.  (A reaper that closed a session before taking it out of the
    idle list under the lock failed this test.)"""
    monkeypatch.setattr(uftp_backend, "IDLE_CLOSE", 0.005)
    handle = limited_server(tmp_path, 1000)
    try:
        backend, _ = open_backend(handle.url("/"), parallel="8")
        try:
            def work(index):
                rng = random.Random(index)
                names = [f"d-{uuid.uuid4().hex[:8]}" for _ in range(100)]
                for name in names:
                    backend.mkdir(f"/{name}")
                    time.sleep(rng.uniform(0, 2 * uftp_backend.IDLE_CLOSE))
                return names

            with ThreadPoolExecutor(16) as pool:
                made = [name for names in pool.map(work, range(16)) for name in names]
            assert sorted(made) == sorted(os.listdir(handle.root))
            closed = handle.log.snapshot()["QUIT"]
            assert closed > backend.capabilities.max_parallel  # closed while the threads worked, and grown again
            eventually(lambda: slots_held(runtime_dir) == 2 and sessions_open(handle.server) == 2,
                       "the pool down to its keeper and one worker")
            time.sleep(20 * uftp_backend.IDLE_CLOSE)  # many reaper periods: it never goes below one worker
            assert slots_held(runtime_dir) == 2 and sessions_open(handle.server) == 2
            assert backend._pool._reaper is None  # its thread ended with nothing left to give back
            assert len(backend.list("/")) == len(made)
        finally:
            backend.close()
        never_refused(handle, 1000)
    finally:
        handle.server.stop()
