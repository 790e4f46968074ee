"""The HTTP layer the three local servers share (hpcfs/servers/common.py), over real sockets: a request
body stays on the socket until the caller is authenticated, each route caps its body, uploads stream."""
import hashlib
import os
import socket
import ssl
import tracemalloc

import pytest
import requests

from fixtures_em import PASSWORD as EM_PASSWORD
from fixtures_em import USER as EM_USER
from fixtures_firecrest import CLIENT_ID, USERNAME

pytestmark = pytest.mark.timeout(60)
MIB = 1024 * 1024


def status_of_headers_only(port, method, target, length, headers="", tls=False):
    """Send a request's headers announcing ``length`` body bytes, but no body: a server that reads the
    body before it looks at the caller never answers.  Returns the status and whether the server then
    closed the connection (it must: the unread body cannot be taken for the next request)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    if tls:
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        sock = context.wrap_socket(sock)
    with sock:
        sock.sendall(f"{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {length}\r\n"
                     f"{headers}\r\n".encode())
        reply = sock.makefile("rb")
        status = int(reply.readline().split()[1])
        while reply.readline() not in (b"\r\n", b""):
            pass
        reply.read()  # the body, then EOF
        return status


@pytest.fixture
def endpoints(uftp_server, firecrest_server, em_server):
    """(name, port, method, target, tls) for a data-taking route of every port that takes a body."""
    return [
        ("uftp auth", uftp_server.server.auth_port, "POST", "/rest/auth/TEST", True),
        ("firecrest api", firecrest_server.server.api.port, "POST", "/filesystem/local/ops/upload?path=/", False),
        ("firecrest s3", firecrest_server.server.s3.port, "PUT", "/hpcfs/key?partNumber=1&uploadId=x", False),
        ("em api", em_server.server.port, "POST", "/em/files/uplink", False),
    ]


def test_unauthenticated_body_is_refused_without_being_read(endpoints):
    for name, port, method, target, tls in endpoints:
        status = status_of_headers_only(port, method, target, 300 * MIB, tls=tls)
        assert status in (401, 403), name


def test_a_body_beyond_its_route_cap_is_refused_unread(firecrest_server):
    token = requests.post(firecrest_server.server.token_url, timeout=10, data={
        "grant_type": "client_credentials", "client_id": CLIENT_ID, "client_secret": firecrest_server.secret,
    })
    bearer = f"Authorization: Bearer {token.json()['access_token']}\r\nContent-Type: application/json\r\n"
    assert status_of_headers_only(firecrest_server.server.api.port, "POST", "/filesystem/local/ops/mkdir",
                                  64 * MIB, bearer) == 413
    assert status_of_headers_only(firecrest_server.server.api.port, "POST", "/token", 64 * MIB) == 413


def upload_peak_memory(send):
    """The Python memory peak (all threads, the server's included) while ``send()`` runs, and its result."""
    tracemalloc.start()
    try:
        reply = send()
        return reply, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_an_authenticated_em_uplink_is_streamed_to_disk(em_server):
    tokens = requests.post(f"{em_server.server.url}/auth/", data={"username": EM_USER, "password": EM_PASSWORD},
                           timeout=10).json()
    piece, count, boundary = bytes(range(256)) * 4096, 48, "hpcfs-test-boundary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"pod_name\"\r\n\r\npod-a\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"big.bin\"\r\n"
            f"Content-Type: application/octet-stream\r\n\r\n").encode()
    tail = f"\r\n--{boundary}--\r\n".encode()

    def body():
        yield head
        for _ in range(count):
            yield piece
        yield tail

    reply, peak = upload_peak_memory(lambda: requests.post(
        f"{em_server.server.url}/em/files/uplink", data=body(), timeout=60,
        headers={"Authorization": f"Bearer {tokens['access']}", "Content-Length": str(len(head) + count * len(piece)
                                                                                      + len(tail)),
                 "Content-Type": f"multipart/form-data; boundary={boundary}"}))
    assert reply.status_code == 200, reply.text
    with open(os.path.join(em_server.server.root, "pod-a", "big.bin"), "rb") as stored:
        assert hashlib.sha256(stored.read()).hexdigest() == hashlib.sha256(piece * count).hexdigest()
    assert peak < 16 * MIB, f"the server held {peak / MIB:.0f} MiB for a {count} MiB uplink"


def test_an_authenticated_upload_part_is_streamed_to_disk(firecrest_server):
    store = firecrest_server.server.store
    firecrest_server.knobs.extra["max_part_size"] = 64 * MIB
    upload_id = store.new_upload(USERNAME, "big.bin")
    url = store.presign("PUT", USERNAME, "big.bin", 600, partNumber="1", uploadId=upload_id)
    piece = bytes(range(256)) * 4096  # 1 MiB
    count = 48
    reply, peak = upload_peak_memory(lambda: requests.put(url, data=(piece for _ in range(count)), timeout=60,
                                                          headers={"Content-Length": str(count * len(piece))}))
    assert reply.status_code == 200
    assert reply.headers["ETag"] == '"' + hashlib.md5(piece * count).hexdigest() + '"'
    part_file = store._uploads[upload_id]["parts"][1][0]
    with open(part_file, "rb") as stored:
        assert hashlib.sha256(stored.read()).hexdigest() == hashlib.sha256(piece * count).hexdigest()
    assert peak < 16 * MIB, f"the server held {peak / MIB:.0f} MiB for a {count} MiB part"
