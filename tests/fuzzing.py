"""What the FirecREST and EM fuzz suites share: strategies for what a broken server may send, the property
they check, the test of any status with any body, and the mount log a failing mount writes to."""
import contextlib
import glob
import json
import math
import os
import shutil

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from mounting import mounted

from hpcfs import errors

FUZZ = settings(max_examples=150, deadline=None)
HAS_FUSE = os.access("/dev/fuse", os.R_OK | os.W_OK) and shutil.which("fusermount3")

# Any JSON value, with the corners servers get wrong: huge and negative numbers, NaN and infinities
# (Python's json reads them), non-ASCII and control characters, keys of every kind.
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**80), 2**80) | st.floats() | st.text(max_size=24),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=16,
)


# 1xx, 204 and 304 carry no body by definition: one sent anyway would be read as the next reply
statuses = st.integers(200, 599).filter(lambda status: status not in (204, 304))


def plausible(valid):
    """Mostly values of the right shape (so whole records get through), sometimes any JSON value."""
    return st.one_of(valid, valid, json_values)


def encoded(document) -> bytes:
    return json.dumps(document).encode("utf-8", "surrogatepass")


def reply_bodies(documents):
    """Bodies a reply may carry: ``documents`` as JSON, the same cut short, and bytes that are no JSON."""
    whole = documents.map(encoded)
    truncated = st.tuples(whole, st.floats(0, 1)).map(lambda pair: pair[0][: int(len(pair[0]) * pair[1])])
    return st.one_of(whole, truncated, st.binary(max_size=64), st.sampled_from([b"", b"[" * 100_000]))


def value_or_error(function, *args, expected=errors.HpcfsError):
    """``function(*args)``, or None when it raised ``expected``; anything else escapes and fails the test."""
    try:
        return function(*args)
    except expected:
        return None


def assert_sane(entry):
    """What a mount needs of every entry a parser lets through."""
    assert isinstance(entry.name, str) and entry.name not in ("", ".", "..") and "/" not in entry.name
    assert "\0" not in entry.name
    assert 0 <= entry.size < 2**63 and math.isfinite(entry.mtime)
    assert entry.st_mode  # a known kind


def any_status_with_any_body(route: str, documents, directory: str, well_formed: bytes):
    """The test that a listing at ``directory``, answered on ``route`` with any status and any body (from
    ``documents``), gives sane entries only for a 2xx and otherwise an error of the hierarchy; it takes the
    suite's ``service`` and ``backend`` fixtures.  ``well_formed``: a body that would be a good listing."""
    @FUZZ
    @given(statuses, reply_bodies(documents))
    @example(500, well_formed)  # a well-formed body with an error status
    def test_any_status_with_any_body(service, backend, status, body):
        with garbage(service, route, (status, body)):
            entries = value_or_error(backend.list, directory)
        assert status < 300 or entries is None, f"a {status} reply was taken for a listing"
        for entry in entries or ():
            assert_sane(entry)

    return test_any_status_with_any_body


def fuzz_mount(service, tmp_path_factory, name: str, options=()):
    """The body of a suite's module-wide ``mount`` fixture (``yield from`` it): ``service`` mounted with
    ``options``; the suite's mount tests skip where there is no FUSE."""
    if not HAS_FUSE:
        pytest.skip("needs /dev/fuse and fusermount3")
    mountpoint = tmp_path_factory.mktemp(f"{name}-fuzz-mount") / "mnt"
    with mounted(service.plain_url("/"), mountpoint, env=service.env, options=options) as mounted_at:
        yield mounted_at


def mount_log(mountpoint) -> str:
    """Everything the background mount at ``mountpoint`` logged so far (tests/mounting.py puts the log
    under ``<parent of mountpoint>/state``)."""
    pattern = os.path.join(os.path.dirname(str(mountpoint)), "state", "hpcfs", "mount-*.log")
    texts = []
    for path in glob.glob(pattern):
        with open(path, errors="replace") as handle:
            texts.append(handle.read())
    return "".join(texts)



@contextlib.contextmanager
def garbage(handle, route: str, kind):
    """The server answers requests to ``route`` with ``kind`` of garbage (see hpcfs/servers/common.py)
    until the block ends."""
    handle.knobs.extra["garbage"] = {route: kind}
    try:
        yield
    finally:
        handle.knobs.extra.pop("garbage", None)
