"""``fs.open_fs("flux://...")`` and fsspec over ``hpcfs serve flux``: the read-only job tree, its bytes, its
request counts (server log), a running job's output growing.  Every change refused as read-only, before it is
sent: test_pyfs_suite.py, as for every read-only protocol."""
import hashlib
import json
import math
import time

import fs
import fs.errors
import fsspec
import pandas
import pytest

from hpcfs.backend import Entry
from hpcfs.core.metacache import MetadataCache
from hpcfs.frontends.fsspec import HpcfsFileSystem

CSV_JOB = "sh -c \"echo 'step,loss'; for i in 1 2 3; do echo $i,0.$i; done\""


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def output_of(handle, jobid) -> bytes:
    return "".join(handle.server.runner.get(str(jobid)).chunks).encode()


@pytest.fixture
def jobs(flux_server):
    """Two finished jobs (newest last) on a single-user server."""
    return [flux_server.run("sh -c 'echo hello; echo world >&2'"), flux_server.run(CSV_JOB)]


@pytest.fixture
def flux_fs(flux_server, jobs):
    with fs.open_fs(flux_server.url()) as filesystem:
        yield filesystem


def test_the_tree_lists_nodes_and_jobs_newest_first(flux_server, jobs, flux_fs):
    assert flux_fs.listdir("/") == ["nodes.json", "jobs"]
    assert flux_fs.listdir("/jobs") == [str(jobs[1]), str(jobs[0])]
    assert sorted(flux_fs.listdir(f"/jobs/{jobs[0]}")) == ["info.json", "output"]
    assert json.loads(flux_fs.readtext("/nodes.json")) == flux_server.get("/v1/nodes").json()
    assert flux_fs.getinfo("/jobs").is_dir and not flux_fs.getinfo("/nodes.json").is_dir


def test_files_hold_exactly_what_the_api_says(flux_server, jobs, flux_fs):
    for jobid in jobs:
        output = flux_fs.readbytes(f"/jobs/{jobid}/output")
        assert sha256(output) == sha256(output_of(flux_server, jobid))
        assert flux_fs.getinfo(f"/jobs/{jobid}/output", ["details"]).size == len(output)
        info = json.loads(flux_fs.readtext(f"/jobs/{jobid}/info.json"))
        assert info == flux_server.get(f"/v1/jobs/{jobid}").json()
        details = flux_fs.getinfo(f"/jobs/{jobid}/info.json", ["details"])
        assert details.size == len(flux_fs.readbytes(f"/jobs/{jobid}/info.json"))
        assert details.modified.timestamp() == pytest.approx(info["t_inactive"])
    assert flux_fs.readtext(f"/jobs/{jobs[0]}/output") == "hello\nworld\n"


def test_finished_jobs_are_fetched_once(flux_server, jobs):
    with fs.open_fs(flux_server.url(attr_ttl=0.1)) as flux_fs:
        flux_fs.listdir("/jobs")
        first = {jobid: flux_fs.readbytes(f"/jobs/{jobid}/output") for jobid in jobs}
        time.sleep(0.3)  # past attr_ttl: finished entries stay cached all the same
        before = flux_server.log.snapshot()
        for jobid in jobs:
            assert flux_fs.readbytes(f"/jobs/{jobid}/output") == first[jobid]
            flux_fs.readbytes(f"/jobs/{jobid}/info.json")
            flux_fs.getinfo(f"/jobs/{jobid}", ["details"])
        assert flux_server.log.snapshot() == before
        assert before["GET /v1/jobs/{jobid}/output"] == len(jobs)


def test_unknown_job_ids_cost_no_request_after_the_listing_until_opened(flux_server, jobs, flux_fs):
    flux_fs.listdir("/jobs")
    before = flux_server.log.total()
    numeric = ("1", "999999999999", str(jobs[0] + 1))
    for probe in (*numeric, ".hidden", "autorun.inf"):
        assert not flux_fs.exists(f"/jobs/{probe}")
    with pytest.raises(fs.errors.ResourceNotFound):
        flux_fs.getinfo(f"/jobs/{jobs[0]}/stderr")
    assert flux_server.log.total() == before
    # Opening a file asks the server (close-to-open), and the backend asks for an id its listing lacks (a
    # job submitted since): one request per job id, none for names that cannot be job ids.
    for probe in (*numeric, ".hidden", "autorun.inf"):
        with pytest.raises(fs.errors.ResourceNotFound):
            flux_fs.readbytes(f"/jobs/{probe}/output")
    assert flux_server.log.total() == before + len(numeric)


def test_a_running_jobs_output_grows_until_it_ends(flux_server):
    jobid = flux_server.submit("sh -c 'for i in 1 2 3 4 5 6 7 8; do echo line $i; sleep 0.2; done'")
    seen = []
    with fs.open_fs(flux_server.url()) as flux_fs:
        deadline = time.monotonic() + 20
        while json.loads(flux_fs.readtext(f"/jobs/{jobid}/info.json"))["state"] != "INACTIVE":
            assert time.monotonic() < deadline
            text = flux_fs.readtext(f"/jobs/{jobid}/output")
            assert text == "".join(f"line {i}\n" for i in range(1, text.count("\n") + 1))  # a prefix, whole lines
            seen.append(len(text))
            time.sleep(0.25)
        final = flux_fs.readbytes(f"/jobs/{jobid}/output")
    assert sha256(final) == sha256(output_of(flux_server, jobid))
    assert len(set(seen)) >= 3 and seen == sorted(seen)  # it grew, step by step
    assert flux_server.log.snapshot()["GET /v1/jobs/{jobid}/output/stream"] == 1  # followed, not polled


def test_multi_user_mode_through_the_environment(make_flux_server, monkeypatch):
    handle = make_flux_server(auth=True)
    jobid = handle.run("echo secret-free")
    for name, value in handle.env.items():
        monkeypatch.setenv(name, value)
    with fs.open_fs(handle.url()) as flux_fs:
        assert flux_fs.readtext(f"/jobs/{jobid}/output") == "secret-free\n"
    assert handle.log.snapshot()["POST /v1/token"] == 1


def test_missing_credentials_name_what_to_set(make_flux_server):
    handle = make_flux_server(auth=True)
    with fs.open_fs(handle.url()) as flux_fs:
        with pytest.raises(fs.errors.PermissionDenied) as refused:
            flux_fs.listdir("/jobs")
    assert "set FLUX_USER, FLUX_TOKEN, FLUX_SECRET_KEY" in str(refused.value.exc)


def test_fsspec_and_pandas_read_a_jobs_csv_output(flux_server, jobs):
    try:
        frame = pandas.read_csv(flux_server.url(f"/jobs/{jobs[1]}/output"))
        assert frame.to_dict("list") == {"step": [1, 2, 3], "loss": [0.1, 0.2, 0.3]}
        filesystem = fsspec.filesystem("flux", service_url=flux_server.url())
        assert filesystem.ls("/jobs", detail=False) == [f"/jobs/{jobs[1]}", f"/jobs/{jobs[0]}"]
        assert filesystem.cat(f"/jobs/{jobs[0]}/output") == b"hello\nworld\n"
        with pytest.raises(OSError):
            filesystem.pipe(f"/jobs/{jobs[0]}/new", b"x")
    finally:
        for instance in list(HpcfsFileSystem._cache.values()):
            instance.remote.close()
        HpcfsFileSystem.clear_instance_cache()


# -- the core's per-entry lifetimes (Entry.ttl) ----------------------------------------------------------
def test_entries_with_their_own_ttl_outlive_or_expire_before_the_default():
    cache = MetadataCache(ttl=0.2, negative_ttl=0.2)
    cache.put("/finished", Entry("finished", ttl=math.inf))
    cache.put("/running", Entry("running", ttl=0.05))
    cache.put("/plain", Entry("plain"))
    time.sleep(0.1)
    assert cache.lookup("/running") is None and cache.lookup("/plain") is not None
    time.sleep(0.2)
    assert cache.lookup("/plain") is None and cache.lookup("/finished").name == "finished"


def test_an_expired_bearer_token_is_renewed_once(make_flux_server, monkeypatch):
    handle = make_flux_server(auth=True, access_lifetime=60)
    jobid = handle.run("echo renewed")
    for name, value in handle.env.items():
        monkeypatch.setenv(name, value)
    with fs.open_fs(handle.url(listing_ttl=0, attr_ttl=0)) as flux_fs:
        assert flux_fs.listdir("/jobs") == [str(jobid)]
        # Two lifetimes pass on the server's clock: the old token is answered 403, a new one is good.
        monkeypatch.setattr(handle.server.issuer, "clock", lambda: time.time() + 120)
        assert flux_fs.listdir("/jobs") == [str(jobid)]
    counts = handle.log.snapshot()
    assert counts["POST /v1/token"] == 2 and counts["unauthenticated"] == 2  # the first 401, then one 403


def test_closing_the_tree_ends_the_output_streams_it_follows(flux_server):
    jobid = flux_server.submit("sh -c 'echo started; sleep 30'")
    with fs.open_fs(flux_server.url()) as flux_fs:
        deadline = time.monotonic() + 10
        while flux_fs.readtext(f"/jobs/{jobid}/output") != "started\n":
            assert time.monotonic() < deadline
            time.sleep(0.1)
        streaming = flux_server.server.http.httpd.connections.copy()
    deadline = time.monotonic() + 5
    while streaming & flux_server.server.http.httpd.connections:  # the server sees the stream's end
        assert time.monotonic() < deadline, "the output stream outlived the tree"
        time.sleep(0.05)


def test_plain_http_only_to_loopback_unless_asked(caplog):
    from hpcfs.urls import open_backend

    remote, _ = open_backend("flux://flux.example.org:5000/")
    assert remote.client.base_url == "https://flux.example.org:5000" and not caplog.records
    local, _ = open_backend("flux://localhost:5000/")
    assert local.client.base_url == "http://localhost:5000"
    asked, _ = open_backend("flux://flux.example.org/", insecure_http="1")
    assert asked.client.base_url == "http://flux.example.org"
    assert [record.getMessage() for record in caplog.records] == [
        "flux://flux.example.org: plain http (insecure_http): the token and job output cross the network "
        "unencrypted"]
    for backend in (remote, local, asked):
        backend.close()


def test_a_cached_listing_keeps_the_servers_order(flux_server):
    jobids = [flux_server.run("true") for _ in range(6)]
    with fs.open_fs(flux_server.url(listing_ttl=60, attr_ttl=60)) as flux_fs:
        fresh = flux_fs.listdir("/jobs")
        before = flux_server.log.total()
        assert flux_fs.listdir("/jobs") == fresh == [str(jobid) for jobid in reversed(jobids)]
        assert flux_server.log.total() == before  # the second listing came from the cache


@pytest.mark.parametrize("garbage", [b'{"state": "RUN"}', b"[1, 2]", b"<html>proxy</html>", b'{"id": 5'])
def test_a_garbled_job_info_is_an_io_error_naming_the_job(flux_server, jobs, garbage):
    with fs.open_fs(flux_server.url()) as flux_fs:
        flux_server.server.knobs.extra["garbage"] = {str(jobs[0]): garbage}
        with pytest.raises(fs.errors.OperationFailed) as failed:
            flux_fs.getinfo(f"/jobs/{jobs[0]}")
    assert f"/jobs/{jobs[0]}" in str(failed.value) and failed.value.exc.errno == 5
