"""FirecREST's ``File`` and ``FileStat`` records as :class:`hpcfs.backend.Entry`.

``ops/ls`` gives names as ``ls --quoting-style=c`` printed them under the remote's C locale, after the
server's ``shlex`` pass: non-ASCII bytes stay octal escapes (``\\303\\274`` for ``ü``) and control
characters stay ``\\n``, ``\\t``...  ``size`` is a string and ``lastModified`` is the remote's local time
with one-second resolution and no offset.
"""
import datetime
import posixpath
import re
import stat as stat_module
from typing import Optional

from ..backend import DIRECTORY, FILE, SYMLINK, Entry

_ESCAPE = re.compile(rb"\\([0-7]{3}|[abfnrtv])")
_CONTROL = {b"a": b"\a", b"b": b"\b", b"f": b"\f", b"n": b"\n", b"r": b"\r", b"t": b"\t", b"v": b"\v"}
_KINDS = {"d": DIRECTORY, "l": SYMLINK}
_PERMISSION_BITS = (0o400, 0o200, 0o100, 0o040, 0o020, 0o010, 0o004, 0o002, 0o001)
_SPECIAL_BITS = {2: 0o4000, 5: 0o2000, 8: 0o1000}


def decode_name(raw: str) -> str:
    """Undo the C-locale escapes ``ls`` leaves in a name (a literal backslash followed by three octal
    digits is indistinguishable and decoded too)."""
    if "\\" not in raw:
        return raw
    encoded = raw.encode("utf-8", "surrogateescape")

    def byte(match):
        code = match.group(1)
        return _CONTROL[code] if code in _CONTROL else bytes([int(code, 8) & 0xFF])

    return _ESCAPE.sub(byte, encoded).decode("utf-8", "surrogateescape")


def mode_from_permissions(permissions: str) -> int:
    """``rwxr-sr-T`` as permission bits (a trailing ``+`` or ``.`` for ACLs is ignored)."""
    mode = 0
    for position, (char, bit) in enumerate(zip(permissions[:9], _PERMISSION_BITS)):
        if char in "rwxst":
            mode |= bit
        if char in "sStT":
            mode |= _SPECIAL_BITS.get(position, 0)
    return mode


def parse_time(text: str, tz: Optional[datetime.tzinfo]) -> float:
    """``lastModified`` (remote local time) as epoch seconds; ``tz`` None means this machine's zone."""
    moment = datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S")
    return (moment.replace(tzinfo=tz) if tz else moment).timestamp()


def entry_from_file(item: dict, tz: Optional[datetime.tzinfo] = None) -> Entry:
    """A ``File`` from ``ops/ls`` (with ``numericUid``); its name is taken as the last path component."""
    target = item.get("linkTarget")
    return Entry(
        name=posixpath.basename(decode_name(item["name"])),
        kind=_KINDS.get(item["type"], FILE),
        size=int(item["size"]),
        mtime=parse_time(item["lastModified"], tz),
        mode=mode_from_permissions(item["permissions"]),
        uid=_int_or_none(item.get("user")),
        gid=_int_or_none(item.get("group")),
        target=decode_name(target) if target is not None else None,
    )


def entry_from_stat(name: str, stat: dict) -> Entry:
    """A ``FileStat`` from ``ops/stat`` (not dereferenced: a link describes itself)."""
    mode = stat["mode"]
    kind = DIRECTORY if stat_module.S_ISDIR(mode) else SYMLINK if stat_module.S_ISLNK(mode) else FILE
    return Entry(name=name, kind=kind, size=int(stat["size"]), mtime=float(stat["mtime"]), mode=mode & 0o7777,
                 uid=stat.get("uid"), gid=stat.get("gid"))


def _int_or_none(value) -> Optional[int]:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None
