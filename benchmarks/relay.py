"""The delay relay that injects the 10 ms round trip: ``DelayProxy`` starts one in a subprocess, which runs
this module: ``python -m benchmarks.relay DELAY_MS WINDOW_BYTES READY_FD LISTEN:TARGET...``."""
import asyncio
import contextlib
import functools
import os
import select
import socket
import subprocess
import sys
from pathlib import Path
from typing import Dict, Optional

from benchmarks.processes import stop_process
from benchmarks.settings import HPCFS_CODE, ONE_WAY_MS

# Largest chunk a relay reads and forwards at once, and its streams' buffer limit: 1 MiB rather than
# asyncio's 64 KiB default makes the Python relay about five times faster (fewer chunks per byte).
RELAY_CHUNK = 1 << 20
RELAY_READY = b"listening\n"  # what a relay writes to its readiness pipe once it listens on every port


class DelayProxy:
    """This module in a subprocess: TCP relays from each listen port to its target port, holding every chunk
    ``delay_ms`` each way with at most ``window`` bytes in flight per direction; it logs to ``NAME.log``."""

    def __init__(self, routes: Dict[int, int], window: int, logs: Path, name: str, delay_ms: float = ONE_WAY_MS):
        self.routes, self.window, self.logs, self.name, self.delay_ms = routes, window, logs, name, delay_ms
        self.process: Optional[subprocess.Popen] = None

    @property
    def port(self) -> int:
        """The listen port of a relay with one route."""
        (port,) = self.routes
        return port

    def start(self, limit: float = 20):
        """Start the relay and wait until it listens on every port.  It says so on a pipe: a test connection
        would be relayed, and the UFTP server could take it for the next client's data connection."""
        routes = [f"{listen}:{target}" for listen, target in self.routes.items()]
        log_path = self.logs / f"{self.name}.log"
        ready, ready_for_child = os.pipe()
        with open(ready, "rb") as said:
            try:
                with open(log_path, "ab") as log:
                    self.process = subprocess.Popen(
                        [sys.executable, "-m", "benchmarks.relay", str(self.delay_ms), str(self.window),
                         str(ready_for_child), *routes], env={**os.environ, **HPCFS_CODE},
                        stdout=log, stderr=log, start_new_session=True, pass_fds=(ready_for_child,))
            finally:
                os.close(ready_for_child)  # only the relay holds it now: its exit is an EOF here
            answered = select.select([said], [], [], limit)[0]
            if not answered or said.readline() != RELAY_READY:
                stop_process(self.process)
                raise RuntimeError(f"the delay relay {self.name} did not start within {limit:g} s (see {log_path})")
        return self

    def stop(self):
        stop_process(self.process)


async def _relay(reader, writer, delay: float, window: int):
    """Forward chunks in order, each ``delay`` after it entered the relay.  A chunk enters only while fewer
    than ``window`` bytes are in flight, and stays counted until its acknowledgement would be back (one more
    ``delay`` after it was forwarded), as bytes in a TCP window do: one connection moves at most
    ``window`` per ``2 * delay``, like one TCP stream on a link of that round trip."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    in_flight = 0
    acknowledged = asyncio.Event()

    def acknowledge(size: int):
        nonlocal in_flight
        in_flight -= size
        acknowledged.set()

    async def receive():
        nonlocal in_flight
        while True:
            try:
                data = await reader.read(min(RELAY_CHUNK, window))  # a chunk always fits an empty window
            except ConnectionError:  # a reset ends this direction like an EOF: send() must not wait forever
                data = b""
            while in_flight + len(data) > window:
                acknowledged.clear()
                await acknowledged.wait()
            in_flight += len(data)
            queue.put_nowait((loop.time() + delay, data))
            if not data:
                return

    async def send():
        while True:
            due, data = await queue.get()
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if not data:
                with contextlib.suppress(OSError):
                    writer.write_eof()
                return
            writer.write(data)
            await writer.drain()
            loop.call_later(delay, acknowledge, len(data))

    receiving = asyncio.ensure_future(receive())
    try:
        await send()
    finally:
        receiving.cancel()


async def _proxy(routes: Dict[int, int], delay: float, window: int, ready_fd: int):
    """Relay each listen port to its target port on 127.0.0.1.  A connection from another local user is
    closed unserved: the UFTP server checks the user of each data connection, and through the relay it sees
    only the relay's, so the relay makes the same check for its own user."""
    from hpcfs.servers.common import peer_uid

    async def connection(target_port, client_reader, client_writer):
        route = f"{client_writer.get_extra_info('sockname')[1]} -> {target_port}"
        uid = peer_uid(client_writer.get_extra_info("socket"))
        if uid != os.geteuid():
            print(f"{route}: refused a connection of uid {uid}", flush=True)
            client_writer.close()
            return
        try:
            server_reader, server_writer = await asyncio.open_connection("127.0.0.1", target_port, limit=RELAY_CHUNK)
        except OSError as exc:
            print(f"{route}: target refused ({exc.strerror})", flush=True)
            client_writer.close()
            return
        print(f"{route}: relaying", flush=True)
        for writer in (client_writer, server_writer):
            writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            await asyncio.gather(_relay(client_reader, server_writer, delay, window),
                                 _relay(server_reader, client_writer, delay, window), return_exceptions=True)
        finally:
            for writer in (client_writer, server_writer):
                writer.close()

    servers = [await asyncio.start_server(functools.partial(connection, target), "127.0.0.1", listen,
                                             limit=RELAY_CHUNK)
               for listen, target in routes.items()]
    os.write(ready_fd, RELAY_READY)
    os.close(ready_fd)
    await asyncio.gather(*(server.serve_forever() for server in servers))


def proxy_main(delay_ms, window, ready_fd, *routes):
    """``DELAY_MS WINDOW_BYTES READY_FD LISTEN:TARGET...``: one relay process, one event loop for every route;
    it writes ``RELAY_READY`` to the file descriptor READY_FD once it listens on every port.  It checks its
    clients' user with hpcfs's own helper: ``DelayProxy`` runs it with this checkout on ``PYTHONPATH``."""
    pairs = dict(tuple(int(port) for port in route.split(":")) for route in routes)
    asyncio.run(_proxy(pairs, float(delay_ms) / 1000.0, int(window), int(ready_fd)))


if __name__ == "__main__":
    proxy_main(*sys.argv[1:])
