"""``hpcfs mount`` of the local UFTP server: what only UFTP does (in-place writes) and the CLI's answers to
bad input. The shell-tool suite every server passes is test_mount_suite.py."""
import hashlib
import os

import pytest
from mounting import hpcfs, mounted, sh, sha256_file


@pytest.fixture
def mount(uftp_server, tmp_path):
    with mounted(uftp_server.plain_url("/"), tmp_path / "mnt", env=uftp_server.env) as mountpoint:
        yield mountpoint


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
