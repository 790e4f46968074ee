"""What the FirecREST and EM fuzz suites share: strategies for what a broken server may send, the property
they check, and the mount log a failing mount writes to."""
import contextlib
import glob
import json
import math
import os

from hypothesis import strategies as st

from hpcfs import errors

# Any JSON value, with the corners servers get wrong: huge and negative numbers, NaN and infinities
# (Python's json reads them), non-ASCII and control characters, keys of every kind.
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**80), 2**80) | st.floats() | st.text(max_size=24),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=16,
)


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
