"""PyFilesystem2 front end: ``fs.open_fs("uftp://...")``, and every other scheme of :mod:`hpcfs.registry`.

A thin adapter: every call goes to the core's RemoteTree, and one context manager translates
``hpcfs.errors`` into ``fs.errors``.  ``scandir`` fills ``details`` from the directory listing, so
walking a tree costs one request per directory.
"""
import contextlib
import threading
import warnings
from typing import List

import fs.errors
import fs.subfs
from fs.base import FS
from fs.enums import ResourceType
from fs.info import Info
from fs.mode import Mode
from fs.opener import Opener
from fs.permissions import Permissions

from .. import errors
from ..core.files import TreeLease, open_stream
from ..core import RemoteTree, open_tree
from ..registry import ALIASES, PROTOCOLS, SCHEMES
from ..urls import redact

_TRANSLATION = [
    (errors.NotFound, fs.errors.ResourceNotFound),
    (errors.IsADirectory, fs.errors.FileExpected),
    (errors.NotADirectory, fs.errors.DirectoryExpected),
    (errors.DirectoryNotEmpty, fs.errors.DirectoryNotEmpty),
    (errors.AlreadyExists, fs.errors.FileExists),
    (errors.PermissionDenied, fs.errors.PermissionDenied),
    (errors.ReadOnly, fs.errors.ResourceReadOnly),
    (errors.NotSupported, fs.errors.Unsupported),
    (errors.InvalidPath, fs.errors.IllegalBackReference),
    (errors.Unavailable, fs.errors.RemoteConnectionError),
]


@contextlib.contextmanager
def translate_errors(path):
    try:
        yield
    except errors.HpcfsError as exc:
        for ours, theirs in _TRANSLATION:
            if isinstance(exc, ours):
                if theirs is fs.errors.IllegalBackReference:
                    raise theirs(path) from exc
                raise theirs(path, exc=exc) from exc
        message = f"{path}: {exc.strerror}".replace("{", "{{").replace("}", "}}")  # fs str.format()s it
        raise fs.errors.OperationFailed(path, exc=exc, msg=message) from exc


class HpcfsFS(FS):
    """A remote tree as a PyFilesystem2 filesystem."""

    _meta = {
        "case_insensitive": False,
        "invalid_path_chars": "\0",
        "max_path_length": None,
        "max_sys_path_length": None,
        "network": True,
        "read_only": False,
        "supports_rename": True,
        "thread_safe": True,
        "unicode_paths": True,
        "virtual": False,
    }

    def __init__(self, tree: RemoteTree, url: str = ""):
        super().__init__()
        self.remote = tree
        self._lease = TreeLease(tree)  # open files keep the tree open after this object is closed or gone
        self._url = url
        self._lock = threading.RLock()

    def __repr__(self):
        return f"HpcfsFS({redact(self._url)!r})"

    # -- the seven required methods -------------------------------------------------------------------
    def getinfo(self, path, namespaces=None):
        path = self.validatepath(path)
        with translate_errors(path):
            entry = self.remote.stat(path)
            return self._info(entry, "" if path in ("/", "") else entry.name)

    def listdir(self, path):
        path = self.validatepath(path)
        with translate_errors(path):
            self._require_dir(path)
            return [entry.name for entry in self.remote.listdir(path)]

    def makedir(self, path, permissions=None, recreate=False):
        path = self.validatepath(path)
        with translate_errors(path):
            if path in ("/", ""):
                if recreate:
                    return self.opendir(path)
                raise fs.errors.DirectoryExists(path)
            try:
                self.remote.mkdir(path)
            except errors.AlreadyExists:
                if not (recreate and self.remote.stat(path).is_dir):
                    raise fs.errors.DirectoryExists(path) from None
            if permissions is not None and self.remote.capabilities.chmod:
                self.remote.chmod(path, permissions.mode)
        return self.opendir(path)

    def openbin(self, path, mode="r", buffering=-1, **options):
        path = self.validatepath(path)
        parsed = Mode(mode)
        parsed.validate_bin()
        with translate_errors(path):
            handle = self.remote.open(
                path,
                writable=parsed.writing,
                truncate=parsed.truncate,
                create=parsed.create,
                exclusive=parsed.exclusive,
                revalidate=parsed.reading,  # close-to-open: a read sees the server's current version
            )
        return open_stream(
            handle, mode=parsed.to_platform_bin(), readable=parsed.reading, append=parsed.appending, name=path,
            lease=self._lease,
        )

    def remove(self, path):
        with translate_errors(path):
            self.remote.remove(self.validatepath(path))

    def removedir(self, path):
        path = self.validatepath(path)
        if path in ("/", ""):
            raise fs.errors.RemoveRootError(path)
        with translate_errors(path):
            self.remote.rmdir(path)

    def setinfo(self, path, info):
        path = self.validatepath(path)
        with translate_errors(path):
            self.require_writable(path)
            self.remote.stat(path)
            details = info.get("details", {})
            if details.get("modified") is not None:
                self.remote.set_mtime(path, details["modified"])
            permissions = info.get("access", {}).get("permissions")
            if permissions is not None and self.remote.capabilities.chmod:
                self.remote.chmod(path, Permissions(permissions).mode)

    # -- overrides that save round trips --------------------------------------------------------------
    def scandir(self, path, namespaces=None, page=None):
        path = self.validatepath(path)
        with translate_errors(path):
            self._require_dir(path)
            infos = [self._info(entry, entry.name) for entry in self.remote.listdir(path)]
        return iter(infos[page[0] : page[1]] if page else infos)

    def move(self, src_path, dst_path, overwrite=False, preserve_time=False):
        src, dst = self.validatepath(src_path), self.validatepath(dst_path)
        with translate_errors(src):
            self.require_writable(src)
            if self.remote.stat(src).is_dir:
                raise fs.errors.FileExpected(src)
            if self.remote.exists(dst):
                if not overwrite:
                    raise fs.errors.DestinationExists(dst)
                if self.remote.stat(dst).is_dir:
                    raise fs.errors.FileExpected(dst)
        with translate_errors(dst):
            self.remote.rename(src, dst)

    def exists(self, path):
        with translate_errors(path):
            return self.remote.exists(self.validatepath(path))

    def close(self):
        if not self.isclosed():
            self._lease.close()
        super().close()

    # -- helpers --------------------------------------------------------------------------------------
    def require_writable(self, path):
        """The refusal the remote tree gives every change to a read-only tree, for a change whose own
        checks (does the source exist, is the destination free) would send requests before it."""
        self.remote.require_writable(path)

    def _require_dir(self, path):
        if not self.remote.stat(path).is_dir:
            raise fs.errors.DirectoryExpected(path)

    @staticmethod
    def _info(entry, name):
        raw = {
            "basic": {"name": name, "is_dir": entry.is_dir},
            "details": {
                "type": int(ResourceType.directory if entry.is_dir else ResourceType.file),
                "size": entry.size,
                "modified": entry.mtime,
                "accessed": entry.mtime,
            },
            "access": {"permissions": Permissions(mode=entry.mode).dump(), "uid": entry.uid, "gid": entry.gid},
        }
        return Info(raw)


class HpcfsOpener(Opener):
    """Opens every hpcfs scheme: the URL says which protocol."""

    protocols = list(SCHEMES + ALIASES)

    def open_fs(self, fs_url, parse_result, writeable, create, cwd):
        url = fs_url.split("!", 1)[0]
        try:
            tree = open_tree(url)
        except errors.UsageError as exc:
            raise fs.errors.CreateFailed(str(exc)) from None
        except errors.HpcfsError as exc:
            raise fs.errors.CreateFailed(f"{redact(url)}: {exc}") from None
        filesystem = HpcfsFS(tree, url)
        if parse_result.path:
            return filesystem.opendir(parse_result.path, factory=ClosingSubFS)
        return filesystem


def registered_openers(scheme: str) -> List[str]:
    """Every fs.opener entry point for ``scheme`` as ``module:Class (distribution)``, in the order
    PyFilesystem2 looks them up: ``open_fs`` uses the first (PyUNICORE registers ``uftp`` too)."""
    with warnings.catch_warnings():  # fs.opener finds entry points with pkg_resources, so this does too
        warnings.simplefilter("ignore")  # its "pkg_resources is deprecated" warning is fs's concern
        import pkg_resources
    return [f"{point.module_name}:{'.'.join(point.attrs)} ({point.dist.project_name if point.dist else '?'})"
            for point in pkg_resources.iter_entry_points("fs.opener", scheme)]


class ClosingSubFS(fs.subfs.SubFS):
    """A sub-directory view that closes the whole remote tree with it."""

    def close(self):
        self.delegate_fs().close()
        super().close()


# setup.cfg's fs.opener entry points name one class per scheme and per alias (PyFilesystem2 looks a class up
# by scheme): these are generated from the registry, so a new protocol needs no class here.
globals().update({name: type(name, (HpcfsOpener,), {"protocols": [scheme], "__module__": __name__})
                  for protocol in PROTOCOLS
                  for name, scheme in ((protocol.opener, protocol.scheme), (protocol.alias_opener, protocol.alias))})
