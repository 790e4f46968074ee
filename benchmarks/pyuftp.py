"""pyuftp, the official UFTP client, against the local server: ``pyuftp cp`` with a stopwatch around its data
phase."""
import os
import re
from pathlib import Path
from typing import Optional, Tuple

from benchmarks.checks import compare_paths, run_checked
from benchmarks.context import Context
from benchmarks.disk import filesystem_of, read_sink
from benchmarks.processes import Failed, run_timed
from benchmarks.results import Outcome, describe_requests, rate
from benchmarks.settings import PEER_VENV


# pyuftp unchanged, with a stopwatch around its data phase (UFTP.copy_data: the bytes of one transfer) that
# also says how many bytes it moved.
PYUFTP_TIMED = """
import sys, time
from pyuftp.client import main
from pyuftp.uftp import UFTP
copy_data = UFTP.copy_data
def timed_copy_data(self, *args, **kwargs):
    start = time.perf_counter()
    try:
        copied = copy_data(self, *args, **kwargs)
    finally:
        print(f"data-phase-seconds {time.perf_counter() - start}", file=sys.stderr)
    print(f"data-phase-bytes {copied[0]}", file=sys.stderr)
    return copied
UFTP.copy_data = timed_copy_data
sys.argv[0] = "pyuftp"
sys.exit(main())
"""


def pyuftp_transfer(ctx: Context, direction) -> Outcome:
    """``pyuftp cp`` of the big file, to a file on tmpfs (as the mounts' reads) or up into an incoming
    directory.  The rate is that of its data phase (hpcfs's dd, too, starts on a mount that has already
    authenticated); the whole command's wall time, with interpreter start, authentication and login, is
    shown beside it."""
    url = ctx.site.auth_url
    env = {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, **ctx.site.uftp_env("pyuftp")}
    if direction == "read":
        arguments = ["cp", "-P", f"{url}:/big.bin", "-"]  # to stdout, checked afterwards as every mount's dd
        sink = filesystem_of(read_sink())
    else:
        arguments = ["cp", "-P", str(ctx.data.big), f"{url}:/{ctx.data.incoming('pyuftp').name}/big.bin"]
        sink = f"the served tree, {filesystem_of(ctx.data.root)}"
    window = ctx.site.requests()
    stderr = ctx.scratch / "pyuftp.err"
    try:
        with open(stderr, "wb") as err:
            argv = [str(PEER_VENV / "bin" / "python"), "-c", PYUFTP_TIMED, *arguments]
            seconds = (run_checked(argv, 240, ctx.data.big_sha256, env=env, cwd=ctx.scratch, stderr=err)
                       if direction == "read" else run_timed(argv, 240, env=env, cwd=ctx.scratch, stderr=err))
        if direction == "write":
            problem = compare_paths(ctx.data.big, ctx.data.root / "in-pyuftp" / "big.bin")
            if problem:
                raise Failed(f"wrong result: {problem}")
        phase, _ = data_phase(stderr)
    except Failed as exc:
        return Outcome.failed(str(exc), sink)
    finally:
        ctx.data.remove_incoming()
    outcome = rate(ctx.data.sizes.big, phase, f"data phase {phase:.2f} s, whole command {seconds:.2f} s", sink)
    outcome.requests = describe_requests(window.made())
    return outcome


def data_phase(stderr: Path) -> Tuple[float, Optional[int]]:
    """pyuftp's data phase from the stderr of ``PYUFTP_TIMED``: its seconds and the bytes it moved; Failed
    unless there was exactly one."""
    text = stderr.read_text()
    phases = re.findall(r"data-phase-seconds (\S+)", text)
    if len(phases) != 1:
        raise Failed(f"expected one data phase, saw {len(phases)}")
    moved = re.findall(r"data-phase-bytes (\d+)", text)
    return float(phases[0]), (int(moved[0]) if moved else None)
