"""hpcfs/net's policy against a small local HTTP server over real sockets: the cap on requests in flight,
global back-off with Retry-After, at most one repeat of a server time-out, the circuit breaker, and TLS
settings that mean the same for every protocol."""
import http.server
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from fixtures_firecrest import start_firecrest
from hpcfs import errors, net
from hpcfs.uftp.options import UFTPOptions
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

    def handle_error(self, request, client_address):
        """A client that gave up (a time-out under test) is expected: no traceback on the test's output."""

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
    assert net.parse_verify(None, str(bundle)) == str(bundle) and net.parse_verify("off", str(bundle)) is False
    monkeypatch.setenv("HPCFS_CA_FILE", str(bundle))  # read once, by the options parser: net takes ca_file
    assert net.parse_verify(None) is True and UFTPOptions.parse().ca_file == str(bundle)


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


# -- endpoints and renewal: what every HTTP protocol shares -------------------------------------------------
@pytest.mark.parametrize("host, loopback", [("localhost", True), ("127.0.0.5", True), ("::1", True),
                                            ("localhost.example.org", False), ("10.0.0.1", False)])
def test_loopback_by_name_or_address_only(host, loopback):
    assert net.is_loopback(host) is loopback
    assert net.http_scheme(host, None, logging.getLogger("test"), "%s") == ("http" if loopback else "https")


def test_plain_http_elsewhere_only_when_asked_and_with_a_warning(caplog):
    log = logging.getLogger("hpcfs.test")
    assert net.http_scheme("::1", "HTTPS", log, "%s") == "https" and not caplog.records
    assert net.http_scheme("2001:db8::1", "http", log, "plain http to %s") == "http"
    assert [(record.name, record.getMessage()) for record in caplog.records] == [
        ("hpcfs.test", "plain http to 2001:db8::1")]
    with pytest.raises(errors.UsageError, match="http or https"):
        net.http_scheme("localhost", "ftp", log, "%s")
    assert net.base_url("https", "2001:db8::1", 8443) == "https://[2001:db8::1]:8443"


class Answer:
    def __init__(self, status_code):
        self.status_code, self.closed = status_code, False

    def close(self):
        self.closed = True


@pytest.mark.parametrize("statuses, may, renewals, sent", [
    ([401, 200], True, 1, 2),  # renewed, replayed
    ([401, 401], True, 1, 2),  # the replay's answer is final: no loop against a server that refuses
    ([403, 200], True, 0, 1),  # not a status that means renew
    ([401, 200], False, 0, 1),  # the protocol says no (Flux: no WWW-Authenticate)
])
def test_stale_credentials_are_renewed_and_the_request_replayed_once(statuses, may, renewals, sent):
    answers, given, renewed = [Answer(status) for status in statuses], [], []

    def send():
        given.append(answers[len(given)])
        return given[-1]

    response = net.renew_and_replay(send, (401,), lambda: renewed.append(True), lambda answer: may)
    assert (len(given), len(renewed)) == (sent, renewals) and response is given[-1] and not response.closed
    assert all(answer.closed for answer in given[:-1])  # an answer that was replaced is closed
