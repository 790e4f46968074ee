"""The served tree the workloads read and write, and the private scratch directory it lives in."""
import contextlib
import functools
import json
import os
import shutil
import stat
from pathlib import Path

from benchmarks.checks import sha256_of
from benchmarks.settings import FULL, MIB, Sizes


class DataSet:
    """The served tree, made once per size in the scratch directory and reused: ``big.bin``, ``tree/`` of
    100-byte files, ``small/`` of 4 KiB files; writes land in ``in-*`` directories removed after each run."""

    def __init__(self, scratch: Path, sizes: Sizes):
        self.sizes = sizes
        self.root = scratch / ("data" if sizes == FULL else "data-quick")
        self.big = self.root / "big.bin"
        self.tree = self.root / "tree"
        self.small = self.root / "small"

    @functools.cached_property
    def big_sha256(self) -> str:
        return sha256_of(self.big)

    def ensure(self):
        stamp = self.root / ".complete"
        wanted = json.dumps(self.sizes.__dict__, sort_keys=True)
        if stamp.exists() and stamp.read_text() == wanted:
            return
        print(f"making the data set in {self.root} (once)", flush=True)
        shutil.rmtree(self.root, ignore_errors=True)
        self.root.mkdir(parents=True)
        with open(self.big, "wb") as handle:
            for offset in range(0, self.sizes.big, 16 * MIB):
                handle.write(os.urandom(min(16 * MIB, self.sizes.big - offset)))
        for d in range(self.sizes.dirs):
            directory = self.tree / f"d{d:03d}"
            directory.mkdir(parents=True)
            for f in range(self.sizes.files_per_dir):
                (directory / f"f{d * self.sizes.files_per_dir + f:05d}").write_bytes(os.urandom(100))
        self.small.mkdir()
        for index in range(self.sizes.small_files):
            (self.small / f"s{index:04d}.bin").write_bytes(os.urandom(4096))
        stamp.write_text(wanted)

    def incoming(self, name: str) -> Path:
        """A fresh, empty directory on the server side for one peer's writes."""
        path = self.root / f"in-{name}"
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir()
        return path

    def remove_incoming(self):
        for path in self.root.glob("in-*"):
            shutil.rmtree(path, ignore_errors=True)

    def tree_file_paths(self):
        """Server-side paths of the tree's files, as they appear in UFTP requests."""
        return {f"/tree/{p.parent.name}/{p.name}" for p in self.tree.glob("d*/f*")}


def private_directory(path: Path) -> None:
    """Make ``path`` (mode 0700) or accept the one there only if it is a real directory owned by the runner
    that nobody else may write: the data set is reused between runs, and another local user must not be
    able to plant files or symlinks where the bench (often root) writes."""
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700, parents=True)
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid() or info.st_mode & 0o022:
        raise PermissionError(f"{path} is not a directory of yours that only you can write; remove it or set "
                              "HPCFS_BENCH_DIR to another path")
