"""The bench (benchmarks/, run by scripts/bench) on a shared machine, where its rows write, its busy-disk
writer and its targets.  No timings and no bench run: these check the bench's own mechanisms."""
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from benchmarks import disk
from benchmarks.checks import check_dd_count
from benchmarks.cli import parse_options
from benchmarks.dataset import private_directory
from benchmarks.processes import Failed
from benchmarks.pyuftp import data_phase
from benchmarks.real_uftpd import BUSY_ROW, DEVNULL_ROW, REAL_ROW
from benchmarks.results import Outcome, Results
from benchmarks.servers import Sshd
from benchmarks.settings import FULL, QUICK
from benchmarks.targets import memory_bound_mib, targets

REPO = Path(__file__).resolve().parents[1]


def test_scripts_bench_runs_the_package():
    assert "exec .venv/bin/python -m benchmarks \"$@\"" in (REPO / "scripts" / "bench").read_text()
    shown = subprocess.run([sys.executable, "-m", "benchmarks", "--help"], cwd=REPO, capture_output=True,
                           text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert "--quick" in shown.stdout and "--copy-dir" in shown.stdout


def test_a_full_run_of_everything_writes_the_doc_and_a_corner_does_not(tmp_path):
    everything = parse_options(["--copy-dir", str(tmp_path)])
    assert everything.sizes == FULL and everything.doc == REPO / "docs" / "benchmarks.md"
    corner = parse_options(["--quick", "--peers", "hpcfs,pyuftp", "--workloads", "real-uftpd", "--rtt", "0"])
    assert corner.sizes == QUICK and corner.doc is None and corner.with_pyuftp
    assert [peer.name for peer in corner.peer_list] == ["hpcfs"] and corner.rtt_list == [0]
    with pytest.raises(SystemExit):
        parse_options(["--workloads", "no-such-workload"])


# -- on a shared machine (issue 10) ------------------------------------------------------------------------------
def test_bench_refuses_a_scratch_directory_others_can_write_or_do_not_own(tmp_path):
    planted = tmp_path / "planted"
    planted.mkdir()
    planted.chmod(0o777)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(elsewhere)
    for path in (planted, tmp_path / "link"):
        with pytest.raises(PermissionError, match="not a directory of yours"):
            private_directory(path)
    private_directory(tmp_path / "fresh")
    assert stat.S_IMODE((tmp_path / "fresh").stat().st_mode) == 0o700


@pytest.mark.skipif(not os.path.exists("/usr/sbin/sshd"), reason="OpenSSH server not installed")
def test_bench_sshd_keeps_strict_modes_and_makes_fresh_keys_in_a_private_directory(tmp_path):
    client_keys = []
    for _run in range(2):
        run_dir = Path(tempfile.mkdtemp(prefix="hpcfs-bench-run-"))
        sshd = Sshd(run_dir, tmp_path).start()
        try:
            assert "StrictModes yes" in (sshd.dir / "sshd_config").read_text()
            assert stat.S_IMODE(run_dir.stat().st_mode) == 0o700
            login = subprocess.run(
                ["ssh", "-F", str(sshd.client_config({0: sshd.port})), "bench-rtt0", "echo", "logged-in"],
                capture_output=True, timeout=30, stdin=subprocess.DEVNULL)
            assert login.stdout == b"logged-in\n", login.stderr
            client_keys.append((sshd.dir / "client_key.pub").read_text())
        finally:
            sshd.stop()
            shutil.rmtree(run_dir)
    assert client_keys[0] != client_keys[1], "a key was reused from an earlier run"


# -- where the rows write (issue 22) ----------------------------------------------------------------------------
def test_each_sink_is_named_by_its_filesystem(tmp_path):
    assert disk.filesystem_of(disk.DEV_NULL) == "/dev/null (nothing kept)"
    fstype, at, mountpoint = disk.filesystem_of(tmp_path).partition(" at ")
    assert fstype and at and os.path.ismount(mountpoint), disk.filesystem_of(tmp_path)
    if os.path.ismount("/dev/shm"):
        assert disk.filesystem_of("/dev/shm") == "tmpfs at /dev/shm"


def test_copies_land_in_a_fresh_private_directory_in_the_one_given(tmp_path):
    copies = disk.copies_directory(tmp_path)
    assert copies.parent == tmp_path and stat.S_IMODE(copies.stat().st_mode) == 0o700
    assert disk.copies_directory(tmp_path) != copies


def test_the_busy_writer_writes_beside_the_copy_and_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(disk, "BUSY_WRITER_MIB", 4)
    monkeypatch.setattr(disk, "BUSY_HEAD_START", 0.05)
    writer = disk.BusyWriter(tmp_path, tmp_path / "writer.log").start()
    writer.finish()
    assert writer.process.returncode == 0 and not writer.path.exists()
    assert list(tmp_path.iterdir()) == [tmp_path / "writer.log"]
    failing = disk.BusyWriter(tmp_path / "missing", tmp_path / "writer.log").start()
    with pytest.raises(Failed, match="background writer failed"):
        failing.finish()


def test_a_disk_without_room_for_the_writer_is_said(tmp_path):
    assert "MiB free" in disk.room_for_busy_copies(tmp_path, shutil.disk_usage(tmp_path).free)


# -- bytes checked after the timed part ----------------------------------------------------------------------
def test_pyuftp_data_phase_gives_seconds_and_bytes(tmp_path):
    err = tmp_path / "err"
    err.write_text("data-phase-seconds 1.5\ndata-phase-bytes 1048576\n")
    assert data_phase(err) == (1.5, 1048576)
    err.write_text("something else\n")
    with pytest.raises(Failed, match="expected one data phase, saw 0"):
        data_phase(err)


def test_dd_must_have_copied_every_byte(tmp_path):
    report = tmp_path / "dd.err"
    report.write_text("1+0 records in\n1+0 records out\n1048576 bytes (1.0 MB, 1.0 MiB) copied, 0.01 s\n")
    check_dd_count(report, 1 << 20)
    with pytest.raises(Failed, match="dd read 1048576 bytes of 2,097,152"):
        check_dd_count(report, 2 << 20)


# -- targets --------------------------------------------------------------------------------------------------
def measured(value, sink="ext4 at /"):
    return Outcome(value, f"{value} MB/s", sink=sink)


def test_the_real_uftpd_rows_have_their_targets_and_sinks():
    results = Results()
    for row, ours, theirs in ((REAL_ROW, 780, 600), (BUSY_ROW, 500, 600), (DEVNULL_ROW, 900, 800)):
        results.put(row, "hpcfs cp" if row != DEVNULL_ROW else "hpcfs mount (dd bs=1M)", 0, measured(ours))
        results.put(row, "pyuftp cp" if row != DEVNULL_ROW else "pyuftp cp (data phase)", 0, measured(theirs))
    found = {target.text: target for target in targets(results, FULL)}
    idle = found["real UFTPD, idle disk: hpcfs cp vs pyuftp cp"]
    busy = found["real UFTPD, busy disk: hpcfs cp vs pyuftp cp"]
    null = found["real UFTPD to /dev/null: hpcfs mount (dd bs=1M) vs pyuftp cp (data phase)"]
    assert (idle.required, idle.met) == (">= 1.3", True)
    assert (busy.required, busy.met) == (">= 1.0", False)
    assert (null.required, null.met) == (">= 1.2", False)
    assert results.sink(BUSY_ROW, "hpcfs cp") == "ext4 at /"


def test_the_memory_bound_follows_the_cache_option():
    grown = memory_bound_mib("hpcfs -o cache_size=128M") - memory_bound_mib("hpcfs -o cache_size=64M")
    assert grown == 64


# -- the profiler (issue 22) ------------------------------------------------------------------------------------
PROFILER_NEEDS = [tool for tool in ("strace", "fusermount3", "sshfs") if not shutil.which(tool)] + \
    ([] if os.path.exists("/usr/sbin/sshd") else ["sshd"])


@pytest.mark.skipif(bool(PROFILER_NEEDS), reason=f"not installed: {', '.join(PROFILER_NEEDS)}")
def test_the_profiler_prints_syscalls_and_server_commands_per_unit(tmp_path):
    shown = subprocess.run([sys.executable, "-m", "benchmarks.profile", "--quick"], cwd=REPO, capture_output=True,
                           text=True, timeout=240, env={**os.environ, "HPCFS_BENCH_DIR": str(tmp_path / "bench")})
    assert shown.returncode == 0, shown.stderr[-2000:]
    report = shown.stdout
    for title in ("sequential read of 16 MiB", "300 random 4 KiB reads (benchmarks.randread): hpcfs",
                  "300 random 4 KiB reads (benchmarks.randread): sshfs", "write of 16 MiB into the mount"):
        assert f"### {title}" in report
    assert report.count("Syscalls of the mount process") == 4
    assert "Syscalls of the sshd session process" in report and "| all (" in report
    # each random read misses the cache and costs one RANG+RETR pair, which the server's log shows
    per_read = re.search(r"server commands per read: ([\d.]+) RANG, ([\d.]+) RETR", report)
    assert per_read and all(0.9 <= float(count) <= 1.0 for count in per_read.groups()), report
