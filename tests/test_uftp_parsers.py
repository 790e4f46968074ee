"""The UFTP reply parsers: the real server's texts (from the wire transcript), its quirks, and fuzzing that
proves they return a value or raise ProtocolError, nothing else."""
import errno
import stat as stat_module

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hpcfs import errors
from hpcfs.backend import DIRECTORY, FILE
from hpcfs.uftp import listing
from hpcfs.uftp.listing import Features, Reply
from hpcfs.uftp.session import reply_error

FEAT_3_5 = Reply(211, (
    "211-Features:", " PASV", " EPSV", " RANG STREAM", " REST STREAMMFMT", " MLSD", " MLST", " APPE",
    " MFF Modify;UNIX.mode;KEEP-ALIVE", " ARCHIVE", " UTF-8", " HASH MD5*;SHA-1;SHA-256;SHA-512", "211 END",
))
STAT_N = Reply(211, (
    "211- Sending file list",
    " -rw- 11 1795418396000 hello.txt",
    " drwx 4096 1795418396000 sub",
    " -rw- 2 1795418396000 with space.txt",
    " -rw- 5000000 1795418396000 big.bin",
    "211 End of file list",
))
MLST_FILE = Reply(250, (
    "250- Listing /srv/uftp/data/hello.txt",
    " size=11;modify=20261123071956;type=file;perm=rw;UNIX.mode=100666; hello.txt",
    "250 End",
))


def test_feat_probes_glued_lines():
    features = Features.parse(FEAT_3_5)
    assert features.keep_alive  # glued onto the MFF line by the server's missing comma
    assert features.has("MFMT")  # glued onto REST STREAM
    assert features.epsv
    assert not Features.parse(Reply(211, ("211-Features:", " PASV", "211 END"))).keep_alive


def test_stat_listing_keeps_spaces_and_converts_milliseconds():
    entries = [line.entry() for line in listing.parse_stat_reply(STAT_N)]
    assert [e.name for e in entries] == ["hello.txt", "sub", "with space.txt", "big.bin"]
    assert entries[1].kind == DIRECTORY and entries[0].kind == FILE
    assert entries[3].size == 5000000
    assert entries[0].mtime == 1795418396.0
    assert entries[0].mode == 0o600 and entries[1].mode == 0o700  # STAT reports the owner's access only


def test_stat_line_of_the_base_directory_itself():
    for line in (" drwx 4096 1795418396000 /", " drwx 4096 1795418396000 ", " drwx 4096 1795418396000"):
        parsed = listing.parse_stat_line(line)
        assert parsed.is_dir and not listing.is_child_name(parsed.name)


def test_stat_listing_skips_a_broken_line_but_not_the_rest():
    reply = Reply(211, ("211- Sending file list", " -rw- 1 1000 a", " garbage", "b", " -rw- 2 2000 c", "211 End"))
    assert [line.name for line in listing.parse_stat_reply(reply)] == ["a", "c"]
    assert listing.parse_stat_reply(Reply(211, ("211- Sending file list", "211 End of file list"))) == []


def test_mlst_facts_give_mode_and_kind():
    facts, name = listing.parse_mlst_reply(MLST_FILE)
    assert name == "hello.txt"
    assert listing.facts_mode(facts) == 0o666 and listing.facts_kind(facts) == FILE
    dir_facts, _ = listing.parse_facts(" size=4096;modify=20261123071956;type=dir;perm=lwe;UNIX.mode=40777; sub")
    assert listing.facts_kind(dir_facts) == DIRECTORY and listing.facts_mode(dir_facts) == 0o777
    # before 3.3.0 there was no UNIX.mode: fall back to the access letters
    old, name = listing.parse_facts("size=2;modify=20261123071956;type=file;perm=rw; with space.txt")
    assert name == "with space.txt" and listing.facts_mode(old) == stat_module.S_IRUSR | stat_module.S_IWUSR


def test_transfer_and_passive_replies():
    assert listing.transfer_size(Reply(150, ("150 OK 10 bytes available for reading.",))) == 10
    assert listing.transfer_size(Reply(150, ("150 OK",))) is None
    assert listing.passive_address(Reply(229, ("229 Entering Extended Passive Mode (|||64553|)",))) == (None, 64553)
    assert listing.passive_address(Reply(227, ("227 Entering Passive Mode (127,0,0,1,252,70)",))) == \
        ("127.0.0.1", 64582)
    assert listing.banner_version("220 UFTPD 3.5.3, https://www.unicore.eu") == "3.5.3"
    assert listing.banner_version("220 UFTPD DEV, https://www.unicore.eu") == "DEV"
    with pytest.raises(errors.ProtocolError):
        listing.passive_address(Reply(229, ("229 Entering Extended Passive Mode (|||0|)",)))
    with pytest.raises(errors.ProtocolError):
        listing.transfer_size(Reply(226, ("226 File transfer successful",)))


@pytest.mark.parametrize("line, kind, error_number", [
    ("550 Error processing command 'MLST': Directory/file does not exist or cannot be accessed!",
     errors.NotFound, errno.ENOENT),
    ("500 Error processing command 'STAT': Directory/file does not exist or cannot be accessed!",
     errors.NotFound, errno.ENOENT),
    ("534 Error processing command 'CWD': Forbidden: /etc not in /srv/uftp/data", errors.PermissionDenied,
     errno.EACCES),
    ("500 Error processing command 'RMD': [Errno 39] Directory not empty: '/srv/d'", errors.DirectoryNotEmpty,
     errno.ENOTEMPTY),
    ("500 Error processing command 'MKD': [Errno 17] File exists: '/srv/d'", errors.AlreadyExists, errno.EEXIST),
    ("500 Error processing command 'DELE': [Errno 21] Is a directory: '/srv/d'", errors.IsADirectory,
     errno.EISDIR),
    ("500 Error processing command 'RMD': [Errno 20] Not a directory: '/srv/f'", errors.NotADirectory,
     errno.ENOTDIR),
    ("500 Error processing command 'STOR': [Errno 13] Permission denied: '/srv/f'", errors.PermissionDenied,
     errno.EACCES),
    ("530 Not logged in: no matching transfer request found", errors.AuthenticationFailed, errno.EACCES),
    ("500 Too many active transfer requests / sessions for 'u' - server limit is 8", errors.Busy, errno.EAGAIN),
    ("502 Command not implemented.", errors.NotSupported, errno.ENOTSUP),
    ("500 Error processing command 'SIZE': Connector.write_message() got an unexpected keyword argument 'msg'",
     errors.HpcfsError, errno.EIO),
])
def test_reply_errors_map_to_the_hierarchy(line, kind, error_number):
    error = reply_error(Reply(int(line[:3]), (line,)), "/p")
    assert type(error) is kind or (kind is errors.AuthenticationFailed and isinstance(error, kind))
    assert error.errno == error_number
    assert "Error processing command" not in str(error) and str(error).startswith("/p: ")


# -- fuzzing -------------------------------------------------------------------------------------------
printable_lines = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\n"),
                          max_size=120)
stat_like = st.builds(
    lambda kind, access, size, mtime, name: f" {kind}{access} {size} {mtime} {name}",
    st.sampled_from(["d", "-", "x", ""]), st.text("rwxle-", max_size=4), st.integers(-5, 10**15),
    st.integers(-10**15, 10**15), printable_lines,
)
facts_like = st.builds(
    lambda pairs, sep, name: ";".join(f"{k}={v}" for k, v in pairs) + sep + name,
    st.lists(st.tuples(st.sampled_from(["size", "type", "modify", "perm", "UNIX.mode", "x", ""]),
                       st.one_of(st.sampled_from(["file", "dir", "40755", "-1", "abc"]), printable_lines)),
             max_size=6),
    st.sampled_from(["; ", " ", ";", ""]), printable_lines,
)


def _value_or_protocol_error(function, *args):
    try:
        return function(*args)
    except errors.ProtocolError:
        return None


@settings(max_examples=300, deadline=None)
@given(st.one_of(printable_lines, stat_like))
def test_stat_line_parser_never_fails_otherwise(line):
    parsed = _value_or_protocol_error(listing.parse_stat_line, line)
    if parsed is not None:
        assert parsed.size >= 0 and parsed.entry().kind in (FILE, DIRECTORY)


@settings(max_examples=300, deadline=None)
@given(st.one_of(printable_lines, facts_like))
def test_facts_parser_never_fails_otherwise(line):
    parsed = _value_or_protocol_error(listing.parse_facts, line)
    if parsed is not None:
        facts, _ = parsed
        for reader in (listing.facts_kind, listing.facts_mode):
            _value_or_protocol_error(reader, facts)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 999), st.lists(st.one_of(printable_lines, stat_like), max_size=8))
def test_reply_parsers_never_fail_otherwise(code, lines):
    reply = Reply(code, (f"{code:03d}-x", *lines, f"{code:03d} end"))
    for parser in (listing.parse_stat_reply, listing.parse_mlst_reply, listing.transfer_size,
                   listing.passive_address, Features.parse):
        _value_or_protocol_error(parser, reply)
    for line in lines:
        _value_or_protocol_error(listing.reply_code, line)
        assert isinstance(listing.banner_version(line), str)
        assert isinstance(reply_error(Reply(code, (line,))), errors.HpcfsError)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from([227, 229]), printable_lines)
def test_passive_parser_never_fails_otherwise(code, text):
    parsed = _value_or_protocol_error(listing.passive_address, Reply(code, (f"{code} {text}",)))
    if parsed is not None:
        assert 0 < parsed[1] < 65536
