"""``hpcfs cp`` on a shared login node, round two of the audit: partial files another user planted, modes
that must not widen, remote symbolic links and loops, special files, long names, and a tree in which one
file fails.  Attacks run as a second local user (tests/intruder.py); bytes are compared by sha256, modes
by value.
"""
import os
import re
import stat

from mounting import sha256_file, tree_digests, write_random
from test_cli import cli, isolated, ok, uftp  # noqa: F401 (fixtures)
from test_cli_safety import kept_partial


def umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def mode_of(path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def hidden(directory) -> list:
    return sorted(name for name in os.listdir(directory) if name.startswith("."))


def firecrest_env_url(server, path):
    return server.plain_url(path), server.env


# -- partial names another user can plant -----------------------------------------------------------------
def test_a_symlink_planted_at_the_partial_name_is_never_followed(cli, uftp, intruder, shared_dir, tmp_path):
    victim = write_random(tmp_path / "victim", 5000)  # root's private file
    victim.chmod(0o600)
    before = sha256_file(victim)
    data = write_random(uftp.local("report"), 300_000)
    planted = shared_dir / ".report.hpcfs-partial"  # the name every earlier hpcfs wrote to
    assert intruder(["ln", "-s", str(victim), str(planted)]).returncode == 0
    ok(cli("cp", uftp.url("report"), str(shared_dir / "report"), env=uftp.env))
    assert sha256_file(victim) == before and mode_of(victim) == 0o600
    result = shared_dir / "report"
    assert stat.S_ISREG(os.lstat(result).st_mode) and os.lstat(result).st_uid == os.geteuid()
    assert sha256_file(result) == sha256_file(data)
    assert os.path.islink(planted) and hidden(shared_dir) == [planted.name]  # left alone, nothing of ours left


def test_resume_never_continues_a_partial_another_user_prepared(cli, uftp, intruder, shared_dir):
    data = write_random(uftp.local("report"), 300_000)
    planted = shared_dir / ".report.hpcfs-partial-0123456789abcdef"  # our pattern, but the intruder's file
    assert intruder(["sh", "-c", f"umask 0; head -c 1000 /dev/zero > {planted}"]).returncode == 0
    ok(cli("cp", "--resume", uftp.url("report"), str(shared_dir / "report"), env=uftp.env))
    result = shared_dir / "report"
    assert sha256_file(result) == sha256_file(data) and os.lstat(result).st_uid == os.geteuid()
    assert os.path.getsize(planted) == 1000  # not taken over, not written to


def test_resume_continues_our_own_kept_partial(cli, uftp, tmp_path):
    data = write_random(uftp.local("big.bin"), 3 << 20)
    kept = tmp_path / ".big.bin.hpcfs-partial-00112233aabbccdd"
    with open(data, "rb") as source:
        kept.write_bytes(b"\1" * 1000 + source.read()[1000:1 << 20])  # a prefix resume must keep, not redo
    kept.chmod(0o600)
    ok(cli("cp", "--resume", uftp.url("big.bin"), str(tmp_path / "big.bin"), env=uftp.env))
    with open(data, "rb") as source:
        assert (tmp_path / "big.bin").read_bytes() == b"\1" * 1000 + source.read()[1000:]
    assert not kept.exists()


# -- modes ----------------------------------------------------------------------------------------------
def test_downloads_keep_private_modes(cli, firecrest_server, tmp_path):
    root = firecrest_server.root
    os.makedirs(os.path.join(root, "tree", "private"))
    os.chmod(os.path.join(root, "tree", "private"), 0o700)
    secret = write_random(os.path.join(root, "tree", "private", "secret"), 2000)
    os.chmod(secret, 0o600)
    public = write_random(os.path.join(root, "tree", "public"), 2000)
    os.chmod(public, 0o644)
    url, env = firecrest_env_url(firecrest_server, "/tree")
    ok(cli("cp", "-r", url, str(tmp_path / "copy"), env=env))
    assert mode_of(tmp_path / "copy" / "private") == 0o700 & ~umask()
    assert mode_of(tmp_path / "copy" / "private" / "secret") == 0o600 & ~umask()
    assert mode_of(tmp_path / "copy" / "public") == 0o644 & ~umask()
    assert tree_digests(tmp_path / "copy") == tree_digests(os.path.join(root, "tree"))
    ok(cli("cp", firecrest_server.plain_url("/tree/private/secret"), str(tmp_path / "one"), env=env))
    assert mode_of(tmp_path / "one") == 0o600 & ~umask()


def test_uploads_keep_private_modes(cli, uftp, firecrest_server, tmp_path):
    top = tmp_path / "up"
    (top / "private").mkdir(parents=True)
    (top / "private").chmod(0o700)
    secret = write_random(top / "private" / "secret", 300_000)
    secret.chmod(0o600)
    write_random(top / "public", 1000).chmod(0o644)
    targets = ((uftp.url("/"), uftp.env, uftp.local()),
               (firecrest_server.plain_url("/"), firecrest_server.env, firecrest_server.root))
    for url, env, local_root in targets:
        ok(cli("cp", "-r", str(top), url, env=env))
        copy = os.path.join(local_root, "up")
        assert mode_of(os.path.join(copy, "private")) == 0o700 & ~umask(), url
        assert mode_of(os.path.join(copy, "private", "secret")) == 0o600 & ~umask(), url
        assert mode_of(os.path.join(copy, "public")) == 0o644 & ~umask(), url
        assert tree_digests(copy) == tree_digests(top)


# -- remote symbolic links --------------------------------------------------------------------------------
def test_remote_links_in_a_firecrest_tree_are_copied_as_links(cli, firecrest_server, uftp, tmp_path):
    top = os.path.join(firecrest_server.root, "rl2")
    os.makedirs(top)
    data = write_random(os.path.join(top, "data.bin"), 3000)
    os.symlink("missing", os.path.join(top, "dangling"))
    os.symlink(".", os.path.join(top, "loop"))
    os.symlink("data.bin", os.path.join(top, "alias"))
    write_random(os.path.join(top, "z-last.bin"), 2000)
    url, env = firecrest_env_url(firecrest_server, "/rl2")
    result = ok(cli("cp", "-r", url, str(tmp_path / "copy"), env=env))
    copy = tmp_path / "copy"
    assert sorted(os.listdir(copy)) == ["alias", "dangling", "data.bin", "loop", "z-last.bin"], result.stderr
    assert [os.readlink(copy / name) for name in ("alias", "dangling", "loop")] == ["data.bin", "missing", "."]
    assert sha256_file(copy / "data.bin") == sha256_file(data)
    # to a server without links: skipped with a warning each, the files copied
    result = ok(cli("cp", "-r", url, uftp.url("/"), env={**env, **uftp.env}))
    assert result.stderr.count("skipping symbolic link") == 3, result.stderr
    assert sorted(os.listdir(uftp.local("rl2"))) == ["data.bin", "z-last.bin"]


def test_a_symlink_loop_in_a_uftp_tree_is_copied_once(cli, uftp, tmp_path):
    top = uftp.local("rl")
    os.makedirs(os.path.join(top, "sub"))
    write_random(os.path.join(top, "sub", "f.bin"), 1000)
    os.symlink("..", os.path.join(top, "sub", "up"))  # UFTPD lists it as a directory: the tree again
    result = ok(cli("cp", "-r", uftp.url("rl"), str(tmp_path / "copy"), env=uftp.env))
    assert "symbolic link loop" in result.stderr, result.stderr
    assert sorted(os.listdir(tmp_path / "copy" / "sub")) == ["f.bin"]


def test_a_nested_tree_that_lists_alike_is_copied_whole(cli, uftp, tmp_path):
    """``x/x/x/x`` made in one second lists alike at each level, as a loop would for a while; it ends,
    so it is copied whole, with no loop warning."""
    top = uftp.local("alike")
    deepest = os.path.join(top, "x", "x", "x", "x")
    os.makedirs(deepest)
    for level in range(4, -1, -1):  # deepest first: making a child changes its parent's time
        os.utime(os.path.join(top, *["x"] * level), (1_500_000_000, 1_500_000_000))
    result = ok(cli("cp", "-r", uftp.url("alike"), str(tmp_path / "copy"), env=uftp.env))
    assert "loop" not in result.stderr, result.stderr
    assert os.path.isdir(tmp_path / "copy" / "x" / "x" / "x" / "x")


# -- special files ------------------------------------------------------------------------------------------
def test_a_fifo_in_a_local_tree_is_skipped(cli, uftp, tmp_path):
    top = tmp_path / "tree"
    top.mkdir()
    write_random(top / "a.bin", 1000)
    os.mkfifo(top / "pipe")
    write_random(top / "z.bin", 1000)
    result = ok(cli("cp", "-r", str(top), uftp.url("/"), env=uftp.env, timeout=20))
    assert f"hpcfs: warning: skipping non-regular file '{top / 'pipe'}'" in result.stderr, result.stderr
    assert sorted(os.listdir(uftp.local("tree"))) == ["a.bin", "z.bin"]


# -- long names -----------------------------------------------------------------------------------------
def test_names_up_to_name_max_copy_both_ways(cli, uftp, tmp_path):
    names = ["n" * 255, "é" * 120 + "x" * 15]  # 255 bytes each; a partial name must still fit
    (tmp_path / "down").mkdir()
    for name in names:
        digest = sha256_file(write_random(uftp.local(name), 20_000))
        ok(cli("cp", uftp.url(name), str(tmp_path / "down" / name), env=uftp.env))
        assert sha256_file(tmp_path / "down" / name) == digest
        os.remove(uftp.local(name))
        ok(cli("cp", str(tmp_path / "down" / name), uftp.url(name), env=uftp.env))
        assert sha256_file(uftp.local(name)) == digest
    assert hidden(tmp_path / "down") == [] and hidden(uftp.local()) == []


# -- one failure in a tree ------------------------------------------------------------------------------------
def test_a_failed_file_does_not_stop_the_others_and_each_failure_gets_a_line(cli, uftp, tmp_path):
    os.makedirs(uftp.local("t"))
    for name in ("a", "b", "c", "d"):
        write_random(uftp.local(f"t/{name}"), 5000)
    for name in ("b", "d"):  # a directory where a file must go: renaming the finished copy onto it fails
        (tmp_path / "t" / name).mkdir(parents=True)
    result = cli("cp", "-r", "-j", "1", uftp.url("t"), str(tmp_path), env=uftp.env)
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 3 and lines[-1] == "hpcfs: 2 of 4 files could not be copied", result.stderr
    for line, name in zip(lines, ("b", "d")):
        assert re.match(rf"hpcfs: '{re.escape(str(tmp_path / 't' / name))}': Is a directory", line), line
    for name in ("a", "c"):
        assert sha256_file(tmp_path / "t" / name) == sha256_file(uftp.local(f"t/{name}"))
    assert len(hidden(tmp_path / "t")) == 2  # only the two failed copies are kept, for --resume


# -- mutants of hpcfs/transfer.py the tests above let through (docs/testing.md, December 2026) -------------
def test_resume_never_follows_a_symlink_planted_at_a_partial_name(cli, uftp, intruder, shared_dir, tmp_path):
    victim = write_random(tmp_path / "victim", 5000)  # root's private file: ours by uid, one link, mode 0600
    victim.chmod(0o600)
    before = sha256_file(victim)
    data = write_random(uftp.local("report"), 300_000)
    planted = shared_dir / ".report.hpcfs-partial-0123456789abcdef"  # the pattern resume looks for
    assert intruder(["ln", "-s", str(victim), str(planted)]).returncode == 0
    ok(cli("cp", "--resume", uftp.url("report"), str(shared_dir / "report"), env=uftp.env))
    assert sha256_file(victim) == before and os.path.getsize(victim) == 5000
    result = shared_dir / "report"
    assert stat.S_ISREG(os.lstat(result).st_mode) and sha256_file(result) == sha256_file(data)
    assert os.path.islink(planted) and os.readlink(planted) == str(victim)


def test_resume_never_continues_a_private_partial_of_another_user(cli, uftp, intruder, shared_dir):
    data = write_random(uftp.local("report"), 300_000)
    planted = shared_dir / ".report.hpcfs-partial-0123456789abcdef"
    assert intruder(["sh", "-c", f"umask 077; head -c 1000 /dev/zero > {planted}"]).returncode == 0
    assert mode_of(planted) == 0o600  # private like ours: only the owner tells it apart
    ok(cli("cp", "--resume", uftp.url("report"), str(shared_dir / "report"), env=uftp.env))
    assert sha256_file(shared_dir / "report") == sha256_file(data)
    assert os.path.getsize(planted) == 1000


def test_resume_never_continues_a_partial_of_ours_that_has_another_link_or_group_bits(cli, uftp, tmp_path):
    data = write_random(uftp.local("report"), 300_000)
    (tmp_path / "down").mkdir()
    elsewhere = tmp_path / "elsewhere.bin"  # a file of ours that a hard link makes look like a partial
    elsewhere.write_bytes(b"\1" * 1000)
    elsewhere.chmod(0o600)
    os.link(elsewhere, tmp_path / "down" / ".report.hpcfs-partial-0123456789abcdef")
    shared = tmp_path / "down" / ".report.hpcfs-partial-fedcba9876543210"  # ours, but the group may write it
    shared.write_bytes(b"\2" * 2000)
    shared.chmod(0o660)
    ok(cli("cp", "--resume", uftp.url("report"), str(tmp_path / "down" / "report"), env=uftp.env))
    assert sha256_file(tmp_path / "down" / "report") == sha256_file(data)
    assert elsewhere.read_bytes() == b"\1" * 1000 and os.lstat(elsewhere).st_nlink == 2
    assert shared.read_bytes() == b"\2" * 2000


def test_resume_never_keeps_more_bytes_than_the_source_has(cli, uftp, tmp_path):
    data = write_random(uftp.local("report"), 300_000)
    longer = tmp_path / "report"
    longer.write_bytes(b"\3" * 400_000)  # an older, longer file under the real name: not "complete"
    ok(cli("cp", "--resume", uftp.url("report"), str(longer), env=uftp.env))
    assert sha256_file(longer) == sha256_file(data)
    os.remove(longer)
    kept = tmp_path / ".report.hpcfs-partial-0123456789abcdef"  # ours, but longer than the source now is
    kept.write_bytes(b"\4" * 400_000)
    kept.chmod(0o600)
    ok(cli("cp", "--resume", uftp.url("report"), str(longer), env=uftp.env))
    assert sha256_file(longer) == sha256_file(data)


def test_copies_take_the_umask_and_directories_their_source_mode_last(cli, firecrest_server, tmp_path):
    top = os.path.join(firecrest_server.root, "um")
    os.makedirs(os.path.join(top, "ro"))
    wide = write_random(os.path.join(top, "wide"), 2000)
    os.chmod(wide, 0o666)
    inner = write_random(os.path.join(top, "ro", "inner"), 2000)
    os.chmod(inner, 0o644)
    os.chmod(os.path.join(top, "ro"), 0o555)  # a read-only directory: filled first, then made read-only
    os.chmod(top, 0o777)
    url, env = firecrest_env_url(firecrest_server, "/um")
    ok(cli("cp", "-r", url, str(tmp_path / "copy"), env=env, preexec_fn=lambda: os.umask(0o027)))
    copy = tmp_path / "copy"
    assert (mode_of(copy), mode_of(copy / "ro"), mode_of(copy / "wide"), mode_of(copy / "ro" / "inner")) == \
        (0o750, 0o550, 0o640, 0o640)
    assert sha256_file(copy / "ro" / "inner") == sha256_file(inner) and sha256_file(copy / "wide") == sha256_file(wide)


def test_a_fifo_named_as_the_source_is_skipped(cli, uftp, tmp_path):
    os.mkfifo(tmp_path / "pipe")
    result = ok(cli("cp", str(tmp_path / "pipe"), uftp.url("/"), env=uftp.env, timeout=20))
    assert result.stderr == f"hpcfs: warning: skipping non-regular file '{tmp_path / 'pipe'}'\n", result.stderr
    assert os.listdir(uftp.local()) == []


def test_a_partial_kept_after_a_failed_rename_is_resumed(cli, firecrest_server, tmp_path):
    """The last step can fail too (a directory stands at the name): the complete partial, already given
    the source's 0644, goes back to private, so --resume takes it up instead of downloading beside it."""
    os.makedirs(os.path.join(firecrest_server.root, "tree"))
    source = write_random(os.path.join(firecrest_server.root, "tree", "a.bin"), 100_000)
    os.chmod(source, 0o644)
    url, env = firecrest_env_url(firecrest_server, "/tree")
    blocker = tmp_path / "copy" / "tree" / "a.bin"
    blocker.mkdir(parents=True)
    assert cli("cp", "-r", url, str(tmp_path / "copy"), env=env).returncode == 1
    partial = kept_partial(blocker.parent, "a.bin")
    assert stat.S_IMODE(partial.stat().st_mode) == 0o600
    blocker.rmdir()
    ok(cli("cp", "-r", "--resume", url, str(tmp_path / "copy"), env=env))
    assert sha256_file(blocker) == sha256_file(source)
    assert os.listdir(blocker.parent) == ["a.bin"]  # the partial was taken up, not left beside a new copy
