"""Parsers for UFTPD's control-channel replies: pure functions, tolerant of the real server's quirks.

Every parser returns a value or raises :class:`hpcfs.errors.ProtocolError`; nothing else escapes, whatever
the server sends (tests/test_uftp_parsers.py fuzzes them).  Formats follow UFTPD 3.5.x
(``lib/FileInfo.py`` of github.com/UNICORE-EU/uftpd):

- ``STAT`` entry lines: ``-rw- 11 1795418396000 hello.txt`` (access string of the session user, size,
  mtime in milliseconds since the epoch, name; split on the first three spaces, names may hold spaces);
- MLST/MLSD facts: ``size=11;modify=20261123071956;type=file;perm=rw;UNIX.mode=100666; hello.txt`` where
  ``modify`` is the *server's local time*;
- FEAT lines, some glued together by a server bug (``REST STREAMMFMT``), so features are probed by substring.
"""
import re
import stat as stat_module
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from .. import errors
from ..backend import DIRECTORY, FILE, Entry


@dataclass(frozen=True)
class Reply:
    """One complete reply: its code and every line without the line ending."""

    code: int
    lines: Tuple[str, ...]

    @property
    def text(self) -> str:
        """The first line without its code: what error messages quote."""
        return self.lines[0][4:].strip()

    @property
    def body(self) -> Tuple[str, ...]:
        """The lines between the first and the last line of a multi-line reply."""
        return self.lines[1:-1]

    @property
    def ok(self) -> bool:
        return self.code < 400


def reply_code(line: str) -> Tuple[int, bool]:
    """``(code, is_last)`` for a line that starts a reply (``NNN`` then space, dash or nothing)."""
    if len(line) < 3 or not line[:3].isdigit() or not line[:3].isascii():
        raise errors.ProtocolError(f"malformed reply line: {line[:80]!r}")
    separator = line[3:4]
    if separator not in ("", " ", "-"):
        raise errors.ProtocolError(f"malformed reply line: {line[:80]!r}")
    return int(line[:3]), separator != "-"


def ends_reply(code: int, line: str) -> bool:
    """Whether ``line`` closes a multi-line reply opened with ``code`` (``NNN `` or a bare ``NNN``)."""
    return line[:3] == f"{code:03d}" and line[3:4] in ("", " ")


def banner_version(line: str) -> str:
    """The version in ``220 UFTPD 3.5.3, https://www.unicore.eu`` (``DEV`` from git); ``""`` if absent."""
    match = re.match(r"220[ -]UFTPD ([^,\s]+)", line)
    return match.group(1) if match else ""


def transfer_size(reply: Reply) -> Optional[int]:
    """The byte count in ``150 OK <n> bytes available for reading.``; None when it announces none."""
    if reply.code != 150:
        raise errors.ProtocolError(f"expected a 150 reply, got: {reply.lines[0][:80]!r}")
    match = re.match(r"OK (\d+) bytes", reply.text)
    return int(match.group(1)) if match else None


def passive_address(reply: Reply) -> Tuple[Optional[str], int]:
    """``(host, port)`` from a 227 (``(h1,h2,h3,h4,p1,p2)``) or 229 (``(|||port|)``) reply.

    The host is None for 229, which names only a port.  Callers connect to the control connection's
    peer either way, as UFTPD binds its data listener to that address."""
    if reply.code == 229:
        match = re.search(r"\(([!-~])\1\1(\d{1,5})\1\)", reply.text)
        if match:
            return None, _port(int(match.group(2)), reply)
    elif reply.code == 227:
        match = re.search(r"(\d{1,3}),(\d{1,3}),(\d{1,3}),(\d{1,3}),(\d{1,3}),(\d{1,3})", reply.text)
        if match:
            numbers = [int(n) for n in match.groups()]
            if all(n < 256 for n in numbers):
                return ".".join(map(str, numbers[:4])), _port(numbers[4] * 256 + numbers[5], reply)
    raise errors.ProtocolError(f"cannot read a data port from: {reply.lines[0][:80]!r}")


def _port(port: int, reply: Reply) -> int:
    if not 0 < port < 65536:
        raise errors.ProtocolError(f"invalid data port in: {reply.lines[0][:80]!r}")
    return port


# -- FEAT ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Features:
    """What FEAT advertised.  Lines may be glued together, so each flag is a substring probe."""

    lines: Tuple[str, ...] = ()

    @classmethod
    def parse(cls, reply: Reply) -> "Features":
        if reply.code != 211:
            return cls()
        return cls(tuple(line.strip() for line in reply.body if line.strip()))

    def has(self, name: str) -> bool:
        return any(name in line for line in self.lines)

    @property
    def keep_alive(self):
        return self.has("KEEP-ALIVE")

    @property
    def epsv(self):
        # An empty FEAT tells nothing: EPSV is then tried, and PASV is the fallback.
        return self.has("EPSV") or not self.lines


# -- STAT ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StatLine:
    """One entry of a STAT reply."""

    name: str
    is_dir: bool
    access: str  # "rw-" style, as the session user may access it
    size: int
    mtime_ms: int

    def entry(self, name: Optional[str] = None) -> Entry:
        return Entry(
            name=self.name if name is None else name,
            kind=DIRECTORY if self.is_dir else FILE,
            size=self.size,
            mtime=self.mtime_ms / 1000.0,
            mode=access_mode(self.access),
        )


def access_mode(access: str) -> int:
    """Owner permission bits from an access string: STAT reports only what the session user may do."""
    bits = {"r": stat_module.S_IRUSR, "w": stat_module.S_IWUSR, "x": stat_module.S_IXUSR, "e": stat_module.S_IXUSR,
            "l": stat_module.S_IRUSR}
    mode = 0
    for letter in access:
        mode |= bits.get(letter, 0)
    return mode


_STAT_LINE = re.compile(r"([d-])([A-Za-z-]*) (\d+) (-?\d+)(?: (.*))?\Z", re.DOTALL)


def parse_stat_line(line: str) -> StatLine:
    """One ``<d|-><rwx> size mtime_ms name`` line (the leading space of a reply line is optional).  The
    name of the base directory itself is ``/`` or empty, depending on the server version."""
    text = line[1:] if line.startswith(" ") else line
    match = _STAT_LINE.match(text)
    if not match:
        raise errors.ProtocolError(f"malformed STAT entry: {line[:80]!r}")
    kind, access, size, mtime, name = match.groups()
    return StatLine(name=name or "", is_dir=kind == "d", access=access, size=int(size), mtime_ms=int(mtime))


def is_child_name(name: str) -> bool:
    """Whether a listed name can be a directory's child (not the base's own ``/`` or empty name)."""
    return name not in ("", ".", "..") and "/" not in name


def parse_stat_reply(reply: Reply) -> List[StatLine]:
    """Every well-formed entry of a ``211-`` STAT reply.

    A line that does not parse (a name holding a newline splits into two lines) is skipped rather than
    failing the whole listing."""
    if reply.code != 211:
        raise errors.ProtocolError(f"expected a 211 STAT reply, got: {reply.lines[0][:80]!r}")
    entries = []
    for line in reply.body:
        try:
            entries.append(parse_stat_line(line))
        except errors.ProtocolError:
            continue
    return entries


# -- MLST / MLSD ---------------------------------------------------------------------------------------
def parse_facts(line: str) -> Tuple[Dict[str, str], str]:
    """``(facts, name)`` from ``size=..;modify=..;type=..; name`` (keys lower-cased).

    Servers before 3.1.3 wrote the facts and the name separated by one space without a ``;``."""
    text = line[1:] if line.startswith(" ") else line
    facts_text, separator, name = text.partition("; ")
    if not separator:
        facts_text, separator, name = text.partition(" ")
    if not separator or not name:
        raise errors.ProtocolError(f"malformed MLST facts: {line[:80]!r}")
    facts = {}
    for fact in facts_text.split(";"):
        key, equals, value = fact.partition("=")
        if equals and key:
            facts[key.strip().lower()] = value.strip()
    if "type" not in facts:
        raise errors.ProtocolError(f"MLST facts without a type: {line[:80]!r}")
    return facts, name


def facts_mode(facts: Dict[str, str]) -> int:
    """Permission bits from ``UNIX.mode`` (octal st_mode, type bits included), else from ``perm``."""
    if "unix.mode" in facts:
        return _int_fact(facts, "unix.mode", 8) & 0o7777
    return access_mode(facts.get("perm", ""))


def facts_kind(facts: Dict[str, str]) -> str:
    kind = facts["type"].lower()
    if kind in ("dir", "cdir", "pdir"):
        return DIRECTORY
    if kind == "file":
        return FILE
    raise errors.ProtocolError(f"unknown MLST type: {facts['type'][:40]!r}")


def _int_fact(facts, key, base):
    try:
        value = int(facts[key], base)
    except (KeyError, ValueError):
        raise errors.ProtocolError(f"missing or malformed MLST fact {key!r}") from None
    if value < 0:
        raise errors.ProtocolError(f"negative MLST fact {key!r}")
    return value


def parse_mlst_reply(reply: Reply) -> Tuple[Dict[str, str], str]:
    """The facts line of ``250- Listing p`` / `` facts; name`` / ``250 End``."""
    if reply.code != 250:
        raise errors.ProtocolError(f"expected a 250 MLST reply, got: {reply.lines[0][:80]!r}")
    for line in reply.body:
        if line.startswith(" "):
            return parse_facts(line)
    raise errors.ProtocolError("MLST reply without facts")
