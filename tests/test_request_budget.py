"""FirecREST's cap on requests in flight holds for all of a user's processes on the machine together
(hpcfs/net/policy.py's ``request_budget`` over the slot files of hpcfs/net/slots.py), not for each.

The local FirecREST server answers 424 ("Unable to open a new SSH channel") to an SSH-backed request beyond
``max_sessions`` at once, as sshd's MaxSessions makes the real one do.  With that set to the cap, a single
424 means the processes together had more requests at the server than the cap."""
import os
import subprocess
import sys

import pytest

from fixtures_firecrest import start_firecrest
from hpcfs import net
from mounting import CREDENTIAL_VARIABLES

pytestmark = pytest.mark.timeout(120)
CAP = net.Policy().max_in_flight
FILES = 4
STATS = 160  # per process, from 16 threads: twice the cap waits in each process

STATTER = f"""
import sys
from concurrent.futures import ThreadPoolExecutor
from hpcfs.urls import open_backend

backend, _ = open_backend(sys.argv[1])
print("ready", flush=True)
sys.stdin.readline()  # go: the processes start their requests together
with ThreadPoolExecutor(16) as pool:
    sizes = list(pool.map(lambda index: backend.stat(f"/f{{index % {FILES}}}").size, range({STATS})))
backend.close()
print(sum(sizes))
"""


def test_two_processes_together_stay_within_the_cap(tmp_path):
    root = tmp_path / "firecrest-root"
    root.mkdir()
    for index in range(FILES):
        (root / f"f{index}").write_bytes(b"x" * (1000 + index))
    handle = start_firecrest(root, max_sessions=CAP, command_latency=0.05)  # requests overlap for 50 ms
    refused = []
    handle.server.observers.append(lambda request, response: response is not None and response.status == 424
                                   and refused.append(request.path))
    runtime_dir = tmp_path / "run"  # the budget's slot files: this test's alone, shared by both processes
    runtime_dir.mkdir(mode=0o700)
    env = {name: value for name, value in os.environ.items() if name not in CREDENTIAL_VARIABLES}
    env.update(handle.env, XDG_RUNTIME_DIR=str(runtime_dir))
    try:
        runs = [subprocess.Popen([sys.executable, "-c", STATTER, handle.plain_url("/")], env=env, text=True,
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                for _ in range(2)]
        for run in runs:
            assert run.stdout.readline() == "ready\n", run.stderr.read()
        for run in runs:
            run.stdin.write("go\n")
            run.stdin.flush()
        for run in runs:
            out, err = run.communicate(timeout=90)
            assert run.returncode == 0, err
            assert int(out) == sum(1000 + index % FILES for index in range(STATS))
        assert not refused, f"{len(refused)} requests met 424: the processes together exceeded {CAP} in flight"
    finally:
        handle.server.stop()
