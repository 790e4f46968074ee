"""Flux jobs in one order everywhere and found at once (issue 24, item 6): the tree lists jobs newest first
through open_fs, fsspec and the mount's readdir; the guide's "newest job" command lines, run as the guide
gives them, pick the newest job; a job submitted after a listing is found by its id with one request; the
guide's flux-restful-cli submit line keeps its quotes."""
import os
import re
import shlex
import subprocess
from pathlib import Path

import fs
import fsspec
import pytest

from mounting import mounted

REPO = Path(__file__).resolve().parent.parent
GUIDE = REPO / "docs" / "guide" / "flux.md"
CLIENT_BIN = REPO / ".venv-flux" / "bin"
JOB = "GET /v1/jobs/{jobid}"


pytestmark = pytest.mark.usefixtures("close_cached_filesystems")  # tests/conftest.py


@pytest.fixture
def jobs(flux_server):
    """Finished jobs, oldest first, with ids of different lengths' worth of spread."""
    return [str(flux_server.run(f"echo job {index}")) for index in range(3)]


def guide_lines(pattern: str):
    lines = [line for line in GUIDE.read_text().splitlines() if re.search(pattern, line)]
    assert lines, f"{GUIDE.name} has no line matching {pattern!r}"
    return lines


def test_every_front_end_lists_jobs_newest_first(flux_server, jobs, tmp_path):
    newest_first = jobs[::-1]
    with fs.open_fs(flux_server.url()) as flux:
        assert flux.listdir("/jobs") == newest_first
    filesystem, _ = fsspec.core.url_to_fs(flux_server.url("/jobs"))
    assert [os.path.basename(path) for path in filesystem.ls("/jobs", detail=False)] == newest_first
    with mounted(flux_server.url(), tmp_path / "mnt", env=flux_server.env):
        assert os.listdir(tmp_path / "mnt" / "jobs") == newest_first  # readdir keeps the server's order


def test_the_guides_newest_job_lines_pick_the_newest_job(flux_server, jobs, tmp_path):
    mountpoint = tmp_path / "mnt"
    port = f"127.0.0.1:{flux_server.server.http.port}"
    env = {**os.environ, **flux_server.env, "PATH": f"{REPO / '.venv' / 'bin'}:{os.environ['PATH']}"}
    with mounted(flux_server.url(), mountpoint, env=flux_server.env):
        for line in guide_lines(r"^newest=\$\("):
            script = line.replace("127.0.0.1:5000", port).replace("~/mnt/flux", str(mountpoint))
            result = subprocess.run(["bash", "-euo", "pipefail", "-c", f'{script}\necho "$newest"'], env=env,
                                    capture_output=True, text=True, timeout=60, check=True)
            assert result.stdout.strip() == jobs[-1], line


def test_a_job_submitted_after_the_listing_is_found_by_its_id(flux_server, jobs):
    with fs.open_fs(flux_server.url(attr_ttl=0)) as flux:  # no core cache: the backend's listing answers
        assert flux.listdir("/jobs")[0] == jobs[-1]
        submitted = str(flux_server.submit("sleep 5"))
        flux_server.log.reset()
        assert flux.getinfo(f"/jobs/{submitted}").is_dir
        assert flux_server.log.counts[JOB] == 1
        assert not flux.exists("/jobs/1")  # a job that does not exist is still not there


@pytest.mark.skipif(not (CLIENT_BIN / "flux-restful-cli").exists(), reason="needs .venv-flux (scripts/install)")
def test_the_guides_submit_line_keeps_its_quotes(flux_server):
    line = guide_lines(r"^flux-restful-cli submit ")[0]
    env = {**os.environ, **flux_server.env, "FLUX_RESTFUL_HOST": flux_server.api, "PYTHONPATH": "",
           "PATH": f"{CLIENT_BIN}:{os.environ['PATH']}"}
    subprocess.run(["bash", "-euo", "pipefail", "-c", line], env=env, capture_output=True, timeout=60, check=True)
    [job] = flux_server.server.runner.jobs.values()
    flux_server.wait(job.id)
    assert "".join(job.chunks) == "step,loss\n1,0.5\n", shlex.join(job.command)
