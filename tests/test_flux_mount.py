"""``hpcfs mount flux://...`` driven by ordinary shell tools: ``ls -lR``, ``cat``, ``grep``, ``tail -f`` of a
running job (that every change is refused with EROFS, test_mount_suite.py checks for every read-only tree)."""
import json
import os
import select
import shutil
import subprocess
import time

import pytest

from mounting import mounted, sh

pytestmark = [
    pytest.mark.timeout(90),
    pytest.mark.skipif(not os.access("/dev/fuse", os.R_OK | os.W_OK) or not shutil.which("fusermount3"),
                       reason="needs /dev/fuse and fusermount3"),
]
TICKS = 5  # lines the followed job prints, each once the test has seen the one before


@pytest.fixture
def mount(flux_server, tmp_path):
    with mounted(flux_server.url(), tmp_path / "mnt") as mountpoint:
        yield mountpoint


def test_ls_cat_and_grep_show_the_jobs(flux_server, mount):
    ok = flux_server.run("sh -c 'echo alpha; echo beta >&2'")
    failed = flux_server.run("sh -c 'echo gamma; exit 4'")
    listing = sh("ls", "-lR", mount)
    assert f"{mount}/jobs/{ok}:" in listing and f"{mount}/jobs/{failed}:" in listing
    assert os.listdir(f"{mount}/jobs") == [str(failed), str(ok)]  # newest first
    assert sh("cat", f"{mount}/jobs/{ok}/output") == "alpha\nbeta\n"
    assert os.path.getsize(f"{mount}/jobs/{ok}/output") == len("alpha\nbeta\n")
    info = json.loads(sh("cat", f"{mount}/jobs/{failed}/info.json"))
    assert (info["state"], info["result"], info["returncode"]) == ("INACTIVE", "FAILED", 4)
    found = sh("grep", "-r", "-l", "gamma", f"{mount}/jobs").split()
    assert found == [f"{mount}/jobs/{failed}/output"]
    assert json.loads(sh("cat", f"{mount}/nodes.json")) == {"nodes": [os.uname().nodename]}


def test_tail_f_follows_a_running_job(flux_server, mount, tmp_path):
    """The job prints each line only after the test saw the one before through ``tail -f`` (a gate file
    per line), so every line provably arrived while the job still ran, however slow the machine is."""
    gates = tmp_path / "gates"
    gates.mkdir()
    jobid = flux_server.submit(f"sh -c 'for i in $(seq {TICKS}); do echo tick $i; "
                               f"while [ ! -e {gates}/$i ]; do sleep 0.05; done; done'")
    path = f"{mount}/jobs/{jobid}/output"
    tail = None
    try:
        wait_until(lambda: os.path.exists(path), f"{path} never appeared")
        tail = subprocess.Popen(["tail", "-n", "+1", "-f", path], stdout=subprocess.PIPE, bufsize=0)
        received = b""
        for tick in range(1, TICKS + 1):
            received = read_until(tail, received, f"tick {tick}\n".encode())
            (gates / str(tick)).touch()  # only now may the job print the next line
    finally:
        for tick in range(1, TICKS + 1):  # a failed test must not leave the job waiting forever
            (gates / str(tick)).touch()
        if tail is not None:
            tail.kill()
            tail.wait()
    expected = "".join(f"tick {i}\n" for i in range(1, TICKS + 1))
    assert received.decode() == expected
    flux_server.wait(jobid)
    time.sleep(1.2)  # the kernel's attribute timeout (attr_ttl 1 s)
    assert sh("cat", path) == expected and os.path.getsize(path) == len(expected)


def wait_until(condition, message: str, seconds: float = 60):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, message
        time.sleep(0.1)


def read_until(process, received: bytes, line: bytes, seconds: float = 60) -> bytes:
    """What ``process`` printed so far, read until it ends with ``line`` (bounded: a stuck follower fails)."""
    deadline = time.monotonic() + seconds
    while not received.endswith(line):
        ready, _, _ = select.select([process.stdout], [], [], max(0.0, deadline - time.monotonic()))
        assert ready, f"tail -f stopped following after {received!r}"
        received += os.read(process.stdout.fileno(), 4096)
    return received

