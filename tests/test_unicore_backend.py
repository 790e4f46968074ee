"""``unicore://`` through hpcfs's front ends against ``hpcfs serve unicore`` over real sockets: the CLI's
``ls -l``/``cp -r``/``cat``, open_fs and fsspec, a job's working directory as a tree, credentials (password,
bearer token, TLS) and the server's refusals.  Bytes are compared by sha256."""
import base64
import hashlib
import os
import subprocess
import sys
import time

import fs
import fsspec
import pytest
import requests

from fixtures_unicore import PASSWORD, USER
from hpcfs import errors
from hpcfs.urls import open_backend

pytestmark = pytest.mark.timeout(120)
HPCFS = [sys.executable, "-m", "hpcfs"]
MIB = 1 << 20


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def run(*args, env=None):
    """The CLI with only the given credentials (none of the test runner's)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("UNICORE_")}
    return subprocess.run(HPCFS + list(args), env={**base, **(env or {})}, capture_output=True, text=True,
                          timeout=100)


def ok(result):
    assert result.returncode == 0, f"exit {result.returncode}: {result.stderr}"
    return result


def one_line(result) -> str:
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def basic(user=USER, password=PASSWORD) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def make_tree(top, files=12):
    for index in range(files):
        directory = top / f"d{index % 3}"
        directory.mkdir(parents=True, exist_ok=True)
        (directory / f"f{index}.bin").write_bytes(os.urandom(index * 997 + (MIB + 1 if index == 5 else 0)))


def digests(top) -> dict:
    return {os.path.relpath(os.path.join(here, name), top): sha256(open(os.path.join(here, name), "rb").read())
            for here, _, names in os.walk(top) for name in names}


# -- the CLI --------------------------------------------------------------------------------------------
def test_cli_cp_r_both_ways_ls_l_and_cat(unicore_server, tmp_path):
    make_tree(tmp_path / "up")
    env = unicore_server.env
    ok(run("cp", "-r", str(tmp_path / "up"), unicore_server.plain_url("/"), env=env))
    assert digests(os.path.join(unicore_server.root, "up")) == digests(tmp_path / "up")
    (tmp_path / "down").mkdir()
    ok(run("cp", "-r", unicore_server.plain_url("/up"), str(tmp_path / "down"), env=env))
    assert digests(tmp_path / "down" / "up") == digests(tmp_path / "up")
    lines = ok(run("ls", "-l", unicore_server.plain_url("/up/d2"), env=env)).stdout.splitlines()
    listing = [line for line in lines if not line.startswith("total ")]
    assert sorted(line.split()[-1] for line in listing) == ["f11.bin", "f2.bin", "f5.bin", "f8.bin"]
    assert any(line.split()[-1] == "f5.bin" and str(5 * 997 + MIB + 1) in line.split() for line in listing)
    (tmp_path / "note.txt").write_text("a note\n")
    ok(run("cp", str(tmp_path / "note.txt"), unicore_server.plain_url("/up/"), env=env))
    assert ok(run("cat", unicore_server.plain_url("/up/note.txt"), env=env)).stdout == "a note\n"


def test_wrong_password_and_bad_urls_are_one_line_without_secrets(unicore_server):
    line = one_line(run("ls", unicore_server.plain_url("/"), env={"UNICORE_USER": USER,
                                                                  "UNICORE_PASSWORD": "wrong-pw-123"}))
    assert "wrong-pw-123" not in line and "401" in line
    assert "names a storage" in one_line(run("ls", f"unicore://{USER}@{unicore_server.netloc}/DEMO-SITE/rest/core",
                                             env=unicore_server.env))
    assert "no password" in one_line(run("ls", unicore_server.plain_url("/"), env={"UNICORE_USER": USER}))


# -- open_fs and fsspec -----------------------------------------------------------------------------------
def test_ranged_reads_fetch_only_what_is_read(unicore_server):
    data = os.urandom(16 * MIB)
    with open(os.path.join(unicore_server.root, "big.bin"), "wb") as handle:
        handle.write(data)
    with fs.open_fs(unicore_server.url("/")) as tree:
        with tree.openbin("big.bin") as handle:
            handle.seek(9 * MIB + 17)
            assert handle.read(4096) == data[9 * MIB + 17:9 * MIB + 17 + 4096]
        assert sha256(tree.readbytes("big.bin")) == sha256(data)


def test_fsspec_reads_and_writes(unicore_server, close_cached_filesystems):
    with fsspec.open(unicore_server.url("/fsspec.txt"), "wt") as handle:
        handle.write("through fsspec\n")
    assert open(os.path.join(unicore_server.root, "fsspec.txt")).read() == "through fsspec\n"
    with fsspec.open(unicore_server.url("/fsspec.txt"), "rt") as handle:
        assert handle.read() == "through fsspec\n"


def test_posix_semantics_the_server_lacks_are_kept(unicore_server):
    """The server deletes directories recursively and makes them quietly: hpcfs checks first."""
    with fs.open_fs(unicore_server.url("/")) as tree:
        tree.makedirs("full/inner")
        tree.writebytes("full/inner/x", b"x")
        with pytest.raises(fs.errors.DirectoryNotEmpty):
            tree.removedir("full/inner")
        with pytest.raises(fs.errors.DirectoryExists):
            tree.makedir("full")
        with pytest.raises(fs.errors.FileExpected):
            tree.remove("full")
        tree.writebytes("full/a", b"new")
        tree.writebytes("full/b", b"old")
        tree.move("full/a", "full/b", overwrite=True)
        assert tree.readbytes("full/b") == b"new" and not tree.exists("full/a")
    assert os.path.exists(os.path.join(unicore_server.root, "full/inner/x"))


# -- jobs ----------------------------------------------------------------------------------------------
def submit(handle, description: dict, headers=None) -> requests.Response:
    return requests.post(f"{handle.base_url}/jobs", json=description, headers=headers or basic(), timeout=10)


def finished(handle, job_url: str) -> dict:
    for _ in range(100):
        job = requests.get(job_url, headers=basic(), timeout=10).json()
        if job["status"] in ("SUCCESSFUL", "FAILED"):
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_url} did not end")


def test_a_jobs_working_directory_is_the_storage_its_job_names(unicore_server, tmp_path):
    reply = submit(unicore_server, {"Executable": "/bin/echo", "Arguments": ["hello", "unicore"]})
    assert reply.status_code == 201
    job = finished(unicore_server, reply.headers["Location"])
    storage = job["_links"]["workingDirectory"]["href"].rsplit("/storages/", 1)[1]
    url = unicore_server.plain_url("/", storage=storage)
    assert ok(run("cat", url + "stdout", env=unicore_server.env)).stdout == "hello unicore\n"
    assert sorted(ok(run("ls", url, env=unicore_server.env)).stdout.split()) == ["stderr", "stdout"]


def test_jobs_run_only_for_an_authenticated_account_and_stay_its_own(make_unicore_server, tmp_path):
    handle = make_unicore_server(users={USER: PASSWORD, "other": "other-pw"})
    marker = tmp_path / "ran"
    anonymous = submit(handle, {"Executable": f"touch {marker}"}, headers={"X-Nobody": "1"})
    wrong = submit(handle, {"Executable": f"touch {marker}"}, headers=basic(USER, "guess"))
    assert (anonymous.status_code, wrong.status_code) == (401, 401)
    assert handle.server.runner.jobs == {} and not marker.exists()
    mine = finished(handle, submit(handle, {"Executable": "true"}).headers["Location"])
    theirs = requests.get(mine["_links"]["self"]["href"], headers=basic("other", "other-pw"), timeout=10)
    their_view = requests.get(mine["_links"]["workingDirectory"]["href"], headers=basic("other", "other-pw"),
                              timeout=10)
    assert (theirs.status_code, their_view.status_code) == (404, 404)
    assert requests.get(f"{handle.base_url}/jobs", headers=basic("other", "other-pw"), timeout=10).json()["jobs"] == []


def test_paths_cannot_leave_the_storage(unicore_server, tmp_path):
    secret = tmp_path / "outside.txt"
    secret.write_text("not served")
    os.symlink(str(secret), os.path.join(unicore_server.root, "link"))
    home = f"{unicore_server.base_url}/storages/HOME/files"
    for path in ("/link", "/%2e%2e/outside.txt", "/../../outside.txt"):
        reply = requests.get(home + path, headers={**basic(), "Accept": "application/octet-stream"}, timeout=10)
        assert reply.status_code in (403, 404) and b"not served" not in reply.content


# -- credentials -----------------------------------------------------------------------------------------
def test_bearer_token_from_a_variable(unicore_server):
    token = requests.get(f"{unicore_server.base_url}/token", headers=basic(), timeout=10).text
    with open(os.path.join(unicore_server.root, "t.txt"), "wb") as sink:
        sink.write(b"tokened")
    url = f"unicore://{unicore_server.netloc}/DEMO-SITE/rest/core/storages/HOME:/t.txt?token=@@MY_TOKEN"
    result = ok(run("cat", url, env={"MY_TOKEN": token}))
    assert result.stdout == "tokened"
    assert token not in one_line(run("cat", url, env={"MY_TOKEN": token + "x"}))


def test_tls_is_verified(make_unicore_server):
    handle = make_unicore_server(tls=True)
    with open(os.path.join(handle.root, "tls.txt"), "w") as sink:
        sink.write("over tls\n")
    url = handle.url("/tls.txt", tls="1")  # https even to loopback
    with pytest.raises(errors.Unavailable, match="TLS verification failed"):
        backend, _ = open_backend(url)
        backend.stat("/tls.txt")
    backend, root = open_backend(url, ca_file=handle.server.cert_file)
    try:
        assert backend.read_range(root, 0, 100) == b"over tls\n"
    finally:
        backend.close()
