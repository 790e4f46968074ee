"""``hpcfs cp`` hands a download to the disk in writes of at most 128 KiB (``WRITE_PIECE``, issue 22): Linux
caches a buffered write in page-cache folios as large as the call, and 1 MiB folios were the first memory to
run short beside another writer (a copy at half pyuftp's speed).  What is checked is the mechanism, the size
of every write that reaches the file, counted at the calls into the OS; not a time.
"""
import hashlib
import io
import os
from pathlib import Path

from hpcfs import transfer
from hpcfs.targets import resolve
from hpcfs.transfer import CHUNK, PARALLEL_DOWNLOAD_MIN

# Writes of this size kept their speed beside a writer of 1 MiB writes, larger ones not always (issue 22):
# hpcfs.transfer.WRITE_PIECE, written out so that raising it fails here.
LARGEST_WRITE = 128 << 10


def download(server, name: str, data: bytes, destination, monkeypatch) -> None:
    """``hpcfs cp URL DESTINATION`` in this process, of ``data`` served as ``name``; the copy's bytes checked."""
    Path(server.root, name).write_bytes(data)
    for variable, value in server.env.items():
        monkeypatch.setenv(variable, value)
    transfer.copy_paths([resolve(server.plain_url(f"/{name}"), local_ok=True)],
                        resolve(str(destination), local_ok=True))
    assert hashlib.sha256(destination.read_bytes()).digest() == hashlib.sha256(data).digest()


def inode(status: os.stat_result) -> tuple:
    return status.st_dev, status.st_ino


def test_a_download_in_parallel_ranges_writes_at_most_write_piece_per_call(uftp_server, tmp_path, monkeypatch):
    data = os.urandom(PARALLEL_DOWNLOAD_MIN + 3 * CHUNK + 12345)  # big enough for ranges; a short last piece
    writes = []  # (file, size): the process has other files written with pwrite
    pwrite = os.pwrite

    def counted(fd, view, position):
        writes.append((inode(os.fstat(fd)), len(view)))
        return pwrite(fd, view, position)

    monkeypatch.setattr(transfer.os, "pwrite", counted)
    download(uftp_server, "big.bin", data, tmp_path / "big.bin", monkeypatch)
    copy = inode(os.stat(tmp_path / "big.bin"))  # the partial file the writes went to, renamed
    sizes = [size for written, size in writes if written == copy]
    assert sum(sizes) == len(data), "the bytes did not go through the ranged download's writes"
    assert max(sizes) <= LARGEST_WRITE, f"writes of up to {max(sizes)} bytes"


def test_a_download_in_one_transfer_writes_at_most_write_piece_per_call(uftp_server, tmp_path, monkeypatch):
    data = os.urandom(3 * CHUNK + 12345)  # below PARALLEL_DOWNLOAD_MIN: one transfer, through a file handle
    sizes = []
    fdopen = os.fdopen

    class CountedFile(io.FileIO):
        """The handle's raw file: each call here is one write(2)."""

        def write(self, view):
            sizes.append(len(view))
            return super().write(view)

    def counted_fdopen(fd, mode="r", *arguments, **options):
        if mode != "r+b":  # the download's partial file is the only one opened so
            return fdopen(fd, mode, *arguments, **options)
        return io.BufferedRandom(CountedFile(fd, "r+"))

    monkeypatch.setattr(transfer.os, "fdopen", counted_fdopen)
    download(uftp_server, "whole.bin", data, tmp_path / "whole.bin", monkeypatch)
    assert sum(sizes) == len(data), "the bytes did not go through the download's file handle"
    assert max(sizes) <= LARGEST_WRITE, f"writes of up to {max(sizes)} bytes"

