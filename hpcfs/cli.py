"""The ``hpcfs`` command: mount/umount, ls, cp, cat, stat, rm, mkdir, info, and the local servers.

Remote arguments are URLs (``uftp://...``, ``firecrest://...``, ``em://...``) or ``PROFILE:/path``; local
ones are plain paths.  Errors are one line on stderr with exit status 1 (2 for bad usage); ``--verbose``
adds a request log and tracebacks.  Passwords are never read from the command line.
"""
import argparse
import dataclasses
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
import warnings

from . import __version__, errors
from .transfer import copy_paths, format_size
from .core import check_options
from .targets import Target, Trees, refuse_secret_options, resolve, tree_for

FUSE_OPTIONS = {
    "allow_other", "allow_root", "default_permissions", "direct_io", "kernel_cache", "auto_cache",
    "noauto_cache", "fsname", "max_read", "uid", "gid", "umask", "read_ahead_kb",
}
# Generic mount(8) options that /etc/fstab lines carry and a FUSE mount has nothing to do with.
FSTAB_ONLY_OPTIONS = {"rw", "defaults", "auto", "noauto", "user", "users", "nouser", "nofail", "_netdev",
                      "exec", "noexec", "suid", "nosuid", "dev", "nodev", "atime", "noatime", "relatime"}
MOUNT_WAIT_SECONDS = 60


def main(argv=None):
    parser = _parser()
    args = parser.parse_args(argv)
    _configure_logging(args.verbose)
    warnings.showwarning = _one_line_warning
    try:
        return args.run(args) or 0
    except errors.UsageError as exc:
        print(f"hpcfs: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader went away (`hpcfs cat ... | head`): stop quietly, as cat does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing left to flush at exit
        return 128 + signal.SIGPIPE
    except OSError as exc:
        print(f"hpcfs: {_one_line(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("hpcfs: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug: still one line unless asked for details
        if args.verbose:
            raise
        print(f"hpcfs: internal error: {type(exc).__name__}: {_one_line(exc)} (run with --verbose)", file=sys.stderr)
        return 1


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
    if not args.foreground:
        return _mount_in_background(args, target, mountpoint)
    from .frontends.fuse import mount

    remote_tree = tree_for(target, rooted=True, **core_and_backend)
    if args.ready_fd is not None:  # tell the parent that authentication worked
        os.write(args.ready_fd, b"ok")
        os.close(args.ready_fd)
    mount(remote_tree, mountpoint, read_only=read_only, fsname=f"hpcfs:{target.display}", options=fuse_options)


def _mount_in_background(args, target, mountpoint):
    """Run the mount in a detached child; return once it is mounted, or report why it could not be.

    The child gets the resolved target through a pipe, so a profile's secret (typed at a prompt, or from
    a command) is fetched once, here, and never appears in the child's arguments or environment."""
    ready_read, ready_write = os.pipe()
    target_read, target_write = os.pipe()
    command = [sys.executable, "-m", "hpcfs", "mount", "--foreground", "--ready-fd", str(ready_write),
               "--target-fd", str(target_read), args.url, mountpoint]
    for option in args.options:
        command += ["-o", option]
    if args.read_only:
        command.append("--read-only")
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


def _received_target(fd):
    with os.fdopen(fd) as pipe:
        return Target(**json.load(pipe))


def is_mounted(mountpoint):
    from .frontends.fuse import is_mounted as in_mount_table  # loads libfuse: only for mount commands

    return in_mount_table(mountpoint)


def cmd_umount(args):
    mountpoint = os.path.abspath(args.mountpoint)
    if not is_mounted(mountpoint):
        raise errors.UsageError(f"not mounted: {args.mountpoint}")
    for command in (["fusermount3", "-u"], ["fusermount", "-u"], ["umount"]):
        try:
            result = subprocess.run(command + [mountpoint], capture_output=True, text=True)
        except FileNotFoundError:
            continue
        if result.returncode == 0:
            return 0
        if "busy" in result.stderr.lower() and args.lazy is False:
            raise errors.HpcfsError(f"{args.mountpoint} is busy (a process uses it); retry or use --lazy")
    # A dead mount (server gone, process killed) still detaches lazily.
    for command in (["fusermount3", "-uz"], ["umount", "-l"]):
        if subprocess.run(command + [mountpoint], capture_output=True).returncode == 0:
            return 0
    raise errors.HpcfsError(f"could not unmount {args.mountpoint}")


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
    target = resolve(args.path)
    with Trees() as trees:
        remote_tree = trees.get(target)
        entry = remote_tree.stat(target.path)
        entries = sorted(remote_tree.listdir(target.path), key=lambda e: e.name) if entry.is_dir else [entry]
    for item in entries:
        print(_long_line(item) if args.long else item.name)


def cmd_stat(args):
    target = resolve(args.path)
    with Trees() as trees:
        entry = trees.get(target).stat(target.path)
    print(f"  File: {target.path}")
    print(f"  Type: {'directory' if entry.is_dir else entry.kind}")
    print(f"  Size: {entry.size}")
    print(f"  Mode: {entry.mode:04o}")
    print(f"Modify: {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(entry.mtime))}")


def cmd_cat(args):
    targets = [resolve(path) for path in args.paths]
    with Trees() as trees:
        for target in targets:
            remote_tree = trees.get(target)
            handle = remote_tree.open(target.path)
            offset, step = 0, remote_tree.options.block_size
            while True:
                data = handle.read(offset, step)
                if not data:
                    break
                sys.stdout.buffer.write(data)
                offset += len(data)
        sys.stdout.buffer.flush()


def cmd_mkdir(args):
    targets = [resolve(path) for path in args.paths]
    with Trees() as trees:
        for target in targets:
            if args.parents:
                _make_parents(trees.get(target), target.path)
            else:
                trees.get(target).mkdir(target.path)


def _make_parents(remote_tree, path):
    parts = [part for part in path.split("/") if part]
    for depth in range(1, len(parts) + 1):
        current = "/" + "/".join(parts[:depth])
        if not remote_tree.exists(current):
            remote_tree.mkdir(current)


def cmd_rm(args):
    targets = [resolve(path) for path in args.paths]
    with Trees() as trees:
        for target in targets:
            remote_tree = trees.get(target)
            if remote_tree.stat(target.path).is_dir:
                if not args.recursive:
                    raise errors.IsADirectory("is a directory (use -r)", target.path)
                _remove_tree(remote_tree, target.path)
            else:
                remote_tree.remove(target.path)


def _remove_tree(remote_tree, path):
    for entry in remote_tree.listdir(path):
        child = path.rstrip("/") + "/" + entry.name
        if entry.is_dir:
            _remove_tree(remote_tree, child)
        else:
            remote_tree.remove(child)
    remote_tree.rmdir(path)


def cmd_cp(args):
    sources = [resolve(path, local_ok=True) for path in args.sources]
    destination = resolve(args.destination, local_ok=True)
    show_progress = args.progress if args.progress is not None else sys.stderr.isatty()
    copy_paths(
        sources, destination, recursive=args.recursive, resume=args.resume,
        parallel=args.parallel, progress=show_progress,
    )


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
def _long_line(entry):
    kind = {"dir": "d", "symlink": "l"}.get(entry.kind, "-")
    bits = "".join(
        flag if entry.mode & (1 << (8 - index)) else "-" for index, flag in enumerate("rwxrwxrwx")
    )
    stamp = time.strftime("%Y-%m-%d %H:%M", time.localtime(entry.mtime))
    return f"{kind}{bits} {entry.size:>12} {stamp} {entry.name}"


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


_shown_warnings = set()


class OneLineErrorParser(argparse.ArgumentParser):
    """Usage errors as one line, like other shell tools' ``cmd: error: ...``, with a hint instead of the
    whole usage text."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


VERBOSE_HELP = "log every request (secrets redacted); tracebacks on errors"


def _parser():
    common = argparse.ArgumentParser(add_help=False)  # -v works after the command name too
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=VERBOSE_HELP)
    parser = OneLineErrorParser(
        prog="hpcfs",
        description="Remote HPC storage (UFTP, FirecREST, EM API) as local files.",
        epilog="Remote locations are URLs (uftp://..., firecrest://..., em://...) or PROFILE:/path. "
               "Credentials come from environment variables or profiles, never from the command line.",
    )
    parser.add_argument("--version", action="version", version=f"hpcfs {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help=VERBOSE_HELP)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name, helptext, runner):
        sub = commands.add_parser(name, help=helptext, description=helptext, parents=[common])
        sub.set_defaults(run=runner)
        return sub

    mount = command("mount", "mount a remote tree (in the background unless --foreground)", cmd_mount)
    mount.add_argument("url", help="URL or PROFILE:/path")
    mount.add_argument("mountpoint")
    mount.add_argument("-f", "--foreground", action="store_true", help="stay in the foreground")
    mount.add_argument("-o", dest="options", action="append", default=[], metavar="OPT[=VAL],...",
                       help="cache and readahead (attr_ttl, negative_ttl, block_size, readahead, cache_size, "
                            "spool_dir), backend options (timeout, ...: a wrong name is refused with the list) "
                            "and FUSE options (allow_other, read_ahead_kb, ro, ...)")
    mount.add_argument("-r", "--read-only", action="store_true")
    mount.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)
    mount.add_argument("--target-fd", type=int, help=argparse.SUPPRESS)

    umount = command("umount", "unmount", cmd_umount)
    umount.add_argument("mountpoint")
    umount.add_argument("-z", "--lazy", action="store_true", help="detach even if busy")

    ls = command("ls", "list a remote directory", cmd_ls)
    ls.add_argument("path", help="URL or PROFILE:/path")
    ls.add_argument("-l", "--long", action="store_true", help="mode, size and time")

    cp = command("cp", "copy files to, from or between remote trees", cmd_cp)
    cp.add_argument("sources", nargs="+", help="local paths, URLs or PROFILE:/path")
    cp.add_argument("destination")
    cp.add_argument("-r", "--recursive", action="store_true")
    cp.add_argument("-R", "--resume", action="store_true",
                    help="skip files the destination already has (same size); continue partial downloads")
    cp.add_argument("-j", "--parallel", type=_positive, default=4, help="files copied at once (default 4)")
    progress = cp.add_mutually_exclusive_group()
    progress.add_argument("--progress", dest="progress", action="store_true", default=None,
                          help="show rate and ETA (default: when stderr is a terminal)")
    progress.add_argument("--no-progress", dest="progress", action="store_false")

    cat = command("cat", "print remote files", cmd_cat)
    cat.add_argument("paths", nargs="+")
    mkdir = command("mkdir", "make remote directories", cmd_mkdir)
    mkdir.add_argument("paths", nargs="+")
    mkdir.add_argument("-p", "--parents", action="store_true", help="make parents as needed; no error if existing")
    rm = command("rm", "remove remote files (and directories with -r)", cmd_rm)
    rm.add_argument("paths", nargs="+")
    rm.add_argument("-r", "--recursive", action="store_true")

    stat = command("stat", "attributes of a remote path", cmd_stat)
    stat.add_argument("path")

    info = command("info", "reachability, authentication and server limits", cmd_info)
    info.add_argument("url", help="URL or PROFILE:/path")

    serve = command("serve", "run a local test server (uftp, firecrest, em, flux)", None)
    servers = serve.add_subparsers(dest="protocol", required=True, metavar="PROTOCOL")
    for protocol in ("uftp", "firecrest", "em", "flux"):
        module = _server_module(protocol)
        sub = servers.add_parser(protocol, help=f"local {protocol} server", parents=[common])
        module.add_arguments(sub)
        sub.set_defaults(run=cmd_serve, server_module=module)
    return parser


def _positive(text):
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, not {text!r}")
    return value


def _server_module(protocol):
    import importlib

    return importlib.import_module(f"hpcfs.servers.{protocol}")


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
            kept = [item for item in value.split(",") if item.partition("=")[0] not in FSTAB_ONLY_OPTIONS]
            if flag == "-o" and kept:
                options += ["-o", ",".join(kept)]
    return main(["mount", url, mountpoint] + options)


if __name__ == "__main__":
    sys.exit(main())
