"""The scheduler behind FirecREST's ``transfer/*`` endpoints, and the job scripts it runs.

Rename, copy, asynchronous delete and both staging directions are batch jobs on the real server: it
renders a script, submits it, and answers with a ``jobId`` and two log paths.  Clients poll
``/compute/{system}/jobs/{id}`` (which answers 404 "Job not found." for a while after submission) and read
the output log for "... successfully ...".  The scripts here do what the real ones do, including their
defects: the move script reports success to the scheduler even when ``mv`` fails, the templates
HTML-escape ``& < > ' "`` in paths (Jinja autoescape), and the ingress job polls the object store only
every ``ingress_poll`` seconds (60 on the real server).
"""
import html
import io
import itertools
import os
import shutil
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Callable, Dict, Optional, TextIO

from ..common import OutsideRoot, check_link_target, open_for_writing
from .s3 import ObjectStore
from .shell import ApiError, RemoteShell

TERMINAL = ("COMPLETED", "FAILED", "CANCELLED")


class ScriptError(Exception):
    """A command in a job script failed; the text is what it printed on stderr."""


def stamp() -> str:
    """``$(date -u)`` as the job scripts print it."""
    return time.strftime("%a %b %d %H:%M:%S UTC %Y", time.gmtime())


def template(path: str) -> str:
    """A path as it lands in a rendered job script: Jinja's autoescape turns quotes and ``&<>`` into entities."""
    return html.escape(path, quote=True).replace("&#x27;", "&#39;").replace("&quot;", "&#34;")


@dataclass
class Job:
    job_id: str
    name: str
    user: str
    working_directory: str
    output_log: str
    error_log: str
    submitted: float = field(default_factory=time.time)
    state: str = "PENDING"
    exit_code: Optional[int] = None
    start: Optional[float] = None
    end: Optional[float] = None
    cancelled: threading.Event = field(default_factory=threading.Event)


Script = Callable[[Job, TextIO, TextIO], int]


class Scheduler:
    """Runs each job in a thread after ``queue_delay``; lists a job only ``job_visibility_lag`` seconds
    after its submission (the scheduler database catching up)."""

    def __init__(self, shell: RemoteShell, knob: Callable[[str], float], system: str):
        self.shell = shell
        self.knob = knob
        self.system = system
        self._jobs: Dict[str, Job] = {}
        self._ids = itertools.count(1001)
        self._lock = threading.Lock()
        self._stopping = threading.Event()

    def submit(self, user: str, name: str, working_directory: str, script: Script) -> Job:
        unique = uuid.uuid4()
        with self._lock:
            job = Job(str(next(self._ids)), name, user, working_directory,
                      f"{working_directory}/.f7t_file_handling_job_{unique}.log",
                      f"{working_directory}/.f7t_file_handling_job_error_{unique}.log")
            self._jobs[job.job_id] = job
        threading.Thread(target=self._run, args=(job, script), name=f"job-{job.job_id}", daemon=True).start()
        return job

    def find(self, user: str, job_id: str) -> Optional[Job]:
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None or job.user != user or time.time() - job.submitted < self.knob("job_visibility_lag"):
            return None
        return job

    def jobs_of(self, user: str):
        with self._lock:
            jobs = list(self._jobs.values())
        return [job for job in jobs if self.find(user, job.job_id)]

    def cancel(self, job: Job):
        job.cancelled.set()

    def stop(self):
        self._stopping.set()
        for job in list(self._jobs.values()):
            job.cancelled.set()

    def wait(self, job: Job, seconds: float) -> bool:
        """Sleep inside a job; False if the job was cancelled or the server is stopping."""
        return not job.cancelled.wait(seconds) and not self._stopping.is_set()

    def _run(self, job: Job, script: Script):
        if not self.wait(job, self.knob("queue_delay")):
            job.state, job.end = "CANCELLED", time.time()
            return
        job.state, job.start = "RUNNING", time.time()
        try:
            local_dir = self.shell.local(job.working_directory, follow=True)
            os.makedirs(local_dir, exist_ok=True)
            with self._log(job.output_log) as out, self._log(job.error_log) as err:
                job.exit_code = script(job, out, err)
        except (OSError, OutsideRoot):  # no working directory or logs: the scheduler fails the job
            job.exit_code = 1
        job.state = "CANCELLED" if job.cancelled.is_set() else "COMPLETED" if job.exit_code == 0 else "FAILED"
        job.end = time.time()

    def _log(self, path: str) -> TextIO:
        return io.TextIOWrapper(open_for_writing(self.shell.root, path))

    def describe(self, job: Job) -> dict:
        """The ``JobModel`` the compute endpoints return."""
        now = time.time()
        elapsed = int((job.end or now) - job.start) if job.start else 0
        return {
            "jobId": job.job_id, "name": job.name,
            "status": {"state": job.state, "stateReason": "None", "exitCode": job.exit_code, "interruptSignal": 0},
            "tasks": [],
            "time": {"elapsed": elapsed, "start": int(job.start) if job.start else None,
                     "end": int(job.end) if job.end else None, "suspended": 0, "limit": 900},
            "account": None, "allocationNodes": 1, "cluster": self.system, "group": None, "nodes": "localhost",
            "partition": "xfer", "killRequestUser": None, "user": job.user,
            "workingDirectory": job.working_directory, "priority": 0,
        }


# -- the commands the scripts run ---------------------------------------------------------------------
def _exists(local: str) -> bool:
    return os.path.lexists(local)


def move(shell: RemoteShell, source: str, target: str):
    """``mv -- source target``: into ``target`` when that is a directory, replacing a file otherwise."""
    src = shell.local(source)
    if not _exists(src):
        raise ScriptError(f"mv: cannot stat '{source}': No such file or directory")
    dst = shell.local(target)
    if os.path.isdir(dst):
        dst = os.path.join(shell.local(target, follow=True), os.path.basename(src))
    source_is_dir = _is_real_dir(src)
    if _exists(dst) and _is_real_dir(dst) != source_is_dir:
        if source_is_dir:
            raise ScriptError(f"mv: cannot overwrite non-directory '{target}' with directory '{source}'")
        raise ScriptError(f"mv: cannot overwrite directory '{target}' with non-directory")
    try:
        os.rename(src, dst)
    except OSError as exc:
        raise ScriptError(f"mv: cannot move '{source}' to '{target}': {exc.strerror}") from None


def _is_real_dir(local: str) -> bool:
    return os.path.isdir(local) and not os.path.islink(local)


def copy(shell: RemoteShell, source: str, target: str, dereference: bool):
    """``cp --force -R{d|L} --preserve=all -- source target``."""
    src = shell.local(source, follow=dereference)
    if not _exists(src):
        raise ScriptError(f"cp: cannot stat '{source}': No such file or directory")
    dst = shell.local(target, follow=True)
    if os.path.isdir(dst):
        dst = os.path.join(dst, os.path.basename(src))
    try:
        if os.path.isdir(src) and not os.path.islink(src):
            shutil.copytree(src, dst, symlinks=not dereference, dirs_exist_ok=True)
        elif os.path.islink(src) and not dereference:
            if _exists(dst):
                os.unlink(dst)
            target_text = os.readlink(src)  # verbatim, as cp -d: so it must still lead inside from its new place
            check_link_target(shell.root, os.path.dirname(dst), target_text)
            os.symlink(target_text, dst)
        else:
            shutil.copy2(src, dst)
    except OutsideRoot:
        raise ScriptError(f"cp: cannot create symbolic link '{target}': Permission denied") from None
    except OSError as exc:
        raise ScriptError(f"cp: cannot create regular file '{target}': {exc.strerror}") from None


def delete(shell: RemoteShell, path: str):
    """``rm -R -- path``."""
    try:
        shell.rm(path)
    except ApiError as exc:
        raise ScriptError(exc.message.partition("error message:")[2]) from None


def file_script(action: Callable[[], None], title: str, done: str) -> Script:
    """A move/copy/delete job: one command, then the line pyfirecrest looks for in the output log."""

    def run(job: Job, out: TextIO, err: TextIO) -> int:
        out.write(f"{stamp()} {title} Job (id:{job.job_id})\n")
        try:
            action()
        except ScriptError as exc:
            err.write(f"{exc}\n{stamp()} Unable to {title.split()[0].lower()} files exit code:1 error: \n")
            return 0  # the scripts end with `exit $?` after an echo, so the scheduler sees success
        out.write(f"{stamp()} Files were successfully {done}.\n")
        return 0

    return run


def ingress_script(scheduler: Scheduler, store: ObjectStore, bucket: str, key: str, target: str) -> Script:
    """``transfer/upload``: wait for the object (checking every ``ingress_poll`` s), then pull it in."""
    shell = scheduler.shell

    def run(job: Job, out: TextIO, err: TextIO) -> int:
        out.write(f"{stamp()} Ingress File Transfer Job (id:{job.job_id})\n")
        out.write(f"{stamp()} Waiting till file to tranfer is available...\n")
        out.flush()
        for _ in range(int(scheduler.knob("ingress_max_polls"))):
            staged = store.object_file(bucket, key)
            if staged:
                return _pull(shell, staged, target, out, err)
            if not scheduler.wait(job, scheduler.knob("ingress_poll")):
                return 1
        return 0  # the real script falls out of its polling loop with `sleep`'s status: "success"

    return run


def _pull(shell: RemoteShell, staged: str, target: str, out: TextIO, err: TextIO) -> int:
    out.write(f"{stamp()} File to transfer found in S3 bucket\n{stamp()} Downloading file to: {target} ...\n")
    try:
        local = shell.local(target)
        if os.path.isdir(local):
            err.write(f"{stamp()} targetPath must point to a file path: {target} is a directory.\n")
            return 3
        if _exists(local):
            os.unlink(local)
        shutil.copyfile(staged, local)
    except (OSError, OutsideRoot) as exc:
        err.write(f"{stamp()} Download failed: part 1 ({exc})\n")
        return 1
    size = os.path.getsize(local)
    out.write(f"{stamp()} Received {size} bytes\n")
    out.write(f"{stamp()} File was successfully downloaded (size: {size / 1048576:.3f}MB)\n")
    return 0


def egress_script(shell: RemoteShell, store: ObjectStore, bucket: str, key: str, source: str) -> Script:
    """``transfer/download``: upload a snapshot of ``source`` to the staging object."""

    def run(job: Job, out: TextIO, err: TextIO) -> int:
        out.write(f"{stamp()} Upload File Job (id:{job.job_id})\nUploading file:{source} into 1 chunks\n")
        try:
            local = shell.local(source, follow=True)
        except OutsideRoot:
            local = ""
        if not os.path.isfile(local):
            err.write("file_not_found")
            return 34
        store.put_object_from(bucket, key, local)
        out.write("[INFO] Parts upload completed.\n[INFO] Signaling multipart upload completion\n")
        out.write("[INFO] Multipart file upload successfully completed\n")
        return 0

    return run
