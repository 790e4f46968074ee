"""The one upload path (hpcfs/core/upload.py) through its three front doors: a real FUSE mount, ``hpcfs cp``
and ``fs.open_fs``, each against the local UFTP server (which renames instantly, so uploads go to a hidden
partial name).  The server's own request log and its upload handler are what the tests watch."""
import glob
import hashlib
import os
import shutil
import threading
import time
from urllib.parse import quote

import fs
import pytest

from hpcfs.servers.uftp import session as uftp_session
from mounting import hpcfs, mounted, sha256_file, write_random

SIZE = 20 * (1 << 20) + 123  # five 4 MiB parts and a short tail
PARTIAL = ".hpcfs-partial"


class Door:
    """One front door to the uploader: ``upload(local, name, in_place)`` gives ``(succeeded, what the user was
    told)``; ``in_place`` writes over an existing file without truncating it (cp: replaces it)."""

    name = ""
    parallel_parts = True  # parts in flight at once (hpcfs cp: one after the other, a resumable prefix)
    keeps_spool = True  # a failed upload leaves the written data in a local spool file (cp: the source is it)

    def __init__(self, server, tmp_path):
        self.server, self.spool = server, str(tmp_path / "spool")
        self.env = {**server.env, "XDG_STATE_HOME": str(tmp_path / "state"),
                    "XDG_CACHE_HOME": str(tmp_path / "cache")}

    def spools(self):
        return glob.glob(os.path.join(self.spool, "*"))


class MountDoor(Door):
    name = "mount"

    def __init__(self, server, tmp_path):
        super().__init__(server, tmp_path)
        self._mount = mounted(server.plain_url("/"), tmp_path / "mnt", env=server.env,
                              options=[f"spool_dir={self.spool}"])
        self.mountpoint = self._mount.__enter__()
        self._logs = str(tmp_path / "state" / "hpcfs" / "*.log")

    def upload(self, local, name, in_place=False):
        try:
            with open(local, "rb") as source, open(os.path.join(self.mountpoint, name), "r+b" if in_place else "wb") \
                    as target:
                shutil.copyfileobj(source, target, 1 << 20)
            return True, ""
        except OSError as exc:
            return False, str(exc) + "".join(open(path).read() for path in glob.glob(self._logs))

    def close(self):
        self._mount.__exit__(None, None, None)


class CpDoor(Door):
    name = "cp"
    parallel_parts = False
    keeps_spool = False

    def upload(self, local, name, in_place=False):
        result = hpcfs("cp", local, self.server.plain_url(f"/{name}"), env=self.env, check=False)
        return result.returncode == 0, result.stderr

    def close(self):
        pass


class OpenFsDoor(Door):
    name = "open_fs"

    def __init__(self, server, tmp_path):
        super().__init__(server, tmp_path)
        self.filesystem = fs.open_fs(server.url("/") + f"&spool_dir={quote(self.spool)}")

    def upload(self, local, name, in_place=False):
        try:
            with open(local, "rb") as source, self.filesystem.openbin(name, "r+" if in_place else "w") as target:
                shutil.copyfileobj(source, target)
            return True, ""
        except Exception as exc:  # the test looks at what the user would read
            return False, str(exc)

    def close(self):
        self.filesystem.close()


@pytest.fixture(params=[MountDoor, CpDoor, OpenFsDoor], ids=lambda door: door.name)
def door(request, uftp_server, tmp_path):
    uftp_server.allow_rapid_commands()
    uftp_server.knobs.extra["data_chunk_latency"] = 0.05  # 1 MiB chunks: parts take long enough to overlap
    opened = request.param(uftp_server, tmp_path)
    try:
        yield opened
    finally:
        opened.close()


@pytest.fixture
def uploads_in_flight(monkeypatch):
    """The most uploads (STOR transfers) the server was receiving at once, and how many were still going
    on at each rename."""
    state = {"active": 0, "peak": 0, "at_renames": []}
    lock = threading.Lock()
    receive, rename = uftp_session.Session.receive_file, uftp_session.Session.rnto

    def renamed(self, params):
        with lock:
            state["at_renames"].append(state["active"])
        return rename(self, params)

    def counted(self, real):
        with lock:
            state["active"] += 1
            state["peak"] = max(state["peak"], state["active"])
        try:
            return receive(self, real)
        finally:
            with lock:
                state["active"] -= 1

    monkeypatch.setattr(uftp_session.Session, "receive_file", counted)
    monkeypatch.setattr(uftp_session.Session, "rnto", renamed)
    return state


@pytest.mark.parametrize("in_place", [False, True], ids=["new", "rewritten"])
def test_a_large_upload_goes_in_parts_to_a_partial_name_then_one_rename(uploads_in_flight, door, in_place,
                                                                         uftp_server, tmp_path):
    """A new file streams while it is written; an existing one rewritten in place goes from its spool at
    close.  Either way: parts in parallel to a partial name, published by one rename once all are in."""
    local = write_random(str(tmp_path / "source.bin"), SIZE)
    if in_place:
        write_random(os.path.join(uftp_server.root, "big.bin"), SIZE)
    uftp_server.log.reset()
    succeeded, told = door.upload(local, "big.bin", in_place)
    assert succeeded, told
    assert sha256_file(os.path.join(uftp_server.root, "big.bin")) == sha256_file(local)
    commands = [(kind, detail) for kind, detail in uftp_server.log.entries if kind in ("STOR", "RANG", "RNTO")]
    stored = [detail for kind, detail in commands if kind == "STOR"]
    assert len(stored) >= 5 and all(PARTIAL in path for path in stored), stored
    assert commands[-1][0] == "RNTO" and commands[-1][1].endswith("/big.bin"), "not published by one final rename"
    renames = uploads_in_flight["at_renames"]
    assert len(renames) == 1, f"published by {len(renames)} renames instead of one"
    assert renames == [0], "renamed before every part was in"
    if door.parallel_parts:
        assert uploads_in_flight["peak"] >= 2, "the parts went out one after the other"
    else:  # in order, so that an interruption leaves a prefix `hpcfs cp --resume` continues
        starts = [int(detail.split()[0]) for kind, detail in commands if kind == "RANG"]
        assert starts == sorted(starts) and uploads_in_flight["peak"] == 1, starts
    assert os.listdir(uftp_server.root) == ["big.bin"], "a partial file was left behind"


def test_a_failed_publish_leaves_no_real_file_and_keeps_the_data(door, uftp_server, tmp_path):
    """The server refuses the final rename (a directory took the name meanwhile): nothing of ours appears
    under the real name, and the data is kept where the user is told."""
    local = write_random(str(tmp_path / "source.bin"), SIZE)
    real = os.path.join(uftp_server.root, "precious.bin")

    def take_the_name_once_the_partial_exists():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if any(PARTIAL in name for name in os.listdir(uftp_server.root)):
                os.makedirs(os.path.join(real, "occupied"))
                return
            time.sleep(0.01)

    racer = threading.Thread(target=take_the_name_once_the_partial_exists)
    racer.start()
    succeeded, told = door.upload(local, "precious.bin")
    racer.join(timeout=60)
    assert not racer.is_alive()
    assert not succeeded, "the upload reported success although its rename failed"
    assert os.listdir(real) == ["occupied"], "the upload wrote under the real name"
    partials = [name for name in os.listdir(uftp_server.root) if PARTIAL in name]
    if door.keeps_spool:
        spools = door.spools()
        assert len(spools) == 1 and sha256_file(spools[0]) == sha256_file(local), spools
        assert spools[0] in told, f"the user was not told where the data is: {told[-500:]}"
        assert partials == [], "the unfinished upload was left on the server"
    else:  # hpcfs cp: the source is untouched and the complete partial is kept for --resume
        assert partials == [".precious.bin.hpcfs-partial"], partials
        digest = hashlib.sha256(open(os.path.join(uftp_server.root, partials[0]), "rb").read()).hexdigest()
        assert digest == sha256_file(local)


def test_attributes_set_before_the_upload_are_applied_after_it(uftp_server, tmp_path):
    """A new executable keeps its x bits, and a chmod or utime of a file still being written (rsync, cp -p)
    waits in the open file until its upload is done: the server ends with exactly those attributes."""
    data = os.urandom(5 << 20)
    with mounted(uftp_server.plain_url("/"), tmp_path / "mnt", env=uftp_server.env) as mountpoint:
        tool = os.open(os.path.join(mountpoint, "tool.sh"), os.O_CREAT | os.O_WRONLY, 0o750)
        os.write(tool, b"#!/bin/sh\necho hi\n")
        os.close(tool)
        kept = os.path.join(mountpoint, "kept.bin")
        with open(kept, "wb") as handle:
            handle.write(data)
            handle.flush()  # in the spool, not on the server yet
            os.chmod(kept, 0o600)
            os.utime(kept, (1_000_000_000, 1_000_000_000))
    assert os.stat(os.path.join(uftp_server.root, "tool.sh")).st_mode & 0o777 == 0o750
    on_server = os.stat(os.path.join(uftp_server.root, "kept.bin"))
    assert (on_server.st_mode & 0o777, int(on_server.st_mtime)) == (0o600, 1_000_000_000)
    assert hashlib.sha256(open(os.path.join(uftp_server.root, "kept.bin"), "rb").read()).digest() == \
        hashlib.sha256(data).digest()


def test_a_staged_firecrest_upload_goes_through_the_same_uploader(firecrest_server):
    """FirecREST renames by a job, so an upload writes the real name directly: its S3 parts in order,
    then the ingress job the commit waits for (``close`` returns with the file in place)."""
    firecrest_server.knobs.extra["max_part_size"] = 2 << 20
    data = os.urandom(11 << 20)
    filesystem = fs.open_fs(firecrest_server.url("/"))
    try:
        with filesystem.openbin("staged.bin", "w") as target:
            target.write(data)
    finally:
        filesystem.close()
    stored = open(os.path.join(firecrest_server.root, "staged.bin"), "rb").read()
    assert hashlib.sha256(stored).digest() == hashlib.sha256(data).digest()
    assert firecrest_server.log.total("PUT /{bucket}/{key:path}") == 6
    assert firecrest_server.log.total("POST /filesystem/{system_name}/transfer/upload") == 1
    assert not [name for name in os.listdir(firecrest_server.root) if PARTIAL in name]
