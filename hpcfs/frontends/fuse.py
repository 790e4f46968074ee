"""FUSE front end: mfusepy Operations over the core.

Every callback maps a path (relative to the mount) to a RemoteTree call.  Errors from the core are
``OSError``s carrying the right errno, which mfusepy hands to the kernel as they are; anything else is a
bug, logged once and reported as EIO.  Attribute and entry timeouts given to the kernel match the core's
metadata cache, so the kernel does not ask more often than the cache could answer anyway.
"""
import ctypes
import ctypes.util
import errno
import functools
import itertools
import logging
import os
import signal
import threading
import time
from typing import List, Optional

from .. import errors
from ..mounts import detach

# mfusepy loads libfuse2 first when both are installed; libfuse3 gives 1 MiB requests and is what we test.
if ctypes.util.find_library("fuse3"):
    os.environ.setdefault("FUSE_LIBRARY_NAME", "fuse3")
import mfusepy as fuse

log = logging.getLogger("hpcfs.fuse")

_BLOCK = 4096
DEFAULT_KERNEL_READAHEAD_KIB = 1024
_UNSIGNED_MINUS_ONE = (1 << 32) - 1  # how libfuse passes chown's "leave unchanged"
IDLE_FUSE_THREADS = 10  # libfuse's own default for max_threads
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
# utimensat's UTIME_NOW / UTIME_OMIT: libfuse passes them on in tv_nsec (tv_sec 0) and mfusepy folds that
# timespec into plain nanoseconds, so `touch` would otherwise set 1970-01-01 00:00:01
_UTIME_NOW, _UTIME_OMIT = (1 << 30) - 1, (1 << 30) - 2


def _create_mode(mode: int) -> Optional[int]:
    """The permission bits a new file gets after its upload (``mode`` is already masked by the creator's
    umask), or None for the server's default.  A mode that keeps every bit of the usual default 0644 and
    adds no x bit is left to the server, so the common case costs no chmod and a stricter server default
    (a site umask 077) is never widened; a narrower mode (umask 077: 0600) or an executable is applied."""
    mode &= 0o7777
    if mode & 0o111 or (mode & 0o644) != 0o644:
        return mode
    return None


def _translate(method):
    """One place owns error translation: core errors pass with their errno, anything else is EIO."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except errors.HpcfsError as exc:
            if exc.errno not in (errno.ENOENT, errno.EEXIST, errno.ENOTEMPTY):
                log.warning("%s: %s", method.__name__, exc)
            raise fuse.FuseOSError(exc.errno) from None
        except fuse.FuseOSError:
            raise
        except OSError as exc:  # local spool I/O
            log.warning("%s: %s", method.__name__, exc)
            raise fuse.FuseOSError(exc.errno or errno.EIO) from None
        except Exception:
            log.exception("%s failed", method.__name__)
            raise fuse.FuseOSError(errno.EIO) from None

    return wrapper


class HpcfsOperations(fuse.Operations):
    use_ns = True  # nanosecond timestamps (mfusepy's float seconds are deprecated)

    def __init__(self, remote_tree, read_only=False):
        self.remote_tree = remote_tree
        self.read_only = read_only
        self.owner = (os.getuid(), os.getgid())  # a personal mount: files belong to whoever mounted it
        self.handles = {}
        self._next_handle = itertools.count(1)
        self._handles_guard = threading.Lock()

    # -- metadata -------------------------------------------------------------------------------------
    @_translate
    def getattr(self, path, fh=None):
        return self._attributes(self.remote_tree.stat(path))

    @_translate
    def readdir(self, path, fh):
        entries = self.remote_tree.listdir(path)
        return [".", ".."] + [(entry.name, {"st_mode": entry.st_mode}, 0) for entry in entries]

    @_translate
    def readlink(self, path):
        return self.remote_tree.readlink(path)

    def statfs(self, path):
        # Remote quotas are not part of any of the protocols; report a large, honest "unknown".
        blocks = (1 << 40) // _BLOCK
        return {
            "f_bsize": _BLOCK, "f_frsize": _BLOCK, "f_blocks": blocks, "f_bfree": blocks,
            "f_bavail": blocks, "f_files": 1 << 30, "f_ffree": 1 << 30, "f_namemax": 255,
        }

    # -- files ----------------------------------------------------------------------------------------
    @_translate
    def open(self, path, flags):
        writable = (flags & os.O_ACCMODE) != os.O_RDONLY
        self._check_writable(writable)
        handle = self.remote_tree.open(path, writable=writable, truncate=bool(flags & os.O_TRUNC))
        return self._register(handle)

    @_translate
    def create(self, path, mode, flags=0):
        self._check_writable(True)
        handle = self.remote_tree.open(
            path, writable=True, truncate=True, create=True, exclusive=bool(flags & os.O_EXCL),
            create_mode=_create_mode(mode),
        )
        return self._register(handle)

    @_translate
    def read(self, path, size, offset, fh):
        """mfusepy's read, which returns bytes.  mfusepy registers the kernel's read callback only for
        operations that define ``read``; a mount's :class:`KernelBufferFUSE` then calls :meth:`read_into`."""
        return self.handles[fh].read(offset, size)

    @_translate
    def read_into(self, dest: memoryview, offset: int, fh: int) -> int:
        return self.handles[fh].read_into(offset, dest)

    @_translate
    def write(self, path, data, offset, fh):
        return self.handles[fh].write(offset, data)

    @_translate
    def truncate(self, path, length, fh=None):
        self._check_writable(True)
        if fh is not None and fh in self.handles and self.handles[fh].writable:
            self.handles[fh].truncate(length)
        else:
            self.remote_tree.truncate(path, length)

    @_translate
    def flush(self, path, fh):
        handle = self._writable_handle(fh)
        if handle is not None:
            handle.flush()

    @_translate
    def fsync(self, path, datasync, fh):
        handle = self._writable_handle(fh)
        if handle is not None:
            handle.commit()  # an explicit commit point, even for a file still empty after O_TRUNC

    @_translate
    def release(self, path, fh):
        with self._handles_guard:
            handle = self.handles.pop(fh, None)
        if handle is None:
            return
        handle.release()

    # -- namespace ------------------------------------------------------------------------------------
    @_translate
    def mkdir(self, path, mode):
        self._check_writable(True)
        self.remote_tree.mkdir(path)

    @_translate
    def rmdir(self, path):
        self._check_writable(True)
        self.remote_tree.rmdir(path)

    @_translate
    def unlink(self, path):
        self._check_writable(True)
        self.remote_tree.remove(path)

    @_translate
    def rename(self, old, new):
        self._check_writable(True)
        self.remote_tree.rename(old, new)

    @_translate
    def chmod(self, path, mode):
        self._check_writable(True)
        self.remote_tree.chmod(path, mode)

    @_translate
    def chown(self, path, uid, gid):
        # Ownership is the server's business; accept "no change" so cp -p and rsync -a work as the owner.
        self.remote_tree.stat(path)
        unchanged = (-1, _UNSIGNED_MINUS_ONE)
        if uid not in unchanged + (self.owner[0],) or gid not in unchanged + (self.owner[1],):
            raise fuse.FuseOSError(errno.EPERM)

    @_translate
    def utimens(self, path, times=None):
        self._check_writable(True)
        nanoseconds = times[1] if times else _UTIME_NOW
        if nanoseconds != _UTIME_OMIT:  # an atime-only change: hpcfs keeps no atimes
            self.remote_tree.set_mtime(path, time.time() if nanoseconds == _UTIME_NOW else nanoseconds / 1e9)

    @_translate
    def symlink(self, target, source):
        # mfusepy (like fusepy) names them backwards: ``target`` is the new link, ``source`` what it points to.
        self._check_writable(True)
        self.remote_tree.symlink(source, target)

    def destroy(self, path):
        self.remote_tree.close()

    # -- helpers --------------------------------------------------------------------------------------
    def _register(self, handle):
        with self._handles_guard:
            fh = next(self._next_handle)
            self.handles[fh] = handle
        return fh

    def _writable_handle(self, fh):
        handle = self.handles.get(fh)
        return handle if handle is not None and handle.writable else None

    def _check_writable(self, writing):
        if writing and self.read_only:
            raise fuse.FuseOSError(errno.EROFS)

    def _attributes(self, entry):
        mtime_ns = int(entry.mtime * 1e9)
        return {
            "st_mode": entry.st_mode,
            "st_size": entry.size,
            "st_nlink": 2 if entry.is_dir else 1,
            "st_uid": self.owner[0],
            "st_gid": self.owner[1],
            "st_mtime": mtime_ns,
            "st_atime": mtime_ns,
            "st_ctime": mtime_ns,
            "st_blksize": _BLOCK,
            "st_blocks": (entry.size + 511) // 512,
        }


class KernelBufferFUSE(fuse.FUSE):
    """mfusepy's FUSE, except that a read is copied straight into the kernel's buffer: mfusepy's own read
    callback takes bytes from the operations and copies them in (``memmove``), so every byte read was
    copied twice in Python (joined out of the cached blocks, then moved), and at this class of machine's
    memory bandwidth each pass over the data costs as much as receiving it."""

    def read(self, path, buf, size, offset, fip):
        dest = memoryview((ctypes.c_char * size).from_address(ctypes.addressof(buf.contents))).cast("B")
        return self.operations.read_into(dest, offset, fip.contents.fh)


def mount(remote_tree, mountpoint: str, read_only: bool = False, fsname: str = "hpcfs",
          options: Optional[dict] = None) -> Optional[int]:
    """Mount ``remote_tree`` at ``mountpoint`` (an absolute path) in the foreground; returns when it is
    unmounted: None, or the signal (SIGINT, SIGTERM, SIGHUP) that ended it."""
    ttl = remote_tree.options.attr_ttl
    fuse_options = {
        "fsname": fsname,
        "subtype": "hpcfs",
        "attr_timeout": ttl,
        "entry_timeout": ttl,
        "negative_timeout": min(remote_tree.options.negative_ttl, ttl),
        "auto_cache": True,  # keep the page cache across opens while size and mtime are unchanged
        "ro": read_only,
    }
    if fuse.fuse_version_major == 3:
        # libfuse 3.14 passes its "unlimited" default (-1) through a check that rejects it, printing
        # "Ignoring invalid max threads value 4294967295" on every mount; a real number keeps it quiet.
        fuse_options["max_idle_threads"] = IDLE_FUSE_THREADS
    fuse_options.update(options or {})
    _require_kernel_permission_checks(fuse_options)
    readahead_kib = int(fuse_options.pop("read_ahead_kb", DEFAULT_KERNEL_READAHEAD_KIB))
    threading.Thread(
        target=_set_kernel_readahead, args=(mountpoint, readahead_kib), name="hpcfs-readahead", daemon=True
    ).start()
    operations = HpcfsOperations(remote_tree, read_only=read_only)
    try:
        return _serve_until_unmounted(operations, mountpoint, fuse_options)
    except RuntimeError as exc:  # libfuse has printed why on stderr; mfusepy only gives its status code
        remote_tree.close()
        raise errors.HpcfsError(f"FUSE could not mount {mountpoint} (libfuse status {exc})") from None


def _require_kernel_permission_checks(fuse_options: dict) -> None:
    """With ``allow_other``/``allow_root`` other local users reach the mount, and every request they make
    runs with the mounter's remote identity.  ``default_permissions`` makes the kernel check each access
    against the mode and owner the mount shows first (as sshfs documents), so a file of mode 600 stays
    the mounter's."""
    if fuse_options.get("allow_other") or fuse_options.get("allow_root"):
        fuse_options["default_permissions"] = True


def _serve_until_unmounted(operations, mountpoint: str, fuse_options: dict) -> Optional[int]:
    """Run libfuse's loop until the mount goes away; a stop signal unmounts it, and is returned.

    libfuse's own handlers end the loop with a bare "status 8" that cannot tell Ctrl-C from a failure.
    It installs them only where a signal has its default action, and mfusepy resets SIGINT to the default
    only when called from the main thread.  So the loop runs in a thread, the main thread keeps Python's
    handlers, and a signal unmounts: the loop then ends as it does for ``hpcfs umount``."""
    received: List[int] = []
    failure: List[BaseException] = []

    def serve():
        try:
            KernelBufferFUSE(operations, mountpoint, foreground=True, nothreads=False, **fuse_options)
        except BaseException as exc:  # handed to the main thread, which reports it
            failure.append(exc)

    def on_signal(signum, frame):
        if received:  # asked twice: stop waiting for programs that still use a detached mount
            os._exit(128 + signum)
        received.append(signum)

    previous = {signum: signal.signal(signum, on_signal) for signum in STOP_SIGNALS}
    loop = threading.Thread(target=serve, name="hpcfs-fuse", daemon=True)
    try:
        loop.start()
        while loop.is_alive():
            loop.join(0.2)
            if received and loop.is_alive():
                detach(mountpoint)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if failure and not received:
        raise failure[0]
    return received[0] if received else None


def _set_kernel_readahead(mountpoint, kib, wait_seconds=30):
    """Ask the kernel for larger read requests once the mount is up.

    libfuse3 takes requests as large as the mount's readahead window, which is 128 KiB by default: at
    1 MiB, a sequential read costs an eighth of the Python calls.  Only root may change it; others keep
    the default, which the core's own readahead makes up for."""
    deadline = time.monotonic() + wait_seconds
    while not os.path.ismount(mountpoint):
        if time.monotonic() > deadline:
            return
        time.sleep(0.02)
    device = os.stat(mountpoint).st_dev
    setting = f"/sys/class/bdi/{os.major(device)}:{os.minor(device)}/read_ahead_kb"
    try:
        with open(setting, "w") as handle:
            handle.write(str(kib))
    except OSError as exc:
        log.debug("kernel readahead stays at its default: %s", exc)
