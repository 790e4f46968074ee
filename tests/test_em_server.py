"""The local EM API server against DPhi Space's EM API documentation
(dphi-space.github.io/public-documentation/em-api/api-specs), over real sockets.

Raw ``requests`` calls, as the DPhi example client makes them, so these tests pin the wire format the
backend is written against: routes, envelopes, messages, limits, auth bodies and the 423 lock.
"""
import hashlib
import inspect
import os
import socket
import subprocess
import sys
import threading
import time

import jsonschema
import pytest
import requests

from fixtures_em import PASSWORD, USER
from hpcfs.servers.em import EMServer
from hpcfs.servers.em.server import _size_text

pytestmark = pytest.mark.timeout(30)

LISTING_SCHEMA = {  # derived from the spec's example (reference §6.2)
    "type": "object", "required": ["message", "data"],
    "properties": {"message": {"const": "Successfully listed files"},
                   "data": {"type": "array", "items": {"$ref": "#/$defs/node"}}},
    "$defs": {"node": {
        "type": "object", "required": ["type", "name", "size", "time"],
        "properties": {
            "type": {"enum": ["file", "directory"]},
            "name": {"type": "string", "pattern": "^[^/]+$"},
            "size": {"type": "string", "pattern": "^[0-9]+$"},
            "time": {"type": "string", "pattern": r"^\d{4}-\d{2}-\d{2}-\d{2}-\d{2}$"},
            "hash": {"type": "integer", "minimum": -(2**63), "maximum": 2**63 - 1},
            "contents": {"type": "array", "items": {"$ref": "#/$defs/node"}}},
        "if": {"properties": {"type": {"const": "file"}}},
        "then": {"required": ["hash"], "not": {"required": ["contents"]}},
        "else": {"required": ["contents"], "not": {"required": ["hash"]}}}},
}


class Raw:
    """Calls as the example client makes them: form login, Bearer header, no retries."""

    def __init__(self, handle):
        self.base = handle.server.url
        self.session = requests.Session()
        self.tokens = self.session.post(f"{self.base}/auth/", data={"username": USER, "password": PASSWORD}).json()
        self.session.headers["Authorization"] = f"Bearer {self.tokens['access']}"

    def get(self, path, **kwargs):
        return self.session.get(self.base + path, timeout=10, **kwargs)

    def post(self, path, **kwargs):
        return self.session.post(self.base + path, timeout=10, **kwargs)

    def uplink(self, files, **fields):
        return self.post("/em/files/uplink", files=[("files", item) for item in files], data=fields)


@pytest.fixture
def raw(em_server):
    return Raw(em_server)


# -- auth -----------------------------------------------------------------------------------------------
def test_login_returns_a_jwt_pair_and_refresh_gives_a_new_access_token(em_server):
    base = em_server.server.url
    tokens = requests.post(f"{base}/auth/", data={"username": USER, "password": PASSWORD}).json()
    assert set(tokens) == {"refresh", "access"} and tokens["access"].count(".") == 2
    again = requests.post(f"{base}/auth/refresh", json={"refresh": tokens["refresh"]})
    assert again.status_code == 200 and set(again.json()) == {"access"}
    assert requests.post(f"{base}/auth", data={"username": USER, "password": PASSWORD}).status_code == 200


def test_bad_credentials_and_tokens_get_drf_bodies(em_server):
    base = em_server.server.url
    refused = requests.post(f"{base}/auth/", data={"username": USER, "password": "wrong"})
    assert refused.status_code == 401
    assert refused.json() == {"detail": "No active account found with the given credentials"}
    assert requests.post(f"{base}/auth/", data={"username": USER}).json() == {"password": ["This field is required."]}
    anonymous = requests.get(f"{base}/em/files/list")
    assert anonymous.status_code == 401 and anonymous.headers["WWW-Authenticate"] == 'Bearer realm="api"'
    assert anonymous.json() == {"detail": "Authentication credentials were not provided."}
    forged = requests.get(f"{base}/em/files/list", headers={"Authorization": "Bearer a.b.c"})
    assert forged.status_code == 401 and forged.json()["code"] == "token_not_valid"
    bad_refresh = requests.post(f"{base}/auth/refresh", json={"refresh": "a.b.c"})
    assert bad_refresh.json() == {"detail": "Token is invalid or expired", "code": "token_not_valid"}


def test_tokens_expire_after_their_configured_lifetime(make_em_server):
    handle = make_em_server(access_lifetime=0.4)
    raw = Raw(handle)
    assert raw.get("/em/files/list").status_code == 200
    time.sleep(0.5)
    assert raw.get("/em/files/list").status_code == 401
    access = raw.session.post(f"{raw.base}/auth/refresh", data={"refresh": raw.tokens["refresh"]}).json()["access"]
    assert raw.get("/em/files/list", headers={"Authorization": f"Bearer {access}"}).status_code == 200


def test_an_access_token_is_not_a_refresh_token(em_server, raw):
    refused = raw.post("/auth/refresh", json={"refresh": raw.tokens["access"]})
    assert refused.status_code == 401


# -- files ----------------------------------------------------------------------------------------------
def test_uplink_list_downlink_delete_round_trip(em_server, raw):
    payload = os.urandom(300_000)
    sent = raw.uplink([("data.bin", payload), ("note.txt", b"hi")], dest_path="./exp-1/run", pod_name="pod-a")
    assert sent.status_code == 200
    assert sent.json() == {"message": "Successfully uplinked files",
                           "data": {"file_count": 2, "total_size_kb": round(300_002 / 1024, 2)}}
    listing = raw.get("/em/files/list", params={"pod_name": "pod-a"}).json()
    jsonschema.validate(listing, LISTING_SCHEMA)
    run = listing["data"][0]["contents"][0]
    assert (listing["data"][0]["name"], run["name"]) == ("exp-1", "run")
    assert [(n["name"], n["size"]) for n in run["contents"]] == [("data.bin", "300000"), ("note.txt", "2")]
    got = raw.get("/em/files/downlink", params={"filepath": "/exp-1/run/data.bin", "pod_name": "pod-a"})
    assert hashlib.sha256(got.content).hexdigest() == hashlib.sha256(payload).hexdigest()
    assert got.headers["Content-Disposition"] == 'attachment; filename="data.bin"'
    deleted = raw.post("/em/files/delete", json={"filepath": "exp-1", "pod_name": "pod-a"})  # recursive
    assert deleted.json() == {"message": "File deleted successfully"}
    assert os.listdir(os.path.join(em_server.root, "pod-a")) == []


def test_files_go_to_the_named_volume_only(em_server, raw):
    raw.uplink([("f.txt", b"default")])
    raw.uplink([("f.txt", b"b")], pod_name="pod-b")
    with open(os.path.join(em_server.root, "_default", "f.txt"), "rb") as handle:
        assert handle.read() == b"default"
    assert raw.get("/em/files/list", params={"pod_name": "pod-a"}).json()["data"] == []
    refused = raw.post("/em/files/delete", data={"filepath": "f.txt", "pod_name": "pod-a"})
    assert refused.status_code == 400 and refused.json() == {"error": "DELETE_FAILED", "message": "File delete failed"}


def test_unknown_pod_names_create_volumes_and_are_recorded(em_server, raw):
    assert raw.get("/em/files/list", params={"pod_name": "brand-new"}).json()["data"] == []
    assert os.path.isdir(os.path.join(em_server.root, "brand-new"))
    assert em_server.server.names_seen["brand-new"] == 1
    assert ("files/list", "brand-new") in em_server.log.entries
    listed = raw.get("/em/pvc/list").json()
    assert listed["data"] == ["brand-new", "pod-a", "pod-b"]
    assert raw.get("/em/files/list", params={"pod_name": "Hey no whitespaces"}).json()["error"] == "INVALID_POD_NAME"


def test_part_names_are_reduced_like_django(em_server, raw):
    raw.uplink([("../../evil.txt", b"x"), ("a&amp;b.txt", b"y")], pod_name="pod-a")
    assert sorted(os.listdir(os.path.join(em_server.root, "pod-a"))) == ["a&b.txt", "evil.txt"]


def test_uplink_limits(make_em_server):
    raw = Raw(make_em_server(max_upload=1000, max_files=3))
    too_big = raw.uplink([("a", b"x" * 600), ("b", b"x" * 600)])
    assert too_big.status_code == 400
    assert too_big.json() == {"error": "MAX_UPLINK_SIZE_EXCEEDED", "message": "Total upload size exceeds 1000 bytes"}
    too_many = raw.uplink([(str(i), b"x") for i in range(4)])
    assert too_many.status_code == 400 and too_many.headers["Content-Type"].startswith("text/html")
    empty = raw.post("/em/files/uplink", data={"dest_path": "x"})
    assert empty.json() == {"error": "NO_FILES", "message": "No files were provided for uplink!"}


def test_default_limit_is_worded_as_the_spec_does():
    assert inspect.signature(EMServer).parameters["max_upload"].default == 2 * 1024**3
    assert _size_text(2 * 1024**3) == "2 GB"


def test_downlink_errors_and_no_ranges(em_server, raw):
    em_server.server.write_out_of_band("pod-a", "d/f.bin", b"0123456789")
    pod = {"pod_name": "pod-a"}
    partial = raw.get("/em/files/downlink", params={"filepath": "d/f.bin", **pod}, headers={"Range": "bytes=2-3"})
    assert partial.status_code == 200 and partial.content == b"0123456789"
    assert "Content-Length" not in partial.headers and "Accept-Ranges" not in partial.headers
    assert raw.get("/em/files/downlink", params={"filepath": "d/none", **pod}).status_code == 404
    assert raw.get("/em/files/downlink", params={"filepath": "../pod-b/x", **pod}).json() == {
        "error": "ILLEGAL_PATH", "message": "Illegal path provided"}
    assert raw.get("/em/files/downlink", params={"filepath": "d", **pod}).status_code == 400
    em_server.server.write_out_of_band("pod-a", "ünï.txt", b"u")
    named = raw.get("/em/files/downlink", params={"filepath": "ünï.txt", **pod})
    assert named.headers["Content-Disposition"] == "attachment; filename*=utf-8''%C3%BCn%C3%AF.txt"


def test_double_slashes_are_collapsed(em_server, raw):
    assert raw.get("//em/files/list").status_code == 200


# -- drift ----------------------------------------------------------------------------------------------
def test_v2_lists_by_post_with_pvc_name(make_em_server):
    handle = make_em_server(api="v2")
    raw = Raw(handle)
    handle.server.write_out_of_band("pod-b", "x.txt", b"x")
    assert raw.get("/em/files/list", params={"pvc_name": "pod-b"}).status_code == 405
    listed = raw.post("/em/files/list", data={"pvc_name": "pod-b"}).json()["data"]
    assert [node["name"] for node in listed] == ["x.txt"]
    assert raw.post("/em/pvc/list").json()["data"] == ["pod-a", "pod-b"]


def test_v1_ignores_pvc_name(em_server, raw):
    raw.uplink([("f", b"1")], pvc_name="pod-b")
    assert os.listdir(os.path.join(em_server.root, "_default")) == ["f"]


def test_servers_without_volume_endpoints(make_em_server):
    raw = Raw(make_em_server(pvc_list=False))
    assert raw.get("/em/pvc/list").status_code == 404


# -- concurrency and knobs ------------------------------------------------------------------------------
def test_a_second_request_of_the_account_gets_423_while_one_runs(em_server, raw):
    em_server.knobs.extra["busy_time"] = 0.5
    first = threading.Thread(target=raw.get, args=("/em/files/list",))
    first.start()
    time.sleep(0.15)
    other = Raw(em_server)
    locked = other.get("/em/files/list")
    first.join(30)
    assert not first.is_alive(), "the first request hung"
    assert locked.status_code == 423 and locked.json()["error"] == "LOCKED"
    assert other.get("/em/files/list").status_code == 200


def test_fault_knobs(em_server, raw):
    em_server.knobs.busy_responses = 1
    assert raw.get("/em/nodes/status").status_code == 423
    em_server.knobs.extra["fail_responses"] = 1
    failed = raw.get("/em/nodes/status")
    assert failed.status_code == 500 and failed.headers["Content-Type"].startswith("text/html")
    assert raw.get("/em/nodes/status").json()["data"][0] == {"name": "fpga", "status": "True"}
    assert em_server.server.statuses[423] == 1 and em_server.server.statuses[500] == 1


def test_pod_run_and_status(em_server, raw):
    bad = raw.post("/em/pod/run", json={"image": "python:3.11-alpine", "node": "GPU"})
    assert bad.status_code == 400
    run = raw.post("/em/pod/run", json={"image": "python:3.11-alpine", "max_duration": 5, "node": "MPU",
                                        "pod_name": "pod-c"})
    assert run.json() == {"message": "Docker run scheduled successfully"}
    status = raw.get("/em/pod/status", params={"pod_name": "pod-c"}).json()
    assert "startedAt" in status["data"]["state"]["running"]
    assert os.path.isdir(os.path.join(em_server.root, "pod-c"))  # a new pod name made a new volume


def test_uplink_never_writes_through_a_link_out_of_the_volume(em_server, raw, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious")
    volume = os.path.join(em_server.server.root, "pod-a")
    os.makedirs(volume, exist_ok=True)
    os.symlink(str(victim), os.path.join(volume, "planted.txt"))  # a pod could leave such a link
    reply = raw.uplink([("planted.txt", b"overwritten")], pod_name="pod-a")
    assert reply.status_code in (400, 403) and victim.read_bytes() == b"precious"


# -- hpcfs serve: conventions shared with the other servers -----------------------------------------------
def _defaults(module):
    import argparse

    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    return parser.parse_args(["--root", "/x"])


def test_each_server_has_its_own_default_ports_and_one_latency_unit():
    from hpcfs.servers import em, firecrest, uftp

    ports = [_defaults(em).port, _defaults(firecrest).port, _defaults(firecrest).s3_port,
             _defaults(uftp).auth_port, _defaults(uftp).listen_port]
    assert len(set(ports)) == len(ports), ports  # the guides start them side by side
    for module in (em, firecrest, uftp):
        parser_defaults = _defaults(module)
        assert parser_defaults.latency == 0
    from hpcfs.servers.common import duration

    assert [duration("10ms"), duration("0.5s"), duration("10"), duration("1.5")] == [0.01, 0.5, 0.01, 0.0015]


@pytest.mark.parametrize("arguments, message", [
    (["--latency", "10 minutes"], "argument --latency: '10 minutes' is not a time like 10ms or 0.5s"),
    (["--users", "demo:pw"], "--users would show passwords to every local user (ps, /proc): put them in a file "
                             "of mode 0600 and pass --users-file FILE, or use the environment"),
])
def test_serve_em_refuses_bad_options_in_one_line(tmp_path, arguments, message):
    done = subprocess.run([sys.executable, "-m", "hpcfs", "serve", "em", "--root", str(tmp_path)] + arguments,
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and done.stderr.splitlines() == [
        f"hpcfs serve em: error: {message} (see 'hpcfs serve em --help')"]


def test_serve_em_names_a_port_in_use_and_generates_no_default_account(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("EM_USERNAME", "EM_PASSWORD")}
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        done = subprocess.run([sys.executable, "-m", "hpcfs", "serve", "em", "--root", str(tmp_path),
                               "--port", str(port)], capture_output=True, text=True, timeout=30, env=env)
    assert done.returncode == 2 and done.stderr.splitlines() == [
        f"hpcfs: error: port {port} on 127.0.0.1 is already in use (another server running?): choose another "
        f"with --port PORT, or --port 0 for any free port"]
    server = EMServer(str(tmp_path), None).start()
    try:
        (user, password), = server.users.items()
        assert user != "alice" and len(password) >= 16
        with open(server.generated_credentials) as credentials:
            assert credentials.read() == f"{user}:{password}\n"
        assert os.stat(server.generated_credentials).st_mode & 0o777 == 0o600
    finally:
        server.stop()
    assert not os.path.exists(server.generated_credentials)
