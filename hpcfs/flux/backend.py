"""Flux RESTful API jobs as a read-only tree.

::

    flux://[USER@]HOST[:PORT]/
      nodes.json             GET /v1/nodes
      jobs/                  one directory per job, newest first
      jobs/<id>/info.json    GET /v1/jobs/<id>
      jobs/<id>/output       the job's output: the Output chunks joined, each keeping its newline

A finished (``INACTIVE``) job never changes again: its info and output are fetched once and their entries
carry ``ttl=inf``, so the core keeps them for good.  A running job's output is followed through the
``output/stream`` endpoint (the plain ``output`` endpoint of the real server waits for the job's end): a
background reader appends what arrives, the file's size is what has arrived so far, and its entries carry
a short ttl so ``tail -f`` through a mount sees it grow.  The job listing is kept ``listing_ttl`` seconds;
a job id missing from it is asked for directly (one ``GET /v1/jobs/<id>``), so a job submitted since the
listing is found at once.  Everything that would change the tree is refused with EROFS
(``Capabilities.read_only``).
"""
import hashlib
import json
import logging
import math
import threading
import time
from typing import Dict, List, Optional, Tuple

from cachetools import LRUCache

from .. import errors, net
from ..backend import DIRECTORY, FILE, Backend, Capabilities, Entry, normalize
from ..urls import ParsedURL
from .client import FluxClient, stream_chunks
from .options import FluxOptions

log = logging.getLogger(__name__)

FOREVER = math.inf
DIR_MODE, FILE_MODE = 0o555, 0o444
FINISHED = "INACTIVE"
OUTPUT_CACHE_BYTES = 64 << 20  # finished outputs kept in memory between the stat that sized them and reads


def _json_file(value) -> bytes:
    return (json.dumps(value, indent=2, sort_keys=True) + "\n").encode()


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def _time(info: dict, *keys: str) -> float:
    """The first positive timestamp among ``keys`` of a job info; 0 if none."""
    for key in keys:
        value = info.get(key)
        if isinstance(value, (int, float)) and value > 0:
            return float(value)
    return 0.0


class OutputFollower:
    """Reads one running job's output stream in the background; ``data`` is what has arrived so far."""

    def __init__(self, client: FluxClient, jobid: str):
        self._data = bytearray()
        self._lock = threading.Lock()
        self.done = False  # the stream ended: the job finished (or the connection broke)
        self.failed = False
        self._stopped = False
        self._response = client.open_stream(jobid)
        threading.Thread(target=self._follow, args=(jobid,), name=f"flux-follow-{jobid}", daemon=True).start()

    def _follow(self, jobid: str):
        try:
            for chunk in stream_chunks(self._response, f"/jobs/{jobid}/output"):
                with self._lock:
                    self._data += chunk
        except errors.HpcfsError as exc:
            if not self._stopped:
                log.warning("following the output of job %s stopped: %s", jobid, exc)
            self.failed = True
        finally:
            self.done = True

    def stop(self):
        """End the stream (the tree is closing): its connection must not outlive the tree."""
        self._stopped = True
        self._response.close()

    @property
    def data(self) -> bytes:
        with self._lock:
            return bytes(self._data)


class FluxBackend(Backend):
    capabilities = Capabilities(ranged_reads=False, ranged_writes=False, rename="none", max_parallel=4,
                                read_only=True)

    def __init__(self, client: FluxClient, *, listing_ttl: float = 2.0, live_ttl: float = 0.5):
        self.client = client
        self.listing_ttl, self.live_ttl = listing_ttl, live_ttl
        self._lock = threading.RLock()
        self._listing: Optional[List[dict]] = None
        self._listed_at = 0.0
        self._infos: Dict[str, dict] = {}  # job id -> its latest info (a finished job's is final)
        self._fetched: Dict[str, float] = {}  # job id -> when its info was fetched (monotonic)
        self._outputs: LRUCache = LRUCache(OUTPUT_CACHE_BYTES, getsizeof=len)  # finished job -> output
        self._output_sizes: Dict[str, Tuple[int, str]] = {}  # finished job -> output (size, digest), for good
        self._followers: Dict[str, OutputFollower] = {}  # running job -> its output stream reader
        self._nodes: Optional[bytes] = None

    # -- the tree ---------------------------------------------------------------------------------------
    def list(self, path: str) -> List[Entry]:
        parts = self._parts(path)
        if parts == []:
            return [self._nodes_entry(fresh=True), Entry("jobs", DIRECTORY, 0, self._newest(), DIR_MODE)]
        if parts == ["jobs"]:
            return [self._job_entry(info) for info in self._jobs(fresh=True)]
        if len(parts) == 2 and parts[0] == "jobs":
            info = self._info(parts[1])
            return [self._info_entry(info), self._output_entry(info)]
        return self._not_a_directory(path)

    def stat(self, path: str) -> Entry:
        parts = self._parts(path)
        if parts == []:
            return Entry("", DIRECTORY, 0, 0.0, DIR_MODE)
        if parts == ["nodes.json"]:
            return self._nodes_entry(fresh=True)
        if parts == ["jobs"]:
            return Entry("jobs", DIRECTORY, 0, self._newest(), DIR_MODE)
        if parts[0] != "jobs" or len(parts) > 3:
            raise errors.NotFound("no such file or directory", path)
        info = self._info(parts[1])
        if len(parts) == 2:
            return self._job_entry(info)
        entries = {"info.json": self._info_entry, "output": self._output_entry}
        if parts[2] not in entries:
            raise errors.NotFound("a job directory holds only info.json and output", path)
        return entries[parts[2]](info)

    def read_whole(self, path: str, sink) -> None:
        parts = self._parts(path)
        if parts == ["nodes.json"]:
            sink.write(self._nodes or self._fetch_nodes())
        elif len(parts) == 3 and parts[0] == "jobs" and parts[2] == "info.json":
            sink.write(_json_file(self._last_info(parts[1])))
        elif len(parts) == 3 and parts[0] == "jobs" and parts[2] == "output":
            sink.write(self._output(self._last_info(parts[1])))
        else:
            self.stat(path)  # NotFound where nothing is; a directory otherwise
            raise errors.IsADirectory("is a directory", path)

    # -- entries ----------------------------------------------------------------------------------------
    def _nodes_entry(self, fresh: bool) -> Entry:
        data = self._fetch_nodes() if fresh or self._nodes is None else self._nodes
        return Entry("nodes.json", FILE, len(data), time.time(), FILE_MODE, token=_digest(data))

    def _job_entry(self, info: dict) -> Entry:
        return Entry(str(info["id"]), DIRECTORY, 0, _time(info, "t_submit"), DIR_MODE, ttl=self._ttl(info))

    def _info_entry(self, info: dict) -> Entry:
        data = _json_file(info)
        mtime = _time(info, "t_inactive", "t_run", "t_submit")
        return Entry("info.json", FILE, len(data), mtime, FILE_MODE, token=_digest(data), ttl=self._ttl(info))

    def _output_entry(self, info: dict) -> Entry:
        jobid = str(info["id"])
        if info.get("state") == FINISHED:
            size, digest = self._finished_output(info)
            return Entry("output", FILE, size, _time(info, "t_inactive", "t_submit"), FILE_MODE,
                         token=digest, ttl=FOREVER)
        arrived = self._follower(jobid).data
        return Entry("output", FILE, len(arrived), time.time() if arrived else _time(info, "t_run", "t_submit"),
                     FILE_MODE, token=f"live:{len(arrived)}", ttl=self.live_ttl)

    def _ttl(self, info: dict) -> float:
        return FOREVER if info.get("state") == FINISHED else self.live_ttl

    # -- jobs -------------------------------------------------------------------------------------------
    def _jobs(self, fresh: bool = False) -> List[dict]:
        """The listing, newest first; refetched when older than ``listing_ttl`` (or when ``fresh``)."""
        with self._lock:
            if self._listing is None or fresh or time.monotonic() - self._listed_at >= self.listing_ttl:
                listing = self.client.jobs()
                for info in listing:
                    self._remember(info)
                self._listing = sorted(listing, key=lambda info: _time(info, "t_submit"), reverse=True)
                self._listed_at = time.monotonic()
            return self._listing

    def _newest(self) -> float:
        listing = self._jobs()
        return _time(listing[0], "t_submit") if listing else 0.0

    def _info(self, jobid: str) -> dict:
        """A job's info: a finished job's from memory; a running job's at most ``live_ttl`` old."""
        where = f"/jobs/{jobid}"
        if not jobid.isdigit():  # Flux ids here are decimal: probes like .hidden never reach the server
            raise errors.NotFound("no such job", where)
        with self._lock:
            known = self._infos.get(jobid)
            if known is not None and known.get("state") == FINISHED:
                return known
            # An id the listing lacks is asked for all the same: a job submitted since is found at once.
            if known is not None and time.monotonic() - self._fetched[jobid] < self.live_ttl:
                return known
        info = self.client.job(jobid)
        if info is None:
            raise errors.NotFound("no such job", where)
        return self._remember(info)

    def _last_info(self, jobid: str) -> dict:
        """The info the last stat saw, whatever its age: a read then matches the size that stat gave."""
        with self._lock:
            known = self._infos.get(jobid)
        return known if known is not None else self._info(jobid)

    def _remember(self, info: dict) -> dict:
        jobid = str(info["id"])
        with self._lock:
            self._infos[jobid], self._fetched[jobid] = info, time.monotonic()
        return info

    # -- output -----------------------------------------------------------------------------------------
    def _finished_output(self, info: dict):
        """``(size, digest)`` of a finished job's output, fetched once."""
        jobid = str(info["id"])
        with self._lock:
            known = self._output_sizes.get(jobid)
        if known is None:
            data = self._output(info)
            known = (len(data), _digest(data))
            with self._lock:
                self._output_sizes[jobid] = known
        return known

    def _output(self, info: dict) -> bytes:
        jobid = str(info["id"])
        if info.get("state") != FINISHED:
            return self._follower(jobid).data
        with self._lock:
            cached = self._outputs.get(jobid)
            follower = self._followers.pop(jobid, None)
        if cached is not None:
            return cached
        # A stream that ran to the end holds the whole output already; otherwise ask for it.
        data = follower.data if follower is not None and follower.done and not follower.failed else None
        if data is None:
            data = self.client.output(jobid)
        with self._lock:
            if len(data) <= OUTPUT_CACHE_BYTES:
                self._outputs[jobid] = data
        return data

    def _follower(self, jobid: str) -> OutputFollower:
        with self._lock:
            follower = self._followers.get(jobid)
            if follower is None or follower.failed:
                follower = self._followers[jobid] = OutputFollower(self.client, jobid)
            return follower

    def _fetch_nodes(self) -> bytes:
        self._nodes = _json_file(self.client.nodes())
        return self._nodes

    # -- paths ------------------------------------------------------------------------------------------
    @staticmethod
    def _parts(path: str) -> List[str]:
        return [part for part in normalize(path).split("/") if part]

    def _not_a_directory(self, path: str):
        self.stat(path)  # NotFound where nothing is
        raise errors.NotADirectory("not a directory", path)

    # -- a read-only tree -------------------------------------------------------------------------------
    def _read_only(self, path: str):
        raise errors.ReadOnly("Flux jobs are a read-only tree (submit and cancel with the Flux client)", path)

    def write_whole(self, path, source, size):
        self._read_only(path)

    def mkdir(self, path):
        self._read_only(path)

    def remove(self, path):
        self._read_only(path)

    def rmdir(self, path):
        self._read_only(path)

    def rename(self, src, dst):
        self._read_only(src)

    # -- lifecycle --------------------------------------------------------------------------------------
    def describe(self) -> dict:
        return {"protocol": "Flux RESTful API", "server": self.client.base_url, "user": self.client.user or "-",
                "jobs": len(self._jobs()), "read_only": True, "listing_ttl": self.listing_ttl}

    def close(self) -> None:
        with self._lock:
            followers, self._followers = list(self._followers.values()), {}
        for follower in followers:
            follower.stop()
        self.client.close()


# -- URLs -----------------------------------------------------------------------------------------------
def backend_from_url(url: ParsedURL, settings: FluxOptions):
    """``flux://[USER[:TOKEN]@]HOST[:PORT]/[path]`` -> ``(FluxBackend, root)``.

    https with certificate checks (``verify=0`` or a CA file for self-signed servers); plain http only to a
    loopback address, or anywhere with ``insecure_http=1`` (a warning says so).  The multi-user mode's
    credentials are options (``settings``): ``user``, ``token`` (the URL's USER:TOKEN@ gives both) and
    ``secret_key``."""
    if not url.host:
        raise errors.UsageError("flux:// URL needs a host: flux://HOST:PORT/")
    scheme = net.http_scheme(url.host, "http" if settings.insecure_http else None, log,
                             "flux://%s: plain http (insecure_http): the token and job output cross the network "
                             "unencrypted")
    client = FluxClient(
        net.base_url(scheme, url.host, url.port),
        settings.user,
        settings.token,
        settings.secret_key,
        verify=net.parse_verify(settings.verify, settings.ca_file),
        timeout=settings.timeout,
    )
    backend = FluxBackend(client, listing_ttl=settings.listing_ttl, live_ttl=settings.live_ttl)
    return backend, normalize(url.path)
