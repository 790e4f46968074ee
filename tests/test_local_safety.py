"""What another local user, or a directory named like the package, can do to hpcfs on the machine it runs on:
config and secret files read only through a checked descriptor (hpcfs/targets.py), hpcfs's own children
immune to the working directory (hpcfs/cli.py), and no copy of remote data left in $TMPDIR
(hpcfs/core/wholefile.py)."""
import json
import os
import stat
import subprocess
import sys
import textwrap

import pytest

from hpcfs import errors, targets, trusted
from hpcfs.cli import hpcfs_command
from hpcfs.frontends.fsspec import HpcfsFileSystem
from hpcfs.mounts import is_mounted
from hpcfs.trusted import read_token
from mounting import sha256_file, write_random
from test_cli import cli, isolated, ok, one_line_error, private_file, uftp, write_config  # noqa: F401 (fixtures)

BIN = os.path.dirname(sys.executable)  # the console scripts users run: hpcfs, mount.hpcfs


# -- config and secret files ----------------------------------------------------------------------------
@pytest.fixture
def profile(uftp, tmp_path):
    """A profile whose password_command leaves a marker when it runs: ``(text, marker, env)``."""
    marker = tmp_path / "password-command-ran"
    text = f"[myhpc]\nurl = {uftp.url()}\nuser = demo\npassword_command = touch {marker}; echo test123\n"
    return text, marker, {"HPCFS_CA_FILE": uftp.env["HPCFS_CA_FILE"]}


def config_in(config_home, text):
    """Write ``text`` as the config under ``config_home`` (ours, 0600); its path."""
    os.makedirs(os.path.join(config_home, "hpcfs"), mode=0o700, exist_ok=True)
    return private_file(os.path.join(config_home, "hpcfs", "config.ini"), text)


def test_a_config_in_a_directory_another_user_may_change_is_refused_before_anything_runs(
        cli, intruder, shared_dir, profile):
    text, marker, env = profile
    path = config_in(str(shared_dir), text)  # our own file, 0600: only its directory is wrong
    planted = intruder(["mv", f"{shared_dir}/hpcfs", f"{shared_dir}/swapped"])  # what the swap race did
    assert planted.returncode == 0, planted.stderr
    intruder(["mv", f"{shared_dir}/swapped", f"{shared_dir}/hpcfs"])
    assert os.stat(path).st_uid == os.getuid()
    env["XDG_CONFIG_HOME"] = str(shared_dir)
    stderr = one_line_error(cli("ls", "myhpc:/", env=env), 2)
    assert stderr == (f"hpcfs: error: {path} is in {shared_dir}, which other users may change (they could swap "
                      f"the file); run: chmod go-w {shared_dir}")
    assert not marker.exists()
    shared_dir.chmod(0o1777)  # sticky, like /tmp: others may add names there, not replace ours
    ok(cli("ls", "myhpc:/", env=env))
    assert marker.exists()


def test_a_config_in_a_directory_of_another_user_is_refused(cli, intruder, shared_dir, profile):
    text, marker, env = profile
    theirs = shared_dir / "theirs"
    assert intruder(["mkdir", "-m", "755", str(theirs)]).returncode == 0
    shared_dir.chmod(0o1777)  # only the directory of the other user is wrong
    path = config_in(str(theirs), text)
    uid = os.stat(theirs).st_uid
    stderr = one_line_error(cli("ls", "myhpc:/", env={**env, "XDG_CONFIG_HOME": str(theirs)}), 2)
    assert stderr == (f"hpcfs: error: {path} is in {theirs}, which belongs to another user (uid {uid}) who could "
                      "swap the file; keep it in a directory of your own")
    assert not marker.exists()


def test_a_config_that_is_a_symbolic_link_is_refused(cli, isolated, profile, tmp_path):
    text, marker, env = profile
    good = private_file(tmp_path / "elsewhere.ini", text)  # ours and private: only the link is wrong
    path = os.path.join(isolated["XDG_CONFIG_HOME"], "hpcfs", "config.ini")
    os.makedirs(os.path.dirname(path))
    os.symlink(good, path)
    stderr = one_line_error(cli("ls", "myhpc:/", env=env), 2)
    assert stderr == (f"hpcfs: error: {path} is a symbolic link, which could be pointed anywhere; "
                      "replace it with the file it points to")
    assert not marker.exists()


def test_password_and_token_files_are_read_through_the_same_checks(cli, isolated, uftp, shared_dir):
    secret = private_file(shared_dir / "secret", "test123")  # ours, 0600, in a directory others may change
    refusal = (f"hpcfs: error: {secret} is in {shared_dir}, which other users may change (they could swap the "
               f"file); run: chmod go-w {shared_dir}")
    write_config(isolated, f"[myhpc]\nurl = {uftp.url()}\nuser = demo\npassword_file = {secret}\n")
    assert one_line_error(cli("ls", "myhpc:/", env={"HPCFS_CA_FILE": uftp.env["HPCFS_CA_FILE"]}), 2) == refusal
    token_url = f"{uftp.url()}?token=@{secret}"
    assert one_line_error(cli("ls", token_url, env={"HPCFS_CA_FILE": uftp.env["HPCFS_CA_FILE"]}), 2) == refusal


def test_the_checks_and_the_text_come_from_the_one_descriptor(tmp_path, monkeypatch):
    """The file is swapped for another right after it is opened (the race, made certain): what is read and
    what is checked are both the file that was opened."""
    path, evil = tmp_path / "config.ini", tmp_path / "evil.ini"
    private_file(path, "[myhpc]\nurl = uftp://good\n")
    evil.write_text("[myhpc]\nurl = uftp://evil\npassword_command = evil\n")
    evil.chmod(0o666)
    real_open = os.open

    def open_then_swap(name, flags, mode=0o777, *, dir_fd=None):
        fd = real_open(name, flags, mode, dir_fd=dir_fd)
        if name == path.name:
            os.rename(evil, path)
        return fd

    monkeypatch.setattr(os, "open", open_then_swap)
    config = trusted.read_trusted(str(path))
    monkeypatch.undo()
    assert "uftp://evil" in path.read_text()  # the swap happened
    assert config.text == "[myhpc]\nurl = uftp://good\n"
    assert stat.S_IMODE(config.status.st_mode) == 0o600
    config.require(trusted.HOLDS_CREDENTIALS, trusted.OTHERS_MAY_ACCESS)  # the file read is the file checked


def test_a_token_file_is_checked_where_the_backend_reads_it(tmp_path):
    """``token=@FILE`` reaches the UFTP client from open_fs and fsspec too, not only through the CLI's
    profile checks: the client reads it through the same checked descriptor."""
    token = tmp_path / "token"
    private_file(token, "secret-token\n")
    assert read_token(f"@{token}") == "secret-token"
    token.chmod(0o644)
    with pytest.raises(errors.UsageError, match="other users may read or change it; run: chmod 600"):
        read_token(f"@{token}")
    link = tmp_path / "link"
    link.symlink_to(token)
    token.chmod(0o600)
    with pytest.raises(errors.UsageError, match="is a symbolic link"):
        read_token(f"@{link}")


# -- hpcfs's own children -------------------------------------------------------------------------------
@pytest.mark.parametrize("command", [["hpcfs", "mount"], ["mount.hpcfs"]], ids=["hpcfs", "mount.hpcfs"])
def test_mount_works_from_a_directory_holding_a_folder_named_hpcfs(isolated, uftp, tmp_path, command):
    """The mount's child ran ``python -m hpcfs`` and imported the empty folder instead of the package."""
    write_random(uftp.local("data.bin"), 54321)
    workdir = tmp_path / "clone"
    mountpoint = workdir / "hpcfs"  # the folder in the working directory is the mountpoint too
    mountpoint.mkdir(parents=True)
    env = {**isolated, **uftp.env}
    mount = subprocess.run([os.path.join(BIN, command[0]), *command[1:], uftp.url(), "hpcfs"], cwd=workdir,
                           env=env, capture_output=True, text=True, timeout=90)
    try:
        assert mount.returncode == 0, mount.stderr
        assert os.listdir(mountpoint) == ["data.bin"]
        assert sha256_file(mountpoint / "data.bin") == sha256_file(uftp.local("data.bin"))
    finally:
        subprocess.run([os.path.join(BIN, "hpcfs"), "umount", str(mountpoint)], env=env, capture_output=True,
                       timeout=60)
    assert not is_mounted(str(mountpoint))


@pytest.mark.parametrize("safe_path_option", [True, False], ids=["python-P", "before-3.11"])
def test_the_child_command_ignores_a_folder_named_hpcfs_in_its_working_directory(tmp_path, safe_path_option):
    (tmp_path / "hpcfs").mkdir()
    result = subprocess.run(hpcfs_command("--version", safe_path_option=safe_path_option), cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stdout) == (0, "hpcfs 0.1.0\n"), result.stderr


# -- temporary copies of remote data ---------------------------------------------------------------------
CHILD = textwrap.dedent("""
    import glob, json, os, sys, tempfile
    import fsspec

    def copies():
        found = {}
        for directory in glob.glob(os.path.join(tempfile.gettempdir(), "hpcfs-files-*")):
            sizes = sorted(os.path.getsize(os.path.join(directory, name)) for name in os.listdir(directory))
            found[directory] = [oct(os.stat(directory).st_mode & 0o7777), sizes]
        return found

    source = fsspec.open(os.environ["TEST_URL"], "rb").open()  # neither this file nor its filesystem is closed
    data = source.read()
    pid = os.fork()
    if pid == 0:
        sys.exit(0)  # a forked child runs the exit hooks too
    os.waitpid(pid, 0)
    json.dump({"size": len(data), "first": data[:16].hex(), "copies": copies()}, sys.stdout)
""")


def test_a_process_that_never_closes_its_fsspec_filesystem_leaves_no_copy_behind(em_server, tmp_path):
    data = os.urandom(300_000)
    with open(os.path.join(em_server.root, "pod-a", "remote.bin"), "wb") as handle:
        handle.write(data)
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    env = {**os.environ, "TMPDIR": str(tmpdir), "TEST_URL": em_server.url("/pod-a/remote.bin")}
    result = subprocess.run([sys.executable, "-c", CHILD], env=env, cwd=tmp_path, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    assert (seen["size"], seen["first"]) == (len(data), data[:16].hex())
    (directory, (mode, sizes)), = seen["copies"].items()  # one private copy while it ran, kept after the fork
    assert os.path.dirname(directory) == str(tmpdir) and mode == "0o700" and sizes == [len(data)]
    assert os.listdir(tmpdir) == []


def test_closing_an_fsspec_filesystem_removes_its_copies(em_server):
    filesystem = HpcfsFileSystem(em_server.url(), skip_instance_cache=True)
    data = os.urandom(5000)
    with open(os.path.join(em_server.root, "pod-a", "small.bin"), "wb") as handle:
        handle.write(data)
    with filesystem.open("/pod-a/small.bin", "rb") as source:
        assert source.read() == data
    directory = filesystem.remote.files._dir
    assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700 and len(os.listdir(directory)) == 1
    filesystem.close()
    assert not os.path.exists(directory)
