"""``hpcfs mount flux://...`` driven by ordinary shell tools: ``ls -lR``, ``cat``, ``grep``, ``tail -f`` of a
running job, and every change refused with EROFS."""
import errno
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
TICKS = 10  # lines the followed job prints, one per 0.2 s


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


def test_tail_f_follows_a_running_job(flux_server, mount):
    jobid = flux_server.submit(f"sh -c 'for i in $(seq {TICKS}); do echo tick $i; sleep 0.2; done'")
    path = f"{mount}/jobs/{jobid}/output"
    deadline = time.monotonic() + 10
    while not os.path.exists(path):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    tail = subprocess.Popen(["tail", "-n", "+1", "-f", path], stdout=subprocess.PIPE, bufsize=0)
    received, arrival = b"", []
    try:
        deadline = time.monotonic() + 15
        while received.count(b"\n") < TICKS:
            ready, _, _ = select.select([tail.stdout], [], [], max(0.0, deadline - time.monotonic()))
            assert ready, f"tail -f stopped following after {received!r}"
            received += os.read(tail.stdout.fileno(), 4096)
            arrival.append(time.monotonic())
    finally:
        tail.kill()
        tail.wait()
    lines = received.decode().splitlines(keepends=True)
    assert lines == [f"tick {i}\n" for i in range(1, TICKS + 1)]
    assert arrival[-1] - arrival[0] > 0.6  # followed while the job ran, not read once at its end
    flux_server.wait(jobid)
    time.sleep(1.2)  # the kernel's attribute timeout (attr_ttl 1 s)
    assert sh("cat", path) == "".join(lines) and os.path.getsize(path) == len("".join(lines))


def test_every_change_fails_with_erofs(flux_server, mount):
    jobid = flux_server.run("echo keep me")
    job = f"{mount}/jobs/{jobid}"
    changes = [
        lambda: open(f"{job}/output", "ab"),
        lambda: open(f"{job}/new", "wb"),
        lambda: os.truncate(f"{job}/output", 0),
        lambda: os.mkdir(f"{mount}/jobs/new"),
        lambda: os.unlink(f"{job}/output"),
        lambda: os.rmdir(job),
        lambda: os.rename(f"{job}/output", f"{job}/moved"),
        lambda: os.utime(f"{job}/output", (0, 0)),
        lambda: os.chmod(f"{job}/output", 0o666),
    ]
    for change in changes:
        with pytest.raises(OSError) as refused:
            change()
        assert refused.value.errno == errno.EROFS, refused.value
    shell = subprocess.run(["sh", "-c", f"echo x > {job}/output"], capture_output=True, text=True)
    assert shell.returncode != 0 and "Read-only file system" in shell.stderr
    assert sh("cat", f"{job}/output") == "keep me\n"
