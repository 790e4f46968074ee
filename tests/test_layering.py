"""The package keeps its layers: one HTTP transport (hpcfs/net) and one JWT library (PyJWT).

These read the source (with ``ast``, so comments and strings do not count): a second transport or a
hand-written JWT would drift from the first, as the five copies before them did."""
import ast
from pathlib import Path
from typing import Iterator, List, Tuple

import hpcfs

PACKAGE = Path(hpcfs.__file__).parent
HTTP_LIBRARIES = ("requests", "urllib3")
# the local servers are test peers, free to use what the real servers' stacks use
MAY_USE_HTTP_LIBRARIES = (PACKAGE / "net", PACKAGE / "servers")


def _modules() -> Iterator[Tuple[Path, ast.Module]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        yield path, ast.parse(path.read_text(), str(path))


def _imported(tree: ast.Module) -> Iterator[str]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module


def test_only_net_and_the_servers_import_requests_or_urllib3():
    offenders: List[str] = []
    for path, tree in _modules():
        if any(path.is_relative_to(allowed) for allowed in MAY_USE_HTTP_LIBRARIES):
            continue
        offenders += [f"{path.relative_to(PACKAGE.parent)}: {name}" for name in _imported(tree)
                      if name.split(".")[0] in HTTP_LIBRARIES]
    assert not offenders, offenders


# base64url that is not a JWT: where and why
NOT_JWT = {"hpcfs/firecrest/streamer.py": "a streamer job's coordinates are base64url JSON (FirecREST's format)"}


def test_no_module_encodes_or_decodes_a_jwt_by_hand():
    """base64url is how JWT segments are written; PyJWT does that (hpcfs.uftp.auth uses its
    ``base64url_encode`` for the one signature ssh-agent makes)."""
    offenders = []
    for path, tree in _modules():
        if path.relative_to(PACKAGE.parent).as_posix() in NOT_JWT:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr in ("urlsafe_b64encode", "urlsafe_b64decode"):
                offenders.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}")
    assert not offenders, offenders


def test_bounded_maps_are_cachetools_caches():
    """An LRU written by hand on an OrderedDict (``move_to_end``, ``popitem(last=False)``) is cachetools'
    job; only the
    block cache keeps one, because it also demotes blocks a reader has consumed (cachetools has no
    demotion)."""
    hand_written = PACKAGE / "core" / "blocks.py"
    offenders = []
    for path, tree in _modules():
        for node in ast.walk(tree):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and path != hand_written
                    and (node.func.attr == "move_to_end"
                         or (node.func.attr == "popitem" and any(k.arg == "last" for k in node.keywords)))):
                offenders.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}")
    assert not offenders, offenders


def test_the_source_cites_nothing_outside_the_repository():
    """A reader of the repository cannot follow a path on the machine it was written on: cite the upstream
    project or a docs/ page instead."""
    offenders = [f"{path.relative_to(PACKAGE.parent)}" for path in sorted(PACKAGE.rglob("*.py"))
                 if "/work/" in path.read_text()]
    assert not offenders, offenders


# Waits outside hpcfs/net and hpcfs/servers, and why: each polls the local kernel for a mount coming up (no
# server, nothing to pace).
MAY_SLEEP = {"hpcfs/cli.py": "waits for the mount child's FUSE mount to appear",
             "hpcfs/frontends/fuse.py": "waits for the kernel to show the mount before tuning its readahead"}


def _sleeps(tree: ast.Module) -> Iterator[int]:
    """Lines of ``time.sleep(...)`` (any ``x.sleep``) and of ``from time import sleep``."""
    for node in ast.walk(tree):
        called = isinstance(node, ast.Attribute) and node.attr == "sleep"
        imported = isinstance(node, ast.ImportFrom) and any(alias.name == "sleep" for alias in node.names)
        if called or imported:
            yield node.lineno


def test_only_net_waits_between_tries():
    """Retries and polls wait by hpcfs/net's one pacer (bounds, growth, jitter in one place): a
    ``time.sleep`` elsewhere is a loop of its own.  The local servers are the same exception as for
    requests: they play slow or throttled peers on purpose."""
    offenders = []
    for path, tree in _modules():
        name = path.relative_to(PACKAGE.parent).as_posix()
        if any(path.is_relative_to(allowed) for allowed in MAY_USE_HTTP_LIBRARIES) or name in MAY_SLEEP:
            continue
        offenders += [f"{name}:{line}" for line in _sleeps(tree)]
    assert not offenders, offenders


def _own_nodes(node: ast.AST) -> Iterator[ast.AST]:
    """The nodes of ``node``'s body, not those of functions or classes defined inside it."""
    for child in ast.iter_child_nodes(node):
        if not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
            yield child
            yield from _own_nodes(child)


def _counts_tries(loop: ast.AST) -> bool:
    """``while ...``, ``for ... in range(n)`` or ``itertools.count(...)``: a loop that repeats, not one that
    walks through alternatives (a range of ports to try, key loaders)."""
    if isinstance(loop, ast.While):
        return True
    if not isinstance(loop, ast.For) or not isinstance(loop.iter, ast.Call):
        return False
    called, arguments = loop.iter.func, loop.iter.args
    return (getattr(called, "id", None) == "range" and len(arguments) == 1) or getattr(called, "attr", None) == "count"


def _returns_unless_it_fails(node: ast.AST) -> bool:
    """A ``try`` whose body returns and that catches something: success leaves the loop, a failure does not."""
    return isinstance(node, ast.Try) and bool(node.handlers) and any(
        isinstance(inner, ast.Return) for statement in node.body for inner in (statement, *_own_nodes(statement)))


def _retry_loops(tree: ast.Module) -> Iterator[int]:
    """Lines of loops that try an action, return its result, and on an exception go round again."""
    for loop in ast.walk(tree):
        if _counts_tries(loop) and any(_returns_unless_it_fails(node) for node in _own_nodes(loop)):
            yield loop.lineno


def test_only_net_loops_over_tries():
    """A retry loop written by hand (try, return on success, go round on a failure) decides its bounds on
    its own; hpcfs/net's pacer owns them, and the protocol only classifies each outcome."""
    offenders = []
    for path, tree in _modules():
        if any(path.is_relative_to(allowed) for allowed in MAY_USE_HTTP_LIBRARIES):
            continue
        offenders += [f"{path.relative_to(PACKAGE.parent)}:{line}" for line in _retry_loops(tree)]
    assert not offenders, offenders
