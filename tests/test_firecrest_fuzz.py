"""Bad input from a FirecREST server: the reply parsers fuzzed with hypothesis, garbage replies through
the real client, and through a real mount.

The property everywhere: whatever the server sends, the code returns a sane value or raises an
``hpcfs.errors`` exception -- malformed data is a ProtocolError (EIO) naming the path -- and never lets a
KeyError, TypeError, ValueError ... escape.  A mount answers garbage with EIO and a log line, and works
again, without remounting, once the server answers properly.
"""
import datetime
import errno
import hashlib
import json
import os
import shlex

import pytest
import requests
from fixtures_firecrest import CLIENT_ID, start_firecrest
from fuzzing import (FUZZ, any_status_with_any_body, assert_sane, fuzz_mount, garbage, json_values, mount_log,
                     plausible, reply_bodies, statuses, value_or_error)
from hypothesis import example, given, settings
from hypothesis import strategies as st
from mounting import sh

from hpcfs import errors, net
from hpcfs.firecrest import listing
from hpcfs.firecrest.client import error_from_message
from hpcfs.servers.firecrest import server as fc
from hpcfs.servers.common import GARBAGE_KINDS
from hpcfs.servers.firecrest.shell import c_quote
from hpcfs.urls import open_backend

pytestmark = pytest.mark.timeout(60)


timestamps = st.datetimes().map(lambda moment: moment.strftime("%Y-%m-%dT%H:%M:%S"))
ls_records = st.fixed_dictionaries(
    {"name": plausible(st.text(max_size=30)), "type": plausible(st.sampled_from("-dlcbps")),
     "permissions": plausible(st.text("rwxsStT-+.", max_size=11)), "lastModified": plausible(timestamps),
     "size": plausible(st.integers(-5, 2**70).map(str))},
    optional={"linkTarget": plausible(st.none() | st.text(max_size=20)),
              "user": plausible(st.integers(0, 2**40).map(str)), "group": json_values},
)
stat_records = st.fixed_dictionaries(
    {"mode": plausible(st.integers(-5, 2**40)), "size": plausible(st.integers(-5, 2**70)),
     "mtime": plausible(st.integers(-(2**40), 2**40) | st.floats())},
    optional={"uid": json_values, "gid": json_values, "ino": json_values},
)


# -- the parsers ---------------------------------------------------------------------------------------
@FUZZ
@given(st.one_of(st.text(), json_values))
def test_names_decode_to_strings_or_protocol_errors(raw):
    name = value_or_error(listing.decode_name, raw, expected=errors.ProtocolError)
    assert name is None or isinstance(name, str)


@FUZZ
@given(st.binary(min_size=1).filter(lambda raw: b"\\" not in raw))
def test_names_undo_the_servers_c_quoting(raw):
    """What the server makes of a name (``ls --quoting-style=c``, then ``shlex``) decodes to the name.
    (A literal backslash before three octal digits is ambiguous on the wire, so names here have none.)"""
    on_the_wire = shlex.split(c_quote(raw))[0]
    assert listing.decode_name(on_the_wire) == raw.decode("utf-8", "surrogateescape")


@FUZZ
@given(st.one_of(st.text("rwxsStT-+.", max_size=12), json_values))
def test_permissions_are_mode_bits_or_protocol_errors(permissions):
    mode = value_or_error(listing.mode_from_permissions, permissions, expected=errors.ProtocolError)
    assert mode is None or 0 <= mode <= 0o7777


@FUZZ
@given(st.one_of(timestamps, st.text(max_size=30), json_values),
       st.sampled_from([None, datetime.timezone.utc, datetime.timezone(datetime.timedelta(hours=-11))]))
def test_times_are_timestamps_or_protocol_errors(text, tz):
    moment = value_or_error(listing.parse_time, text, tz, expected=errors.ProtocolError)
    assert moment is None or isinstance(moment, float)


@settings(max_examples=400, deadline=None)
@given(st.one_of(ls_records, json_values))
@example({"name": "a", "type": "-", "permissions": "rw-r--r--", "lastModified": "2026-11-23T07:56:40",
          "size": "1e3"})
@example({"name": "dir/", "type": "d", "permissions": "rwx------", "lastModified": "2026-11-23T07:56:40",
          "size": "4096"})
def test_ls_records_are_sane_entries_or_protocol_errors(record):
    entry = value_or_error(listing.entry_from_file, record, expected=errors.ProtocolError)
    if entry is not None:
        assert_sane(entry)


@settings(max_examples=400, deadline=None)
@given(st.one_of(stat_records, json_values))
@example({"mode": 33188, "size": 12, "mtime": float("nan")})
@example({"mode": 33188, "size": -1, "mtime": 0})
def test_stat_records_are_sane_entries_or_protocol_errors(record):
    entry = value_or_error(listing.entry_from_stat, "x", record, expected=errors.ProtocolError)
    if entry is not None:
        assert_sane(entry)


@FUZZ
@given(st.integers(100, 599), st.text(max_size=200))
def test_error_bodies_always_give_an_error_of_the_hierarchy(status, message):
    error = error_from_message(status, message, "/p")
    assert isinstance(error, errors.HpcfsError) and error.path == "/p"


# -- garbage replies through the client ------------------------------------------------------------------
@pytest.fixture(scope="module")
def service(tmp_path_factory):
    root = tmp_path_factory.mktemp("firecrest-fuzz") / "root"
    root.mkdir()
    (root / "d").mkdir()
    (root / "d" / "f.txt").write_bytes(b"hello\n")
    handle = start_firecrest(root)
    yield handle
    handle.server.stop()


@pytest.fixture(scope="module")
def backend(service):
    opened, _ = open_backend(service.url("/"))
    # one request per example (retries are tested on their own below), and no breaker among random statuses
    net.set_policy(opened.client.api_url, net.Policy(attempts=1, breaker_threshold=1 << 30))
    yield opened
    opened.close()


ls_documents = st.one_of(st.fixed_dictionaries({"output": st.lists(ls_records, max_size=4)}), json_values)
stat_documents = st.one_of(st.fixed_dictionaries({"output": stat_records}), json_values)


@FUZZ
@given(reply_bodies(ls_documents))
def test_listing_replies(service, backend, body):
    with garbage(service, "ops/ls", body):
        entries = value_or_error(backend.list, "/d")
    for entry in entries or ():
        assert_sane(entry)


@FUZZ
@given(reply_bodies(stat_documents))
def test_stat_replies(service, backend, body):
    with garbage(service, "ops/stat", body):
        entry = value_or_error(backend.stat, "/d/f.txt")
    if entry is not None:
        assert_sane(entry)


test_any_status_with_any_body = any_status_with_any_body("ops/ls", ls_documents, "/d", b'{"output": []}')


@FUZZ
@given(reply_bodies(st.one_of(st.fixed_dictionaries({"systems": st.lists(json_values, max_size=3)}), json_values)))
def test_system_list_replies(service, body):
    """The first call of every mount: a garbled system list is an error of the hierarchy (or the user's
    'no such system'), never a crash."""
    with garbage(service, "status/systems", body):
        opened = value_or_error(open_backend, service.url("/"), expected=(errors.HpcfsError, errors.UsageError))
    if opened is not None:  # only a list that names the system may open it
        opened[0].close()
        assert service.server.system in systems_named(body), "a system list without the system was taken for one"


def systems_named(body: bytes) -> list:
    try:
        document = json.loads(body)
    except ValueError:
        return []
    systems = document.get("systems") if isinstance(document, dict) else None
    return [system.get("name") for system in systems if isinstance(system, dict)] if isinstance(systems, list) else []


@FUZZ
@given(statuses, reply_bodies(st.one_of(
    st.fixed_dictionaries({"access_token": json_values, "expires_in": json_values}), json_values)))
def test_token_replies(service, status, body):
    with garbage(service, "token", (status, body)):
        opened = value_or_error(open_backend, service.url("/"))
        if opened is not None:  # a token of any shape is sent as it came; the API then refuses it
            try:
                assert value_or_error(opened[0].list, "/d") is None, f"a {status} token reply was taken for a token"
            finally:
                opened[0].close()


def test_a_token_reply_with_an_error_status_is_no_token_even_with_a_valid_one(service):
    honest = requests.post(service.server.token_url, timeout=30, data={
        "grant_type": "client_credentials", "client_id": CLIENT_ID, "client_secret": service.secret})
    assert honest.status_code == 200 and "access_token" in honest.json()
    with garbage(service, "token", (500, honest.content)):
        opened = value_or_error(open_backend, service.url("/"))
        if opened is not None:
            try:
                assert value_or_error(opened[0].list, "/d") is None, "a 500 token reply was taken for a token"
            finally:
                opened[0].close()


@pytest.mark.parametrize("kind", GARBAGE_KINDS)
@pytest.mark.parametrize("route, call, path", [
    ("ops/ls", "list", "/d"),
    ("ops/stat", "stat", "/d/f.txt"),
])
def test_each_kind_of_garbage_is_a_protocol_error_naming_the_path(service, backend, kind, route, call, path):
    with garbage(service, route, kind):
        with pytest.raises(errors.ProtocolError) as failure:
            getattr(backend, call)(path)
    assert failure.value.errno == errno.EIO and str(failure.value).startswith(f"{path}: ")
    assert getattr(backend, call)(path)  # the server answers properly again: so does the backend


def test_a_download_that_breaks_off_is_an_error_not_a_short_file(service, backend, tmp_path):
    with garbage(service, "ops/download", "short-body"), open(tmp_path / "sink", "wb") as sink:
        with pytest.raises(errors.ProtocolError, match="broke off"):
            backend.read_whole("/d/f.txt", sink)


def test_a_reply_that_broke_off_is_retried_then_an_error(service):
    opened, _ = open_backend(service.url("/"))
    net.set_policy(opened.client.api_url, net.Policy(attempts=3, backoff=0.01, breaker_threshold=1 << 30))
    service.log.reset()
    try:
        with garbage(service, "ops/ls", "short-body"), pytest.raises(errors.ProtocolError, match="broke off"):
            opened.list("/d")
        assert service.log.total(fc.LS) == 3
        assert [entry.name for entry in opened.list("/d")] == ["f.txt"]
    finally:
        opened.close()


# -- through a mount ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mount(service, tmp_path_factory):
    yield from fuzz_mount(service, tmp_path_factory, "firecrest")


def _listing(path):
    return sorted(os.listdir(path))


def _size(path):
    return os.stat(path).st_size


def _digest(path):
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


# what a user does in a directory (the case's own, never looked at before, so no cache answers it)
USES = {"ops/ls": (_listing, ""), "ops/stat": (_size, "f.bin"), "ops/download": (_digest, "f.bin")}
# (a short body on ls or stat is retried first, with backoff: test_a_reply_that_broke_off_is_retried_then_an_error)
FAST_KINDS = [kind for kind in GARBAGE_KINDS if kind != "short-body"]
MOUNT_CASES = [("ops/ls", kind) for kind in FAST_KINDS] + [("ops/stat", kind) for kind in FAST_KINDS] + [
    ("ops/download", "short-body")]


@pytest.mark.parametrize("route, kind", MOUNT_CASES)
def test_mount_says_eio_logs_it_and_recovers(service, mount, route, kind):
    case = f"case-{route.replace('/', '-')}-{kind}"
    content = os.urandom(3000)
    os.mkdir(os.path.join(service.root, case))
    with open(os.path.join(service.root, case, "f.bin"), "wb") as handle:
        handle.write(content)
    use, relative = USES[route]
    target = os.path.join(mount, case, relative)
    with garbage(service, route, kind):
        with pytest.raises(OSError) as failure:
            use(target)
    assert failure.value.errno == errno.EIO, failure.value
    logged = [line for line in mount_log(mount).splitlines() if f"/{case}" in line]
    assert logged and ("malformed" in logged[-1] or "broke off" in logged[-1]), logged
    expected = {"ops/ls": ["f.bin"], "ops/stat": len(content), "ops/download": hashlib.sha256(content).hexdigest()}
    assert use(target) == expected[route]  # the same path, the same mount: fine again


def test_a_directory_of_20000_entries_is_one_listing(service, mount):
    huge = os.path.join(service.root, "huge")
    os.mkdir(huge)
    for index in range(20_000):
        open(os.path.join(huge, f"entry-{index:05d}.dat"), "wb").close()
    service.log.reset()
    lines = sh("ls", "-l", os.path.join(mount, "huge"), timeout=50).splitlines()
    assert len(lines) == 20_001 and lines[-1].endswith("entry-19999.dat")
    assert service.log.total(fc.LS) == 1 and service.log.total() <= 2, service.log.snapshot()  # + the stat of huge

