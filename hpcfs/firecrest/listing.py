"""FirecREST's ``File`` and ``FileStat`` records as :class:`hpcfs.backend.Entry`.

``ops/ls`` gives names as ``ls --quoting-style=c`` printed them under the remote's C locale, after the
server's ``shlex`` pass: non-ASCII bytes stay octal escapes (``\\303\\274`` for ``ü``) and control
characters stay ``\\n``, ``\\t``...  ``size`` is a string and ``lastModified`` is the remote's local time
with one-second resolution and no offset.

Server data of the wrong shape -- a missing key, a wrong type, a number that is none -- becomes
:class:`hpcfs.errors.ProtocolError` (EIO) in :func:`malformed_data`, the one place that decides it, here
for each record and in the client around every filesystem operation.
"""
import contextlib
import datetime
import math
import posixpath
import re
import stat as stat_module
from typing import Optional

from .. import errors
from ..backend import DIRECTORY, FILE, SYMLINK, Entry

_ESCAPE = re.compile(rb"\\([0-7]{3}|[abfnrtv])")
_CONTROL = {b"a": b"\a", b"b": b"\b", b"f": b"\f", b"n": b"\n", b"r": b"\r", b"t": b"\t", b"v": b"\v"}
_KINDS = {"d": DIRECTORY, "l": SYMLINK}
_PERMISSION_BITS = (0o400, 0o200, 0o100, 0o040, 0o020, 0o010, 0o004, 0o002, 0o001)
_SPECIAL_BITS = {2: 0o4000, 5: 0o2000, 8: 0o1000}
_LARGEST_SIZE = (1 << 63) - 1  # off_t
# what Python raises when it meets data of the wrong shape (json's own errors are ValueErrors; a deeply
# nested document is a RecursionError)
MALFORMED = (KeyError, TypeError, ValueError, AttributeError, IndexError, OverflowError, RecursionError)


@contextlib.contextmanager
def malformed_data(what: str, path: Optional[str] = None):
    """Inside, data of the wrong shape from the server raises ProtocolError naming ``what``, the fault and
    ``path`` (also usable as a decorator).  Bad input from the user (UsageError, a ValueError) passes."""
    try:
        yield
    except errors.ProtocolError as exc:  # from a record parsed inside: say where it came from
        exc.path = exc.path or path
        raise
    except errors.UsageError:
        raise
    except MALFORMED as exc:
        fault = f"{type(exc).__name__}: {exc}"
        raise errors.ProtocolError(f"malformed {what} from the server ({fault[:160]})", path) from None


@malformed_data("name")
def decode_name(raw: str) -> str:
    """Undo the C-locale escapes ``ls`` leaves in a name (a literal backslash followed by three octal
    digits is indistinguishable and decoded too)."""
    if not isinstance(raw, str):
        raise TypeError(f"a name must be a string, not {raw!r:.40}")
    if "\\" not in raw:
        return raw
    encoded = raw.encode("utf-8", "surrogateescape")

    def byte(match):
        code = match.group(1)
        return _CONTROL[code] if code in _CONTROL else bytes([int(code, 8) & 0xFF])

    return _ESCAPE.sub(byte, encoded).decode("utf-8", "surrogateescape")


@malformed_data("permissions")
def mode_from_permissions(permissions: str) -> int:
    """``rwxr-sr-T`` as permission bits (a trailing ``+`` or ``.`` for ACLs is ignored)."""
    if not isinstance(permissions, str):
        raise TypeError(f"permissions must be a string, not {permissions!r:.40}")
    mode = 0
    for position, (char, bit) in enumerate(zip(permissions[:9], _PERMISSION_BITS)):
        if char in "rwxst":
            mode |= bit
        if char in "sStT":
            mode |= _SPECIAL_BITS.get(position, 0)
    return mode


@malformed_data("time")
def parse_time(text: str, tz: Optional[datetime.tzinfo]) -> float:
    """``lastModified`` (remote local time) as epoch seconds; ``tz`` None means this machine's zone."""
    moment = datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S")
    return (moment.replace(tzinfo=tz) if tz else moment).timestamp()


@malformed_data("ops/ls entry")
def entry_from_file(item: dict, tz: Optional[datetime.tzinfo] = None) -> Entry:
    """A ``File`` from ``ops/ls`` (with ``numericUid``); its name is taken as the last path component."""
    target = item.get("linkTarget")
    return Entry(
        name=_child_name(posixpath.basename(decode_name(item["name"]))),
        kind=_KINDS.get(item["type"], FILE),
        size=_size(item["size"]),
        mtime=parse_time(item["lastModified"], tz),
        mode=mode_from_permissions(item["permissions"]),
        uid=_int_or_none(item.get("user")),
        gid=_int_or_none(item.get("group")),
        target=decode_name(target) if target is not None else None,
    )


@malformed_data("ops/stat record")
def entry_from_stat(name: str, stat: dict) -> Entry:
    """A ``FileStat`` from ``ops/stat`` (not dereferenced: a link describes itself)."""
    mode = stat["mode"]
    if not isinstance(mode, int) or not 0 <= mode < 1 << 32:
        raise ValueError(f"mode {mode!r:.40} is not a file mode")
    kind = DIRECTORY if stat_module.S_ISDIR(mode) else SYMLINK if stat_module.S_ISLNK(mode) else FILE
    mtime = float(stat["mtime"])
    if not math.isfinite(mtime):
        raise ValueError(f"mtime {mtime} is not a time")
    return Entry(name=name, kind=kind, size=_size(stat["size"]), mtime=mtime, mode=mode & 0o7777,
                 uid=_int_or_none(stat.get("uid")), gid=_int_or_none(stat.get("gid")))


def _child_name(name: str) -> str:
    if name in ("", ".", "..") or "\0" in name:
        raise ValueError(f"{name!r:.80} is not a file name")
    return name


def _size(value) -> int:
    size = int(value)
    if not 0 <= size <= _LARGEST_SIZE:
        raise ValueError(f"size {size} out of range")
    return size


def _int_or_none(value) -> Optional[int]:
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError):
        return None
