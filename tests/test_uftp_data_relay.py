"""The local UFTP server's data port range and advertised port offset, and the bench's delay relay in
front of those ports (issue 13: at 10 ms the bench delays UFTP data, not only commands).  Real server, real
relay subprocess, real clients (hpcfs, pyuftp); the timings below are mechanism bounds, not speed figures."""
import hashlib
import os
import re
import socket
import struct
import subprocess
import time
from pathlib import Path

import fs
import pytest

from benchmarks.ports import free_port, free_port_block
from benchmarks.relay import DelayProxy
from benchmarks.settings import DATA_RELAY_WINDOW
from hpcfs.servers.uftp import UFTPServer
from test_uftp_peers import auth_endpoint, peer, pyuftp  # noqa: F401 (fixture)
from test_uftp_server import read_all, read_exactly, session

pytestmark = pytest.mark.timeout(60)
RANGE = 4  # data ports in the server's range: fewer than the connections each test opens
SHIFT = RANGE  # the relay listens on the range right above the server's


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def data_ports(peer):  # noqa: F811 (the imported fixture)
    """The server's data ports: a fixed range, with nothing advertised elsewhere yet."""
    first = free_port_block(2 * RANGE)
    peer.knobs.extra["data_port_range"] = (first, first + RANGE - 1)
    return range(first, first + RANGE)


def relay(ports, logs: Path, delay_ms: float, window: int):
    """The bench's relay (benchmarks/relay.py) from each port + SHIFT to its port, as the bench starts it."""
    return DelayProxy({port + SHIFT: port for port in ports}, window, logs, "relay", delay_ms=delay_ms).start()


def login(handle):
    return session(handle.server, "/data/")


def advertised_port(reply: bytes) -> int:
    extended = re.fullmatch(rb"229 Entering Extended Passive Mode \(\|\|\|(\d+)\|\)\n", reply)
    if extended:
        return int(extended.group(1))
    high, low = re.fullmatch(rb"227 Entering Passive Mode \(127,0,0,1,(\d+),(\d+)\)\n", reply).groups()
    return int(high) * 256 + int(low)


# -- the server: port range and advertised offset ------------------------------------------------------------
@pytest.mark.parametrize("command", ["PASV", "EPSV"])
def test_data_listeners_stay_in_the_range_and_replies_name_the_shifted_port(peer, data_ports, command):  # noqa: F811
    peer.knobs.extra["advertised_data_port_offset"] = SHIFT
    wire = login(peer)
    payload = (Path(peer.root) / "data" / "hello.txt").read_bytes()
    used = set()
    for _ in range(3 * RANGE):  # more transfers than ports: the range is reused, never left
        listening = advertised_port(wire.one(command)) - SHIFT
        assert listening in data_ports
        used.add(listening)
        with socket.create_connection(("127.0.0.1", listening), timeout=10) as data:
            assert wire.one("RETR hello.txt") == f"150 OK {len(payload)} bytes available for reading.\n".encode()
            assert read_all(data) == payload
        assert wire.reply() == [b"226 File transfer successful\n"]
    assert len(used) > 1  # a random start in the range, as UFTPD's
    wire.close()


def test_a_full_range_is_one_error_reply_and_the_session_goes_on(peer, data_ports):  # noqa: F811
    taken = [socket.create_server(("127.0.0.1", port)) for port in data_ports]
    try:
        wire = login(peer)
        assert wire.one("EPSV") == (f"500 Error processing command 'EPSV': Cannot set up data connection - no free "
                                    f"ports in range {data_ports[0]}:{data_ports[-1]}\n").encode()
        assert wire.one("PWD") == b'257 "/data"\n'
    finally:
        for listener in taken:
            listener.close()


@pytest.mark.parametrize("settings", [{"data_port_range": (2000, 1999)}, {"data_port_range": (0, 10)},
                                      {"data_port_range": (65530, 65535), "advertised_data_port_offset": 64},
                                      {"data_port_range": (1024, 1087), "advertised_data_port_offset": -1024},
                                      {"advertised_data_port_offset": 64}])
def test_impossible_data_ports_are_refused_at_start(tmp_path, settings):
    with pytest.raises(ValueError, match=r"data_port_range|advertised_data_port_offset"):
        UFTPServer(str(tmp_path), {"u": "p"}, tls_dir=str(tmp_path), **settings)


# -- through the bench's relay ---------------------------------------------------------------------------------
def test_hpcfs_and_pyuftp_transfer_exact_bytes_through_the_relay(peer, data_ports, tmp_path):  # noqa: F811
    """hpcfs (EPSV, pooled keep-alive sessions) reads and writes, pyuftp (PASV) reads, all through the relay:
    the server advertises only the relay's ports, where nothing else listens."""
    peer.knobs.extra["advertised_data_port_offset"] = SHIFT
    big = (Path(peer.root) / "data" / "big.bin").read_bytes()
    proxy = relay(data_ports, tmp_path, delay_ms=5, window=DATA_RELAY_WINDOW)
    try:
        with fs.open_fs(peer.url("/data")) as remote:
            assert sha256(remote.readbytes("/big.bin")) == sha256(big)
            remote.writebytes("/up.bin", big[::-1])
        assert sha256((Path(peer.root) / "data" / "up.bin").read_bytes()) == sha256(big[::-1])
        pyuftp(peer, "cp", "-P", f"{auth_endpoint(peer)}:/data/big.bin", str(tmp_path / "pyuftp.bin"))
        assert sha256((tmp_path / "pyuftp.bin").read_bytes()) == sha256(big)
    finally:
        proxy.stop()
    requests = peer.log.snapshot()
    relayed = (tmp_path / "relay.log").read_text().count(": relaying")
    assert requests["EPSV"] >= 2 and requests["PASV"] == 1  # hpcfs read and write, pyuftp read
    assert relayed == requests["EPSV"] + requests["PASV"]


def first_byte_seconds(wire, port: int) -> float:
    """Seconds from sending RETR to the first data byte on a connection to ``port``."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as data:
        started = time.perf_counter()
        wire.sock.sendall(b"RETR big.bin\r\n")
        assert read_exactly(data, 1)
        seconds = time.perf_counter() - started
        read_all(data)
    assert wire.reply()[0].startswith(b"150 OK ")
    assert wire.reply() == [b"226 File transfer successful\n"]
    return seconds


def test_relayed_data_waits_the_one_way_delay(peer, data_ports, tmp_path):  # noqa: F811
    """The first byte of a RETR through a 50 ms relay comes no sooner than 50 ms after the command (a lower
    bound, whatever the load); the direct connection did not pass the relay.  How fast the direct one is
    depends on the machine's load, so it is not compared (a loaded CI machine took 91 ms)."""
    proxy = relay(data_ports, tmp_path, delay_ms=50, window=DATA_RELAY_WINDOW)
    try:
        wire = login(peer)
        direct = first_byte_seconds(wire, advertised_port(wire.one("EPSV")))
        peer.knobs.extra["advertised_data_port_offset"] = SHIFT
        relayed = first_byte_seconds(wire, advertised_port(wire.one("EPSV")))
    finally:
        proxy.stop()
    assert relayed >= 0.050 and direct > 0
    assert (tmp_path / "relay.log").read_text().count(": relaying") == 1  # the second connection only


def test_the_relay_window_allows_one_window_per_round_trip(peer, data_ports, tmp_path):  # noqa: F811
    """1 MiB through a 128 KiB window and 20 ms each way: 8 windows, each acknowledged one round trip (40 ms)
    after it left, so at least 7 x 40 ms; a relay that only delayed (16 MiB window) takes about 20 ms."""
    window, delay = 128 << 10, 0.020
    (Path(peer.root) / "data" / "mib.bin").write_bytes(os.urandom(1 << 20))
    peer.knobs.extra["advertised_data_port_offset"] = SHIFT
    proxy = relay(data_ports, tmp_path, delay_ms=delay * 1000, window=window)
    try:
        wire = login(peer)
        with socket.create_connection(("127.0.0.1", advertised_port(wire.one("EPSV"))), timeout=10) as data:
            started = time.perf_counter()
            assert wire.one("RETR mib.bin") == b"150 OK 1048576 bytes available for reading.\n"
            received = read_all(data)
            seconds = time.perf_counter() - started
        assert wire.reply() == [b"226 File transfer successful\n"]
    finally:
        proxy.stop()
    assert received == (Path(peer.root) / "data" / "mib.bin").read_bytes()
    assert seconds >= ((1 << 20) // window - 1) * 2 * delay


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to connect as another local user")
def test_the_relay_serves_only_its_own_user(tmp_path):
    """The server checks each data connection's local user; behind the relay it sees the relay's, so the
    relay must refuse other users itself: nobody's connection is closed before it reaches the target."""
    with socket.create_server(("127.0.0.1", 0)) as target:
        target.settimeout(2)
        port = target.getsockname()[1]
        listen = free_port()
        proxy = DelayProxy({listen: port}, DATA_RELAY_WINDOW, tmp_path, "relay", delay_ms=1).start()
        try:
            stranger = subprocess.run(
                ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "bash", "-c",
                 f"exec 3<>/dev/tcp/127.0.0.1/{listen}; cat <&3"], capture_output=True, timeout=20)
            assert stranger.stdout == b""
            assert "refused a connection of uid 65534" in (tmp_path / "relay.log").read_text()
            with pytest.raises(socket.timeout):
                target.accept()
            with socket.create_connection(("127.0.0.1", listen), timeout=10) as own:
                accepted, _ = target.accept()
                with accepted:
                    accepted.sendall(b"for you")
                    assert read_exactly(own, 7) == b"for you"
        finally:
            proxy.stop()


def test_a_reset_connection_is_closed_through_to_the_target(tmp_path):
    """A client that resets its connection (as a killed mount does) ends the relayed one too: the target
    reads the bytes sent before and then EOF, instead of a connection the relay holds open forever."""
    with socket.create_server(("127.0.0.1", 0)) as target:
        target.settimeout(10)
        listen = free_port()
        proxy = DelayProxy({listen: target.getsockname()[1]}, DATA_RELAY_WINDOW, tmp_path, "relay",
                                 delay_ms=1).start()
        try:
            client = socket.create_connection(("127.0.0.1", listen), timeout=10)
            accepted, _ = target.accept()
            with accepted:
                client.sendall(b"before the reset")
                assert read_exactly(accepted, 16) == b"before the reset"
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                client.close()  # linger 0: an RST, not a FIN
                accepted.settimeout(5)
                assert accepted.recv(1) == b""
        finally:
            proxy.stop()


def test_a_relay_says_when_it_listens_and_never_probes_its_targets(tmp_path):
    """DelayProxy.start returns once the relay listens, without a test connection that the relay would pass on
    (a UFTP server could take it for a client's data connection); a relay that cannot listen is an error."""
    with socket.create_server(("127.0.0.1", 0)) as target:
        target.settimeout(1)
        listen = free_port()
        proxy = DelayProxy({listen: target.getsockname()[1]}, 1 << 20, tmp_path, "relay", delay_ms=1).start()
        try:
            with pytest.raises(socket.timeout):
                target.accept()
            with pytest.raises(RuntimeError, match="did not start"):
                DelayProxy({listen: target.getsockname()[1]}, 1 << 20, tmp_path, "second", delay_ms=1).start()
        finally:
            proxy.stop()
