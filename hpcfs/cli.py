"""The ``hpcfs`` command: mount/umount, ls, cp, cat, stat, rm, mkdir, info, and the local servers.

Remote arguments are URLs (``uftp://...``, any scheme of hpcfs/registry.py) or ``PROFILE:/path``; local
ones are plain paths.  Errors are one line on stderr with exit status 1 (2 for bad usage); ``--verbose``
adds a request log and tracebacks.  Passwords are never read from the command line.
"""
import argparse
import dataclasses
import json
import logging
import math
import os
import posixpath
import re
import shlex
import signal
import subprocess
import sys
import time
import traceback
import warnings
from typing import Any, Callable

from . import __version__, errors, exit_interrupted
from .backend import normalize
from .core import CoreOptions, check_options
from .core.blocks import keep_freed_block_memory
from .mounts import is_mounted, unmount
from .registry import PROTOCOLS, url_examples
from .targets import Target, Trees, refuse_secret_options, resolve, tree_for
from .transfer import copy_paths, format_size

log = logging.getLogger(__name__)

FUSE_OPTIONS = {
    "allow_other", "allow_root", "default_permissions", "direct_io", "kernel_cache", "auto_cache",
    "noauto_cache", "fsname", "max_read", "uid", "gid", "umask", "read_ahead_kb", "nonempty",
}
# Generic mount(8) options that /etc/fstab lines carry and a FUSE mount has nothing to do with.
FSTAB_ONLY_OPTIONS = {"rw", "defaults", "auto", "noauto", "user", "users", "nouser", "nofail", "_netdev",
                      "exec", "noexec", "suid", "nosuid", "dev", "nodev", "atime", "noatime", "relatime"}
MOUNT_WAIT_SECONDS = 60
CHECKSUM_ALGORITHMS = ("md5", "sha1", "sha256", "sha512")  # hashlib names, as md5sum, sha1sum, ...


def _is_fstab_only(name: str) -> bool:
    """mount(8) passes ``x-*`` options (x-systemd.automount, ...) and ``comment=`` on to helpers, which
    ignore them: they are for other programs that read /etc/fstab."""
    return name in FSTAB_ONLY_OPTIONS or name.startswith("x-") or name == "comment"


def main(argv=None):
    args = None
    try:
        args = _parse_arguments(argv)
        _interruptible()
        _configure_logging(args.verbose)
        warnings.showwarning = _one_line_warning
        keep_freed_block_memory()  # this process is hpcfs's own: tune its allocator for streaming blocks
        return args.run(args) or 0
    except errors.UsageError as exc:
        _report(f"error: {exc}", args is not None and args.verbose)
        return 2
    except BrokenPipeError:  # the reader went away (`hpcfs cat ... | head`): stop quietly, as cat does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing left to flush at exit
        return 128 + signal.SIGPIPE
    except OSError as exc:
        _report(_one_line(exc), args is not None and args.verbose)
        return 1
    except KeyboardInterrupt:
        print("hpcfs: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug: still one line unless asked for details
        if getattr(args, "verbose", False):
            raise
        print(f"hpcfs: internal error: {type(exc).__name__}: {_one_line(exc)} (run with --verbose)", file=sys.stderr)
        return 1


def _interruptible():
    """From here on Ctrl-C raises KeyboardInterrupt, so that a copy stops its threads and keeps its partial
    files; until now (loading the modules) hpcfs/__init__.py's handler exited at once."""
    if signal.getsignal(signal.SIGINT) is exit_interrupted:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _parse_arguments(argv: "list[str] | None") -> argparse.Namespace:
    """Like ``parse_args``, but an unknown option is reported by the subcommand that did not know it, so the
    hint names that command's help (``hpcfs ls --help``) rather than the top level's."""
    argv = sys.argv[1:] if argv is None else argv
    args, unknown = _parser(with_servers=_is_serve_command(argv)).parse_known_args(argv)
    if unknown:
        args.command_parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    return args


def _is_serve_command(argv: "list[str]") -> bool:
    """Only ``hpcfs serve`` loads the server modules (every other command starts faster without them)."""
    return next((word for word in argv if not word.startswith("-")), None) == "serve"


def _report(line: str, verbose: bool) -> None:
    """The one error line; with ``--verbose`` the traceback follows it, as the help promises."""
    print(f"hpcfs: {line}", file=sys.stderr)
    if verbose:
        traceback.print_exc()


# -- mount ------------------------------------------------------------------------------------------------
def cmd_mount(args):
    mountpoint = os.path.abspath(args.mountpoint)
    if not os.path.isdir(mountpoint):
        raise errors.UsageError(f"mountpoint does not exist or is not a directory: {args.mountpoint}")
    if is_mounted(mountpoint):
        raise errors.UsageError(f"mountpoint is busy (something is already mounted there): {args.mountpoint}")
    core_and_backend, fuse_options = _split_mount_options(args.options)
    read_only = args.read_only or bool(fuse_options.pop("ro", False))
    target = _received_target(args.target_fd) if args.target_fd is not None else resolve(args.url)
    check_options(target.url, {**target.options, **core_and_backend})
    # libfuse3 mounts over files without a word; rclone and libfuse2 refuse unless asked (nonempty).
    allow_non_empty = args.allow_non_empty or bool(fuse_options.pop("nonempty", False))
    if not allow_non_empty and os.listdir(mountpoint):
        raise errors.UsageError(f"mountpoint is not empty: {args.mountpoint} (mounting would hide its files; "
                                "use --allow-non-empty or -o nonempty to mount anyway)")
    if not args.foreground:
        return _mount_in_background(args, target, mountpoint)
    from .frontends.fuse import mount

    remote_tree = tree_for(target, rooted=True, **core_and_backend)
    if args.ready_fd is not None:  # tell the parent that authentication worked
        os.write(args.ready_fd, b"ok")
        os.close(args.ready_fd)
    stop_signal = mount(remote_tree, mountpoint, read_only=read_only, fsname=f"hpcfs:{target.display}",
                        options=fuse_options)
    return 128 + stop_signal if stop_signal else 0  # as a shell reports a command ended by that signal


def _mount_in_background(args, target, mountpoint):
    """Run the mount in a detached child; return once it is mounted, or report why it could not be.

    The child gets the resolved target through a pipe, so a profile's secret (typed at a prompt, or from
    a command) is fetched once, here, and never appears in the child's arguments or environment."""
    ready_read, ready_write = os.pipe()
    target_read, target_write = os.pipe()
    command = hpcfs_command("mount", "--foreground", "--ready-fd", str(ready_write),
                            "--target-fd", str(target_read), args.url, mountpoint)
    for option in args.options:
        command += ["-o", option]
    if args.read_only:
        command.append("--read-only")
    if args.allow_non_empty:
        command.append("--allow-non-empty")
    if args.verbose:  # the request log goes to the mount's log file
        command.append("--verbose")
    log_path = _mount_log_path(mountpoint)
    with open(log_path, "ab") as log_file:
        child = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file,
            pass_fds=(ready_write, target_read), start_new_session=True,
        )
    os.close(ready_write)
    os.close(target_read)
    try:
        with os.fdopen(target_write, "w") as pipe:
            json.dump(dataclasses.asdict(target), pipe)
    except BrokenPipeError:  # the child died first; its log says why
        pass
    ready = os.read(ready_read, 2)  # empty when the child exits before authenticating
    os.close(ready_read)
    deadline = time.monotonic() + MOUNT_WAIT_SECONDS
    while ready and not is_mounted(mountpoint) and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    if is_mounted(mountpoint):
        print(f"mounted {target.display} on {mountpoint} (log: {log_path})", file=sys.stderr)
        return 0
    if child.poll() is None:
        child.terminate()
    raise errors.HpcfsError(_last_error_line(log_path) or f"mount did not come up; see {log_path}")


# What ``-P`` does, for Pythons before 3.11: drop the working directory ('' first on sys.path) before hpcfs is
# imported, then run it as ``-m`` would (argv[0] "-m" while loading, as hpcfs/__init__.py expects).
UNSHADOWED_MAIN = """import runpy, sys
if sys.path[:1] == [""]:
    del sys.path[0]
sys.argv[0] = "-m"
runpy.run_module("hpcfs", run_name="__main__", alter_sys=True)
"""


def hpcfs_command(*args: str, safe_path_option: bool = sys.version_info >= (3, 11)) -> "list[str]":
    """hpcfs run again by this interpreter.  ``python -m`` puts the working directory first on sys.path, so
    a folder named hpcfs there (the clone, a mountpoint) would shadow the package in the child; ``-P``
    (Python 3.11+) leaves it out, older Pythons run :data:`UNSHADOWED_MAIN`."""
    if safe_path_option:
        return [sys.executable, "-P", "-m", "hpcfs", *args]
    return [sys.executable, "-c", UNSHADOWED_MAIN, *args]


def _received_target(fd):
    with os.fdopen(fd) as pipe:
        return Target(**json.load(pipe))


def cmd_umount(args):
    mountpoint = os.path.abspath(args.mountpoint)
    if not is_mounted(mountpoint):
        raise errors.UsageError(f"not mounted: {args.mountpoint}")
    unmount(mountpoint, args.mountpoint, lazy=args.lazy)
    return 0


def _split_mount_options(option_args):
    """``-o a=1,b`` into (core and backend options, FUSE options); ``ro`` counts as a FUSE option."""
    ours, fuse_options = {}, {}
    for group in option_args:
        for item in filter(None, group.split(",")):
            key, has_value, value = item.partition("=")
            key = key.strip().replace("-", "_")
            (fuse_options if key in FUSE_OPTIONS | {"ro"} else ours)[key] = value if has_value else True
    refuse_secret_options(ours)
    return ours, fuse_options


def _mount_log_path(mountpoint):
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    directory = os.path.join(state, "hpcfs")
    os.makedirs(directory, mode=0o700, exist_ok=True)
    return os.path.join(directory, "mount-" + mountpoint.strip("/").replace("/", "_") + ".log")


def _last_error_line(log_path):
    with open(log_path, errors="replace") as handle:
        lines = [line.strip() for line in handle if line.strip()]
    errors_only = [line for line in lines if line.startswith("hpcfs:")]
    return (errors_only or lines or [""])[-1].removeprefix("hpcfs: ")


# -- file commands --------------------------------------------------------------------------------------
def cmd_ls(args):
    """As ls(1): files named on the command line first, then each directory under a ``PATH:`` heading when
    there is more than one to show; a missing path is reported and the others are still listed.  Exit
    status as GNU ls: 2 when a path on the command line does not exist or may not be read, 1 when only
    something below one (or the server: unreachable, a refused login, as for every command)."""
    missing = failed = False
    files, directories = [], []
    with Trees() as trees:
        for path in args.paths:
            target = resolve(path)
            try:
                entry = trees.get(target).stat(target.path)
            except errors.HpcfsError as exc:
                _report_failure(args, target.display, exc)
                missing |= exc.standard
                failed = True
                continue
            if not entry.name:  # the root of a tree: named as typed
                entry = dataclasses.replace(entry, name=target.display)
            (directories if entry.is_dir and not args.directory else files).append((path, target, entry))
        _print_entries(args, _sorted(args, [entry for _, _, entry in files]))
        headings = args.recursive or len(files) + len(directories) > 1
        for index, (path, target, _) in enumerate(directories):
            if index or files:
                print()
            failed |= _list_directory(args, trees.get(target), path, target.path, headings)
    return 2 if missing else 1 if failed else 0


def _list_directory(args, remote_tree, shown: str, path: str, heading: bool) -> bool:
    """List one directory (and, with -R, those below it); True when some part could not be listed."""
    try:
        entries = remote_tree.listdir(path) + (_dot_entries(remote_tree, path) if args.all else [])
    except errors.HpcfsError as exc:
        _report_failure(args, shown, exc)
        return True
    visible = _sorted(args, [entry for entry in entries
                             if args.all or args.almost_all or not entry.name.startswith(".")])
    if heading:
        print(f"{shown}:")
    if args.long:
        blocks = _total_blocks(visible)
        print(f"total {_human_size(blocks * 1024) if args.human_readable else blocks}")
    _print_entries(args, visible)
    failed = False
    if args.recursive:
        for entry in visible:
            if entry.is_dir and entry.name not in (".", ".."):
                print()
                failed |= _list_directory(args, remote_tree, shown.rstrip("/") + "/" + entry.name,
                                          path.rstrip("/") + "/" + entry.name, True)
    return failed


def _dot_entries(remote_tree, path: str) -> list:
    """ls -a: the directory itself as ``.`` and its parent as ``..`` (the root is its own parent)."""
    parent = posixpath.dirname(normalize(path))
    return [dataclasses.replace(remote_tree.stat(path), name="."),
            dataclasses.replace(remote_tree.stat(parent), name="..")]


def _sorted(args, entries: list) -> list:
    """By name, as ls(1) in the C locale; with -t newest first (ties by name)."""
    by_name = sorted(entries, key=lambda entry: entry.name)
    return sorted(by_name, key=lambda entry: -entry.mtime) if args.sort_by_time else by_name


def _total_blocks(entries: list) -> int:
    """ls -l's ``total``: GNU counts the 1 KiB blocks allocated; the servers report no allocation, so each
    entry's size rounded up to whole KiB stands in (sparse files and directories differ from GNU's)."""
    return sum(-(-entry.size // 1024) for entry in entries)


def _each_target(args, trees: Trees, targets: "list[Target]", action: Callable[[Any, str], None]) -> int:
    """``action(remote_tree, path)`` for every argument in turn; one that fails is reported and the others
    still run, as coreutils' commands go on (exit status 1)."""
    failed = False
    for target in targets:
        try:
            action(trees.get(target), target.path)
        except errors.HpcfsError as exc:
            _report_failure(args, target.display, exc)
            failed = True
    return 1 if failed else 0


def _report_failure(args, shown: "str | None", exc: OSError) -> None:
    """One argument's failure in coreutils' words; the server's own text goes to the --verbose log."""
    log.debug("%s: %s", shown, _one_line(exc))
    _report(errors.gnu_message(args.command, shown, exc), args.verbose)


def _print_entries(args, entries) -> None:
    for entry in entries:
        print(_long_line(entry, args.human_readable) if args.long else entry.name)


def cmd_stat(args):
    """As stat(1): one block for each path; one that cannot be read is reported, the others still shown."""
    targets = [resolve(path) for path in args.paths]
    with Trees() as trees:
        return _each_target(args, trees, targets, _print_status)


def _print_status(remote_tree, path: str) -> None:
    entry = remote_tree.stat(path)
    print(f"  File: {path}")
    print(f"  Type: {'directory' if entry.is_dir else entry.kind}")
    print(f"  Size: {entry.size}")
    print(f"  Mode: {entry.mode:04o}")
    print(f"Modify: {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(entry.mtime))}")


def cmd_cat(args):
    """As cat(1): every readable file is printed; each one that is not is reported, and the exit status is 1."""
    targets = [resolve(path) for path in args.paths]
    with Trees() as trees:
        return _each_target(args, trees, targets, _copy_to_stdout)


def _copy_to_stdout(remote_tree, path: str) -> None:
    if remote_tree.stat(path).is_dir:
        raise errors.IsADirectory("Is a directory", path)
    for data in remote_tree.chunks(path):
        sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()


def cmd_sum(args):
    """As sha256sum(1): ``DIGEST  PATH`` for every file; one that cannot be read is reported, the others
    still summed (exit status 1).  The server computes the digest where it can: no bytes cross the network."""
    targets = [resolve(path) for path in args.paths]

    def print_digest(shown: str) -> Callable[[Any, str], None]:
        return lambda remote_tree, path: print(f"{remote_tree.checksum(path, args.algorithm)}  {shown}", flush=True)

    with Trees() as trees:
        return max(_each_target(args, trees, [target], print_digest(target.display)) for target in targets)


def cmd_mkdir(args):
    def make(remote_tree, path: str) -> None:
        if args.parents:
            _make_parents(remote_tree, path)
        else:
            remote_tree.mkdir(path)

    targets = [resolve(path) for path in args.paths]
    with Trees() as trees:
        return _each_target(args, trees, targets, make)


def _make_parents(remote_tree, path):
    """mkdir -p: existing directories are fine, but an existing file in the way is an error, as in mkdir(1)."""
    parts = [part for part in path.split("/") if part]
    for depth in range(1, len(parts) + 1):
        current = "/" + "/".join(parts[:depth])
        try:
            entry = remote_tree.stat(current)
        except errors.NotFound:
            remote_tree.mkdir(current)
            continue
        if entry.is_dir:
            continue
        if depth == len(parts):
            raise errors.AlreadyExists("File exists", current)
        raise errors.NotADirectory("Not a directory", current)


def cmd_rm(args):
    def remove(remote_tree, path: str) -> None:
        try:
            is_directory = remote_tree.stat(path).is_dir
        except errors.NotFound:
            if args.force:  # rm -f: what is already gone is no error
                return
            raise
        if not is_directory:
            remote_tree.remove(path)
        elif not args.recursive:
            raise errors.IsADirectory("Is a directory (use -r)", path)
        else:
            _remove_tree(remote_tree, path)

    targets = [resolve(path) for path in args.paths]
    with Trees() as trees:
        for target in targets:  # refuse every root before removing anything, as rm --preserve-root does
            if args.recursive and is_tree_root(trees.get(target), target.path):
                raise errors.PermissionDenied("refusing to remove the root of a tree", target.display)
        return _each_target(args, trees, targets, remove)


def _remove_tree(remote_tree, path):
    for entry in remote_tree.listdir(path):
        child = path.rstrip("/") + "/" + entry.name
        if entry.is_dir:
            _remove_tree(remote_tree, child)
        else:
            remote_tree.remove(child)
    remote_tree.rmdir(path)


def is_tree_root(remote_tree, path):
    """The root of the tree, or one of the fixed directories below it (EM volumes)."""
    depth = len([part for part in normalize(path).split("/") if part])
    return depth <= remote_tree.capabilities.fixed_levels


def cmd_cp(args):
    sources = [resolve(path, local_ok=True) for path in args.sources]
    destination = resolve(args.destination, local_ok=True)
    show_progress = args.progress if args.progress is not None else sys.stderr.isatty()
    try:
        copy_paths(
            sources, destination, recursive=args.recursive or args.archive, resume=args.resume,
            parallel=args.parallel, progress=show_progress, dereference=args.dereference,
            no_clobber=args.no_clobber, preserve=args.preserve or args.archive, checksum=args.checksum,
        )
    except errors.HpcfsError as exc:  # named by the path it gives (what was typed, or a file inside it)
        _report_failure(args, None, exc)
        return 1
    except KeyboardInterrupt:  # partial files are kept: say how to finish
        again = (["hpcfs", "cp", "--resume"] + (["-r"] if args.recursive or args.archive else [])
                 + (["-p"] if args.preserve or args.archive else []) + args.sources + [args.destination])
        print(f"hpcfs: to continue: {shlex.join(again)}", file=sys.stderr)
        raise


def cmd_info(args):
    """What a user checks first: can the server be reached, does it accept the credentials, what are its
    limits.  Each question gets its own line, so a failure says which step failed."""
    target = resolve(args.url)
    print(f"url: {target.display}")
    with Trees() as trees:
        try:  # some backends log in when opened, others with their first request
            remote_tree = trees.get(target)
            root = remote_tree.stat(target.path)
        except errors.AuthenticationFailed as exc:
            print("reachable: yes")
            print(f"authenticated: no ({_one_line(exc)})")
            return 1
        except errors.Unavailable as exc:
            print(f"reachable: no ({_one_line(exc)})")
            return 1
        facts = remote_tree.backend.describe()
        caps = remote_tree.capabilities
    print("reachable: yes")
    print("authenticated: yes")
    print(f"path: {target.path} ({'directory' if root.is_dir else root.kind})")
    for key, value in facts.items():
        print(f"{key}: {', '.join(map(str, value)) if isinstance(value, (list, tuple)) else value}")
    # Another package (PyUNICORE: uftp) may register the same PyFilesystem2 scheme: say whose open_fs gets.
    from .frontends.pyfs import registered_openers
    from .urls import parse
    scheme = parse(target.url).scheme
    openers = registered_openers(scheme)
    print(f"open_fs {scheme}://: {openers[0] if openers else 'no opener installed'}"
          + (f"; also registered: {', '.join(openers[1:])}; hpcfs+{scheme}:// always opens hpcfs"
             if len(openers) > 1 else ""))
    print(
        f"limits: ranged reads {'yes' if caps.ranged_reads else 'no'}, "
        f"partial writes {'yes' if caps.ranged_writes else 'no'}, rename {caps.rename}, "
        f"parallel requests {caps.max_parallel}"
        + (f", largest upload {format_size(caps.max_upload)}" if caps.max_upload else "")
        + (f", largest whole read {format_size(caps.max_whole_read)}" if caps.max_whole_read else "")
    )


def cmd_serve(args):
    return args.server_module.serve(args)


# -- helpers --------------------------------------------------------------------------------------------
def _long_line(entry, human_readable: bool = False) -> str:
    kind = {"dir": "d", "symlink": "l"}.get(entry.kind, "-")
    bits = "".join(
        flag if entry.mode & (1 << (8 - index)) else "-" for index, flag in enumerate("rwxrwxrwx")
    )
    stamp = time.strftime("%Y-%m-%d %H:%M", time.localtime(entry.mtime))
    size = _human_size(entry.size) if human_readable else str(entry.size)
    owner = "-" if entry.uid is None else str(entry.uid)  # numeric, as ls -n: a remote uid has no local name
    return f"{kind}{bits} {owner:>6} {size:>12} {stamp} {entry.name}"


def _human_size(size: int) -> str:
    """ls -h: 1023, 1.0K, 15M, as ls(1) prints them (one decimal below 10, rounded up)."""
    scaled = float(size)
    for unit in ("", "K", "M", "G", "T", "P"):
        if scaled < 1024 or unit == "P":
            break
        scaled /= 1024
    if not unit:
        return str(size)
    tenths = math.ceil(scaled * 10) / 10
    return f"{tenths:.1f}{unit}" if tenths < 10 else f"{math.ceil(scaled)}{unit}"


def _one_line(exc):
    return " ".join(str(exc).split()) or type(exc).__name__


class RedactingFormatter(logging.Formatter):
    """Request logs name URLs; a presigned URL's signature or a token in a query is a credential."""

    SECRET = re.compile(
        r"((?:password|passwd|secret|token|signature|credential|access_token|refresh_token|code)=)[^&\s\"']+",
        re.IGNORECASE,
    )
    AUTHORIZATION = re.compile(r"((?:Bearer|Basic)\s+)[A-Za-z0-9._~+/=-]+", re.IGNORECASE)

    def format(self, record):
        text = super().format(record)
        return self.AUTHORIZATION.sub(r"\1***", self.SECRET.sub(r"\1***", text))


def _configure_logging(verbose):
    handler = logging.StreamHandler()
    handler.setFormatter(RedactingFormatter("hpcfs: %(name)s: %(message)s" if verbose else "hpcfs: %(message)s"))
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, handlers=[handler])
    if not verbose:
        logging.getLogger("urllib3").setLevel(logging.ERROR)


def _one_line_warning(message, category, filename, lineno, file=None, line=None):
    """Library warnings (``verify=0``: "Unverified HTTPS request ...") as one line each, once."""
    text = f"hpcfs: warning: {_one_line(message)}"
    if text not in _shown_warnings:
        _shown_warnings.add(text)
        print(text, file=sys.stderr)


_shown_warnings: set = set()


class OneLineErrorParser(argparse.ArgumentParser):
    """Usage errors as one line, like other shell tools' ``cmd: error: ...``, with a hint instead of the
    whole usage text."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Examples in the epilog keep their lines; option columns as wide as rclone's and sshfs's."""

    def __init__(self, prog):
        super().__init__(prog, max_help_position=32)


VERBOSE_HELP = "log every request (secrets redacted); a traceback after an error's line"
LOCATION = f"URL ({url_examples()}) or PROFILE:/path"


def _examples(*lines: str) -> str:
    return "examples:\n" + "\n".join(f"  {line}" for line in lines)


def _parser(with_servers: bool = True):
    common = argparse.ArgumentParser(add_help=False)  # -v works after the command name too
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=VERBOSE_HELP)
    parser = OneLineErrorParser(
        prog="hpcfs", formatter_class=HelpFormatter,
        description=f"Remote HPC storage ({', '.join(protocol.title for protocol in PROTOCOLS)}) as local files: "
                    "mount it, or copy\nand inspect files without mounting.",
        epilog=f"Remote locations are URLs ({url_examples()}) or PROFILE:/path.\n"
               "Credentials come from environment variables or profiles, never from the command line.\n\n"
               + _examples("hpcfs mount myhpc:/scratch ~/mnt/hpc", "hpcfs cp -r --progress results myhpc:/scratch/",
                           "hpcfs ls -lh myhpc:/scratch", "hpcfs COMMAND --help"),
    )
    parser.add_argument("--version", action="version", version=f"hpcfs {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help=VERBOSE_HELP)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", title="commands")

    def command(name, summary, runner, *, examples=(), parent=commands, add_help=True):
        sub = parent.add_parser(name, help=summary, description=summary[0].upper() + summary[1:] + ".",
                                parents=[common], formatter_class=HelpFormatter, add_help=add_help,
                                epilog=_examples(*examples) if examples else None)
        sub.set_defaults(run=runner, command_parser=sub)
        return sub

    _add_mount_commands(command)
    _add_file_commands(command)
    _add_serve_commands(command, with_servers)
    return parser


def _add_serve_commands(command, with_servers: bool) -> None:
    """``hpcfs serve PROTOCOL``, one per protocol of the registry; its options only ``with_servers``."""
    schemes = ", ".join(protocol.scheme for protocol in PROTOCOLS)
    serve = command("serve", f"run a local test server ({schemes})", None,
                    examples=("hpcfs serve uftp --root /tmp/data", "hpcfs serve PROTOCOL --help"))
    servers = serve.add_subparsers(dest="protocol", required=True, metavar="PROTOCOL", title="protocols")
    for protocol in PROTOCOLS:
        sub = command(protocol.scheme, f"a local {protocol.scheme} server over a directory, for tests and offline "
                      "work", cmd_serve, parent=servers)
        if with_servers:
            module = protocol.server_module()
            module.add_arguments(sub)
            sub.set_defaults(server_module=module)


def _add_mount_commands(command):
    mount = command("mount", "mount a remote tree on a directory (in the background unless --foreground)",
                    cmd_mount, examples=("hpcfs mount myhpc:/scratch ~/mnt/hpc",
                                         "hpcfs mount -r -o attr_ttl=60,readahead=64M "
                                         "uftp://HOST:PORT/rest/auth/SERVER:/ ~/mnt/hpc",
                                         "hpcfs umount ~/mnt/hpc"))
    mount.add_argument("url", metavar="LOCATION", help=LOCATION)
    mount.add_argument("mountpoint", metavar="MOUNTPOINT", help="an existing, empty directory")
    mount.add_argument("-f", "--foreground", action="store_true",
                       help="stay attached to the terminal; Ctrl-C unmounts")
    mount.add_argument("-r", "--read-only", action="store_true", help="refuse every change (as -o ro)")
    mount.add_argument("--allow-non-empty", action="store_true",
                       help="mount even over files in MOUNTPOINT, hiding them while mounted (as -o nonempty)")
    tuning = mount.add_argument_group("mount options (the same names work as URL query parameters and profile keys)")
    tuning.add_argument("-o", dest="options", action="append", default=[], metavar="OPT[=VAL],...",
                        help=f"cache and readahead ({', '.join(CoreOptions.specs())}), the protocol's options "
                             "(timeout, ...: docs/guide/options.md; a wrong name is refused with the list) "
                             "and FUSE options (allow_other, read_ahead_kb, ro, nonempty, ...)")
    mount.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)
    mount.add_argument("--target-fd", type=int, help=argparse.SUPPRESS)

    umount = command("umount", "unmount what hpcfs mount mounted", cmd_umount,
                     examples=("hpcfs umount ~/mnt/hpc", "hpcfs umount --lazy ~/mnt/hpc"))
    umount.add_argument("mountpoint", metavar="MOUNTPOINT", help="the directory the remote tree is mounted on")
    umount.add_argument("-z", "--lazy", action="store_true",
                        help="detach now even if a process still uses the mount")

    info = command("info", "check reachability and authentication, and show the server's limits", cmd_info,
                   examples=("hpcfs info myhpc:/",))
    info.add_argument("url", metavar="LOCATION", help=LOCATION)


def _add_file_commands(command):
    # ls -h is ls(1)'s human-readable sizes, so --help is the only way to ask for help here.
    ls = command("ls", "list remote directories, as ls(1)", cmd_ls, add_help=False,
                 examples=("hpcfs ls -lh myhpc:/scratch", "hpcfs ls -R myhpc:/scratch/run1 myhpc:/scratch/run2"))
    ls.add_argument("paths", nargs="+", metavar="PATH", help=LOCATION)
    ls.add_argument("-l", "--long", action="store_true",
                    help="mode, owner (uid), size, time and name, one a line, after a 'total' of KiB")
    ls.add_argument("-a", "--all", action="store_true", help="include names that start with '.', and '.' and '..'")
    ls.add_argument("-A", "--almost-all", action="store_true", help="as -a, without '.' and '..'")
    ls.add_argument("-d", "--directory", action="store_true", help="list directories themselves, not what they hold")
    ls.add_argument("-t", dest="sort_by_time", action="store_true", help="newest first")
    ls.add_argument("-1", dest="one_per_line", action="store_true", help="one name a line (always so here)")
    ls.add_argument("-h", "--human-readable", action="store_true", help="with -l: sizes as 1.5K, 234M, 2.0G")
    ls.add_argument("-R", "--recursive", action="store_true", help="list subdirectories too")
    ls.add_argument("--help", action="help", help="show this help and exit")

    cp = command("cp", "copy files to, from or between remote trees", cmd_cp,
                 examples=("hpcfs cp -r results myhpc:/scratch/", "hpcfs cp -r --resume myhpc:/scratch/run1 ./",
                           "hpcfs cp -j 8 'myhpc:/scratch/run1/part-1.dat' .",))
    cp.add_argument("sources", nargs="+", metavar="SOURCE", help="local path, " + LOCATION)
    cp.add_argument("destination", metavar="DEST",
                    help="local path, URL or PROFILE:/path; an existing directory receives the copies")
    cp.add_argument("-r", "-R", "--recursive", action="store_true", help="copy directories and what they hold")
    cp.add_argument("-n", "--no-clobber", action="store_true", help="never overwrite a file that exists (no error)")
    cp.add_argument("-p", "--preserve", action="store_true",
                    help="keep the source's mode (no umask) and modification time, where the destination can")
    cp.add_argument("-a", "--archive", action="store_true", help="as -r -p (symbolic links are copied as links anyway)")
    cp.add_argument("--resume", action="store_true",
                    help="skip files the destination already has (same size, not older); continue partial copies")
    cp.add_argument("-c", "--checksum", action="store_true",
                    help="check each copy's sha256 against the source's (computed by the server where it can) "
                         "before it replaces the destination; with --resume, skip by hash instead of size and "
                         "time, as rsync -c")
    cp.add_argument("-L", "--dereference", action="store_true", help="follow symbolic links inside directories")
    cp.add_argument("-j", "--parallel", type=_positive, default=4, metavar="N", help="files copied at once (default 4)")
    progress = cp.add_mutually_exclusive_group()
    progress.add_argument("--progress", dest="progress", action="store_true", default=None,
                          help="show rate and ETA (default: when stderr is a terminal)")
    progress.add_argument("--no-progress", dest="progress", action="store_false",
                          help="no status line, even on a terminal")

    cat = command("cat", "print remote files one after another, as cat(1)", cmd_cat,
                  examples=("hpcfs cat myhpc:/scratch/README.txt", "hpcfs cat myhpc:/scratch/log.txt | grep ERROR"))
    cat.add_argument("paths", nargs="+", metavar="PATH", help=LOCATION)
    mkdir = command("mkdir", "make remote directories", cmd_mkdir, examples=("hpcfs mkdir -p myhpc:/scratch/a/b",))
    mkdir.add_argument("paths", nargs="+", metavar="PATH", help=LOCATION)
    mkdir.add_argument("-p", "--parents", action="store_true",
                       help="make parents as needed; no error if a directory exists (a file in the way is one)")
    rm = command("rm", "remove remote files (and directories with -r)", cmd_rm,
                 examples=("hpcfs rm myhpc:/scratch/old.dat", "hpcfs rm -rf myhpc:/scratch/run1"))
    rm.add_argument("paths", nargs="+", metavar="PATH", help=LOCATION)
    rm.add_argument("-r", "-R", "--recursive", action="store_true", help="remove directories and what they hold")
    rm.add_argument("-f", "--force", action="store_true", help="a path that does not exist is no error")

    checksum = command("sum", "print remote files' checksums, as sha256sum(1); computed by the server where it can",
                       cmd_sum, examples=("hpcfs sum myhpc:/scratch/run1.dat",
                                          "hpcfs sum -a md5 myhpc:/scratch/a.dat myhpc:/scratch/b.dat"))
    checksum.add_argument("paths", nargs="+", metavar="PATH", help=LOCATION)
    checksum.add_argument("-a", "--algorithm", choices=CHECKSUM_ALGORITHMS, default="sha256",
                          help="the hash (default sha256); UFTP servers compute all four, FirecREST sha256")

    stat = command("stat", "show a remote path's type, size, mode and time", cmd_stat,
                   examples=("hpcfs stat myhpc:/scratch/run1.dat",))
    stat.add_argument("paths", nargs="+", metavar="PATH", help=LOCATION)


def _positive(text):
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, not {text!r}")
    return value


def mount_helper(argv=None):
    """``mount.hpcfs URL MOUNTPOINT [-sfnv] [-o options]``: what mount(8) runs for an /etc/fstab line of
    type ``hpcfs``.  mount(8)'s generic options are dropped; ``ro`` mounts read-only."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) < 2 or argv[0].startswith("-") or argv[1].startswith("-"):
        print("mount.hpcfs: error: usage: mount.hpcfs URL|PROFILE:/path MOUNTPOINT [-o OPTIONS]", file=sys.stderr)
        return 2
    url, mountpoint, rest = argv[0], argv[1], argv[2:]
    options = []
    while rest:
        flag = rest.pop(0)
        if flag in ("-o", "-t", "-N") and rest:  # -t fuse.hpcfs and -N namespace: nothing for us
            value = rest.pop(0)
            kept = [item for item in value.split(",") if not _is_fstab_only(item.partition("=")[0])]
            if flag == "-o" and kept:
                options += ["-o", ",".join(kept)]
    return main(["mount", url, mountpoint] + options)


if __name__ == "__main__":
    sys.exit(main())
