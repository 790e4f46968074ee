"""Python front ends: iterating the lines of a text file through fsspec and PyFilesystem2."""
import time

from benchmarks.context import Context
from benchmarks.results import Outcome, Results


def line_iteration_rows(ctx: Context, results: Results):
    """``for line in file`` over a 1 MiB text file through fsspec and PyFilesystem2's ``openbin``, in this
    process, against the local UFTP server; the lines joined must hash as the file does."""
    import hashlib

    import fs
    import fsspec

    text = b"".join(b"line %06d of a text file\n" % number for number in range(40_000))
    (ctx.data.root / "lines.txt").write_bytes(text)
    base = f"uftp://hpcfs:{ctx.site.passwords['hpcfs']}@{ctx.site.auth_url.split('://', 1)[1]}"
    ca_file = f"?ca_file={ctx.site.uftp.cert_file}"
    openers = {
        "hpcfs via fsspec.open": lambda: fsspec.open(f"{base}:/lines.txt{ca_file}", "rb"),
        "hpcfs via open_fs().openbin": lambda: fs.open_fs(f"{base}:/{ca_file}").openbin("/lines.txt"),
    }
    for client, opener in openers.items():
        start = time.perf_counter()
        with opener() as source:
            joined = b"".join(line for line in source)
        seconds = time.perf_counter() - start
        if hashlib.sha256(joined).digest() != hashlib.sha256(text).digest():
            results.put("lines", client, 0, Outcome.failed("the lines read differ from the file"))
            continue
        results.put("lines", client, 0, Outcome(seconds, f"{seconds:.2f} s", "40,000 lines, sha256 checked"))
    (ctx.data.root / "lines.txt").unlink()
