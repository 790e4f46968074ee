"""One error hierarchy for every backend and front end.

Protocol clients raise these; the FUSE front end turns them into errno, the PyFilesystem2 front end into
``fs.errors`` and the fsspec front end into the matching ``OSError`` subclass.  Every class is an ``OSError``
with the errno that a local filesystem would give, so code that only knows ``OSError`` still does the right
thing.  Messages name the path and what the server said, never a credential.
"""
import errno


class HpcfsError(OSError):
    """Base class: an operation on a remote tree failed."""

    errno_code = errno.EIO

    def __init__(self, message, path=None):
        super().__init__(self.errno_code, message)
        self.path = path

    def __str__(self):
        return self.strerror if self.path is None else f"{self.path}: {self.strerror}"


class NotFound(HpcfsError, FileNotFoundError):
    errno_code = errno.ENOENT


class AlreadyExists(HpcfsError, FileExistsError):
    errno_code = errno.EEXIST


class NotADirectory(HpcfsError, NotADirectoryError):
    errno_code = errno.ENOTDIR


class IsADirectory(HpcfsError, IsADirectoryError):
    errno_code = errno.EISDIR


class DirectoryNotEmpty(HpcfsError):
    errno_code = errno.ENOTEMPTY


class PermissionDenied(HpcfsError, PermissionError):
    errno_code = errno.EACCES


class AuthenticationFailed(PermissionDenied):
    """The server refused the credentials (wrong password, revoked token)."""


class ReadOnly(HpcfsError):
    """The tree cannot be changed at all (a Flux job tree): every write, create, rename or delete."""

    errno_code = errno.EROFS


class NotSupported(HpcfsError):
    errno_code = errno.ENOTSUP


class TooLarge(HpcfsError):
    errno_code = errno.EFBIG


class NoSpace(HpcfsError):
    """The server's disk or the user's quota is full."""

    errno_code = errno.ENOSPC


class InvalidPath(HpcfsError):
    """A path the server must never see: NUL bytes, ``..`` escaping the root, names it cannot store."""

    errno_code = errno.EINVAL


class Unavailable(HpcfsError, ConnectionError):
    """The server cannot be reached, or did not answer within the configured time."""

    errno_code = errno.EHOSTUNREACH


class TimedOut(Unavailable, TimeoutError):
    errno_code = errno.ETIMEDOUT


class Busy(Unavailable):
    """The server asked us to come back later (session limit, 423, 429, 503) and retries ran out."""

    errno_code = errno.EAGAIN


class ProtocolError(HpcfsError):
    """The server answered something we cannot understand (malformed listing, wrong byte count)."""

    errno_code = errno.EIO


class UsageError(ValueError):
    """Bad input from the user (URL, option, profile): reported as one line, exit status 2."""
