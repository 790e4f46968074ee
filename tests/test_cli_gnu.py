"""The file commands report and exit as GNU coreutils do: errors name the argument as typed, with the
errno's standard text; the flags people type (ls -1tdl, cp -n/-p/-a, stat of several paths) work; and
``cp --resume`` compares size and time, as rsync's quick check does.  Real local servers, no mocks."""
import os

from mounting import sha256_file, write_random
from test_cli import Remote, cli, isolated, ok, one_line_error, remote, uftp  # noqa: F401 (fixtures)


def write(path, text: str) -> None:
    with open(path, "w") as handle:
        handle.write(text)


# -- item 2: errors name what the user typed ------------------------------------------------------------
def test_a_missing_path_is_named_as_typed_with_the_standard_text_on_every_protocol(cli, remote):
    missing = remote.url("nope")
    env = remote.env
    assert one_line_error(cli("ls", missing, env=env), 2) == f"hpcfs: cannot access '{missing}': No such file or directory"
    assert one_line_error(cli("stat", missing, env=env), 1) == f"hpcfs: cannot access '{missing}': No such file or directory"
    assert one_line_error(cli("cat", missing, env=env), 1) == f"hpcfs: '{missing}': No such file or directory"
    assert one_line_error(cli("rm", missing, env=env), 1) == f"hpcfs: cannot remove '{missing}': No such file or directory"
    assert one_line_error(cli("cp", missing, "/tmp", env=env), 1) == f"hpcfs: cannot stat '{missing}': No such file or directory"


def test_ls_lists_the_others_and_exits_2_for_a_missing_argument(cli, uftp):
    write(uftp.local("here.txt"), "x")
    missing = uftp.url("no-such-directory")
    result = cli("ls", missing, uftp.url("here.txt"), env=uftp.env)
    assert result.returncode == 2, result.stderr
    assert result.stdout == "here.txt\n"
    assert result.stderr == f"hpcfs: cannot access '{missing}': No such file or directory\n"


def test_the_servers_text_is_only_in_the_verbose_log(cli, remote):
    missing = remote.url("nope")
    loud = cli("--verbose", "stat", missing, env=remote.env)
    assert loud.returncode == 1
    assert f"hpcfs: cannot access '{missing}': No such file or directory" in loud.stderr.splitlines(), loud.stderr
    assert "hpcfs.cli: " in loud.stderr and "/nope: " in loud.stderr  # the server's own words, logged


def test_mkdir_and_rm_go_on_past_a_failed_argument_in_gnu_words(cli, uftp):
    write(uftp.local("plain"), "a file in the way")
    plain, made = uftp.url("plain"), uftp.url("made")
    result = cli("mkdir", plain, made, env=uftp.env)
    assert result.returncode == 1 and result.stderr == f"hpcfs: cannot create directory '{plain}': File exists\n"
    assert os.path.isdir(uftp.local("made"))
    gone = uftp.url("gone")
    result = cli("rm", gone, plain, env=uftp.env)
    assert result.returncode == 1 and result.stderr == f"hpcfs: cannot remove '{gone}': No such file or directory\n"
    assert not os.path.exists(uftp.local("plain"))


def test_cp_dereference_fails_on_a_dangling_link_after_copying_the_rest(cli, uftp, tmp_path):
    top = tmp_path / "top"
    top.mkdir()
    write_random(top / "data.bin", 3000)
    os.symlink("missing", top / "dangling")
    result = cli("cp", "-r", "-L", str(top), uftp.url(), env=uftp.env)
    assert result.returncode == 1, result.stderr
    assert result.stderr == f"hpcfs: cannot stat '{top / 'dangling'}': No such file or directory\n"
    assert sha256_file(uftp.local("top/data.bin")) == sha256_file(top / "data.bin")


# -- item 3: ls flags -----------------------------------------------------------------------------------
def make_dated_tree(uftp) -> None:
    """top/ holding a (oldest), b (newest), c and .hidden: sizes 1536, 10, 0 and 1 bytes."""
    os.makedirs(uftp.local("top"))
    for name, size, mtime in (("a", 1536, 1_000_000), ("b", 10, 3_000_000), ("c", 0, 2_000_000), (".hidden", 1, 500)):
        write_random(uftp.local(f"top/{name}"), size)
        os.utime(uftp.local(f"top/{name}"), (mtime, mtime))


def lines(result) -> "list[str]":
    return ok(result).stdout.splitlines()


def test_ls_one_per_line_directory_itself_all_and_newest_first(cli, uftp):
    make_dated_tree(uftp)
    top, env = uftp.url("top"), uftp.env
    assert lines(cli("ls", "-1", top, env=env)) == ["a", "b", "c"]
    assert lines(cli("ls", "-d", top, env=env)) == ["top"]
    assert lines(cli("ls", "-a", top, env=env)) == [".", "..", ".hidden", "a", "b", "c"]
    assert lines(cli("ls", "-A", top, env=env)) == [".hidden", "a", "b", "c"]
    assert lines(cli("ls", "-t", top, env=env)) == ["b", "c", "a"]
    assert lines(cli("ls", "-1t", uftp.url("top/a"), uftp.url("top/b"), env=env)) == ["b", "a"]


def test_ls_long_has_an_owner_column_and_a_total_of_kib(cli, uftp, firecrest_server):
    make_dated_tree(uftp)
    listing = lines(cli("ls", "-l", uftp.url("top"), env=uftp.env))
    assert listing[0] == "total 3"  # ceil(1536/1024) + ceil(10/1024) + 0
    assert [line.split()[1:3] for line in listing[1:]] == [["-", "1536"], ["-", "10"], ["-", "0"]], listing
    os.makedirs(os.path.join(firecrest_server.root, "top"))
    write_random(os.path.join(firecrest_server.root, "top", "f"), 2049)
    firecrest = Remote("firecrest", firecrest_server, "")
    listing = lines(cli("ls", "-l", firecrest.url("top"), env=firecrest.env))
    assert listing[0] == "total 3" and listing[1].split()[1:3] == [str(os.getuid()), "2049"], listing


def test_stat_shows_every_path_and_reports_a_missing_one(cli, uftp):
    make_dated_tree(uftp)
    missing = uftp.url("top/missing")
    result = cli("stat", uftp.url("top/a"), missing, uftp.url("top/b"), env=uftp.env)
    assert result.returncode == 1 and result.stderr == f"hpcfs: cannot access '{missing}': No such file or directory\n"
    blocks = [line for line in result.stdout.splitlines() if line.startswith(("  File:", "  Size:"))]
    assert blocks == ["  File: /top/a", "  Size: 1536", "  File: /top/b", "  Size: 10"], result.stdout


# -- item 3: cp flags ---------------------------------------------------------------------------------------
def mode_of(path) -> int:
    return os.stat(path).st_mode & 0o777


def test_cp_no_clobber_never_overwrites_and_exits_0(cli, uftp, tmp_path):
    write(uftp.local("a.txt"), "remote a\n")
    write(uftp.local("b.txt"), "remote b\n")
    write(tmp_path / "a.txt", "mine\n")
    ok(cli("cp", "-n", uftp.url("a.txt"), uftp.url("b.txt"), str(tmp_path), env=uftp.env))
    assert (tmp_path / "a.txt").read_text() == "mine\n" and (tmp_path / "b.txt").read_text() == "remote b\n"
    ok(cli("cp", "-n", str(tmp_path / "a.txt"), uftp.url("b.txt"), env=uftp.env))  # upload: the same
    assert open(uftp.local("b.txt")).read() == "remote b\n"


def test_resume_copies_again_a_changed_source_of_the_same_size(cli, uftp, tmp_path):
    source = tmp_path / "data.txt"
    write(source, "version 1\n")
    os.utime(source, (1_000_000, 1_000_000))
    ok(cli("cp", str(source), uftp.url("data.txt"), env=uftp.env))
    ok(cli("cp", "--resume", str(source), uftp.url("data.txt"), env=uftp.env))  # complete: skipped
    write(source, "version 2\n")  # the same size, a newer time than the copy's
    os.utime(source, (os.path.getmtime(uftp.local("data.txt")) + 60,) * 2)
    ok(cli("cp", "--resume", str(source), uftp.url("data.txt"), env=uftp.env))
    assert open(uftp.local("data.txt")).read() == "version 2\n"


def test_cp_preserve_keeps_mode_and_time_in_both_directions(cli, uftp, tmp_path):
    source = tmp_path / "run.sh"
    write(source, "#!/bin/sh\n")
    os.chmod(source, 0o775)  # the group bit the default umask (022) would not take away, 0o002 it would
    os.utime(source, (1_500_000_000, 1_500_000_000))
    ok(cli("cp", "-p", str(source), uftp.url("run.sh"), env={**uftp.env}))
    assert mode_of(uftp.local("run.sh")) == 0o775 and os.path.getmtime(uftp.local("run.sh")) == 1_500_000_000
    (tmp_path / "down").mkdir()
    ok(cli("cp", "-p", uftp.url("run.sh"), str(tmp_path / "down"), env=uftp.env))
    assert mode_of(tmp_path / "down/run.sh") == 0o775 and os.path.getmtime(tmp_path / "down/run.sh") == 1_500_000_000
    ok(cli("cp", uftp.url("run.sh"), str(tmp_path / "plain.sh"), env=uftp.env))  # without -p: less the umask
    assert mode_of(tmp_path / "plain.sh") == 0o775 & ~0o022 and os.path.getmtime(tmp_path / "plain.sh") > 1_500_000_000


def test_cp_archive_is_recursive_and_preserving(cli, uftp, tmp_path):
    (tmp_path / "tree/sub").mkdir(parents=True)
    write(tmp_path / "tree/sub/f", "deep\n")
    os.chmod(tmp_path / "tree/sub/f", 0o664)
    os.utime(tmp_path / "tree/sub/f", (1_400_000_000, 1_400_000_000))
    ok(cli("cp", "-a", str(tmp_path / "tree"), uftp.url(), env=uftp.env))
    copy = uftp.local("tree/sub/f")
    assert open(copy).read() == "deep\n" and mode_of(copy) == 0o664 and os.path.getmtime(copy) == 1_400_000_000
