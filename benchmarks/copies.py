"""Timed copies through the official clients and ``hpcfs cp``, into the copies directory on local disk (idle
or kept busy by another writer), their bytes checked after the timed part."""
from pathlib import Path
from typing import Optional, Tuple

from benchmarks.checks import sha256_of
from benchmarks.context import Context
from benchmarks.disk import BusyWriter, filesystem_of
from benchmarks.processes import Failed, run_timed
from benchmarks.results import Outcome, rate


def checked_copy(ctx: Context, argv, env, expected: str, limit: float = 240,
                 writer: Optional[BusyWriter] = None) -> float:
    """Run ``argv(OUT)``, a copy to OUT in the copies directory (its stderr kept in real-copy.err); its wall
    time, once OUT's sha256 is checked, after the timed part and after ``writer``, if one runs, is done."""
    out = ctx.copies / "copy.bin"
    out.unlink(missing_ok=True)
    try:
        with open(ctx.scratch / "real-copy.err", "wb") as err:
            seconds = run_timed(argv(out), limit, env=env, cwd=ctx.scratch, stderr=err)
        if writer:
            writer.finish()
        if sha256_of(out) != expected:
            raise Failed("the copy's sha256 differs from the source's")
    finally:
        if writer:
            writer.stop()
        out.unlink(missing_ok=True)
    return seconds


def timed_checked_copy(ctx: Context, argv, env, expected: str, size: Optional[int] = None) -> Outcome:
    """A copy to local disk on an idle disk, as a row: its rate, once its bytes are checked."""
    sink = filesystem_of(ctx.copies)
    try:
        seconds = checked_copy(ctx, argv, env, expected, 600 if size else 240)
    except Failed as exc:
        return Outcome.failed(str(exc), sink)
    return rate(size or ctx.data.sizes.big, seconds,
                f"{seconds:.2f} s, whole command (a mount: on the mounted tree), sha256 checked", sink)


def copy_on_busy_disk(ctx: Context, argv, env, expected: str) -> Tuple[float, bool]:
    """A copy to local disk while a ``BusyWriter`` writes to the same directory: its wall time, and whether
    the writer was still writing when the copy ended."""
    writer = BusyWriter(ctx.copies, ctx.logs / "busy-writer.log").start()
    seconds = checked_copy(ctx, argv, env, expected, writer=writer)
    return seconds, writer.outlasted_copy


def timed_checked_upload(argv, env, landed: Path, expected: str, size: int) -> Outcome:
    sink = f"the cluster's disk, {filesystem_of(landed.parent)}"
    try:
        seconds = run_timed(argv, 600, env=env)
        if not landed.exists() or sha256_of(landed) != expected:
            raise Failed("the uploaded file's sha256 differs from the source's")
    except Failed as exc:
        return Outcome.failed(str(exc), sink)
    return rate(size, seconds, f"{seconds:.2f} s, whole command, sha256 checked on the cluster's disk", sink)
