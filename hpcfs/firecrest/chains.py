"""Sequential staged reads kept on one GET.

The block cache reads a file ahead in runs of blocks, one ``read_pieces`` each.  Every GET on a staging
area has a fixed cost, and moto (the real peer's S3) reads the whole object for each, so a 256 MiB file
read in 8 MiB runs cost 32 whole-object passes.  Here a run's GET is left open ("parked") to the object's
end, and the run that starts where it stopped reads on from it: a sequential reader's runs share one GET.

A reader's runs are in flight at once, on worker threads that start them in no fixed order, so a run
takes its stream only once it knows whether one will arrive: it waits while a run in progress stops where
it starts, or while the chain is still behind it (a run in progress, or a parked GET, less than a few runs
back: the runs in between were handed out with it and are about to start).  Otherwise it opens its own GET.
"""
import collections
import contextlib
import threading
import time
from dataclasses import dataclass
from typing import Callable, Counter, Dict, Iterator, List, Optional, Tuple

from .client import StagedStream

PARKED_MAX = 8  # open GETs waiting for the run after theirs (orphans when that run never comes)
PARKED_IDLE = 10.0  # seconds one waits: a store may drop an idle connection, and a reader may be gone
CHAIN_REACH = 4  # runs: a window of readahead is handed out as at most 4 (the block cache's RUNS_IN_FLIGHT)
GAP_GRACE = 1.0  # seconds a run waits for the runs between a parked GET and itself to start


@dataclass
class _Parked:
    stream: StagedStream
    url: str
    since: float


class Run:
    """One run of ``read_pieces``: ``[start, end)`` of ``path``, read by the stream it ``use``s."""

    def __init__(self, chains: "StreamChains", path: str, start: int, end: int):
        self._chains, self.path, self.start, self.end = chains, path, start, end
        self.stream: Optional[StagedStream] = None
        self.url = ""

    def resume(self, url: str) -> Optional[StagedStream]:
        """The GET of ``url`` a run before this one left open where this one starts, once there is one, or
        None when none is coming."""
        stream = self._chains.take(self, url)
        return None if stream is None else self.use(stream, url)

    def use(self, stream: StagedStream, url: str) -> StagedStream:
        if self.stream is not None:  # a retry's: the one before is done with
            self.stream.close()
        self.stream, self.url = stream, url
        return stream


class StreamChains:
    """The runs in progress and the open GETs left for the run after theirs."""

    def __init__(self, wait_limit: float):
        self._wait_limit = wait_limit  # at most this long behind a run in progress, then a GET of its own
        self._changed = threading.Condition()
        self._running: Counter[Tuple[str, int, int]] = collections.Counter()  # (path, start, end)
        self._parked: Dict[Tuple[str, int], _Parked] = collections.OrderedDict()  # (path, position); oldest first
        self._sweeper: Optional[threading.Thread] = None

    @contextlib.contextmanager
    def run(self, path: str, start: int, end: int) -> Iterator[Run]:
        """A run of ``path`` from ``start`` to ``end``.  Its stream, unless it failed or reached the object's
        end, is parked for the next run before the runs waiting for this one go on."""
        key = (path, start, end)
        with self._changed:
            self._running[key] += 1
        run, done = Run(self, path, start, end), False
        try:
            yield run
            done = True
        finally:
            stream = run.stream
            with self._changed:
                kept = done and stream is not None and not stream.ended
                closing = self._park(path, stream, run.url) if kept and stream else [stream]
                self._running[key] -= 1
                if not self._running[key]:
                    del self._running[key]
                self._changed.notify_all()
            _close_all(closing)

    def take(self, run: Run, url: str) -> Optional[StagedStream]:
        now = time.monotonic()
        deadline, grace_end = now + self._wait_limit, now + GAP_GRACE
        with self._changed:
            while (run.path, run.start) not in self._parked:
                behind = self._behind(run)
                limit = deadline if behind == "running" else grace_end if behind == "parked" else now
                now = time.monotonic()
                if now >= limit:
                    return None
                self._changed.wait(limit - now)
            parked = self._parked.pop((run.path, run.start))
        if parked.url == url and time.monotonic() - parked.since < PARKED_IDLE:
            return parked.stream
        parked.stream.close()  # another version of the file, or idle too long to trust
        return None

    def _behind(self, run: Run) -> Optional[str]:
        """Under the lock: what of the chain ``run`` would read on from is behind it: "running" (a run in
        progress ends at or before its start, within reach), "parked" (only a parked GET), or None."""
        reach = run.start - CHAIN_REACH * (run.end - run.start)
        if any(path == run.path and reach <= end <= run.start for path, _, end in self._running):
            return "running"
        if any(path == run.path and reach <= position < run.start for path, position in self._parked):
            return "parked"
        return None

    def _park(self, path: str, stream: StagedStream, url: str) -> List[Optional[StagedStream]]:
        """Under the lock: keep ``stream`` for the run at its position; the streams to close."""
        closing = self._stale(lambda key: key == (path, stream.position))
        while len(self._parked) >= PARKED_MAX:
            closing.append(self._parked.pop(next(iter(self._parked))).stream)
        self._parked[(path, stream.position)] = _Parked(stream, url, time.monotonic())
        if self._sweeper is None:
            self._sweeper = threading.Thread(target=self._sweep, name="hpcfs-staged-sweeper", daemon=True)
            self._sweeper.start()
        return closing

    def _stale(self, replaced: Callable[[Tuple[str, int]], bool]) -> List[Optional[StagedStream]]:
        """Under the lock: take out the streams idle too long and those ``replaced``."""
        now = time.monotonic()
        keys = [key for key, parked in self._parked.items() if replaced(key) or now - parked.since >= PARKED_IDLE]
        return [self._parked.pop(key).stream for key in keys]

    def _sweep(self):
        """Close the streams no run came back for (a reader that stopped): each holds a connection, and
        the store goes on sending into it until it is closed.  Ends once nothing is parked."""
        while True:
            with self._changed:
                if not self._parked:
                    self._sweeper = None
                    return
                self._changed.wait(PARKED_IDLE / 2)
                closing = self._stale(lambda key: False)
            _close_all(closing)

    def close(self):
        with self._changed:
            closing = self._stale(lambda key: True)
        _close_all(closing)


def _close_all(streams: List[Optional[StagedStream]]):
    for stream in streams:
        if stream is not None:
            stream.close()
