"""The ``hpcfs`` command: mount/umount, ls, cp, cat, stat, rm, mkdir, info, and the local servers.

Remote arguments are URLs (``uftp://...``, ``firecrest://...``, ``em://...``) or ``PROFILE:/path``; local
ones are plain paths.  Errors are one line on stderr with exit status 1 (2 for bad usage); ``--verbose``
adds a request log and tracebacks.  Passwords are never read from the command line.
"""
import argparse
import logging
import os
import subprocess
import sys
import time

from . import __version__, errors
from .transfer import copy_paths, format_size
from .targets import resolve, tree_for

FUSE_OPTIONS = {
    "allow_other", "allow_root", "default_permissions", "direct_io", "kernel_cache", "auto_cache",
    "noauto_cache", "fsname", "max_read", "uid", "gid", "umask", "read_ahead_kb",
}
MOUNT_WAIT_SECONDS = 60


def main(argv=None):
    parser = _parser()
    args = parser.parse_args(argv)
    _configure_logging(args.verbose)
    try:
        return args.run(args) or 0
    except errors.UsageError as exc:
        print(f"hpcfs: error: {exc}", file=sys.stderr)
        return 2
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
    if os.path.ismount(mountpoint):
        raise errors.UsageError(f"mountpoint is busy (something is already mounted there): {args.mountpoint}")
    target = resolve(args.url)
    core_and_backend, fuse_options = _split_mount_options(args.options)
    if not args.foreground:
        return _mount_in_background(args, target, mountpoint)
    from .frontends.fuse import mount

    remote_tree = tree_for(target, rooted=True, **core_and_backend)
    if args.ready_fd is not None:  # tell the parent that authentication worked
        os.write(args.ready_fd, b"ok")
        os.close(args.ready_fd)
    mount(remote_tree, mountpoint, read_only=args.read_only, fsname=f"hpcfs:{target.display}", options=fuse_options)


def _mount_in_background(args, target, mountpoint):
    """Run the mount in a detached child; return once it is mounted, or report why it could not be."""
    read_end, write_end = os.pipe()
    command = [sys.executable, "-m", "hpcfs", "mount", "--foreground", "--ready-fd", str(write_end), args.url, mountpoint]
    for option in args.options:
        command += ["-o", option]
    if args.read_only:
        command.append("--read-only")
    log_path = _mount_log_path(mountpoint)
    with open(log_path, "ab") as log_file:
        child = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file,
            pass_fds=(write_end,), start_new_session=True,
        )
    os.close(write_end)
    ready = os.read(read_end, 2)  # empty when the child exits before authenticating
    os.close(read_end)
    deadline = time.monotonic() + MOUNT_WAIT_SECONDS
    while ready and not os.path.ismount(mountpoint) and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    if os.path.ismount(mountpoint):
        print(f"mounted {target.display} on {mountpoint} (log: {log_path})", file=sys.stderr)
        return 0
    if child.poll() is None:
        child.terminate()
    raise errors.HpcfsError(_last_error_line(log_path) or f"mount did not come up; see {log_path}")


def cmd_umount(args):
    mountpoint = os.path.abspath(args.mountpoint)
    if not os.path.ismount(mountpoint):
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
    """``-o a=1,b`` into (core and backend options, FUSE options)."""
    ours, fuse_options = {}, {}
    for group in option_args:
        for item in filter(None, group.split(",")):
            key, has_value, value = item.partition("=")
            key = key.strip().replace("-", "_")
            (fuse_options if key in FUSE_OPTIONS else ours)[key] = value if has_value else True
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
    remote_tree = tree_for(target)
    try:
        entry = remote_tree.stat(target.path)
        entries = sorted(remote_tree.listdir(target.path), key=lambda e: e.name) if entry.is_dir else [entry]
        for item in entries:
            print(_long_line(item) if args.long else item.name)
    finally:
        remote_tree.close()


def cmd_stat(args):
    target = resolve(args.path)
    remote_tree = tree_for(target)
    try:
        entry = remote_tree.stat(target.path)
    finally:
        remote_tree.close()
    print(f"  File: {target.path}")
    print(f"  Type: {'directory' if entry.is_dir else entry.kind}")
    print(f"  Size: {entry.size}")
    print(f"  Mode: {entry.mode:04o}")
    print(f"Modify: {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(entry.mtime))}")


def cmd_cat(args):
    for path in args.paths:
        target = resolve(path)
        remote_tree = tree_for(target)
        try:
            handle = remote_tree.open(target.path)
            offset, step = 0, remote_tree.options.block_size
            while True:
                data = handle.read(offset, step)
                if not data:
                    break
                sys.stdout.buffer.write(data)
                offset += len(data)
            sys.stdout.buffer.flush()
        finally:
            remote_tree.close()


def cmd_mkdir(args):
    for path in args.paths:
        target = resolve(path)
        remote_tree = tree_for(target)
        try:
            if args.parents:
                _make_parents(remote_tree, target.path)
            else:
                remote_tree.mkdir(target.path)
        finally:
            remote_tree.close()


def _make_parents(remote_tree, path):
    parts = [part for part in path.split("/") if part]
    for depth in range(1, len(parts) + 1):
        current = "/" + "/".join(parts[:depth])
        if not remote_tree.exists(current):
            remote_tree.mkdir(current)


def cmd_rm(args):
    for path in args.paths:
        target = resolve(path)
        remote_tree = tree_for(target)
        try:
            if remote_tree.stat(target.path).is_dir:
                if not args.recursive:
                    raise errors.IsADirectory("is a directory (use -r)", target.path)
                _remove_tree(remote_tree, target.path)
            else:
                remote_tree.remove(target.path)
        finally:
            remote_tree.close()


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
    target = resolve(args.url)
    remote_tree = tree_for(target)
    try:
        facts = remote_tree.backend.describe()
        caps = remote_tree.capabilities
        root = remote_tree.stat(target.path)
    finally:
        remote_tree.close()
    print(f"url: {target.display}")
    print("reachable: yes, authenticated: yes")
    print(f"root: {'directory' if root.is_dir else root.kind}")
    for key, value in facts.items():
        print(f"{key}: {value}")
    print(
        f"capabilities: ranged reads {'yes' if caps.ranged_reads else 'no'}, "
        f"partial writes {'yes' if caps.ranged_writes else 'no'}, rename {caps.rename}, "
        f"parallel requests {caps.max_parallel}"
        + (f", largest upload {format_size(caps.max_upload)}" if caps.max_upload else "")
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


def _configure_logging(verbose):
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="hpcfs: %(name)s: %(message)s" if verbose else "hpcfs: %(message)s",
    )
    if not verbose:
        logging.getLogger("urllib3").setLevel(logging.ERROR)


def _parser():
    parser = argparse.ArgumentParser(
        prog="hpcfs",
        description="Remote HPC storage (UFTP, FirecREST, EM API) as local files.",
        epilog="Credentials come from environment variables or profiles, never from the command line.",
    )
    parser.add_argument("--version", action="version", version=f"hpcfs {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every request; tracebacks on errors")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    mount = commands.add_parser("mount", help="mount a remote tree (background by default)")
    mount.add_argument("url", help="URL or PROFILE:/path")
    mount.add_argument("mountpoint")
    mount.add_argument("-f", "--foreground", action="store_true", help="stay in the foreground")
    mount.add_argument("-o", dest="options", action="append", default=[], metavar="OPT[=VAL],...",
                       help="cache/readahead (attr_ttl, block_size, readahead, cache_size), backend and FUSE options")
    mount.add_argument("-r", "--read-only", action="store_true")
    mount.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)
    mount.set_defaults(run=cmd_mount)

    umount = commands.add_parser("umount", help="unmount")
    umount.add_argument("mountpoint")
    umount.add_argument("-z", "--lazy", action="store_true", help="detach even if busy")
    umount.set_defaults(run=cmd_umount)

    ls = commands.add_parser("ls", help="list a remote directory")
    ls.add_argument("path")
    ls.add_argument("-l", "--long", action="store_true", help="mode, size and time")
    ls.set_defaults(run=cmd_ls)

    cp = commands.add_parser("cp", help="copy files to, from or between remote trees")
    cp.add_argument("sources", nargs="+")
    cp.add_argument("destination")
    cp.add_argument("-r", "--recursive", action="store_true")
    cp.add_argument("-R", "--resume", action="store_true", help="continue partial copies, skip complete ones")
    cp.add_argument("-j", "--parallel", type=int, default=4, help="files copied at once (default 4)")
    progress = cp.add_mutually_exclusive_group()
    progress.add_argument("--progress", dest="progress", action="store_true", default=None,
                          help="show rate and ETA (default: when stderr is a terminal)")
    progress.add_argument("--no-progress", dest="progress", action="store_false")
    cp.set_defaults(run=cmd_cp)

    for name, helptext, runner in (("cat", "print remote files", cmd_cat), ("mkdir", "make remote directories", cmd_mkdir),
                                   ("rm", "remove remote files", cmd_rm)):
        sub = commands.add_parser(name, help=helptext)
        sub.add_argument("paths", nargs="+")
        if name == "mkdir":
            sub.add_argument("-p", "--parents", action="store_true")
        if name == "rm":
            sub.add_argument("-r", "--recursive", action="store_true")
        sub.set_defaults(run=runner)

    stat = commands.add_parser("stat", help="attributes of a remote path")
    stat.add_argument("path")
    stat.set_defaults(run=cmd_stat)

    info = commands.add_parser("info", help="reachability, authentication and server limits")
    info.add_argument("url")
    info.set_defaults(run=cmd_info)

    serve = commands.add_parser("serve", help="run a local test server")
    servers = serve.add_subparsers(dest="protocol", required=True, metavar="PROTOCOL")
    for protocol in ("uftp", "firecrest", "em"):
        module = _server_module(protocol)
        sub = servers.add_parser(protocol, help=f"local {protocol} server")
        module.add_arguments(sub)
        sub.set_defaults(run=cmd_serve, server_module=module)
    return parser


def _server_module(protocol):
    import importlib

    return importlib.import_module(f"hpcfs.servers.{protocol}")


def mount_helper(argv=None):
    """``mount.hpcfs URL MOUNTPOINT [-o options]`` for /etc/fstab (type ``hpcfs``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) < 2:
        print("usage: mount.hpcfs URL MOUNTPOINT [-o OPTIONS]", file=sys.stderr)
        return 2
    url, mountpoint, rest = argv[0], argv[1], argv[2:]
    options = []
    while rest:
        flag = rest.pop(0)
        if flag == "-o" and rest:
            # mount(8) passes its own generic options too; keep only ours.
            kept = [o for o in rest.pop(0).split(",") if o not in ("rw", "defaults", "auto", "noauto", "user", "nofail", "_netdev")]
            options += ["-o", ",".join(kept)] if kept else []
    return main(["mount", url, mountpoint] + options)


if __name__ == "__main__":
    sys.exit(main())
