"""One error hierarchy for every backend and front end.

Protocol clients raise these; the FUSE front end turns them into errno, the PyFilesystem2 front end into
``fs.errors`` and the fsspec front end into the matching ``OSError`` subclass.  Every class is an ``OSError``
with the errno that a local filesystem would give, so code that only knows ``OSError`` still does the right
thing.  Messages name the path and what the server said, never a credential.
"""
import errno
import os
from typing import Optional


class HpcfsError(OSError):
    """Base class: an operation on a remote tree failed."""

    errno_code = errno.EIO
    # Whether the errno says it all, so a report shows its standard text (os.strerror), as coreutils
    # does, rather than the server's; False for what only the message explains (a refused login, a
    # server that cannot be reached, an answer not understood).
    standard = False

    def __init__(self, message, path=None):
        super().__init__(self.errno_code, message)
        self.path = path

    def __str__(self):
        return self.strerror if self.path is None else f"{self.path}: {self.strerror}"


class NotFound(HpcfsError, FileNotFoundError):
    errno_code = errno.ENOENT
    standard = True


class AlreadyExists(HpcfsError, FileExistsError):
    errno_code = errno.EEXIST
    standard = True


class NotADirectory(HpcfsError, NotADirectoryError):
    errno_code = errno.ENOTDIR
    standard = True


class IsADirectory(HpcfsError, IsADirectoryError):
    errno_code = errno.EISDIR
    standard = True


class DirectoryNotEmpty(HpcfsError):
    errno_code = errno.ENOTEMPTY
    standard = True


class PermissionDenied(HpcfsError, PermissionError):
    errno_code = errno.EACCES
    standard = True


class AuthenticationFailed(PermissionDenied):
    """The server refused the credentials (wrong password, revoked token)."""

    standard = False


class ReadOnly(HpcfsError):
    """The tree cannot be changed at all (a Flux job tree): every write, create, rename or delete."""

    errno_code = errno.EROFS
    standard = True


class NotSupported(HpcfsError):
    errno_code = errno.ENOTSUP


class TooLarge(HpcfsError):
    errno_code = errno.EFBIG


class NoSpace(HpcfsError):
    """The server's disk or the user's quota is full."""

    errno_code = errno.ENOSPC
    standard = True


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


# What a command could not do to one of its arguments, in GNU coreutils' words ("ls: cannot access 'x': ...").
FAILED_TO = {"ls": "cannot access", "stat": "cannot access", "cp": "cannot stat", "rm": "cannot remove",
             "mkdir": "cannot create directory"}


def gnu_message(command: str, shown: Optional[str], exc: OSError) -> str:
    """The error line (without ``hpcfs: ``) for ``command`` failing on ``shown``, the argument as the user
    typed it (None: the path the error names, if any): the errno's standard text where it says it all (the
    server's words are for the --verbose log), else the error's own message.  cat names the file alone, as
    cat(1); cp's words are for a source that is not there, its other failures name the file alone too."""
    reason = " ".join(str(exc.strerror or exc).split())
    standard = exc.standard if isinstance(exc, HpcfsError) else bool(exc.errno)
    if standard and exc.errno and not reason.startswith(os.strerror(exc.errno)):  # ours may add to it: kept
        reason = os.strerror(exc.errno)
    shown = shown or getattr(exc, "path", None) or exc.filename
    if shown is None:  # about no path ("2 of 5 files could not be copied")
        return reason
    verb = FAILED_TO.get(command)
    if command == "cp" and not isinstance(exc, FileNotFoundError):
        verb = None
    return f"{verb} '{shown}': {reason}" if verb else f"'{shown}': {reason}"


class UsageError(ValueError):
    """Bad input from the user (URL, option, profile): reported as one line, exit status 2."""
