"""Who can use the local servers' ports, and for how long (hpcfs/servers): the attacks run as a second
local user (``hpcfs-intruder``, tests/intruder.py) against servers owned by the test's user.

- ``hpcfs serve unicore`` runs nothing for a local user without the credentials;
- single-user ``hpcfs serve flux`` serves only the local user who started it: another user's submit is
  refused before anything runs, also when the request comes on a connection already closed (whose
  socket-table row no longer names its owner);
- jobs run with a minimal environment, never the server's;
- ``hpcfs serve flux --require-auth`` names a 0600 file holding the credentials it generated;
- every REST port closes half-sent requests after its header/body timeout, refuses connections beyond
  one local user's share and the total cap, and the owner stays served meanwhile;
- an EM download of a file whose name holds a newline keeps its headers intact.
"""
import concurrent.futures
import json
import os
import re
import stat
import subprocess
import sys
import time
from pathlib import Path

import jwt
import pytest
import requests

from fixtures_em import PASSWORD as EM_PASSWORD
from fixtures_em import USER as EM_USER
from handles import fixtures_module

from hpcfs.registry import SCHEMES, protocol_for

pytestmark = pytest.mark.timeout(180)
INTRUDER_PYTHON = "/usr/bin/python3"  # outside the owner's directories, which the intruder cannot enter
SUBMIT = "POST /v1/jobs/submit HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n" \
         "Content-Length: {length}\r\n\r\n{body}"


def wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def owned_by_root_only(tmp_path: Path) -> Path:
    """A directory only the owner may enter: what a job running as the owner could write into."""
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    return private


# -- Flux: single-user mode is the owner's only ---------------------------------------------------------
def test_an_intruder_cannot_submit_to_a_single_user_flux_server(flux_server, intruder, tmp_path):
    planted = owned_by_root_only(tmp_path) / "pwned"
    body = json.dumps({"command": f"touch {planted}"})
    reply = intruder(["curl", "-s", "-w", "\n%{http_code}", "-H", "Content-Type: application/json",
                      "-d", body, f"{flux_server.api}/v1/jobs/submit"], timeout=30)
    detail, status = reply.stdout.rsplit("\n", 1)
    assert status == "403", reply
    assert "started" in json.loads(detail)["detail"]
    listing = intruder(["curl", "-s", "-w", "\n%{http_code}", f"{flux_server.api}/v1/jobs"], timeout=30)
    assert listing.stdout.rsplit("\n", 1)[1] == "403"
    assert flux_server.server.runner.jobs == {} and not planted.exists()
    owner = requests.post(flux_server.api + "/v1/jobs/submit", json={"command": "true"}, timeout=10)
    assert owner.status_code == 200 and flux_server.wait(owner.json()["id"])["result"] == "COMPLETED"


def test_an_intruder_cannot_read_an_owners_job_output_stream(flux_server, intruder):
    jobid = flux_server.run("echo owner-only-output")
    reply = intruder(["curl", "-s", "-w", "\n%{http_code}", f"{flux_server.api}/v1/jobs/{jobid}/output/stream"],
                     timeout=30)
    assert reply.stdout.rsplit("\n", 1)[1] == "403" and "owner-only-output" not in reply.stdout


SEND_AND_HANG_UP = r'''
import socket, sys
port, count, request = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3].encode()
for _ in range(count):
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
'''


def test_a_request_on_a_connection_closed_at_once_runs_nothing(flux_server, intruder, tmp_path):
    """The closed client socket leaves a TIME_WAIT row in /proc/net/tcp whose uid reads 0: that must not
    pass for the owner root."""
    planted = owned_by_root_only(tmp_path) / "pwned"
    body = json.dumps({"command": f"touch {planted}"})
    count = 30
    result = intruder([INTRUDER_PYTHON, "-c", SEND_AND_HANG_UP, str(flux_server.server.http.port), str(count),
                       SUBMIT.format(length=len(body), body=body)], timeout=60)
    assert result.returncode == 0, result.stderr
    wait_for(lambda: flux_server.log.total("foreign-user", "POST /v1/jobs/submit") == count, 30,
             "the server to answer every connection")
    assert flux_server.log.snapshot()["POST /v1/jobs/submit"] == 0
    assert flux_server.server.runner.jobs == {} and not planted.exists()


def test_multi_user_mode_refuses_an_intruder_without_the_credentials(make_flux_server, intruder):
    handle = make_flux_server(auth=True)
    jobid = handle.run("echo owner-only-output")
    for method, endpoint in (("POST", "/v1/jobs/submit"), ("GET", f"/v1/jobs/{jobid}/output/stream")):
        reply = intruder(["curl", "-s", "-X", method, "-w", "\n%{http_code}", "-H", "Content-Type: application/json",
                          "-d", '{"command": "id"}', handle.api + endpoint], timeout=30)
        assert reply.stdout.rsplit("\n", 1)[1] == "401", (endpoint, reply)
        assert "owner-only-output" not in reply.stdout
    assert len(handle.server.runner.jobs) == 1


def test_an_intruder_without_the_credentials_runs_nothing_on_a_unicore_server(unicore_server, intruder):
    for method, endpoint in (("POST", "/jobs"), ("GET", "/storages")):
        reply = intruder(["curl", "-s", "-X", method, "-w", "\n%{http_code}", "-H", "Content-Type: application/json",
                          "-d", '{"Executable": "id"}', unicore_server.base_url + endpoint], timeout=30)
        assert reply.stdout.rsplit("\n", 1)[1] == "401", (endpoint, reply)
    assert not unicore_server.server.runner.jobs


def test_a_flux_job_gets_a_minimal_environment_not_the_servers(make_flux_server, monkeypatch):
    monkeypatch.setenv("HPCFS_TEST_SECRET", "server-secret-value")
    monkeypatch.setenv("LANG", "C.UTF-8")
    handle = make_flux_server()
    reply = requests.post(handle.api + "/v1/jobs/submit", json={"command": "env", "envars": {"EXTRA": "1"}}, timeout=10)
    jobid = reply.json()["id"]
    handle.wait(jobid)
    output = "".join(handle.server.runner.get(str(jobid)).chunks)
    variables = dict(line.split("=", 1) for line in output.splitlines())
    assert set(variables) == {"PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "EXTRA"}
    assert variables["PATH"] == "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    assert (variables["LANG"], variables["EXTRA"]) == ("C.UTF-8", "1")
    assert "server-secret-value" not in output


def test_serve_flux_require_auth_names_a_private_file_not_the_secrets(tmp_path, intruder):
    env = {key: value for key, value in os.environ.items() if not key.startswith("FLUX_")}
    server = subprocess.Popen([sys.executable, "-m", "hpcfs", "serve", "flux", "--require-auth", "--port", "0",
                               "--root", str(tmp_path)], env=env, stdout=subprocess.PIPE, text=True)
    try:
        banner = "".join(server.stdout.readline() for _ in range(3))
        path = re.search(r"credentials for this run in (\S+) ", banner).group(1)
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        values = dict(line.split("=", 1) for line in Path(path).read_text().splitlines())
        assert set(values) == {"FLUX_USER", "FLUX_TOKEN", "FLUX_SECRET_KEY"}
        assert values["FLUX_TOKEN"] not in banner and values["FLUX_SECRET_KEY"] not in banner
        assert intruder(["cat", path], timeout=30).returncode != 0
        api = re.search(r"at (http://127\.0\.0\.1:\d+)/v1/", banner).group(1)
        signed = jwt.encode({"user": values["FLUX_USER"], "pass": values["FLUX_TOKEN"], "scope": "token"},
                            values["FLUX_SECRET_KEY"], "HS256")
        granted = requests.post(api + "/v1/token", headers={"Authorization": f"Bearer {signed}"}, timeout=10)
        assert granted.status_code == 200 and granted.json()["token_type"] == "bearer"
    finally:
        server.terminate()
        server.wait(timeout=10)
    assert not os.path.exists(path)  # the generated credentials went with the server


# -- every REST port: timeouts and connection caps -------------------------------------------------------
class Port:
    """One REST port of a running server: where it listens, its limits, and a request of its owner."""

    def __init__(self, rest, body_path: str, owner_request):
        self.rest, self.body_path, self.owner_request = rest, body_path, owner_request

    @property
    def tls(self) -> bool:
        return self.rest.scheme == "https"


# Every REST port of every protocol's local server: (scheme, name, options of make_<scheme>_server), from the
# ``rest_port(handle)`` and ``REST_PORTS`` (name -> options; one port named after the scheme unless given)
# of tests/fixtures_<scheme>.py.
REST_PORTS = [(scheme, name, options) for scheme in SCHEMES
              for name, options in getattr(fixtures_module(scheme), "REST_PORTS", {scheme: {}}).items()]


@pytest.fixture(params=REST_PORTS, ids=[name for _, name, _ in REST_PORTS])
def rest_port(request) -> Port:
    scheme, _, options = request.param
    handle = request.getfixturevalue("make_" + protocol_for(scheme).fixture)(**options)
    return Port(*fixtures_module(scheme).rest_port(handle))


HOLD_CONNECTIONS = r'''
import json, os, socket, sys, time
port, count, opening, shared = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3].encode(), sys.argv[4]
held = []
for _ in range(count):
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(opening)
    held.append(sock)
open(os.path.join(shared, "ready"), "w").close()
deadline = time.monotonic() + 60
while not os.path.exists(os.path.join(shared, "go")) and time.monotonic() < deadline:
    time.sleep(0.05)
states = []
for sock in held:
    sock.setblocking(False)
    try:
        data = sock.recv(4096)
        states.append(data.decode("latin-1").split("\r\n")[0] if data else "closed")
    except BlockingIOError:
        states.append("open")
    except ConnectionResetError:
        states.append("closed")
print(json.dumps(states))
'''


def test_connections_beyond_a_users_share_are_refused_and_the_owner_is_served(rest_port, intruder, shared_dir):
    rest_port.rest.limits.max_connections = rest_port.rest.limits.max_per_peer = cap = 8
    opening = "" if rest_port.tls else "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n"  # half-sent handshake or headers
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        holding = pool.submit(intruder, [INTRUDER_PYTHON, "-c", HOLD_CONNECTIONS, str(rest_port.rest.port),
                                         str(cap + 5), opening, str(shared_dir)], timeout=120)
        wait_for(lambda: (shared_dir / "ready").exists() or holding.done(), 60, "the intruder's connections")
        started = time.monotonic()
        reply = rest_port.owner_request()
        assert reply.status_code == 200 and time.monotonic() - started < 15
        (shared_dir / "go").touch()
        result = holding.result()
    states = json.loads(result.stdout)
    refused = [state for state in states if state != "open"]
    assert states.count("open") == cap, states
    assert all(state in ("closed", "HTTP/1.1 503 Service Unavailable") for state in refused), states


WATCH_TIMEOUTS = r'''
import json, select, socket, sys, time
port, body_path, tls = int(sys.argv[1]), sys.argv[2], sys.argv[3] == "1"
openings = {
    "silent": b"",
    "half-headers": b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n",
    "trickle": b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n",
    "half-body": ("POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-www-form-urlencoded\r\n"
                  "Content-Length: 1000\r\n\r\nusername=" % body_path).encode(),
}
if tls:  # garbage is no TLS handshake: only a silent connection waits for one
    openings = {"silent": b""}
started, closed = time.monotonic(), {}
sockets = {}
for name, opening in openings.items():
    sockets[name] = socket.create_connection(("127.0.0.1", port), timeout=10)
    sockets[name].sendall(opening)
while len(closed) < len(sockets) and time.monotonic() - started < 30:
    open_ones = [sock for name, sock in sockets.items() if name not in closed]
    readable, _, _ = select.select(open_ones, [], [], 0.2)
    for name, sock in sockets.items():
        if name in closed:
            continue
        try:
            if sock in readable:
                while sock.recv(65536):
                    pass
                closed[name] = time.monotonic() - started
            elif name == "trickle":
                sock.sendall(b"X")  # a byte now and then: still no complete header
        except (ConnectionError, BlockingIOError):
            closed[name] = time.monotonic() - started
print(json.dumps(closed))
'''


def test_half_sent_requests_are_closed_after_the_timeouts(rest_port, intruder):
    limits = rest_port.rest.limits
    limits.header_timeout = limits.body_timeout = 1.0
    result = intruder([INTRUDER_PYTHON, "-c", WATCH_TIMEOUTS, str(rest_port.rest.port), rest_port.body_path,
                       "1" if rest_port.tls else "0"], timeout=90)
    closed = json.loads(result.stdout)
    expected = {"silent"} if rest_port.tls else {"silent", "half-headers", "trickle", "half-body"}
    assert set(closed) == expected, (closed, result.stderr)
    assert rest_port.owner_request().status_code == 200


# -- EM: a download's headers survive any file name ----------------------------------------------------
@pytest.mark.parametrize("name, disposition", [
    ("two\nlines.txt", "attachment; filename*=utf-8''two%0Alines.txt"),
    ("cr\rlf.txt", "attachment; filename*=utf-8''cr%0Dlf.txt"),
    ('say "hi".txt', 'attachment; filename="say \\"hi\\".txt"'),
    ("tab\there.txt", 'attachment; filename="tab\there.txt"'),
])
def test_em_download_of_an_odd_file_name_keeps_its_headers(em_server, name, disposition):
    em_server.server.write_out_of_band("pod-a", name, b"payload")
    session = requests.Session()
    tokens = session.post(em_server.server.url + "/auth", data={"username": EM_USER, "password": EM_PASSWORD},
                          timeout=10).json()
    reply = session.get(em_server.server.url + "/em/files/downlink", timeout=10,
                        params={"filepath": name, "pod_name": "pod-a"},
                        headers={"Authorization": f"Bearer {tokens['access']}"})
    assert reply.status_code == 200 and reply.content == b"payload"
    assert reply.headers["Content-Disposition"] == disposition
    assert reply.headers["Content-Type"] == "application/octet-stream"
