"""``hpcfs mount`` of the local UFTP server, used with ordinary shell tools; bytes checked by sha256."""
import hashlib
import os

import pytest
from mounting import check_dd_at_random_offsets, copy_round_trip, hpcfs, mounted, sh, sha256_file, tree_digests

SIZES = {"empty": 0, "one-byte": 1, "mib-plus-one": (1 << 20) + 1, "hundred-mib": 100 << 20}


@pytest.fixture
def mount(uftp_server, tmp_path):
    with mounted(uftp_server.plain_url("/"), tmp_path / "mnt", env=uftp_server.env) as mountpoint:
        yield mountpoint


def test_cp_in_and_out_keeps_every_byte(uftp_server, mount, tmp_path):
    copy_round_trip(mount, uftp_server.root, str(tmp_path), SIZES)


def test_dd_reads_at_random_offsets(uftp_server, mount):
    check_dd_at_random_offsets(mount, uftp_server.root, reads=40)


def test_rsync_round_trip_of_a_thousand_files(uftp_server, mount, tmp_path):
    source = tmp_path / "tree"
    for index in range(1000):
        directory = source / f"d{index % 20:02d}"
        directory.mkdir(parents=True, exist_ok=True)
        (directory / f"f{index:04d}.txt").write_bytes(os.urandom(index % 97 + 1))
    sh("rsync", "-a", f"{source}/", f"{mount}/tree/")
    assert tree_digests(os.path.join(uftp_server.root, "tree")) == tree_digests(source)
    back = tmp_path / "back"
    sh("rsync", "-a", f"{mount}/tree/", f"{back}/")
    assert tree_digests(back) == tree_digests(source)
    again = sh("rsync", "-a", "--itemize-changes", f"{source}/", f"{mount}/tree/")
    assert again.strip() == "", "a second rsync found differences (sizes or times not kept)"


def test_namespace_operations(uftp_server, mount):
    root = uftp_server.root
    sh("mkdir", "-p", f"{mount}/a/b")
    sh("sh", "-c", f"echo hello > {mount}/a/b/x.txt")
    assert open(os.path.join(root, "a/b/x.txt")).read() == "hello\n"
    sh("mv", f"{mount}/a/b/x.txt", f"{mount}/a/y.txt")
    assert sorted(os.listdir(os.path.join(root, "a"))) == ["b", "y.txt"]
    assert sh("cat", f"{mount}/a/y.txt") == "hello\n"
    sh("chmod", "640", f"{mount}/a/y.txt")
    assert os.stat(os.path.join(root, "a/y.txt")).st_mode & 0o777 == 0o640
    stat_line = sh("stat", "-c", "%s %F", f"{mount}/a/y.txt").split()
    assert stat_line[0] == "6" and stat_line[1] == "regular"
    listing = sh("ls", "-l", f"{mount}/a")
    assert "y.txt" in listing and listing.count("\n") == 3  # total line, b, y.txt
    sh("rm", "-r", f"{mount}/a")
    assert not os.path.exists(os.path.join(root, "a"))


def test_in_place_update_keeps_the_rest_of_the_file(uftp_server, mount):
    data = bytearray(os.urandom(3 << 20))
    path = os.path.join(uftp_server.root, "edit.bin")
    with open(path, "wb") as handle:
        handle.write(data)
    patch = os.urandom(1000)
    sh("dd", f"of={mount}/edit.bin", "bs=1000", "seek=1500", "conv=notrunc", "status=none", input=patch)
    data[1500 * 1000 : 1501 * 1000] = patch
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()


def test_bad_input_gives_one_line_errors(uftp_server, tmp_path):
    missing = tmp_path / "nowhere"
    empty = tmp_path / "empty"  # a mountpoint with files in it is refused before the server is reached
    empty.mkdir()
    cases = [
        (["mount", "ftp://x/y", str(empty)], "unknown scheme"),
        (["mount", "uftp://127.0.0.1:1/no-auth-path", str(empty)], "rest/auth"),
        (["mount", uftp_server.plain_url("/"), str(missing)], "mountpoint does not exist"),
        (["ls", "uftp://127.0.0.1:1/rest/auth/TEST:/"], ""),
        (["ls", uftp_server.plain_url("/")], ""),  # wrong password, below
    ]
    env_wrong = {**uftp_server.env, "UFTP_PASSWORD": "wrong"}
    for args, expected in cases:
        env = env_wrong if args[-1] == uftp_server.plain_url("/") else uftp_server.env
        result = hpcfs(*args, env=env, check=False, timeout=60)
        assert result.returncode != 0, args
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
        assert expected in lines[0], lines[0]
        assert "wrong" not in result.stderr and "test123" not in result.stderr


def test_busy_mountpoint_is_refused(uftp_server, mount):
    result = hpcfs("mount", uftp_server.plain_url("/"), mount, env=uftp_server.env, check=False)
    assert result.returncode == 2 and "busy" in result.stderr


def test_password_on_the_command_line_is_refused(uftp_server, tmp_path):
    result = hpcfs("ls", uftp_server.url("/"), check=False)
    assert result.returncode == 2 and "command line" in result.stderr
    assert "test123" not in result.stderr
