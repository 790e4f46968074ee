"""Files that hold or name credentials (profiles, password and token files), read the way OpenSSH reads
its config and keys: through one descriptor, opened without following a symbolic link, in directories only
we or root may change; what is checked is what was read, however the path changes meanwhile."""
import errno
import os
import stat
from dataclasses import dataclass

from . import errors

OTHERS_MAY_WRITE = stat.S_IWGRP | stat.S_IWOTH
OTHERS_MAY_ACCESS = stat.S_IRWXG | stat.S_IRWXO
HOLDS_CREDENTIALS = "holds credentials"
DIRECTORY_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC  # O_PATH: search permission is enough
# O_NONBLOCK: a FIFO in place of the file must not hang us before fstat refuses it.
FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


@dataclass(frozen=True)
class TrustedFile:
    """A file's text and the owner and mode of the one descriptor it was read from: what is checked is
    what was read, however the path changes meanwhile."""

    path: str
    text: str
    status: os.stat_result

    def require(self, what: str, forbidden_bits: int) -> None:
        """Refuse a file that another user owns or may change (or read, per ``forbidden_bits``), as OpenSSH
        does for its config and keys: whoever can change it can send our secret elsewhere."""
        if self.status.st_uid not in (os.getuid(), 0):
            raise errors.UsageError(f"{self.path} {what} but belongs to another user (uid {self.status.st_uid}); "
                                    f"run: chown {os.getuid()} {self.path} && chmod 600 {self.path}")
        if self.status.st_mode & forbidden_bits:
            access = "read or change" if forbidden_bits & (stat.S_IRGRP | stat.S_IROTH) else "change"
            raise errors.UsageError(f"{self.path} {what} but other users may {access} it; "
                                    f"run: chmod 600 {self.path}")


def read_trusted(path: str) -> TrustedFile:
    """Read a file that holds or names credentials through one descriptor, opened without following a
    symbolic link, in directories only we or root may change; the caller checks what its content asks
    for with :meth:`TrustedFile.require`.  A missing file raises FileNotFoundError."""
    try:
        fd = _open_trusted(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise errors.UsageError(f"{path} is a symbolic link, which could be pointed anywhere; "
                                    "replace it with the file it points to") from None
        raise OSError(exc.errno, exc.strerror, path) from None  # named in full, not by its last part
    with os.fdopen(fd) as handle:
        status = os.fstat(fd)
        if not stat.S_ISREG(status.st_mode):
            raise errors.UsageError(f"{path} is not a regular file")
        return TrustedFile(path, handle.read(), status)


def _open_trusted(path: str) -> int:
    """A descriptor on ``path``, reached from / one directory at a time without following a link, each
    directory checked as ssh's StrictModes does: whoever may change a directory above the file may swap it."""
    real = os.path.realpath(os.path.dirname(os.path.abspath(path)))
    fd = os.open("/", DIRECTORY_FLAGS)
    try:
        _require_trusted_directory(fd, "/", path)
        directory = "/"
        for name in filter(None, real.split("/")):
            child = os.open(name, DIRECTORY_FLAGS | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = child
            directory = os.path.join(directory, name)
            _require_trusted_directory(fd, directory, path)
        return os.open(os.path.basename(path), FILE_FLAGS, dir_fd=fd)
    finally:
        os.close(fd)


def _require_trusted_directory(fd: int, directory: str, path: str) -> None:
    """Ours or root's, and changeable by nobody else unless sticky (then others may add entries, but
    not replace ours: /tmp)."""
    status = os.fstat(fd)
    if status.st_uid not in (os.getuid(), 0):
        raise errors.UsageError(f"{path} is in {directory}, which belongs to another user (uid {status.st_uid}) "
                                "who could swap the file; keep it in a directory of your own")
    if status.st_mode & OTHERS_MAY_WRITE and not status.st_mode & stat.S_ISVTX:
        raise errors.UsageError(f"{path} is in {directory}, which other users may change (they could swap "
                                f"the file); run: chmod go-w {directory}")


def read_secret_file(path: str) -> str:
    """The stripped text of a file that holds a secret (a password or token file): ours, 0600."""
    trusted = read_trusted(path)
    trusted.require(HOLDS_CREDENTIALS, OTHERS_MAY_ACCESS)
    return trusted.text.strip()


def read_token(spec: str) -> str:
    """A token given as a literal, ``@file`` or ``@@ENVVAR`` (pyunicore's convention)."""
    if spec.startswith("@@"):
        value = os.environ.get(spec[2:])
        if not value:
            raise errors.UsageError(f"the token variable {spec[2:]} is not set")
        return value.strip()
    if spec.startswith("@"):
        path = os.path.expanduser(spec[1:])
        try:
            return read_secret_file(path)  # checked on the descriptor it is read from
        except OSError as exc:
            raise errors.UsageError(f"cannot read the token file {path}: {exc.strerror}") from None
    return spec
