"""hpcfs/net's policy against a small local HTTP server over real sockets: the cap on requests in flight,
global back-off with Retry-After, at most one repeat of a server time-out, the circuit breaker, and TLS
settings that mean the same for every protocol."""
import http.server
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from fixtures_firecrest import start_firecrest
from hpcfs import errors, net
from hpcfs.urls import open_backend

pytestmark = pytest.mark.timeout(60)


class CountingServer(http.server.ThreadingHTTPServer):
    """Answers every request after ``hold`` seconds with the next status of ``statuses`` (then 200), and
    counts requests and the most it ever had in flight at once."""

    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), CountingHandler)
        self.lock = threading.Lock()
        self.statuses, self.retry_after, self.hold = [], None, 0.0
        self.requests = self.in_flight = self.most_in_flight = 0
        self.arrivals = []

    @property
    def url(self):
        return f"http://127.0.0.1:{self.server_address[1]}/thing"


class CountingHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        server = self.server
        with server.lock:
            server.requests += 1
            server.in_flight += 1
            server.most_in_flight = max(server.most_in_flight, server.in_flight)
            server.arrivals.append(time.monotonic())
            status = server.statuses.pop(0) if server.statuses else 200
        time.sleep(server.hold)
        with server.lock:
            server.in_flight -= 1
        self.send_response(status)
        if status != 200 and server.retry_after is not None:
            self.send_header("Retry-After", str(server.retry_after))
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    do_POST = do_GET

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    serving = CountingServer()
    thread = threading.Thread(target=serving.serve_forever, daemon=True)
    thread.start()
    yield serving
    serving.shutdown()
    serving.server_close()


def fresh(server, **policy) -> net.Policy:
    return net.set_policy(server.url, net.Policy(backoff=0.01, max_backoff=0.05, **policy)).policy


def test_requests_in_flight_are_capped_per_server(server):
    fresh(server, max_in_flight=3)
    server.hold = 0.1
    session = net.new_session()
    with ThreadPoolExecutor(20) as pool:
        statuses = list(pool.map(lambda _: net.send(session, "GET", server.url).status_code, range(20)))
    assert statuses == [200] * 20
    assert server.requests == 20 and server.most_in_flight == 3


def test_a_busy_answer_pauses_every_request_for_retry_after(server):
    fresh(server)
    server.statuses, server.retry_after = [503], 1
    session = net.new_session()
    started = time.monotonic()
    first = threading.Thread(target=lambda: net.send(session, "GET", server.url))
    first.start()
    time.sleep(0.2)  # the 503 has come: a new request waits for the same pause, though it got no 503 itself
    assert net.send(session, "GET", server.url).status_code == 200
    first.join()
    assert server.requests == 3
    assert min(server.arrivals[1:]) - started >= 1.0


def test_a_server_time_out_is_repeated_once_and_never_for_a_change(server):
    fresh(server)
    server.statuses = [408] * 10
    session = net.new_session()
    assert net.send(session, "GET", server.url).status_code == 408
    assert server.requests == 2
    assert net.send(session, "POST", server.url, idempotent=False).status_code == 408
    assert server.requests == 3


def test_a_request_that_timed_out_is_repeated_once_and_never_for_a_change(server):
    fresh(server)
    server.hold = 0.5
    session = net.new_session()
    with pytest.raises(errors.TimedOut):
        net.send(session, "GET", server.url, timeout=0.2)
    assert server.requests == 2
    with pytest.raises(errors.TimedOut):
        net.send(session, "POST", server.url, idempotent=False, timeout=0.2)
    assert server.requests == 3


def test_the_breaker_fails_fast_while_the_server_is_unhealthy_then_closes(server):
    policy = fresh(server, breaker_threshold=3, breaker_cooldown=1.0)
    server.statuses = [503] * 100
    session = net.new_session()
    with pytest.raises(errors.Busy, match="3 times in a row"):  # the breaker opened during its retries
        net.send(session, "GET", server.url)
    sent = server.requests
    assert sent == policy.breaker_threshold
    started = time.monotonic()
    for _ in range(10):
        with pytest.raises(errors.Busy, match="holds requests back"):
            net.send(session, "GET", server.url)
    assert time.monotonic() - started < 0.5 and server.requests == sent  # nothing reached the server
    server.statuses = []
    time.sleep(policy.breaker_cooldown)
    assert net.send(session, "GET", server.url).status_code == 200
    assert net.send(session, "GET", server.url).status_code == 200


def test_a_refused_connection_is_not_retried(server):
    url = server.url
    fresh(server)
    server.shutdown()
    server.server_close()
    started = time.monotonic()
    with pytest.raises(errors.Unavailable, match="cannot reach"):
        net.send(net.new_session(), "GET", url)
    assert time.monotonic() - started < 0.5


@pytest.mark.parametrize("word", ["off", "false", "no", "0", False])
def test_verify_off_means_the_same_everywhere(word):
    assert net.parse_verify(word) is False
    assert net.new_session(word).verify is False


def test_ca_file_must_exist(tmp_path, monkeypatch):
    monkeypatch.delenv("HPCFS_CA_FILE", raising=False)
    assert net.parse_verify(None) is True
    with pytest.raises(errors.UsageError, match="CA file not found"):
        net.parse_verify("true", str(tmp_path / "missing.pem"))
    bundle = tmp_path / "ca.pem"
    bundle.write_text("not checked here")
    monkeypatch.setenv("HPCFS_CA_FILE", str(bundle))
    assert net.parse_verify(None) == str(bundle) and net.parse_verify("off") is False


def test_firecrest_over_tls_with_verify_off_and_with_its_ca_file(tmp_path):
    """``verify=off`` used to reach requests as the CA path "off" (a raw OSError) for FirecREST only."""
    root = tmp_path / "root"
    root.mkdir()
    (root / "f").write_bytes(b"hello")
    handle = start_firecrest(root, tls=True)
    try:
        for options in ({"verify": "off"}, {"ca_file": handle.server.cert_file}):
            backend, _ = open_backend(handle.url("/"), **options)
            try:
                assert [entry.name for entry in backend.list("/")] == ["f"]
            finally:
                backend.close()
    finally:
        handle.server.stop()
