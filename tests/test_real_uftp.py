"""hpcfs against the real UFTPD 3.5.3 (``../shared/peers``), for what only the real server shows."""
import hashlib
import os
import secrets
import shutil
import stat

import pytest

from hpcfs.urls import open_backend
from mounting import hpcfs, mounted, sh, sha256_file, write_random
from test_uftp_client import data_connection_survives_a_missing_path

pytestmark = pytest.mark.timeout(300)

# name -> (size, mode, mtime); every name has a space, so rsync's temporary ".NAME.XXXXXX" has one too
SPACED_TREE = {
    "plain.txt": (11, 0o644, 1_600_000_000),
    "a file.txt": (1, 0o640, 1_500_000_000),
    "dir one/b c.bin": ((1 << 20) + 1, 0o600, 1_400_000_000),
    "dir one/sub dir/ leading space": (0, 0o755, 1_300_000_000),
    "dir one/sub dir/two  spaces.dat": (4097, 0o604, 1_234_567_890),
}
SPACED_DIRS = {"dir one": (0o750, 1_200_000_000), "dir one/sub dir": (0o711, 1_100_000_000)}


@pytest.fixture
def uftp_area(real_uftpd_env):
    """A fresh directory in the real UFTPD's data tree (shared by everyone: never touch the rest)."""
    name = f"real-peers-fixes-{secrets.token_hex(4)}"
    served = os.path.join(real_uftpd_env["UFTP_DATA_DIR"], name)
    os.mkdir(served)
    os.chmod(served, 0o777)  # UFTPD sessions write as nobody
    try:
        yield served, f"{real_uftpd_env['UFTP_URL']}/{name}"
    finally:
        shutil.rmtree(served, ignore_errors=True)


def build_spaced_tree(top):
    for relative, (size, mode, mtime) in SPACED_TREE.items():
        path = os.path.join(top, relative)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        write_random(path, size)
        os.chmod(path, mode)
        os.utime(path, (mtime, mtime))
    for relative, (mode, mtime) in sorted(SPACED_DIRS.items(), reverse=True):  # deepest first
        os.chmod(os.path.join(top, relative), mode)
        os.utime(os.path.join(top, relative), (mtime, mtime))


def attributes(top):
    """``{relative path: (sha256 or "dir", mode, whole-second mtime)}`` below ``top``.  A directory's mtime
    is left out: rsync's own renames into it move it on the server after rsync set it (any server, any
    name; rsync skips its touch-up because the mount's cached attributes still show the time it set)."""
    found = {}
    for directory, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            path = os.path.join(directory, name)
            info = os.lstat(path)
            is_dir = stat.S_ISDIR(info.st_mode)
            content = "dir" if is_dir else sha256_file(path)
            found[os.path.relpath(path, top)] = (content, stat.S_IMODE(info.st_mode), 0 if is_dir else int(info.st_mtime))
    return found


def test_rsync_archive_of_names_with_spaces_round_trips(real_uftpd_env, uftp_area, tmp_path):
    """UFTPD's MFMT/MFF split their argument on spaces: hpcfs sets attributes under a space-free temporary
    name and renames back, so ``rsync -a`` keeps modes and times, and a second run sends nothing."""
    served, url = uftp_area
    source = tmp_path / "source"
    build_spaced_tree(source)
    expected = attributes(source)
    env = {key: real_uftpd_env[key] for key in ("UFTP_PASSWORD", "HPCFS_CA_FILE")}
    with mounted(url, tmp_path / "mnt", env=env) as mountpoint:
        sh("rsync", "-a", f"{source}/", f"{mountpoint}/tree/")
        assert attributes(os.path.join(served, "tree")) == expected, "on the server"
        assert attributes(os.path.join(mountpoint, "tree")) == expected, "through the mount"
        again = sh("rsync", "-a", "--itemize-changes", f"{source}/", f"{mountpoint}/tree/")
        assert again.strip() == "", f"a second rsync -a found differences:\n{again}"
        back = tmp_path / "back"
        sh("rsync", "-a", f"{mountpoint}/tree/", f"{back}/")
        assert attributes(back) == expected, "copied back out"
        sh("touch", "-d", "@1000000000", f"{mountpoint}/tree/a file.txt")
        sh("chmod", "600", f"{mountpoint}/tree/a file.txt")
    changed = os.stat(os.path.join(served, "tree", "a file.txt"))
    assert (int(changed.st_mtime), stat.S_IMODE(changed.st_mode)) == (1_000_000_000, 0o600)
    leftovers = [name for _, dirs, files in os.walk(served) for name in dirs + files if ".hpcfs-attr." in name]
    assert leftovers == [], "temporary names left behind"


def test_directory_times_survive_attribute_changes_of_spaced_names(real_uftpd_env, uftp_area, tmp_path):
    """Setting a spaced file's attributes renames it twice; its directory keeps its own time, and a
    directory named with spaces takes MFMT/MFF as ``name/.``."""
    served, url = uftp_area
    env = {key: real_uftpd_env[key] for key in ("UFTP_PASSWORD", "HPCFS_CA_FILE")}
    with mounted(url, tmp_path / "mnt", env=env) as mountpoint:
        sh("mkdir", "-p", f"{mountpoint}/dir one")
        sh("sh", "-c", f"echo hello > '{mountpoint}/dir one/x y.txt'")
        sh("touch", "-d", "@1100000000", f"{mountpoint}/dir one")
        sh("chmod", "700", f"{mountpoint}/dir one")
        sh("touch", "-d", "@1000000000", f"{mountpoint}/dir one/x y.txt")
        sh("chmod", "604", f"{mountpoint}/dir one/x y.txt")
    directory, spaced = os.stat(os.path.join(served, "dir one")), os.stat(os.path.join(served, "dir one", "x y.txt"))
    assert (int(directory.st_mtime), stat.S_IMODE(directory.st_mode)) == (1_100_000_000, 0o700)
    assert (int(spaced.st_mtime), stat.S_IMODE(spaced.st_mode)) == (1_000_000_000, 0o604)
    assert os.listdir(os.path.join(served, "dir one")) == ["x y.txt"]


def test_a_failed_mlst_drops_the_data_connection_as_uftpd_does(real_uftpd_env, uftp_area, monkeypatch):
    """What the local server mirrors, on the real UFTPD: MLST of a missing path closes the session's data
    connection, and hpcfs opens a new one for the next transfer."""
    for name, value in real_uftpd_env.items():
        monkeypatch.setenv(name, value)
    served, url = uftp_area
    data = os.urandom(5000)
    with open(os.path.join(served, "f.bin"), "wb") as sink:
        sink.write(data)
    os.chmod(os.path.join(served, "f.bin"), 0o644)
    backend, _ = open_backend(url)
    try:
        data_connection_survives_a_missing_path(backend, "/f.bin", data)
    finally:
        backend.close()


@pytest.mark.parametrize("algorithm", ["md5", "sha1", "sha256", "sha512"])
def test_sum_is_uftpds_own_hash_and_equals_the_files(real_uftpd_env, uftp_area, algorithm):
    served, url = uftp_area
    write_random(os.path.join(served, "a b.bin"), (5 << 20) + 3)
    env = {key: real_uftpd_env[key] for key in ("UFTP_PASSWORD", "HPCFS_CA_FILE")}
    printed = hpcfs("sum", "-v", "-a", algorithm, f"{url}/a b.bin", env=env)
    expected = hashlib.new(algorithm, open(os.path.join(served, "a b.bin"), "rb").read()).hexdigest()
    assert printed.stdout == f"{expected}  {url}/a b.bin\n"
    assert "HASH" in printed.stderr and "RETR" not in printed.stderr, "hashed on the server, no bytes sent"


@pytest.mark.parametrize("transform", ["encrypt=1", "compress=1", "encrypt=1&compress=1"])
def test_encrypted_and_compressed_data_round_trips(real_uftpd_env, uftp_area, tmp_path, transform):
    """UFTPD's own cipher and gzip layers (CryptUtil.py, GzipConnector.py) against hpcfs's: cp both ways
    (parallel parts and ranges), and a mount's readahead."""
    served, url = uftp_area
    env = {key: real_uftpd_env[key] for key in ("UFTP_PASSWORD", "HPCFS_CA_FILE")}
    source = write_random(tmp_path / "up.bin", (9 << 20) + 5)
    hpcfs("cp", str(source), f"{url}/data.bin?{transform}", env=env)
    assert sha256_file(os.path.join(served, "data.bin")) == sha256_file(source)
    hpcfs("cp", f"{url}/data.bin?{transform}", str(tmp_path / "down.bin"), env=env)
    assert sha256_file(tmp_path / "down.bin") == sha256_file(source)
    with mounted(f"{url}?{transform}", tmp_path / "mnt", env=env) as mountpoint:
        assert sha256_file(os.path.join(mountpoint, "data.bin")) == sha256_file(source)


def test_the_peers_password_stays_out_of_test_reports(real_uftpd_env, real_uftp):
    """A failing test's report shows its fixtures' reprs, and CI logs keep them."""
    password = real_uftpd_env["UFTP_PASSWORD"]
    assert password not in repr(real_uftpd_env) and password not in repr(real_uftp)
    assert password not in repr(real_uftp.env) and real_uftp.env["UFTP_PASSWORD"] == password
