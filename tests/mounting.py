"""Helpers for tests that drive the real ``hpcfs`` command and real FUSE mounts."""
import contextlib
import hashlib
import os
import random
import subprocess
import sys

from hpcfs.em.backend import MARKER as EM_MARKER
from hpcfs.mounts import is_mounted
from hpcfs.registry import PROTOCOLS

HPCFS = [sys.executable, "-m", "hpcfs"]
# What a subprocess must not inherit from the test runner's environment: every variable a protocol's options
# read (hpcfs/<proto>/options.py).
CREDENTIAL_VARIABLES = frozenset(
    variable for protocol in PROTOCOLS for variable in protocol.options().environment().values())


def hpcfs(*args, env=None, check=True, timeout=120, **kwargs):
    """Run the CLI as a subprocess, with ``env`` added to the environment."""
    result = subprocess.run(
        HPCFS + list(args), env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=timeout,
        **kwargs,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"hpcfs {' '.join(args)} failed ({result.returncode}): {result.stderr}")
    return result


@contextlib.contextmanager
def mounted(url, mountpoint, env=None, options=()):
    """Mount with ``hpcfs mount`` (in the background, as users do) and always unmount."""
    os.makedirs(mountpoint, exist_ok=True)
    args = ["mount", url, str(mountpoint)]
    for option in options:
        args += ["-o", option]
    state = os.path.join(os.path.dirname(str(mountpoint)), "state")
    env = {**(env or {}), "XDG_STATE_HOME": state, "XDG_CACHE_HOME": os.path.join(state, "cache")}
    hpcfs(*args, env=env)
    try:
        yield str(mountpoint)
    finally:
        hpcfs("umount", str(mountpoint), check=False)
        if is_mounted(str(mountpoint)):  # a failed umount must not leave mounts behind for later tests
            subprocess.run(["fusermount3", "-uz", str(mountpoint)], check=False)


def sh(*command, binary=False, input=None, timeout=300):
    """Run a shell tool; its stdout as text (or bytes with ``binary``)."""
    result = subprocess.run(command, capture_output=True, timeout=timeout, input=input)
    if result.returncode != 0:  # the tool's own message says what went wrong, a CalledProcessError does not
        raise AssertionError(f"{' '.join(command)} failed ({result.returncode}): {result.stderr.decode()[-2000:]}")
    return result.stdout if binary else result.stdout.decode()


def copy_round_trip(mountpoint, served_root, workdir, sizes):
    """``cp`` files of ``sizes`` into the mount and back out; check every copy by sha256."""
    local, back = os.path.join(workdir, "local"), os.path.join(workdir, "back")
    os.makedirs(local)
    os.makedirs(back)
    digests = {name: sha256_file(write_random(os.path.join(local, name), size)) for name, size in sizes.items()}
    sh("cp", *[os.path.join(local, name) for name in sizes], mountpoint)
    sh("cp", *[os.path.join(mountpoint, name) for name in sizes], back)
    for name, digest in digests.items():
        assert sha256_file(os.path.join(served_root, name)) == digest, f"{name} on the server"
        assert sha256_file(os.path.join(back, name)) == digest, f"{name} read back through the mount"
        assert os.path.getsize(os.path.join(mountpoint, name)) == sizes[name]


def check_dd_at_random_offsets(mountpoint, served_root, reads, seed=7, size=8 << 20):
    """``dd skip=`` at random offsets of a ``size`` file, each block compared with what the server holds."""
    data = os.urandom(size)
    with open(os.path.join(served_root, "random.bin"), "wb") as handle:
        handle.write(data)
    rng = random.Random(seed)
    for _ in range(reads):
        block = rng.choice([512, 4096, 65536])
        skip = rng.randrange(0, len(data) // block)
        out = sh("dd", f"if={mountpoint}/random.bin", f"bs={block}", f"skip={skip}", "count=1", "status=none",
                 binary=True)
        assert out == data[skip * block : skip * block + block], f"dd bs={block} skip={skip}"


def sha256_file(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def tree_digests(top):
    """``{relative path: sha256}`` of every file below ``top`` (directories as ``"dir"``)."""
    result = {}
    for directory, dirnames, filenames in os.walk(top):
        for name in dirnames:
            result[os.path.relpath(os.path.join(directory, name), top)] = "dir"
        for name in filenames:
            path = os.path.join(directory, name)
            result[os.path.relpath(path, top)] = sha256_file(path)
    return result


def served_digests(top):
    """:func:`tree_digests` of a server's own disk as hpcfs shows it: without the marker files that keep EM
    directories made by mkdir (hpcfs/em/backend.py), which no listing shows."""
    return {path: digest for path, digest in tree_digests(top).items() if os.path.basename(path) != EM_MARKER}


def write_random(path, size):
    """A file of ``size`` random bytes; returns its path."""
    with open(path, "wb") as handle:
        for offset in range(0, size, 1 << 20):
            handle.write(os.urandom(min(1 << 20, size - offset)))
    return path


@contextlib.contextmanager
def small_tmpfs(directory, size, mode=None):
    """A tmpfs of ``size`` (``"1M"``) on ``directory`` (we run as root): a local disk that fills up."""
    os.makedirs(directory, exist_ok=True)
    options = f"size={size}" + (f",mode={mode}" if mode else "")
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(directory)], check=True)
    try:
        yield directory
    finally:
        subprocess.run(["umount", "-l", str(directory)], check=False)
