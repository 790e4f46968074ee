"""``hpcfs sum``: what sha256sum prints, from the server's own hash where the protocol has one (UFTPD's
``HASH``, FirecREST's ``ops/checksum``), so no bytes cross the network; from the bytes elsewhere."""
import hashlib

import pytest
from mounting import write_random
from test_cli import cli, isolated, ok, remote, uftp  # noqa: F401  (fixtures)

from hpcfs.servers.firecrest.server import DOWNLOAD

CHECKSUM = "GET /filesystem/{system_name}/ops/checksum"
# per protocol: the request that hashes on the server, and those that move the file's bytes
SERVER_SIDE = {"uftp": ("HASH", ("RETR",)), "firecrest": (CHECKSUM, (DOWNLOAD,))}


def digest(path, algorithm="sha256"):
    return hashlib.new(algorithm, open(path, "rb").read()).hexdigest()


def test_sum_prints_what_sha256sum_prints(cli, remote, tmp_path):
    names = ("one.bin", "two words.bin")
    for size, name in zip(((1 << 20) + 3, 0), names):
        write_random(remote.local(name), size)
    remote.handle.log.reset()
    printed = ok(cli("sum", *(remote.url(name) for name in names), env=remote.env)).stdout
    assert printed.splitlines() == [f"{digest(remote.local(name))}  {remote.url(name)}" for name in names]
    if remote.protocol in SERVER_SIDE:
        hashing, moving = SERVER_SIDE[remote.protocol]
        assert remote.handle.log.total(hashing) == 2 and remote.handle.log.total(*moving) == 0, \
            remote.handle.log.snapshot()


@pytest.mark.parametrize("algorithm", ["md5", "sha1", "sha512"])
def test_uftpd_computes_each_of_its_algorithms(cli, uftp, algorithm):
    write_random(uftp.local("data.bin"), 3 << 20)
    uftp.handle.log.reset()
    printed = ok(cli("sum", "-a", algorithm, uftp.url("data.bin"), env=uftp.env)).stdout
    assert printed == f"{digest(uftp.local('data.bin'), algorithm)}  {uftp.url('data.bin')}\n"
    assert uftp.handle.log.total("HASH") == 1 and uftp.handle.log.total("RETR") == 0


def test_an_algorithm_the_server_lacks_is_computed_from_the_bytes(cli, firecrest_server):
    write_random(f"{firecrest_server.root}/data.bin", (2 << 20) + 1)
    url = firecrest_server.plain_url("/data.bin")
    firecrest_server.log.reset()
    printed = ok(cli("sum", "-a", "md5", url, env=firecrest_server.env)).stdout
    assert printed == f"{digest(f'{firecrest_server.root}/data.bin', 'md5')}  {url}\n"
    assert firecrest_server.log.total(CHECKSUM) == 0 and firecrest_server.log.total(DOWNLOAD) >= 1


def test_a_file_too_big_for_the_servers_time_limit_is_read_instead(cli, firecrest_server):
    """FirecREST's command timeout cuts `sha256sum` of a big file off (408) every time: asked once, not again."""
    write_random(f"{firecrest_server.root}/big.bin", 1 << 20)
    firecrest_server.knobs.extra["hash_rate"] = 1024  # bytes/s: 1 MiB takes 1,024 s, past the 5 s limit
    url = firecrest_server.plain_url("/big.bin")
    firecrest_server.log.reset()
    printed = ok(cli("sum", url, env=firecrest_server.env)).stdout
    assert printed == f"{digest(f'{firecrest_server.root}/big.bin')}  {url}\n"
    assert firecrest_server.log.total(CHECKSUM) == 1 and firecrest_server.log.total(DOWNLOAD) >= 1


def test_each_path_that_fails_is_reported_and_the_others_summed(cli, remote):
    write_random(remote.local("good.bin"), 1000)
    ok(cli("mkdir", remote.url("folder"), env=remote.env))
    result = cli("sum", remote.url("missing.bin"), remote.url("folder"), remote.url("good.bin"), env=remote.env)
    assert result.returncode == 1
    assert result.stdout == f"{digest(remote.local('good.bin'))}  {remote.url('good.bin')}\n"
    missing, folder = result.stderr.splitlines()
    assert "missing.bin" in missing and "No such file or directory" in missing, result.stderr
    assert "folder" in folder and "Is a directory" in folder, result.stderr
