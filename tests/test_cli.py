"""The ``hpcfs`` command run as a subprocess against the local servers, as a shell user runs it.

Credentials travel in environment variables or profiles, never in argv.  Every run gets its own
XDG_CONFIG_HOME (so no personal config file interferes), and inherits none of the credential variables of
the shell that runs the tests.  Bytes are compared by sha256 with the servers' directories.
"""
import fcntl
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import termios
import time
from dataclasses import dataclass
from functools import partial

import pytest

from handles import fixtures_module

from hpcfs.registry import SCHEMES, WRITABLE_SCHEMES, protocol_for
from mounting import CREDENTIAL_VARIABLES, HPCFS, served_digests, sha256_file, tree_digests, write_random

PROTOCOLS = WRITABLE_SCHEMES  # every protocol whose local server takes writes (hpcfs/registry.py)
# The EM API has no mkdir: a directory exists once a file lands in it (hpcfs holds empty ones in memory).
COMMANDS = ("mount", "umount", "ls", "cp", "cat", "stat", "sum", "rm", "mkdir", "serve", "info")
MOUNT_HELPER = os.path.join(os.path.dirname(sys.executable), "mount.hpcfs")


@dataclass
class Remote:
    """A running local server as the CLI sees it: URLs without secrets, credentials in ``env``."""

    protocol: str
    handle: object
    base: str  # the directory tests write below ("" or an EM volume)

    def url(self, path=""):
        return self.handle.plain_url(f"{self.base}/{path.lstrip('/')}")

    def local(self, path=""):
        return os.path.join(self.handle.root, self.base.strip("/"), path)

    @property
    def env(self):
        return self.handle.env

    @property
    def secret_variable(self):
        return next(name for name in self.env if "PASSWORD" in name or "SECRET" in name)


@pytest.fixture(params=PROTOCOLS)
def remote(request):
    handle = request.getfixturevalue(protocol_for(request.param).fixture)
    handle.allow_rapid_commands()
    return Remote(request.param, handle, getattr(handle, "volume_path", ""))


@pytest.fixture
def uftp(uftp_server):
    uftp_server.allow_rapid_commands()
    return Remote("uftp", uftp_server, "")


@pytest.fixture
def isolated(tmp_path):
    """Environment of a user with no config file and no credentials exported."""
    env = {name: value for name, value in os.environ.items() if name not in CREDENTIAL_VARIABLES}
    for name in ("XDG_CONFIG_HOME", "XDG_STATE_HOME", "XDG_CACHE_HOME"):
        env[name] = str(tmp_path / "xdg" / name.lower())
        os.makedirs(env[name], exist_ok=True)
    return env


@pytest.fixture
def cli(isolated):
    """``cli(*args, env={...})`` runs ``hpcfs`` with the isolated environment plus ``env``."""

    def run(*args, env=None, binary=False, timeout=120, **kwargs):
        return subprocess.run(HPCFS + list(args), env={**isolated, **(env or {})}, capture_output=True,
                              text=not binary, timeout=timeout, **kwargs)

    return run


def ok(result):
    assert result.returncode == 0, f"exit {result.returncode}: {result.stderr}"
    return result


def one_line_error(result, status):
    stderr = result.stderr if isinstance(result.stderr, str) else result.stderr.decode()
    assert result.returncode == status, f"exit {result.returncode} (wanted {status}): {stderr}"
    assert len(stderr.strip().splitlines()) == 1, f"not one line: {stderr!r}"
    assert stderr.startswith(("hpcfs", "mount.hpcfs")), stderr
    return stderr.strip()


def closed_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def write_config(isolated, text, mode=0o600):
    path = os.path.join(isolated["XDG_CONFIG_HOME"], "hpcfs", "config.ini")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as handle:
        handle.write(text)
    os.chmod(path, mode)
    return path


def private_file(path, text):
    with open(path, "w") as handle:
        handle.write(text)
    os.chmod(path, 0o600)
    return str(path)


# -- help and usage -------------------------------------------------------------------------------------
def test_help_lists_every_command(isolated, cli):
    text = ok(cli("--help")).stdout
    for command in COMMANDS:
        assert re.search(rf"^\s+{command}\s+\S", text, re.MULTILINE), f"{command} missing from --help"
    helps = [[command, "--help"] for command in COMMANDS] + [["serve", protocol, "--help"] for protocol in SCHEMES]
    running = [subprocess.Popen(HPCFS + args, env=isolated, stdout=subprocess.PIPE, text=True) for args in helps]
    for args, process in zip(helps, running):
        usage = process.communicate(timeout=60)[0]
        assert process.returncode == 0 and usage.startswith(f"usage: hpcfs {' '.join(args[:-1])}"), (args, usage)


def test_bad_usage_is_one_line_and_exit_2(cli, uftp, tmp_path):
    url = uftp.url()
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    cases = [
        ([], "required"),
        (["ls"], "required: PATH"),
        (["frobnicate"], "invalid choice"),
        (["ls", "no-url-here"], "expected a URL or PROFILE:/path"),
        (["ls", "nosuchprofile:/x"], "no profile named 'nosuchprofile'"),
        (["ls", "gopher://host/x"], "unknown scheme"),
        (["cp", "-j", "0", "a", "b"], "at least 1"),
        (["ls", url + "?blok_size=1M"], "unknown option 'blok_size'"),
        (["mount", "-o", "readahed=8M", url, str(mountpoint)], "unknown option 'readahed'"),
        (["mount", url, str(tmp_path / "missing")], "mountpoint does not exist"),
        (["umount", str(mountpoint)], "not mounted"),
    ]
    for args, expected in cases:
        message = one_line_error(cli(*args, env=uftp.env), 2)
        assert expected in message, (args, message)
    assert not os.path.ismount(mountpoint)


def test_secrets_on_the_command_line_are_refused_without_echoing_them(cli, uftp, tmp_path):
    secret = "Sup3rSecret"
    netloc = uftp.handle.netloc
    for args in (["ls", f"uftp://demo:{secret}@{netloc}/rest/auth/TEST:/"],
                 ["ls", f"firecrest://local/?client_secret={secret}"],
                 ["mount", "-o", f"password={secret}", uftp.url(), str(tmp_path)]):
        result = cli(*args)
        message = one_line_error(result, 2)
        assert "command line" in message
        assert secret not in result.stderr + result.stdout
    by_reference = one_line_error(cli("ls", uftp.url() + "?token=@/no/such/token-file", env=uftp.env), 2)
    assert "cannot read the token file" in by_reference  # a token file's name is no secret


def test_verify_off_warns_in_one_line(cli, uftp):
    env = {name: value for name, value in uftp.env.items() if name != "HPCFS_CA_FILE"}
    assert "TLS verification failed" in one_line_error(cli("ls", uftp.url(), env=env), 1)
    result = ok(cli("ls", uftp.url() + "?verify=0", env=env))
    assert re.fullmatch(r"hpcfs: warning: Unverified HTTPS request [^\n]*\n", result.stderr), result.stderr


# -- file commands --------------------------------------------------------------------------------------
def test_mkdir_cp_ls_stat_cat_rm(cli, remote, tmp_path):
    data = write_random(tmp_path / "data.bin", (3 << 20) + 7)
    env = remote.env
    ok(cli("mkdir", "-p", remote.url("a/b/c"), env=env))
    ok(cli("mkdir", "-p", remote.url("a/b/c"), env=env))  # no error when it exists
    assert os.path.isdir(remote.local("a/b/c"))
    assert "exists" in one_line_error(cli("mkdir", remote.url("a/b"), env=env), 1)

    ok(cli("cp", str(data), remote.url("a/b/data.bin"), env=env))
    assert sha256_file(remote.local("a/b/data.bin")) == sha256_file(data)
    assert ok(cli("ls", remote.url("a/b"), env=env)).stdout.splitlines() == ["c", "data.bin"]
    total, *long_lines = ok(cli("ls", "-l", remote.url("a/b"), env=env)).stdout.splitlines()
    assert re.fullmatch(r"total \d+", total), total
    assert re.fullmatch(r"d[rwx-]{9}\s+\S+\s+\d+ \d{4}-\d\d-\d\d \d\d:\d\d c", long_lines[0]), long_lines
    assert re.fullmatch(r"-[rwx-]{9}\s+\S+\s+3145735 \d{4}-\d\d-\d\d \d\d:\d\d data.bin", long_lines[1]), long_lines
    details = ok(cli("stat", remote.url("a/b/data.bin"), env=env)).stdout
    assert "Size: 3145735" in details and "Type: file" in details

    (tmp_path / "small.txt").write_bytes(b"small\n")
    ok(cli("cp", str(tmp_path / "small.txt"), remote.url("a/small.txt"), env=env))
    printed = ok(cli("cat", remote.url("a/b/data.bin"), remote.url("a/small.txt"), env=env, binary=True)).stdout
    assert printed == data.read_bytes() + b"small\n"

    assert "Is a directory" in one_line_error(cli("rm", remote.url("a/b"), env=env), 1)
    ok(cli("rm", remote.url("a/small.txt"), env=env))
    assert not os.path.exists(remote.local("a/small.txt"))
    ok(cli("rm", "-r", remote.url("a"), env=env))
    assert not os.path.exists(remote.local("a"))


def test_output_cut_short_by_the_reader_ends_quietly(isolated, uftp):
    write_random(uftp.local("big.bin"), 20 << 20)
    pipeline = f"{' '.join(HPCFS)} cat {uftp.url('big.bin')} | head -c 10 | wc -c; echo ${{PIPESTATUS[0]}}"
    result = subprocess.run(["bash", "-c", pipeline], env={**isolated, **uftp.env}, capture_output=True, text=True,
                            timeout=60)
    assert result.stdout.split() == ["10", "141"] and result.stderr == "", result  # as cat, killed by SIGPIPE


def test_missing_paths_and_wrong_credentials_are_one_line_exit_1(cli, remote):
    for command, status in (("ls", 2), ("stat", 1), ("cat", 1), ("rm", 1)):  # ls: 2, as GNU ls
        message = one_line_error(cli(command, remote.url("no/such/file"), env=remote.env), status)
        assert "/no/such/file" in message or "no such" in message.lower(), message
    wrong = {**remote.env, remote.secret_variable: "wrong-password"}
    result = cli("ls", remote.url(), env=wrong)
    message = one_line_error(result, 1)
    assert "wrong-password" not in message


def test_rapid_commands_wait_for_uftp_session_slots(cli, uftp_server):
    for _ in range(12):  # 2 sessions each: beyond the default limit of 16 within one cleanup period
        ok(cli("ls", uftp_server.plain_url("/"), env=uftp_server.env))


def test_unreachable_server_exits_1_quickly(cli, remote):
    # the server's own URL and environment with its endpoint moved to a port nothing listens on
    unreachable = f"127.0.0.1:{closed_port()}"
    url = remote.url().replace(remote.handle.netloc, unreachable)
    env = {name: value.replace(remote.handle.netloc, unreachable) for name, value in remote.env.items()}
    started = time.monotonic()
    one_line_error(cli("ls", url, env=env), 1)
    assert time.monotonic() - started < 5
    report = cli("info", url, env=env)
    assert report.returncode == 1 and "reachable: no" in report.stdout


def test_info_reports_reachability_authentication_and_limits(cli, remote):
    report = ok(cli("info", remote.url(), env=remote.env)).stdout
    assert "reachable: yes" in report and "authenticated: yes" in report
    assert re.search(r"^limits: ranged reads (yes|no), .*parallel requests \d+", report, re.MULTILINE), report
    refused = cli("info", remote.url(), env={**remote.env, remote.secret_variable: "wrong"})
    assert refused.returncode == 1
    assert "reachable: yes" in refused.stdout and "authenticated: no" in refused.stdout


def test_verbose_logs_requests_but_no_secret(cli, remote, tmp_path):
    source = write_random(tmp_path / "big.bin", 7 << 20)  # FirecREST stages this through presigned URLs
    result = ok(cli("-v", "cp", str(source), remote.url("big.bin"), env=remote.env))
    result_down = ok(cli("cp", "--verbose", remote.url("big.bin"), str(tmp_path / "back.bin"), env=remote.env))
    assert sha256_file(tmp_path / "back.bin") == sha256_file(source)
    log = result.stderr + result_down.stderr
    assert re.search(r'"(GET|POST|PUT|HEAD) /\S* HTTP/1\.1" \d{3}', log), log[:2000]
    assert remote.env[remote.secret_variable] not in log
    leaked = re.findall(r"(?:token|signature|secret|password|credential)=(?!\*\*\*)[^&\s\"']+", log, re.IGNORECASE)
    assert not leaked, leaked
    assert not re.search(r"(Bearer|Basic) (?!\*\*\*)\S", log)


# -- cp -------------------------------------------------------------------------------------------------
def make_tree(top):
    sizes = {"empty.dat": 0, "one.dat": 1, "sub/k100.dat": 100_000, "sub/deeper/m2.dat": (5 << 19) + 3}
    for name, size in sizes.items():
        os.makedirs(os.path.dirname(top / name), exist_ok=True)
        write_random(top / name, size)
    (top / "sub" / "empty-dir").mkdir()
    return top


def test_cp_recursive_in_both_directions(cli, remote, tmp_path):
    top = make_tree(tmp_path / "top")
    expected = tree_digests(top)
    ok(cli("cp", "-r", str(top), remote.url(), env=remote.env))  # into an existing directory: makes top/
    assert served_digests(remote.local("top")) == expected
    ok(cli("cp", "-r", remote.url("top"), str(tmp_path / "back"), env=remote.env))  # to a new name
    assert tree_digests(tmp_path / "back") == expected
    assert "use -r" in one_line_error(cli("cp", remote.url("top"), str(tmp_path / "x"), env=remote.env), 1)


def test_cp_resume_skips_complete_files_and_continues_partial_downloads(cli, uftp, tmp_path):
    remote = uftp  # resuming is the copy layer's, the same for every protocol
    data = os.urandom(3 << 20)
    with open(remote.local("remote.bin"), "wb") as handle:
        handle.write(data)
    partial = tmp_path / "partial.bin"
    partial.write_bytes(b"\0" * (1 << 20))  # differs from the remote start: resuming must keep it
    ok(cli("cp", "--resume", remote.url("remote.bin"), str(partial), env=remote.env))
    assert partial.read_bytes() == b"\0" * (1 << 20) + data[1 << 20 :]

    complete = tmp_path / "complete.bin"
    complete.write_bytes(b"\1" * len(data))  # the same size counts as complete
    ok(cli("cp", "--resume", remote.url("remote.bin"), str(complete), env=remote.env))
    assert complete.read_bytes() == b"\1" * len(data)
    ok(cli("cp", remote.url("remote.bin"), str(complete), env=remote.env))  # without --resume: copied
    assert complete.read_bytes() == data

    local = write_random(tmp_path / "up.bin", 2 << 20)
    with open(remote.local("up.bin"), "wb") as handle:
        handle.write(b"\2" * 1000)  # a partial remote copy is sent again whole
    ok(cli("cp", "--resume", str(local), remote.url("up.bin"), env=remote.env))
    assert sha256_file(remote.local("up.bin")) == sha256_file(local)


def test_cp_many_files_in_parallel_overlaps_them(cli, uftp, tmp_path):
    uftp.handle.knobs.latency = 0.05  # a round trip that parallel copies overlap
    os.makedirs(uftp.local("many"))
    for index in range(12):
        write_random(uftp.local(f"many/f{index:02d}"), 50_000)
    timings, logins = {}, {}
    for jobs in (1, 8):
        uftp.handle.log.reset()
        started = time.monotonic()
        ok(cli("cp", "-r", "-j", str(jobs), uftp.url("many"), str(tmp_path / f"j{jobs}"), env=uftp.env))
        timings[jobs] = time.monotonic() - started
        logins[jobs] = uftp.handle.log.total("USER")
        assert tree_digests(tmp_path / f"j{jobs}") == tree_digests(uftp.local("many"))
    # The session pool only logs in again when every session is busy: more logins, more requests at once.
    assert logins[8] > logins[1] + 1, logins
    assert timings[8] < timings[1], timings


def run_with_terminal_stderr(args, env, timeout=60):
    """Run with stderr on a pseudo-terminal (as in an interactive shell); returns (status, stderr)."""
    controller, terminal = os.openpty()
    process = subprocess.Popen(HPCFS + args, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=terminal)
    os.close(terminal)
    output = read_terminal(controller, time.monotonic() + timeout)
    return process.wait(timeout=timeout), output


def read_terminal(controller, deadline):
    chunks = []
    while time.monotonic() < deadline:
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # EIO: every process holding the terminal has exited
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(controller)
    return b"".join(chunks).decode(errors="replace")


def test_cp_progress_on_a_terminal_only(cli, isolated, uftp, tmp_path):
    remote = uftp  # the progress line is the copy layer's, the same for every protocol
    write_random(remote.local("p.bin"), 4 << 20)
    env = {**isolated, **remote.env}
    status, shown = run_with_terminal_stderr(["cp", remote.url("p.bin"), str(tmp_path / "tty.bin")], env)
    assert status == 0, shown
    assert re.search(r"\r1/1 files +4\.0 MiB / 4\.0 MiB +[\d.]+ [KMG]?i?B/s +ETA \d+:\d\d", shown), repr(shown)
    assert sha256_file(tmp_path / "tty.bin") == sha256_file(remote.local("p.bin"))

    status, shown = run_with_terminal_stderr(["cp", "--no-progress", remote.url("p.bin"), str(tmp_path / "n.bin")], env)
    assert status == 0 and shown == ""
    assert ok(cli("cp", remote.url("p.bin"), str(tmp_path / "pipe.bin"), env=remote.env)).stderr == ""
    forced = ok(cli("cp", "--progress", remote.url("p.bin"), str(tmp_path / "forced.bin"), env=remote.env)).stderr
    assert "1/1 files" in forced and "ETA" in forced


def default_sigint():
    """Ctrl-C as in an interactive shell: a suite started as a background job would pass on an ignored SIGINT."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_stops_a_copy_promptly(isolated, uftp, tmp_path):
    write_random(uftp.local("slow.bin"), 64 << 20)
    uftp.handle.knobs.latency = 0.2  # the copy would take over a minute
    process = subprocess.Popen(HPCFS + ["cp", "--progress", uftp.url("slow.bin"), str(tmp_path / "slow.bin")],
                               env={**isolated, **uftp.env}, stderr=subprocess.PIPE, preexec_fn=default_sigint)
    assert process.stderr.read(1) == b"\r"  # the progress line: the copy has started
    process.send_signal(signal.SIGINT)
    started = time.monotonic()
    _, stderr = process.communicate(timeout=30)
    elapsed = time.monotonic() - started
    assert process.returncode == 130, stderr
    assert elapsed < 10, f"{elapsed:.1f} s from Ctrl-C to exit"
    assert stderr.endswith(b"\nhpcfs: interrupted\n"), stderr[-200:]  # on a line of its own


def test_an_interrupted_upload_leaves_nothing_under_the_real_name(isolated, uftp, tmp_path):
    source = write_random(tmp_path / "big.bin", 96 << 20)
    uftp.handle.knobs.latency = 0.2
    partial = uftp.local(".big.bin.hpcfs-partial")  # UFTP writes pieces in place: hpcfs uploads under this
    process = subprocess.Popen(HPCFS + ["cp", str(source), uftp.url("big.bin")], env={**isolated, **uftp.env},
                               stderr=subprocess.PIPE, preexec_fn=default_sigint)
    deadline = time.monotonic() + 30
    while not (os.path.exists(partial) and os.path.getsize(partial)) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert os.path.getsize(partial), "the upload did not start"
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert os.listdir(uftp.local()) == [".big.bin.hpcfs-partial"]  # kept for --resume, never as big.bin


# -- mount ----------------------------------------------------------------------------------------------
def test_mount_in_the_background_with_options_then_umount(cli, remote, tmp_path):
    data = write_random(remote.local("inside.bin"), (2 << 20) + 5)
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    result = ok(cli("mount", "-o", "attr_ttl=1,block_size=1M", "-o", "readahead=4M", remote.url(), str(mountpoint),
                    env=remote.env, timeout=90))
    try:
        assert "mounted" in result.stderr and os.path.ismount(mountpoint)
        assert sha256_file(mountpoint / "inside.bin") == sha256_file(data)
        (mountpoint / "written.txt").write_bytes(b"through the mount\n")
        with open(remote.local("written.txt"), "rb") as written:
            assert written.read() == b"through the mount\n"
    finally:
        ok(cli("umount", str(mountpoint)))
    assert not os.path.ismount(mountpoint)


def test_mount_in_the_foreground_and_read_only(isolated, cli, uftp, tmp_path):
    write_random(uftp.local("file.bin"), 1000)
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    process = subprocess.Popen(HPCFS + ["mount", "--foreground", "--read-only", uftp.url(), str(mountpoint)],
                               env={**isolated, **uftp.env}, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not os.path.ismount(mountpoint) and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert os.path.ismount(mountpoint), process.stderr.read() if process.poll() is not None else "not mounted"
        assert sha256_file(mountpoint / "file.bin") == sha256_file(uftp.local("file.bin"))
        with pytest.raises(OSError) as refused:
            (mountpoint / "new.txt").write_bytes(b"x")
        assert refused.value.errno == 30  # EROFS
    finally:
        cli("umount", str(mountpoint))
    assert process.wait(timeout=30) == 0


def test_umount_of_a_mount_in_use_needs_lazy(cli, uftp, tmp_path):
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    ok(cli("mount", uftp.url(), str(mountpoint), env=uftp.env, timeout=90))
    user = subprocess.Popen(["sleep", "60"], cwd=mountpoint)  # a shell sitting in the mount
    try:
        assert "use --lazy" in one_line_error(cli("umount", str(mountpoint)), 1)
        assert os.path.ismount(mountpoint)
        ok(cli("umount", "--lazy", str(mountpoint)))
        assert not os.path.ismount(mountpoint)
    finally:
        user.kill()
        user.wait()
        cli("umount", "--lazy", str(mountpoint))


def test_mount_helper_for_fstab_with_a_profile(cli, isolated, uftp, tmp_path):
    """What mount(8) runs for ``myhpc:/data /mnt/hpc hpcfs noauto,user,ro,attr_ttl=5 0 0`` in /etc/fstab."""
    os.makedirs(uftp.local("data"))
    write_random(uftp.local("data/x.bin"), 12345)
    password_file = private_file(tmp_path / "pw", uftp.env["UFTP_PASSWORD"] + "\n")
    write_config(isolated, f"[myhpc]\nurl = {uftp.url()}\nuser = {uftp.env['UFTP_USER']}\n"
                           f"ca_file = {uftp.env['HPCFS_CA_FILE']}\npassword_file = {password_file}\n")
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    mount_options = "rw,noauto,user=alice,nosuid,nodev,ro,attr_ttl=5"  # mount(8) passes its generic ones too
    result = subprocess.run([MOUNT_HELPER, "myhpc:/data", str(mountpoint), "-o", mount_options, "-t", "hpcfs"],
                            env=isolated, capture_output=True, text=True, timeout=90)
    try:
        assert result.returncode == 0, result.stderr
        assert sorted(os.listdir(mountpoint)) == ["x.bin"]
        assert sha256_file(mountpoint / "x.bin") == sha256_file(uftp.local("data/x.bin"))
        with pytest.raises(OSError):
            (mountpoint / "y").write_bytes(b"read-only")
    finally:
        cli("umount", str(mountpoint))
    usage = subprocess.run([MOUNT_HELPER], capture_output=True, text=True, timeout=30)
    one_line_error(usage, 2)


# -- profiles and environment -----------------------------------------------------------------------------
def test_profiles_for_each_protocol_and_secret_sources(cli, isolated, uftp_server, firecrest_server, em_server,
                                                       tmp_path):
    fc_env, em_env = firecrest_server.env, em_server.env
    secret_file = private_file(tmp_path / "fc-secret", fc_env["FIRECREST_CLIENT_SECRET"])
    keyring = tmp_path / "keyring"
    keyring.write_text(f"#!/bin/sh\necho '{em_env['EM_PASSWORD']}'\n")
    keyring.chmod(0o700)
    write_config(isolated, f"""
[myhpc]
url = {uftp_server.plain_url("/")}
user = demo
ca_file = {uftp_server.env["HPCFS_CA_FILE"]}
password_env = MY_UFTP_PASSWORD
block_size = 1M

[fc]
url = {firecrest_server.plain_url("/")}
api_url = {fc_env["FIRECREST_URL"]}
token_url = {fc_env["AUTH_TOKEN_URL"]}
client_id = {fc_env["FIRECREST_CLIENT_ID"]}
password_file = {secret_file}

[em]
url = {em_server.plain_url("/")}
password_command = {keyring}

[typo]
url = {uftp_server.plain_url("/")}
blok_size = 1M
""")
    for server, name in ((uftp_server, "myhpc"), (firecrest_server, "fc"), (em_server, "em")):
        os.makedirs(os.path.join(server.root, "pod-a" if name == "em" else "", "scratch", "me"))
        path = "/pod-a/scratch" if name == "em" else "/scratch"
        listing = ok(cli("ls", f"{name}:{path}", env={"MY_UFTP_PASSWORD": uftp_server.env["UFTP_PASSWORD"]}))
        assert listing.stdout.splitlines() == ["me"], name
    assert "MY_UFTP_PASSWORD" in one_line_error(cli("ls", "myhpc:/"), 2)
    assert "unknown option 'blok_size'" in one_line_error(cli("ls", "typo:/"), 2)


def test_mount_by_profile_name_asks_for_the_password_once(isolated, uftp, tmp_path):
    """``hpcfs mount myhpc:/scratch/me ~/mnt`` with the password typed at a prompt: the background mount
    must not ask again (it has no terminal)."""
    os.makedirs(uftp.local("scratch/me"))
    write_random(uftp.local("scratch/me/result.bin"), 4321)
    write_config(isolated, f"[myhpc]\nurl = {uftp.url()}\nuser = demo\nca_file = {uftp.env['HPCFS_CA_FILE']}\n"
                           "password_prompt = yes\n")
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    status, output = run_on_terminal(["mount", "myhpc:/scratch/me", str(mountpoint)], isolated,
                                     answer=uftp.env["UFTP_PASSWORD"] + "\n", prompt=b"Password for myhpc")
    try:
        assert status == 0, output
        assert output.count("Password for myhpc") == 1
        assert os.listdir(mountpoint) == ["result.bin"]
        assert uftp.env["UFTP_PASSWORD"] not in output  # not echoed
    finally:
        subprocess.run(HPCFS + ["umount", str(mountpoint)], env=isolated, capture_output=True, timeout=60)


def run_on_terminal(args, env, answer, prompt, timeout=60):
    """Run with a controlling terminal, type ``answer`` once ``prompt`` shows; returns (status, output)."""
    controller, terminal = os.openpty()

    def take_terminal():  # after start_new_session's setsid: make it this session's controlling terminal
        fcntl.ioctl(terminal, termios.TIOCSCTTY, 0)

    process = subprocess.Popen(HPCFS + args, env=env, stdin=terminal, stdout=terminal, stderr=terminal,
                               start_new_session=True, preexec_fn=take_terminal)
    os.close(terminal)
    deadline = time.monotonic() + timeout
    seen = b""
    while prompt not in seen and time.monotonic() < deadline:
        seen += os.read(controller, 4096)
    os.write(controller, answer.encode())
    rest = read_terminal(controller, deadline)
    return process.wait(timeout=timeout), seen.decode(errors="replace") + rest


def test_config_readable_by_others_is_refused_when_it_holds_a_secret(cli, isolated, uftp, tmp_path):
    url = uftp.url()
    for secret_line in ("password = hunter2", "token = abc", "client_secret = abc"):
        path = write_config(isolated, f"[myhpc]\nurl = {url}\n{secret_line}\n", mode=0o640)
        message = one_line_error(cli("ls", "myhpc:/"), 2)
        assert f"chmod 600 {path}" in message and "hunter2" not in message
    write_config(isolated, f"[myhpc]\nurl = {url}\nuser = demo\nca_file = {uftp.env['HPCFS_CA_FILE']}\n"
                           "password_env = MY_PW\n", mode=0o644)  # no secret in the file: fine
    ok(cli("ls", "myhpc:/", env={"MY_PW": uftp.env["UFTP_PASSWORD"]}))
    shared = tmp_path / "shared-pw"
    shared.write_text(uftp.env["UFTP_PASSWORD"])
    shared.chmod(0o644)
    write_config(isolated, f"[myhpc]\nurl = {url}\nuser = demo\npassword_file = {shared}\n")
    assert "chmod 600" in one_line_error(cli("ls", "myhpc:/"), 2)
    assert stat.S_IMODE(os.stat(shared).st_mode) == 0o644  # reported, not changed behind the user's back


def test_seed_environment_variables_work_without_a_config_file(cli, isolated, firecrest_server, uftp_server):
    assert not os.listdir(isolated["XDG_CONFIG_HOME"])
    assert sorted(firecrest_server.env) == ["AUTH_TOKEN_URL", "FIRECREST_CLIENT_ID", "FIRECREST_CLIENT_SECRET",
                                            "FIRECREST_URL"]
    ok(cli("ls", firecrest_server.plain_url("/"), env=firecrest_server.env))
    ok(cli("ls", uftp_server.plain_url("/"), env=uftp_server.env))


# -- serve ----------------------------------------------------------------------------------------------
def serve_credentials(protocol):
    """The account ``hpcfs serve <protocol>`` and its client read from the environment: the variables of the
    protocol's user and secret options (hpcfs/<proto>/options.py)."""
    options = protocol_for(protocol).options()
    variables = options.environment()
    return {variables[options.USER_OPTION]: "demo", variables[options.SECRET_OPTION]: "pw-for-test"}


def default_connection_from_banner(protocol, banner):
    """The URL of the served root in the banner's ``hpcfs mount`` line; no variables."""
    return re.search(rf"hpcfs mount ({protocol}://\S+)", banner).group(1), {}


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_serve_starts_a_server_the_cli_can_use(cli, isolated, tmp_path, protocol):
    """What a protocol's serve command needs beyond ``--root`` and ``--port 0``, and how its banner reads, its
    tests/fixtures_<proto>.py says where it differs: ``serve_arguments(users_file)``, ``SERVE_BANNER_END``,
    ``serve_connection(banner)``."""
    root = tmp_path / "root"
    (root / "pod-a").mkdir(parents=True)
    (root / "pod-a" / "hello.txt").write_text("hello\n")
    credentials = serve_credentials(protocol)
    users_file = private_file(tmp_path / "users", ":".join(credentials.values()) + "\n")
    hooks = fixtures_module(protocol)
    arguments = getattr(hooks, "serve_arguments", lambda users_file: ["--port", "0"])(users_file)
    last_line = getattr(hooks, "SERVE_BANNER_END", "hpcfs mount")
    connection_from_banner = getattr(hooks, "serve_connection", partial(default_connection_from_banner, protocol))
    env = {**isolated, **credentials}

    def like_a_background_job():  # a shell script's `hpcfs serve ... &` ignores SIGINT: `kill` must still work
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    server = subprocess.Popen(HPCFS + ["serve", protocol, "--root", str(root)] + arguments, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              preexec_fn=like_a_background_job)
    try:
        banner = ""
        deadline = time.monotonic() + 30
        while last_line not in banner and time.monotonic() < deadline and server.poll() is None:
            banner += server.stdout.readline()
        assert last_line in banner, banner
        assert credentials[next(n for n in credentials if "PASSWORD" in n or "SECRET" in n)] not in banner
        url, client_env = connection_from_banner(banner)
        assert ok(cli("ls", url + "pod-a", env={**credentials, **client_env})).stdout.splitlines() == ["hello.txt"]
    finally:
        server.terminate()
        assert server.wait(timeout=30) == 0
