"""Bad input from an EM API server: the reply parsers fuzzed with hypothesis, garbage replies through the
real client, and through a real mount.

The property everywhere: whatever the server sends, the code returns a sane value or raises an
``hpcfs.errors`` exception -- malformed data is a ProtocolError (EIO) -- and never lets a KeyError,
TypeError, ValueError ... escape.  A mount answers garbage with EIO and a log line naming the volume, and
works again, without remounting, once the server answers properly.
"""
import base64
import errno
import hashlib
import json
import math
import os
import time

import pytest
import requests
from fixtures_em import PASSWORD, USER, start_em
from fuzzing import (FUZZ, any_status_with_any_body, assert_sane, fuzz_mount, garbage, json_values, mount_log,
                     plausible, reply_bodies, statuses, value_or_error)
from hypothesis import example, given, settings
from hypothesis import strategies as st
from mounting import sh

from hpcfs import errors
from hpcfs.em.backend import EMBackend, VolumeListing
from hpcfs.em.client import is_pod_name, token_expiry
from hpcfs.servers.common import GARBAGE_KINDS
from hpcfs.urls import open_backend

pytestmark = pytest.mark.timeout(60)
FAST = {"busy_timeout": "0.1", "busy_backoff": "0.01"}  # a 423 among the statuses must not wait long


minutes = st.datetimes().map(lambda moment: moment.strftime("%Y-%m-%d-%H-%M"))
file_nodes = st.fixed_dictionaries(
    {"type": plausible(st.just("file")), "name": plausible(st.text(max_size=20)),
     "size": plausible(st.integers(-5, 2**70).map(str)), "time": plausible(minutes)},
    optional={"hash": json_values},
)
nodes = st.recursive(file_nodes, lambda children: st.fixed_dictionaries(
    {"type": plausible(st.just("directory")), "name": plausible(st.text(max_size=20)), "time": minutes},
    optional={"contents": plausible(st.lists(children, max_size=3)), "size": json_values},
), max_leaves=8)
listing_documents = st.one_of(
    st.fixed_dictionaries({"message": st.just("Successfully listed files"), "data": st.lists(nodes, max_size=4)}),
    json_values,
)


# -- the parsers ---------------------------------------------------------------------------------------
@settings(max_examples=400, deadline=None)
@given(st.one_of(st.lists(nodes, max_size=4), json_values))
@example([{"type": "file", "name": "a", "size": "1e999", "time": "2025-11-20-12-31"}])
@example([{"type": "directory", "name": "d", "time": "2025-11-20-12-31", "contents": 7}])
@example([{"type": "file", "name": "a\0b", "size": "1", "time": "2025-11-20-12-31"}])
def test_volume_listings_give_sane_entries_or_protocol_errors(data):
    listing = value_or_error(VolumeListing, data, 0.0, "/pod-a", expected=errors.ProtocolError)
    if listing is not None:
        for path, entry in listing.entries.items():
            if path:
                assert_sane(entry)
                assert listing.children[os.path.dirname(path)][entry.name] is entry


def jwt_with(claims) -> str:
    payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"eyJhbGciOiJIUzI1NiJ9.{payload}.c2ln"


@FUZZ
@given(st.one_of(st.text(max_size=60), json_values, json_values.map(jwt_with),
                 st.fixed_dictionaries({}, optional={"exp": json_values, "iat": json_values}).map(jwt_with)))
@example(jwt_with({"exp": 10**400}))
@example(jwt_with({"exp": 1e308, "iat": -1e308}))
def test_token_expiry_is_finite_or_unknown(token):
    expiry, lifetime = token_expiry(token)
    assert (expiry, lifetime) == (None, None) or (math.isfinite(expiry) and math.isfinite(lifetime))


@FUZZ
@given(json_values)
def test_volume_list_items_are_pod_names_or_ignored(item):
    name = EMBackend._volume_name(item)
    assert name is None or is_pod_name(name)


# -- garbage replies through the client ------------------------------------------------------------------
@pytest.fixture(scope="module")
def service(tmp_path_factory):
    root = tmp_path_factory.mktemp("em-fuzz") / "root"
    handle = start_em(str(root))
    os.makedirs(os.path.join(handle.root, "pod-a", "d"))
    with open(os.path.join(handle.root, "pod-a", "d", "f.txt"), "wb") as out:
        out.write(b"hello\n")
    yield handle
    handle.server.stop()


@pytest.fixture(scope="module")
def backend(service):
    opened, _ = open_backend(service.url("/", listing_ttl="0", volumes_ttl="0", **FAST))
    yield opened
    opened.close()


@FUZZ
@given(reply_bodies(listing_documents))
def test_listing_replies(service, backend, body):
    with garbage(service, "files/list", body):
        entries = value_or_error(backend.list, "/pod-a")
        entry = value_or_error(backend.stat, "/pod-a/d/f.txt")
    for listed in (entries or []) + ([entry] if entry else []):
        assert_sane(listed)


# error bodies of every shape: the API's envelope, DRF's detail, HTML
test_any_status_with_any_body = any_status_with_any_body(
    "files/list", listing_documents, "/pod-a", b'{"message": "Successfully listed files", "data": []}')


@FUZZ
@given(reply_bodies(st.one_of(st.fixed_dictionaries({"data": st.lists(json_values, max_size=4)}), json_values)))
def test_volume_list_replies(service, backend, body):
    with garbage(service, "pvc/list", body):
        entries = value_or_error(backend.list, "/")
    assert entries is None or "_default" in {entry.name for entry in entries}  # whatever the list says


@FUZZ
@given(statuses, reply_bodies(st.one_of(
    st.fixed_dictionaries({}, optional={"access": json_values, "refresh": json_values}), json_values)))
def test_login_replies(service, status, body):
    opened, _ = open_backend(service.url("/", **FAST))
    try:
        with garbage(service, "auth", (status, body)):
            # a token of any shape is sent as it came; the API refuses it: never a listing
            assert value_or_error(opened.list, "/pod-a") is None, f"a {status} login reply was taken for a login"
    finally:
        opened.close()


@pytest.mark.parametrize("kind", GARBAGE_KINDS)
@pytest.mark.parametrize("call, path", [("list", "/pod-a/d"), ("stat", "/pod-a/d/f.txt")])
def test_each_kind_of_garbage_is_a_protocol_error_naming_the_volume(service, backend, kind, call, path):
    with garbage(service, "files/list", kind):
        with pytest.raises(errors.ProtocolError) as failure:
            getattr(backend, call)(path)
    assert failure.value.errno == errno.EIO and str(failure.value).startswith("/pod-a: ")
    assert getattr(backend, call)(path)  # the server answers properly again: so does the backend


def test_a_login_reply_with_an_error_status_is_no_login_even_with_valid_tokens(service):
    honest = requests.post(f"http://127.0.0.1:{service.server.port}/auth/", data={"username": USER, "password": PASSWORD},
                           timeout=30)
    assert honest.status_code == 200 and "access" in honest.json()
    opened, _ = open_backend(service.url("/", **FAST))
    try:
        with garbage(service, "auth", (500, honest.content)):
            assert value_or_error(opened.list, "/pod-a") is None, "a 500 login reply was taken for a login"
    finally:
        opened.close()


def test_a_garbled_login_is_a_protocol_error(service):
    opened, _ = open_backend(service.url("/"))
    try:
        with garbage(service, "auth", "wrong-types"), pytest.raises(errors.ProtocolError, match="access token"):
            opened.list("/pod-a")
        assert [entry.name for entry in opened.list("/pod-a")] == ["d"]
    finally:
        opened.close()


def test_a_garbled_refresh_falls_back_to_a_login(make_em_server):
    handle = make_em_server(access_lifetime=1)  # renewed 0.25 s before it expires
    opened, _ = open_backend(handle.url("/", listing_ttl="0"))
    try:
        opened.list("/pod-a")
        handle.log.reset()
        with garbage(handle, "refresh", "html"):
            time.sleep(1)
            assert opened.list("/pod-a") == []
        assert handle.log.total("auth/refresh") == 1 and handle.log.total("auth") == 1, handle.log.snapshot()
    finally:
        opened.close()


# -- through a mount ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mount(service, tmp_path_factory):
    # every look is a fresh listing, so a case meets the garbage however recently the volume was listed
    yield from fuzz_mount(service, tmp_path_factory, "em", ["listing_ttl=0,volumes_ttl=0"])


def _digest(path):
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


def _uses(directory):
    """What a user does in a directory: list it, stat a file, read it."""
    file = os.path.join(directory, "f.bin")
    return {"ls": lambda: os.listdir(directory), "stat": lambda: os.stat(file).st_size, "cat": lambda: _digest(file)}


@pytest.mark.parametrize("kind", GARBAGE_KINDS)
def test_mount_says_eio_logs_it_and_recovers(service, mount, kind):
    case = f"case-{kind}"
    content = os.urandom(3000)
    service.server.write_out_of_band("pod-a", f"{case}/f.bin", content)
    uses = _uses(os.path.join(mount, "pod-a", case))
    logged_before = len(mount_log(mount))
    with garbage(service, "files/list", kind):
        for use, call in uses.items():
            with pytest.raises(OSError) as failure:
                call()
            assert failure.value.errno == errno.EIO, (use, failure.value)
    logged = mount_log(mount)[logged_before:].splitlines()
    assert len(logged) >= len(uses) and all("/pod-a: " in line for line in logged), logged
    assert uses["ls"]() == ["f.bin"]  # the same paths, the same mount: fine again
    assert uses["stat"]() == len(content)
    assert uses["cat"]() == hashlib.sha256(content).hexdigest()


def test_mount_with_a_garbled_volume_list(service, mount):
    with garbage(service, "pvc/list", "truncated-json"):
        with pytest.raises(OSError) as failure:
            os.listdir(mount)
    assert failure.value.errno == errno.EIO
    assert {"_default", "pod-a", "pod-b"} <= set(os.listdir(mount))


def test_a_volume_of_20000_files_is_one_listing(service, mount):
    for index in range(20_000):
        service.server.write_out_of_band("pod-b", f"huge/entry-{index:05d}.dat", b"")
    service.log.reset()
    lines = sh("ls", "-l", os.path.join(mount, "pod-b", "huge"), timeout=50).splitlines()
    assert len(lines) == 20_001 and lines[-1].endswith("entry-19999.dat")
    # one listing for the directory's own stat and one for its entries (listing_ttl=0 here); no per-entry call
    assert service.log.total("files/list") <= 2 and service.log.total("files/downlink") == 0, service.log.snapshot()
