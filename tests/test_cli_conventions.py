"""The ``hpcfs`` command keeps the conventions of the tools users already know (cp, rm, ls, cat, mkdir,
sshfs, rclone, mount(8)), run as a subprocess against the local servers and real FUSE mounts."""
import argparse
import os
import re
import signal
import subprocess
import time

import pytest

from hpcfs.cli import _parser
from mounting import HPCFS, sha256_file, write_random
from test_cli import cli, isolated, ok, one_line_error, uftp  # noqa: F401 (fixtures)

MOUNT_HELPER = os.path.join(os.path.dirname(HPCFS[0]), "mount.hpcfs")


# -- flags as coreutils spells them ------------------------------------------------------------------------
def make_sample_tree(uftp):
    os.makedirs(uftp.local("top/sub"))
    write_random(uftp.local("top/big.bin"), 1536)
    write_random(uftp.local("top/sub/inner.bin"), 10)
    with open(uftp.local("top/.hidden"), "w") as hidden:
        hidden.write("x")


def test_ls_bundled_flags_all_human_and_recursive(cli, uftp):
    make_sample_tree(uftp)
    env = uftp.env
    assert ok(cli("ls", uftp.url("top"), env=env)).stdout.splitlines() == ["big.bin", "sub"]
    long_all = ok(cli("ls", "-lA", uftp.url("top"), env=env)).stdout.splitlines()[1:]  # after "total N"
    assert [line.split()[-1] for line in long_all] == [".hidden", "big.bin", "sub"], long_all
    human = ok(cli("ls", "-lh", uftp.url("top"), env=env)).stdout.splitlines()
    assert re.fullmatch(r"-[rwx-]{9}\s+\S+\s+1\.5K \S+ \S+ big.bin", human[1]), human
    top, sub = uftp.url("top"), uftp.url("top/sub")
    assert ok(cli("ls", "-R", top, env=env)).stdout == f"{top}:\nbig.bin\nsub\n\n{sub}:\ninner.bin\n"
    several = ok(cli("ls", uftp.url("top/big.bin"), sub, env=env)).stdout
    assert several == f"big.bin\n\n{sub}:\ninner.bin\n", several


def test_cp_and_rm_take_capital_r_as_recursive_and_resume_as_a_long_option(cli, uftp, tmp_path):
    make_sample_tree(uftp)
    env = uftp.env
    ok(cli("cp", "-R", uftp.url("top"), str(tmp_path), env=env))
    assert sha256_file(tmp_path / "top/sub/inner.bin") == sha256_file(uftp.local("top/sub/inner.bin"))
    ok(cli("cp", "-r", "--resume", uftp.url("top"), str(tmp_path), env=env))
    ok(cli("rm", "-R", uftp.url("top/sub"), env=env))
    assert not os.path.exists(uftp.local("top/sub"))
    ok(cli("rm", "-rf", uftp.url("top"), uftp.url("never-was"), env=env))
    assert not os.path.exists(uftp.local("top"))
    assert "Is a directory" in one_line_error(cli("rm", "-f", uftp.url(""), env=env), 1)


def test_cat_goes_on_past_a_missing_file_and_a_directory_as_gnu_cat(cli, uftp):
    os.makedirs(uftp.local("data"))
    for name, text in (("a", "first\n"), ("b", "second\n")):
        with open(uftp.local(name), "w") as handle:
            handle.write(text)
    result = cli("cat", uftp.url("a"), uftp.url("missing"), uftp.url("data"), uftp.url("b"), env=uftp.env)
    assert result.returncode == 1
    assert result.stdout == "first\nsecond\n"
    missing, directory = result.stderr.splitlines()
    assert "/missing" in missing and directory == f"hpcfs: '{uftp.url('data')}': Is a directory", result.stderr


def test_mkdir_parents_refuses_a_file_in_the_way(cli, uftp):
    with open(uftp.local("plain"), "w") as handle:
        handle.write("a file, not a directory")
    assert "File exists" in one_line_error(cli("mkdir", "-p", uftp.url("plain"), env=uftp.env), 1)
    assert "Not a directory" in one_line_error(cli("mkdir", "-p", uftp.url("plain/sub"), env=uftp.env), 1)
    assert os.path.isfile(uftp.local("plain"))


# -- usage errors and --verbose ------------------------------------------------------------------------------
def test_unknown_options_point_to_the_subcommands_help(cli, uftp):
    message = one_line_error(cli("ls", "--frobnicate", uftp.url(), env=uftp.env), 2)
    assert message.startswith("hpcfs ls: error: unrecognized arguments: --frobnicate")
    assert message.endswith("(see 'hpcfs ls --help')"), message
    message = one_line_error(cli("serve", "uftp", "--root", "/tmp", "--frobnicate"), 2)
    assert message.endswith("(see 'hpcfs serve uftp --help')"), message


def test_a_timeout_that_is_not_positive_is_a_usage_error(cli, uftp):
    for value in ("-1", "0", "soon"):
        message = one_line_error(cli("ls", uftp.url() + f"?timeout={value}", env=uftp.env), 2)
        assert f"timeout must be a number of seconds above 0, not '{value}'" in message, message


def test_verbose_adds_a_traceback_after_the_one_line(cli, uftp):
    quiet = cli("ls", uftp.url("no/such"), env=uftp.env)
    one_line_error(quiet, 2)  # as GNU ls, for a path on its command line
    loud = cli("--verbose", "ls", uftp.url("no/such"), env=uftp.env)
    assert loud.returncode == 2
    assert quiet.stderr.strip() in loud.stderr
    assert "Traceback (most recent call last)" in loud.stderr, loud.stderr
    usage = cli("ls", "-v", uftp.url() + "?timeout=-1", env=uftp.env)
    assert usage.returncode == 2 and "Traceback (most recent call last)" in usage.stderr


def test_every_option_and_argument_has_help():
    def undocumented(parser, name):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for command, sub in action.choices.items():
                    yield from undocumented(sub, f"{name} {command}")
            elif not action.help:
                yield f"{name} {'/'.join(action.option_strings) or action.dest}"

    assert list(undocumented(_parser(), "hpcfs")) == []


def test_help_has_usage_summary_and_examples(cli):
    for args in ([], ["mount"], ["ls"], ["cp"], ["rm"], ["cat"]):
        text = ok(cli(*args, "--help")).stdout
        assert text.startswith(f"usage: hpcfs {' '.join(args)}".rstrip()), text
        assert "\nexamples:\n  hpcfs " in text, text


# -- mounts -------------------------------------------------------------------------------------------------
def test_mount_refuses_a_non_empty_directory_unless_asked(cli, uftp, tmp_path):
    write_random(uftp.local("remote.bin"), 100)
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    (mountpoint / "mine.txt").write_text("would be hidden")
    try:
        message = one_line_error(cli("mount", uftp.url(), str(mountpoint), env=uftp.env), 2)
        assert f"mountpoint is not empty: {mountpoint}" in message and "--allow-non-empty" in message, message
        assert not os.path.ismount(mountpoint)
        for flags in (["--allow-non-empty"], ["-o", "nonempty"]):
            ok(cli("mount", *flags, uftp.url(), str(mountpoint), env=uftp.env, timeout=90))
            assert os.listdir(mountpoint) == ["remote.bin"]
            ok(cli("umount", str(mountpoint)))
    finally:  # also when mounting was not refused: no mount outlives the test
        subprocess.run(["fusermount3", "-uz", str(mountpoint)], capture_output=True)
    assert (mountpoint / "mine.txt").read_text() == "would be hidden"


def test_mount_helper_ignores_systemd_and_comment_options(cli, isolated, uftp, tmp_path):
    write_random(uftp.local("x.bin"), 1000)
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    options = "_netdev,x-systemd.automount,x-systemd.idle-timeout=60,comment=systemd.automount,attr_ttl=5"
    result = subprocess.run([MOUNT_HELPER, uftp.url(), str(mountpoint), "-o", options],
                            env={**isolated, **uftp.env}, capture_output=True, text=True, timeout=90)
    try:
        assert result.returncode == 0, result.stderr
        assert sha256_file(mountpoint / "x.bin") == sha256_file(uftp.local("x.bin"))
    finally:
        cli("umount", str(mountpoint))


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM])
def test_a_foreground_mount_ended_by_a_signal_unmounts_quietly(isolated, uftp, tmp_path, stop_signal):
    write_random(uftp.local("file.bin"), 1000)
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    process = subprocess.Popen(HPCFS + ["mount", "--foreground", uftp.url(), str(mountpoint)],
                               env={**isolated, **uftp.env}, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 30
        while not os.path.ismount(mountpoint) and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert os.path.ismount(mountpoint), "not mounted"
        assert sha256_file(mountpoint / "file.bin") == sha256_file(uftp.local("file.bin"))
        process.send_signal(stop_signal)
        assert process.wait(timeout=30) == 128 + stop_signal
        assert process.stderr.read() == ""  # no libfuse status, no "Ignoring invalid max threads value"
        with open("/proc/self/mounts") as table:
            assert str(mountpoint) not in table.read()
    finally:
        if process.poll() is None:
            process.kill()
        subprocess.run(["fusermount3", "-uz", str(mountpoint)], capture_output=True)
