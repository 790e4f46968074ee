"""Nothing lost: ``hpcfs rm`` and ``hpcfs cp`` as a shell user runs them, against the local servers.

Each test is the reproduction of a way an ordinary command destroyed data or misled its user (issue 10,
"Data loss in ordinary commands" and "Secret sources"; issue 14, resumable uploads and errors that blame
the right path).  Bytes are compared by sha256.
"""
import os
import signal
import stat
import subprocess
import sys
import time

import pytest

from hpcfs.transfer import MISSING_DESTINATION
from mounting import small_tmpfs

from mounting import HPCFS, sha256_file, tree_digests, write_random
from test_cli import cli, isolated, ok, one_line_error, remote, uftp, write_config  # noqa: F401 (fixtures)


def make_files(top, count=3):
    os.makedirs(os.path.join(top, "inner"), exist_ok=True)
    for index in range(count):
        write_random(os.path.join(top, f"f{index}.bin"), 1000 + index)
    write_random(os.path.join(top, "inner", "deep.bin"), 2000)
    return tree_digests(top)


# -- rm -r of a tree's root -----------------------------------------------------------------------------
def test_rm_recursive_refuses_the_root_of_a_tree_before_removing_anything(cli, remote):
    top = remote.local()
    before = make_files(top)
    root_url = remote.url("/")  # UFTP .../TEST:/, firecrest://SYS/, EM em://HOST/pod-a (a volume)
    stderr = one_line_error(cli("rm", "-r", remote.url("inner"), root_url, env=remote.env), 1)
    assert "refusing to remove the root of a tree" in stderr and root_url.rstrip("/") in stderr, stderr
    assert tree_digests(top) == before  # every child is still there, also the one named before the root


def test_rm_recursive_refuses_a_profiles_root(cli, isolated, uftp):
    before = make_files(uftp.local())
    write_config(isolated, f"[demo]\nurl = {uftp.url('/')}\n")
    stderr = one_line_error(cli("rm", "-r", "demo:/", env=uftp.env), 1)
    assert "demo:/: refusing to remove the root of a tree" in stderr
    assert tree_digests(uftp.local()) == before


# -- cp onto itself ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("arguments, named", [
    (["s.txt", "."], "'s.txt' and './s.txt' are the same file"),
    (["s.txt", "s.txt"], "'s.txt' and 's.txt' are the same file"),
    (["s.txt", "{cwd}/s.txt"], "'s.txt' and '{cwd}/s.txt' are the same file"),
    (["-r", "sub", "."], "'sub' and './sub' are the same file"),
    (["-r", "sub", "sub/"], "cannot copy a directory, 'sub', into itself, 'sub/sub'"),
])
def test_cp_refuses_to_copy_a_local_file_onto_itself(cli, tmp_path, arguments, named):
    write_random(tmp_path / "s.txt", 5000)
    before = make_files(tmp_path / "sub") | {"s.txt": sha256_file(tmp_path / "s.txt")}
    arguments = [argument.format(cwd=tmp_path) for argument in arguments]
    stderr = one_line_error(cli("cp", *arguments, cwd=tmp_path), 1)
    assert stderr == f"hpcfs: {named.format(cwd=tmp_path)}"
    after = tree_digests(tmp_path / "sub") | {"s.txt": sha256_file(tmp_path / "s.txt")}
    assert after == before
    assert sorted(os.listdir(tmp_path)) == ["s.txt", "sub", "xdg"]  # no partial file left either


def test_cp_refuses_a_hard_link_onto_itself_inside_a_recursive_copy(cli, tmp_path):
    before = make_files(tmp_path / "a")
    os.makedirs(tmp_path / "b" / "a")
    os.link(tmp_path / "a" / "f0.bin", tmp_path / "b" / "a" / "f0.bin")  # b/a/f0.bin is a/f0.bin
    stderr = one_line_error(cli("cp", "-r", str(tmp_path / "a"), str(tmp_path / "b"), cwd=tmp_path), 1)
    assert "are the same file" in stderr and "f0.bin" in stderr
    assert tree_digests(tmp_path / "a") == before


def test_cp_refuses_a_remote_file_onto_itself(cli, remote):
    before = make_files(remote.local())
    for arguments in ([remote.url("f0.bin"), remote.url("f0.bin")], [remote.url("f1.bin"), remote.url("")],
                      ["-r", remote.url("inner"), remote.url("")]):
        stderr = one_line_error(cli("cp", *arguments, env=remote.env), 1)
        assert "are the same file" in stderr, stderr
    assert tree_digests(remote.local()) == before


# -- symbolic links in a local tree ------------------------------------------------------------------------
def tree_with_links(top):
    """A tree with a link to a file, a dangling link and a link back to the tree's top (a loop)."""
    os.makedirs(os.path.join(top, "sub"))
    write_random(os.path.join(top, "real.bin"), 3000)
    write_random(os.path.join(top, "sub", "x.bin"), 1000)
    os.symlink("real.bin", os.path.join(top, "alias.bin"))
    os.symlink("nowhere", os.path.join(top, "dangling"))
    os.symlink("..", os.path.join(top, "sub", "loop"))
    return {"real.bin": sha256_file(os.path.join(top, "real.bin")), "sub": "dir",
            "sub/x.bin": sha256_file(os.path.join(top, "sub", "x.bin"))}


LINKS = {"alias.bin": "real.bin", "dangling": "nowhere", "sub/loop": ".."}


def links_below(top):
    return {os.path.relpath(os.path.join(directory, name), top): os.readlink(os.path.join(directory, name))
            for directory, dirnames, filenames in os.walk(top) for name in dirnames + filenames
            if os.path.islink(os.path.join(directory, name))}


def test_cp_recursive_copies_symbolic_links_as_links_where_the_destination_has_them(cli, tmp_path, firecrest_server):
    files = tree_with_links(tmp_path / "d")
    ok(cli("cp", "-r", str(tmp_path / "d"), str(tmp_path / "local-copy")))
    assert links_below(tmp_path / "local-copy") == LINKS
    result = ok(cli("cp", "-r", str(tmp_path / "d"), firecrest_server.plain_url("/"), env=firecrest_server.env))
    copied = os.path.join(firecrest_server.root, "d")
    made = links_below(copied)
    refused = [line for line in result.stderr.splitlines() if "the server refused it" in line]
    assert len(made) + len(refused) == len(LINKS), result.stderr  # each link made, or one line says why not
    assert all(LINKS[path] == target for path, target in made.items())
    assert {path: digest for path, digest in tree_digests(copied).items() if path not in LINKS} == files


def test_cp_recursive_skips_symbolic_links_with_a_warning_where_the_destination_has_none(cli, tmp_path, uftp):
    files = tree_with_links(tmp_path / "d")
    result = ok(cli("cp", "-r", str(tmp_path / "d"), uftp.url(), env=uftp.env))
    warnings = result.stderr.splitlines()
    assert len(warnings) == 3 and all(line.startswith("hpcfs: warning: skipping symbolic link") for line in warnings)
    assert all(any(name in line for line in warnings) for name in LINKS)
    assert tree_digests(uftp.local("d")) == files


def test_cp_recursive_dereference_follows_links_and_stops_at_loops_and_dangling_ones(cli, tmp_path, uftp):
    files = tree_with_links(tmp_path / "d")
    result = cli("cp", "-r", "-L", str(tmp_path / "d"), uftp.url(), env=uftp.env, timeout=60)
    assert result.returncode == 1, result.stderr  # the dangling link fails the copy, as in GNU cp -L
    loop, dangling = result.stderr.splitlines()
    assert "loop" in loop and "sub/loop" in loop, loop
    assert dangling == f"hpcfs: cannot stat '{tmp_path / 'd' / 'dangling'}': No such file or directory", dangling
    assert tree_digests(uftp.local("d")) == {**files, "alias.bin": files["real.bin"]}


# -- Ctrl-C -----------------------------------------------------------------------------------------------
def default_sigint():
    """Ctrl-C as in an interactive shell: a suite started as a background job would pass on an ignored SIGINT."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def started_without_site(args, env):
    """The ``hpcfs`` console script without Python's ``site`` step, which runs the environment's .pth files
    (here an editable install's finder: 0.1 s on a loaded machine) before any hpcfs code can run.  The
    installed packages stay importable through PYTHONPATH."""
    site_packages = next(path for path in sys.path if path.endswith("site-packages"))
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**env, "PYTHONPATH": os.pathsep.join([root, site_packages])}
    script = os.path.join(os.path.dirname(sys.executable), "hpcfs")
    return subprocess.Popen([sys.executable, "-S", script] + args, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, preexec_fn=default_sigint)


def interrupted_before_hpcfs_ran(stderr):
    """A signal can still land in the interpreter's own start (no handler yet: killed; in its first imports:
    Python's traceback or "Fatal Python error"), which no code of ours can reach; never in the package."""
    return b"/hpcfs/" not in stderr and b"hpcfs:" not in stderr


@pytest.mark.parametrize("delay", [0.05, 0.2, 0.5])
def test_ctrl_c_at_any_moment_is_one_line_and_exit_130(isolated, uftp, delay):
    uftp.handle.knobs.latency = 2.0  # the command is still running at the last delay
    process = started_without_site(["ls", uftp.url()], {**isolated, **uftp.env})
    time.sleep(delay)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    if delay < 0.1 and interrupted_before_hpcfs_ran(stderr):
        pytest.skip(f"SIGINT after {delay} s landed before the interpreter ran hpcfs (a loaded machine)")
    assert (process.returncode, stderr) == (130, b"hpcfs: interrupted\n")


def test_ctrl_c_during_a_download_keeps_the_partial_file_and_says_how_to_resume(isolated, uftp, tmp_path):
    write_random(uftp.local("big.bin"), 24 << 20)
    uftp.handle.knobs.latency = 0.1
    destination = tmp_path / "big.bin"
    env = {**isolated, **uftp.env}
    process = subprocess.Popen(HPCFS + ["cp", uftp.url("big.bin"), str(destination)], env=env,
                               stderr=subprocess.PIPE, preexec_fn=default_sigint)
    deadline = time.monotonic() + 60
    partial = None
    while not (partial and partial.stat().st_size) and time.monotonic() < deadline:
        time.sleep(0.02)
        partial = kept_partial(tmp_path, "big.bin")
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    lines = stderr.decode().splitlines()
    assert process.returncode == 130 and lines[-1] == "hpcfs: interrupted", stderr
    assert lines[-2] == f"hpcfs: to continue: hpcfs cp --resume {uftp.url('big.bin')} {destination}", stderr
    assert not destination.exists() and 0 < partial.stat().st_size < 24 << 20
    uftp.handle.knobs.latency = 0
    ok(subprocess.run(HPCFS + ["cp"] + lines[-2].split("hpcfs cp ", 1)[1].split(), env=env, capture_output=True, text=True))
    assert sha256_file(destination) == sha256_file(uftp.local("big.bin")) and not partial.exists()


def kept_partial(directory, name):
    """The partial download of ``name`` in ``directory`` (a new unguessable name per copy), or None."""
    found = list(directory.glob(f".{name}.hpcfs-partial-*"))
    return found[0] if found else None


# -- errors that name the right path -----------------------------------------------------------------------
@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs (we run as root); unmounted afterwards."""
    with small_tmpfs(tmp_path / "small", "1M") as mountpoint:
        yield mountpoint


def test_a_full_local_disk_names_the_path_and_keeps_the_partial_download_for_resume(cli, uftp, small_disk):
    write_random(uftp.local("big.bin"), 3 << 20)
    destination = small_disk / "big.bin"
    stderr = one_line_error(cli("cp", uftp.url("big.bin"), str(destination), env=uftp.env), 1)
    partial = kept_partial(small_disk, "big.bin")
    assert stderr.startswith(f"hpcfs: '{destination}': No space left on device"), stderr
    assert f"kept as {partial}" in stderr and "--resume" in stderr, stderr
    assert os.listdir(small_disk) == [partial.name] and partial.stat().st_size > 0
    subprocess.run(["mount", "-o", "remount,size=8M", str(small_disk)], check=True)  # the user made room
    ok(cli("cp", "--resume", uftp.url("big.bin"), str(destination), env=uftp.env))
    assert sha256_file(destination) == sha256_file(uftp.local("big.bin")) and os.listdir(small_disk) == ["big.bin"]



def test_a_parallel_download_that_fills_the_disk_keeps_only_its_complete_prefix(cli, uftp, tmp_path):
    """Ranges fetched side by side stop at once when the disk fills: the kept partial is cut back to the
    bytes complete from its start (no later range after a hole whose zeros a resume would keep)."""
    write_random(uftp.local("big.bin"), 24 << 20)  # three 8 MiB ranges at once
    with small_tmpfs(tmp_path / "small", "8M") as disk:
        destination = disk / "big.bin"
        stderr = one_line_error(cli("cp", uftp.url("big.bin"), str(destination), env=uftp.env), 1)
        assert stderr.startswith(f"hpcfs: '{destination}': No space left on device"), stderr
        partial = kept_partial(disk, "big.bin")
        size = partial.stat().st_size
        fd = os.open(partial, os.O_RDONLY)
        try:
            # no hole before its end (SEEK_HOLE in an empty file is ENXIO: the first range wrote nothing yet)
            assert size <= 8 << 20 and (size == 0 or os.lseek(fd, 0, os.SEEK_HOLE) == size)  # at most the disk
        finally:
            os.close(fd)
        with open(uftp.local("big.bin"), "rb") as source:
            assert partial.read_bytes() == source.read(size)
        subprocess.run(["mount", "-o", "remount,size=48M", str(disk)], check=True)
        ok(cli("cp", "--resume", uftp.url("big.bin"), str(destination), env=uftp.env))
        assert sha256_file(destination) == sha256_file(uftp.local("big.bin"))
        # an empty partial (the first range had written nothing yet) has nothing to continue, and is left
        assert sorted(set(os.listdir(disk)) - {"big.bin"}) == ([partial.name] if size == 0 else [])


def test_resume_moves_a_shorter_file_off_the_real_name_before_it_grows(cli, uftp, small_disk):
    """Another tool's interrupted download under the real name is continued under a private partial name:
    a copy that fails again leaves nothing partial under the real name."""
    write_random(uftp.local("big.bin"), 3 << 20)
    destination = small_disk / "big.bin"
    with open(uftp.local("big.bin"), "rb") as source:
        destination.write_bytes(source.read(256 << 10))
    destination.chmod(0o644)
    stderr = one_line_error(cli("cp", "--resume", uftp.url("big.bin"), str(destination), env=uftp.env), 1)
    assert stderr.startswith(f"hpcfs: '{destination}': No space left on device"), stderr
    partial = kept_partial(small_disk, "big.bin")
    assert os.listdir(small_disk) == [partial.name] and stat.S_IMODE(partial.stat().st_mode) == 0o600
    with open(uftp.local("big.bin"), "rb") as source:
        assert partial.read_bytes() == source.read(partial.stat().st_size)
    subprocess.run(["mount", "-o", "remount,size=8M", str(small_disk)], check=True)
    ok(cli("cp", "--resume", uftp.url("big.bin"), str(destination), env=uftp.env))
    assert sha256_file(destination) == sha256_file(uftp.local("big.bin")) and os.listdir(small_disk) == ["big.bin"]


def test_a_missing_destination_directory_is_named_as_the_destination(cli, uftp, tmp_path):
    write_random(uftp.local("x.bin"), 1000)
    local = write_random(tmp_path / "f.bin", 1000)
    missing = tmp_path / "nonexistent-dir" / "x.bin"
    stderr = one_line_error(cli("cp", uftp.url("x.bin"), str(missing), env=uftp.env), 1)
    assert stderr == f"hpcfs: cannot stat '{missing}': {MISSING_DESTINATION}"
    stderr = one_line_error(cli("cp", str(local), uftp.url("nodir/sub/"), env=uftp.env), 1)
    assert stderr == f"hpcfs: cannot stat '{uftp.url('nodir/sub/')}': {MISSING_DESTINATION}"
    stderr = one_line_error(cli("cp", str(local), uftp.url("nodir/sub"), env=uftp.env), 1)
    assert stderr == f"hpcfs: cannot stat '{uftp.url('nodir/sub')}': {MISSING_DESTINATION}"
    assert os.listdir(uftp.local()) == ["x.bin"]


def test_without_a_password_the_message_suggests_what_the_command_accepts(cli, uftp):
    for env, user in (({"UFTP_USER": "demo"}, "no password for UFTP user demo"), ({}, "no UFTP credentials")):
        stderr = one_line_error(cli("ls", uftp.url(), env={"HPCFS_CA_FILE": uftp.env["HPCFS_CA_FILE"], **env}), 2)
        assert user in stderr and "UFTP_PASSWORD" in stderr and "password_prompt" in stderr, stderr
        assert "USER:PASSWORD@" not in stderr and "in the URL" not in stderr, stderr


# -- secret sources ---------------------------------------------------------------------------------------
def test_a_password_command_from_a_config_others_may_change_never_runs(cli, isolated, uftp, tmp_path):
    ran = tmp_path / "ran"
    profile = f"[myhpc]\nurl = {uftp.url()}\nuser = demo\npassword_command = touch {ran}; echo test123\n"
    for mode in (0o666, 0o620):
        path = write_config(isolated, profile, mode)
        stderr = one_line_error(cli("ls", "myhpc:/", env={"HPCFS_CA_FILE": uftp.env["HPCFS_CA_FILE"]}), 2)
        assert stderr == (f"hpcfs: error: {path} says where credentials come from but other users may change it; "
                          f"run: chmod 600 {path}")
        assert not ran.exists()
    write_config(isolated, profile, 0o644)  # readable is fine: the file holds no secret
    ok(cli("ls", "myhpc:/", env={"HPCFS_CA_FILE": uftp.env["HPCFS_CA_FILE"]}))
    assert ran.exists()


def test_secret_files_must_be_private_and_owned_by_the_user(cli, isolated, uftp, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("abc")
    token_file.chmod(0o644)
    stderr = one_line_error(cli("ls", uftp.url() + "?token=@" + str(token_file), env=uftp.env), 2)
    assert stderr.endswith(f"{token_file} holds credentials but other users may read or change it; "
                           f"run: chmod 600 {token_file}"), stderr
    password_file = tmp_path / "password"
    password_file.write_text(uftp.env["UFTP_PASSWORD"])
    password_file.chmod(0o600)
    os.chown(password_file, 65534, 65534)  # nobody's
    write_config(isolated, f"[myhpc]\nurl = {uftp.url()}\nuser = demo\npassword_file = {password_file}\n", 0o600)
    stderr = one_line_error(cli("ls", "myhpc:/", env={"HPCFS_CA_FILE": uftp.env["HPCFS_CA_FILE"]}), 2)
    assert f"{password_file} holds credentials but belongs to another user (uid 65534)" in stderr, stderr
    os.chown(password_file, os.getuid(), os.getgid())
    ok(cli("ls", "myhpc:/", env={"HPCFS_CA_FILE": uftp.env["HPCFS_CA_FILE"]}))


def test_a_profile_with_two_secret_sources_is_refused(cli, isolated, uftp, tmp_path):
    password_file = tmp_path / "password"
    password_file.write_text(uftp.env["UFTP_PASSWORD"])
    password_file.chmod(0o600)
    path = write_config(isolated, f"[myhpc]\nurl = {uftp.url()}\nuser = demo\npassword_env = MY_PW\n"
                                 f"password_file = {password_file}\n", 0o600)
    stderr = one_line_error(cli("ls", "myhpc:/", env={"MY_PW": "x", **uftp.env}), 2)
    assert stderr == (f"hpcfs: error: {path}: profile [myhpc] gives its secret twice "
                      "(password_env and password_file); keep one")


# -- resumed uploads --------------------------------------------------------------------------------------
def settled_size(path, log):
    """The size of ``path`` once the server has handled what a killed client had already sent."""
    previous = None
    while (os.path.getsize(path), log.total()) != previous:
        previous = (os.path.getsize(path), log.total())
        time.sleep(0.5)
    return previous[0]


def test_resume_continues_a_killed_upload_from_its_kept_prefix(cli, isolated, uftp, tmp_path):
    size = 40 << 20
    source = write_random(tmp_path / "big.bin", size)
    partial = uftp.local(".big.bin.hpcfs-partial")
    uftp.handle.knobs.latency = 0.1
    process = subprocess.Popen(HPCFS + ["cp", str(source), uftp.url("big.bin")], env={**isolated, **uftp.env},
                               stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not (os.path.exists(partial) and os.path.getsize(partial) >= 16 << 20) and time.monotonic() < deadline:
        time.sleep(0.02)
    process.kill()  # a crash: nothing cleans up
    process.wait(timeout=30)
    kept = settled_size(partial, uftp.handle.log)
    assert 16 << 20 <= kept < size and not os.path.exists(uftp.local("big.bin"))

    uftp.handle.knobs.latency = 0
    uftp.handle.log.reset()
    ok(cli("cp", "--resume", str(source), uftp.url("big.bin"), env=uftp.env))
    assert sha256_file(uftp.local("big.bin")) == sha256_file(source) and not os.path.exists(partial)
    pieces_left = -(-(size - kept) // (4 << 20))
    assert uftp.handle.log.total("STOR") == pieces_left, (kept, uftp.handle.log.snapshot())  # the prefix stayed


def test_resume_sends_again_whole_a_kept_upload_that_differs_from_the_source(cli, uftp, tmp_path):
    source = write_random(tmp_path / "big.bin", 12 << 20)
    with open(uftp.local(".big.bin.hpcfs-partial"), "wb") as handle:
        handle.write(os.urandom(6 << 20))  # not a prefix of the source
    uftp.handle.log.reset()
    ok(cli("cp", "--resume", str(source), uftp.url("big.bin"), env=uftp.env))
    assert sha256_file(uftp.local("big.bin")) == sha256_file(source)
    assert uftp.handle.log.total("STOR") == 1 + 3  # created empty, then every piece


def test_resume_says_when_the_server_cannot_continue_an_upload(cli, firecrest_server, tmp_path):
    source = write_random(tmp_path / "f.bin", 300_000)
    with open(os.path.join(firecrest_server.root, "f.bin"), "wb") as handle:
        handle.write(b"\0" * 1000)
    result = ok(cli("cp", "--resume", str(source), firecrest_server.plain_url("/f.bin"), env=firecrest_server.env))
    assert result.stderr == "hpcfs: warning: /f.bin: the server cannot write at an offset; sending the whole file again\n"
    assert sha256_file(os.path.join(firecrest_server.root, "f.bin")) == sha256_file(source)


def test_an_ignored_sigint_stays_ignored(isolated, uftp):
    """A background job (``hpcfs ... &`` in a script) inherits SIGINT ignored; hpcfs must not take it back."""
    uftp.handle.knobs.latency = 1.0

    def ignore_sigint():
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    process = subprocess.Popen(HPCFS + ["ls", uftp.url()], env={**isolated, **uftp.env}, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, preexec_fn=ignore_sigint)
    for delay in (0.1, 0.5, 1.0):
        time.sleep(delay)
        process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert (process.returncode, stderr) == (0, b"")
