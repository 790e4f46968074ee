"""The local FirecREST server speaks FirecREST v2 as the real 2.5.x server does, quirks included.

Raw HTTP over sockets; every exchange is also checked against the OpenAPI document (``openapi_violations``).
"""
import os
import pwd
import time
import uuid
from urllib.parse import urlsplit, urlunsplit

import pytest
import requests

from fixtures_firecrest import CLIENT_ID

MIB = 1024 * 1024
STAGE_S_BIN = {"sourcePath": "/s.bin", "transferDirectives": {"transferMethod": "s3"}}


class Api:
    """Authenticated raw requests to one system of the server."""

    def __init__(self, handle):
        self.handle = handle
        reply = requests.post(handle.server.token_url, data={"grant_type": "client_credentials",
                                                             "client_id": CLIENT_ID, "client_secret": handle.secret})
        self.headers = {"Authorization": "Bearer " + reply.json()["access_token"]}

    def __call__(self, method, endpoint, **kwargs):
        headers = dict(self.headers, **kwargs.pop("headers", {}))
        return requests.request(method, self.handle.server.url + endpoint, headers=headers, timeout=30, **kwargs)

    def ops(self, method, operation, **kwargs):
        return self(method, f"/filesystem/local/ops/{operation}", **kwargs)

    def transfer(self, method, operation, **kwargs):
        return self(method, f"/filesystem/local/transfer/{operation}", **kwargs)

    def log(self, path):
        """A job log's text, as clients read it (``ops/view``)."""
        return self.ops("GET", "view", params={"path": path}).json()["output"]

    def wait(self, job, timeout=10):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            reply = self("GET", f"/compute/local/jobs/{job['jobId']}")
            if reply.status_code == 200 and reply.json()["jobs"][0]["status"]["state"] in ("COMPLETED", "FAILED"):
                return reply.json()["jobs"][0]
            time.sleep(0.02)
        raise AssertionError("job did not finish")


@pytest.fixture
def api(firecrest_server, openapi_violations):
    yield Api(firecrest_server)
    assert openapi_violations == []


# -- conventions ---------------------------------------------------------------------------------------
def test_headers_auth_and_tracing_ids(firecrest_server, api):
    reply = api("GET", "/status/systems", headers={"X-Correlation-ID": "6b1f5a3c-2d4e-4f60-8a7b-9c0d1e2f3a4b"})
    assert reply.status_code == 200 and reply.headers["F7T-AppVersion"] == "2.5.6"
    assert reply.headers["X-Correlation-ID"] == "6b1f5a3c-2d4e-4f60-8a7b-9c0d1e2f3a4b"
    assert "F7T-AuthUsername" not in reply.headers and float(reply.headers["F7T-Timestamp"]) > 0
    system = reply.json()["systems"][0]
    assert system["dataOperation"]["max_ops_file_size"] == 5 * MIB
    assert system["dataOperation"]["data_transfer"]["publicUrl"] == firecrest_server.server.s3.url

    bad_id = api("GET", "/status/systems", headers={"X-Correlation-ID": "abc-123"})
    assert (bad_id.status_code, bad_id.content) == (400, b"")
    anonymous = requests.get(firecrest_server.server.url + "/filesystem/local/ops/ls?path=/")
    assert anonymous.status_code == 401 and anonymous.json()["message"] == "Not authenticated"
    assert requests.get(firecrest_server.server.url + "/status/liveness/").status_code == 200
    assert api.ops("GET", "ls", params={"path": "/"}, headers={"Authorization": "Bearer x.y.z"}).status_code == 401


def test_token_endpoint_and_token_lifetime_rules(firecrest_server, api):
    token_url = firecrest_server.server.token_url
    wrong = requests.post(token_url, data={"grant_type": "client_credentials", "client_id": CLIENT_ID,
                                           "client_secret": "wrong"})
    assert wrong.status_code == 401 and wrong.json()["error"] == "unauthorized_client"
    basic = requests.post(token_url, data={"grant_type": "client_credentials"},
                          auth=(CLIENT_ID, firecrest_server.secret))
    assert basic.status_code == 200 and basic.json()["expires_in"] == 300
    assert requests.post(token_url, data={"grant_type": "password"}).status_code == 400

    issuer = firecrest_server.server.issuer
    short = issuer.mint(CLIENT_ID, "alice", lifetime=20)
    reply = api.ops("GET", "ls", params={"path": "/"}, headers={"Authorization": f"Bearer {short}"})
    assert reply.status_code == 401 and "expires too soon (less than 30s remaining)" in reply.json()["message"]
    expired = issuer.mint(CLIENT_ID, "alice", lifetime=-1)
    reply = api.ops("GET", "ls", params={"path": "/"}, headers={"Authorization": f"Bearer {expired}"})
    assert reply.json()["message"] == "Access token expired"


def test_system_names_and_paths(firecrest_server, api):
    firecrest_server.put("/a.txt", b"x")
    assert api("GET", "/filesystem/LOCAL/ops/stat", params={"path": "/a.txt"}).status_code == 200
    unknown = api("GET", "/filesystem/daint/ops/stat", params={"path": "/a.txt"})
    assert unknown.status_code == 404 and unknown.json()["message"] == "System not found"
    relative = api.ops("GET", "stat", params={"path": "a.txt"})
    assert relative.status_code == 400 and "is not an absolute path" in relative.json()["message"]
    quoted = api.ops("GET", "stat", params={"path": "/it's"})
    assert quoted.status_code == 500 and "unexpected EOF while looking for matching" in quoted.json()["message"]
    missing = api.ops("GET", "stat", params={"path": "/nope"})
    assert missing.status_code == 404 and missing.json()["errorType"] == "error"
    assert missing.json()["user"] == "alice" and missing.headers["F7T-AuthUsername"] == "alice"
    assert "No such file or directory" in missing.json()["message"]


# -- ops -----------------------------------------------------------------------------------------------
def test_ls_output_as_the_shell_prints_it(firecrest_server, api):
    firecrest_server.put("/d/.hidden", b"")
    firecrest_server.put("/d/üñí.txt", b"12")
    firecrest_server.put("/d/sub/deep", b"3")
    os.symlink("gone", os.path.join(firecrest_server.root, "d", "dangling"))
    plain = api.ops("GET", "ls", params={"path": "/d"}).json()["output"]
    assert sorted(f["name"] for f in plain) == ["\\303\\274\\303\\261\\303\\255.txt", "dangling", "sub"]
    named = {f["name"]: f for f in plain}
    assert named["dangling"]["linkTarget"] == "gone" and named["dangling"]["type"] == "l"
    assert named["sub"]["user"] == pwd.getpwuid(os.getuid()).pw_name
    numeric = api.ops("GET", "ls", params={"path": "/d", "showHidden": "true", "numericUid": "true"}).json()["output"]
    assert ".hidden" in {f["name"] for f in numeric} and {f["user"] for f in numeric} == {str(os.getuid())}
    recursive = api.ops("GET", "ls", params={"path": "/d", "recursive": "true"}).json()["output"]
    assert "sub/deep" in {f["name"] for f in recursive}
    one_file = api.ops("GET", "ls", params={"path": "/d/sub/deep"}).json()["output"]
    assert [f["name"] for f in one_file] == ["/d/sub/deep"]
    assert api.ops("GET", "ls", params={"path": "/d", "dereference": "true"}).status_code == 404


def test_output_cap_gives_413_or_times_out(firecrest_server, api):
    firecrest_server.knobs.extra["max_ops_file_size"] = 4096
    limit = (4096 - 1) // 4 * 3
    firecrest_server.put("/fits", b"a" * limit)
    firecrest_server.put("/above", b"a" * (limit + 1))
    firecrest_server.put("/far", b"a" * (3 * MIB))
    assert len(api.ops("GET", "download", params={"path": "/fits"}).content) == limit
    above = api.ops("GET", "download", params={"path": "/above"})
    assert above.status_code == 413 and above.json()["message"] == "Command output exceeded buffer limit."
    started = time.monotonic()
    far = api.ops("GET", "download", params={"path": "/far"})
    assert far.status_code == 500 and far.json()["message"] == "('Channel not open for sending',)"
    assert time.monotonic() - started >= 0.05  # after the command timeout
    for index in range(60):
        firecrest_server.put(f"/many/{'n' * 60}{index}", b"")
    assert api.ops("GET", "ls", params={"path": "/many"}).status_code == 413


def test_upload_rules(firecrest_server, api):
    os.mkdir(os.path.join(firecrest_server.root, "up"))
    ok = api.ops("POST", "upload", params={"path": "/up"}, files={"file": ("f.bin", b"data")})
    assert ok.status_code == 204 and ok.content == b""
    again = api.ops("POST", "upload", params={"path": "/up"}, files={"file": ("f.bin", b"new")})
    assert again.status_code == 204 and open(os.path.join(firecrest_server.root, "up", "f.bin"), "rb").read() == b"new"
    empty = api.ops("POST", "upload", params={"path": "/up"}, files={"file": ("empty", b"")})
    assert empty.status_code == 408 and os.path.getsize(os.path.join(firecrest_server.root, "up", "empty")) == 0
    big = api.ops("POST", "upload", params={"path": "/up"}, files={"file": ("big", b"x" * (5 * MIB + 1))})
    assert big.status_code == 413
    assert api.ops("POST", "upload", params={"path": "/nope"}, files={"file": ("f", b"x")}).status_code == 404
    assert api.ops("POST", "upload", params={"path": "/up"}, data=b"").status_code == 400


def test_mkdir_symlink_chmod_rm(firecrest_server, api):
    made = api.ops("POST", "mkdir", json={"sourcePath": "/m/n", "parent": True})
    assert made.status_code == 201 and made.json()["output"]["type"] == "d"
    assert api.ops("POST", "mkdir", json={"sourcePath": "/m/n", "parent": True}).status_code == 201
    assert api.ops("POST", "mkdir", json={"sourcePath": "/m/n"}).status_code == 400
    assert api.ops("POST", "mkdir", json={"sourcePath": "/x/y"}).status_code == 404
    link = api.ops("POST", "symlink", json={"sourcePath": "/m/n", "linkPath": "/m/link"})
    assert link.status_code == 201 and link.json()["output"]["linkTarget"] == "/m/n"
    changed = api.ops("PUT", "chmod", json={"sourcePath": "/m/n", "mode": "700"})
    assert changed.status_code == 200 and changed.json()["output"]["permissions"] == "rwx------"
    firecrest_server.put("/m/n/inside", b"x")
    assert api.ops("DELETE", "rm", params={"path": "/m"}).status_code == 204  # rm -r
    assert not os.path.exists(os.path.join(firecrest_server.root, "m"))


def test_view_head_tail_checksum(firecrest_server, api):
    firecrest_server.put("/t.txt", b"0123456789" * 100)
    assert api.ops("GET", "view", params={"path": "/t.txt", "offset": 7, "size": 5}).json()["output"] == "78901"
    assert api.ops("GET", "view", params={"path": "/t.txt", "size": 0}).status_code == 400
    assert api.ops("GET", "head", params={"path": "/t.txt", "bytes": 3}).json()["output"]["content"] == "012"
    tail = api.ops("GET", "tail", params={"path": "/t.txt", "bytes": 996, "skipHeading": "true"}).json()["output"]
    assert tail["content"] == "56789"
    assert api.ops("GET", "head", params={"path": "/t.txt", "bytes": 1, "lines": 1}).status_code == 400
    checksum = api.ops("GET", "checksum", params={"path": "/t.txt"}).json()["output"]
    assert checksum["algorithm"] == "SHA256" and len(checksum["checksum"]) == 64


def test_session_limit_busy_and_unhealthy(firecrest_server, api):
    firecrest_server.knobs.extra.update(busy_status=429, retry_after=7)
    firecrest_server.knobs.busy_responses = 1
    limited = api.ops("GET", "ls", params={"path": "/"})
    assert limited.status_code == 429 and limited.headers["Retry-After"] == "7"
    firecrest_server.knobs.extra["max_sessions"] = 0
    assert api.ops("GET", "ls", params={"path": "/"}).json()["message"] == "Unable to open a new SSH channel."
    firecrest_server.knobs.extra["max_sessions"] = 10
    firecrest_server.server.fail_probe()
    unhealthy = api.ops("GET", "ls", params={"path": "/"})
    assert unhealthy.status_code == 503 and "is unhealthy" in unhealthy.json()["message"]
    health = api("GET", "/status/systems").json()["systems"][0]["servicesHealth"]
    assert any(h["serviceType"] == "ssh" and not h["healthy"] for h in health)


# -- transfer jobs and staging -------------------------------------------------------------------------
def test_move_job_reports_success_even_when_mv_fails(firecrest_server, api):
    firecrest_server.knobs.extra["job_visibility_lag"] = 0.2
    firecrest_server.put("/a", b"A")
    job = api.transfer("POST", "mv", json={"sourcePath": "/a", "targetPath": "/b"}).json()["transferJob"]
    assert api("GET", f"/compute/local/jobs/{job['jobId']}").json()["message"] == "Job not found."
    assert api.wait(job)["status"]["state"] == "COMPLETED"
    assert "Files were successfully moved." in api.log(job["logs"]["outputLog"])
    assert os.path.exists(os.path.join(firecrest_server.root, "b"))

    firecrest_server.put("/a&b", b"x")  # the job template HTML-escapes the path
    job = api.transfer("POST", "mv", json={"sourcePath": "/a&b", "targetPath": "/c"}).json()["transferJob"]
    assert api.wait(job)["status"]["state"] == "COMPLETED"
    assert "successfully" not in api.log(job["logs"]["outputLog"])
    assert "cannot stat '/a&amp;b': No such file or directory" in api.log(job["logs"]["errorLog"])


def test_staged_download_with_ranges_and_expiry(firecrest_server, api):
    data = os.urandom(MIB)
    firecrest_server.put("/s.bin", data)
    firecrest_server.knobs.extra["queue_delay"] = 0.3
    reply = api.transfer("POST", "download", json=STAGE_S_BIN)
    assert reply.status_code == 201
    url = reply.json()["transferDirectives"]["downloadUrl"]
    assert requests.get(url).status_code == 404  # not staged until the job has run
    api.wait(reply.json()["transferJob"])
    ranged = requests.get(url, headers={"Range": "bytes=1000-1015"})
    assert ranged.status_code == 206 and ranged.content == data[1000:1016]
    assert requests.get(url, headers={"Range": f"bytes={MIB}-"}).status_code == 416
    parts = urlsplit(url)
    tampered = urlunsplit(parts._replace(query=parts.query.replace("X-Amz-Expires=604800", "X-Amz-Expires=604801")))
    assert requests.get(tampered).status_code == 403
    firecrest_server.knobs.extra.update(staging_ttl=0, queue_delay=0)
    quick = api.transfer("POST", "download", json=STAGE_S_BIN)
    time.sleep(1.1)
    expired = requests.get(quick.json()["transferDirectives"]["downloadUrl"])
    assert expired.status_code == 403 and b"Request has expired" in expired.content


def test_staged_upload_multipart(firecrest_server, api):
    firecrest_server.knobs.extra["max_part_size"] = MIB
    data = os.urandom(2 * MIB + 5)
    reply = api.transfer("POST", "upload", json={"sourcePath": "/in.bin",
                                                 "transferDirectives": {"transferMethod": "s3", "fileSize": len(data)}})
    directives = reply.json()["transferDirectives"]
    assert reply.status_code == 201 and len(directives["partsUploadUrls"]) == 3 and directives["maxPartSize"] == MIB
    etags = [requests.put(url, data=data[i * MIB:(i + 1) * MIB]).headers["ETag"]
             for i, url in enumerate(directives["partsUploadUrls"])]
    bad = "<CompleteMultipartUpload><Part><PartNumber>1</PartNumber><ETag>nope</ETag></Part></CompleteMultipartUpload>"
    assert requests.post(directives["completeUploadUrl"], data=bad).status_code == 400
    body = "".join(f"<Part><PartNumber>{n}</PartNumber><ETag>{e}</ETag></Part>" for n, e in enumerate(etags, 1))
    assert requests.post(directives["completeUploadUrl"],
                         data=f"<CompleteMultipartUpload>{body}</CompleteMultipartUpload>").status_code == 200
    job = api.wait(reply.json()["transferJob"])
    assert job["status"]["state"] == "COMPLETED"
    assert open(os.path.join(firecrest_server.root, "in.bin"), "rb").read() == data
    no_size = api.transfer("POST", "upload", json={"sourcePath": "/x", "transferDirectives": {"transferMethod": "s3"}})
    assert no_size.status_code == 500
    streamer = api.transfer("POST", "upload",
                            json={"sourcePath": "/x", "transferDirectives": {"transferMethod": "streamer"}})
    assert streamer.status_code == 400 and streamer.json()["message"] == "Requested transfer method is not available."


def test_jobs_are_private_and_cancellable(firecrest_server, api):
    firecrest_server.knobs.extra["queue_delay"] = 5
    firecrest_server.put("/slow", b"x")
    job = api.transfer("POST", "mv", json={"sourcePath": "/slow", "targetPath": "/moved"}).json()["transferJob"]
    listed = api("GET", "/compute/local/jobs").json()["jobs"]
    assert [j["jobId"] for j in listed] == [job["jobId"]] and listed[0]["status"]["state"] == "PENDING"
    assert api("DELETE", f"/compute/local/jobs/{job['jobId']}").status_code == 204
    deadline = time.monotonic() + 2
    while api("GET", f"/compute/local/jobs/{job['jobId']}").json()["jobs"][0]["status"]["state"] != "CANCELLED":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert os.path.exists(os.path.join(firecrest_server.root, "slow"))
    assert api("GET", f"/compute/local/jobs/{uuid.uuid4().int % 10000 + 50000}").status_code == 404


def test_symlinks_and_uploads_stay_inside_the_root(firecrest_server, api, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    victim = outside / "victim.txt"
    victim.write_bytes(b"precious")
    for target in ("/../etc/passwd", "/../../.." + str(victim), "/a/../../.." + str(outside)):
        refused = api.ops("POST", "symlink", json={"sourcePath": target, "linkPath": "/escape"})
        assert refused.status_code == 403, (target, refused.text)
        assert not os.path.lexists(os.path.join(firecrest_server.root, "escape"))
    # "/etc" is the served tree's /etc (the client's "/" is the root), never the host's.
    assert api.ops("POST", "symlink", json={"sourcePath": "/etc", "linkPath": "/etc-link"}).status_code == 201
    assert os.readlink(os.path.join(firecrest_server.root, "etc-link")) == os.path.join(firecrest_server.root, "etc")
    assert api.ops("GET", "view", params={"path": "/etc-link/passwd"}).status_code == 404
    # A link that leads out was planted behind the API's back: writing through it is refused.
    os.symlink(str(victim), os.path.join(firecrest_server.root, "planted"))
    through = api.ops("POST", "upload", params={"path": "/"}, files={"file": ("planted", b"overwritten")})
    assert through.status_code == 403 and victim.read_bytes() == b"precious"
    # An absolute target names a path of the served tree, as clients see it, and works both ways.
    os.makedirs(os.path.join(firecrest_server.root, "data"))
    linked = api.ops("POST", "symlink", json={"sourcePath": "/data", "linkPath": "/shortcut"})
    assert linked.status_code == 201 and linked.json()["output"]["linkTarget"] == "/data"
    assert api.ops("POST", "upload", params={"path": "/shortcut"}, files={"file": ("f", b"inside")}).status_code == 204
    with open(os.path.join(firecrest_server.root, "data", "f"), "rb") as written:
        assert written.read() == b"inside"
