"""Rows against the real FirecREST (``../shared/peers``), system ``cluster-s3`` (staged transfers through S3):
downloads and uploads by pyfirecrest and ``hpcfs cp``, and a download by ``cat`` from an ``hpcfs mount``."""
import os
import shutil
from pathlib import Path

from benchmarks.checks import sha256_of
from benchmarks.context import Context
from benchmarks.copies import timed_checked_copy, timed_checked_upload
from benchmarks.disk import filesystem_of
from benchmarks.kit import real_peer_env
from benchmarks.mounts import mount_process
from benchmarks.processes import Failed, env_for
from benchmarks.results import Outcome, Results
from benchmarks.settings import HPCFS, MIB, REPO

FIRECREST_ROW_DOWN, FIRECREST_ROW_UP = "real-firecrest-download", "real-firecrest-upload"
FIRECREST_SIZE = 256 * MIB  # staging is slow (tens of seconds per file): the big file's first 256 MiB at most
FIRECREST_VENV = REPO / ".venv-pyfirecrest"
FIRECREST_CONNECTION = ("FIRECREST_URL", "AUTH_TOKEN_URL", "FIRECREST_CLIENT_ID", "FIRECREST_CLIENT_SECRET")
PYFIRECREST_COPY = """
import os, sys
import firecrest
from firecrest.v2 import Firecrest
system, direction, remote, local = sys.argv[1:]
auth = firecrest.ClientCredentialsAuth(os.environ["FIRECREST_CLIENT_ID"], os.environ["FIRECREST_CLIENT_SECRET"],
                                       os.environ["AUTH_TOKEN_URL"])
client = Firecrest(os.environ["FIRECREST_URL"], auth)
if direction == "download":
    client.download(system, remote, local, blocking=True)
else:
    client.upload(system, local, os.path.dirname(remote), os.path.basename(remote), blocking=True)
"""


def real_firecrest_rows(ctx: Context, results: Results):
    """A file of up to 256 MiB downloaded from and uploaded to the real FirecREST's staged system by
    pyfirecrest (``Firecrest.download``/``upload``, blocking) and by ``hpcfs cp``, and downloaded by ``cat``
    from an ``hpcfs mount`` of its directory, one after the other; every copy's sha256 checked after its
    timed run (an upload: the file on the cluster's disk)."""
    env = real_peer_env("real-firecrest")
    if env is None:
        print("real FirecREST not running (../shared/peers/bin/real-firecrest start): its rows are skipped")
        return
    system = env["FIRECREST_SYSTEM_S3"]
    directory = Path(env["FIRECREST_FS_ROOT"]) / f"hpcfs-bench-{os.getpid()}"
    directory.mkdir(mode=0o755)
    size = min(ctx.data.sizes.big, FIRECREST_SIZE)
    source = ctx.scratch / "firecrest-source.bin"
    try:
        with open(ctx.data.big, "rb") as big, open(source, "wb") as out:
            out.write(big.read(size))
        shutil.copyfile(source, directory / "big.bin")
        expected = sha256_of(source)
        client_env = {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
                      **{name: env[name] for name in FIRECREST_CONNECTION}}
        python = str(FIRECREST_VENV / "bin" / "python")
        remote = f"{directory}/big.bin"
        url = f"firecrest://{system}{directory}"
        downloads = {
            "pyfirecrest download": lambda out: [python, "-c", PYFIRECREST_COPY, system, "download", remote, str(out)],
            "hpcfs cp": lambda out: [str(HPCFS), "cp", f"{url}/big.bin", str(out)],
        }
        for client, argv in downloads.items():
            outcome = timed_checked_copy(ctx, argv, env_for(client, client_env), expected, size)
            results.put(FIRECREST_ROW_DOWN, client, 0, outcome)
        mount = [str(HPCFS), "mount", "--foreground", url, str(ctx.mountpoint)]
        results.put(FIRECREST_ROW_DOWN, "hpcfs mount (cat)", 0,
                    mounted_cat(ctx, mount, env_for("hpcfs mount", client_env), expected, size))
        uploads = {
            "pyfirecrest upload": lambda name: [python, "-c", PYFIRECREST_COPY, system, "upload",
                                                f"{directory}/{name}", str(source)],
            "hpcfs cp": lambda name: [str(HPCFS), "cp", str(source), f"{url}/{name}"],
        }
        for client, argv in uploads.items():
            name = f"up-{client.split()[0]}.bin"
            outcome = timed_checked_upload(argv(name), env_for(client, client_env), directory / name, expected, size)
            results.put(FIRECREST_ROW_UP, client, 0, outcome)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
        source.unlink(missing_ok=True)


def mounted_cat(ctx: Context, mount, env, expected: str, size: int) -> Outcome:
    """``cat big.bin > OUT`` from a fresh mount (started by the argv ``mount``) to local disk, timed on the
    mounted tree."""
    mounted = ctx.mountpoint / "big.bin"
    try:
        with mount_process(mount, env, ctx.mountpoint, ctx.logs / "hpcfs-real-firecrest.log"):
            return timed_checked_copy(ctx, lambda out: ["sh", "-c", 'cat "$1" > "$2"', "cat", str(mounted), str(out)],
                                      None, expected, size)
    except Failed as exc:
        return Outcome.failed(str(exc), filesystem_of(ctx.copies))
