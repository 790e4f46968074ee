"""The protocol registry, the typed options and their one precedence rule, and what each command imports.

Everything here runs against the local servers (real sockets) or in a fresh interpreter (``sys.modules``)."""
import configparser
import hashlib
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Optional, Tuple

import pytest

from fixtures_em import PASSWORD as EM_PASSWORD, USER as EM_USER
from hpcfs.core import check_options, open_tree
from hpcfs.em.options import EMOptions
from hpcfs.errors import UsageError
from hpcfs.registry import ALIASES, PROTOCOLS, SCHEMES
from hpcfs.uftp.options import UFTPOptions

REPOSITORY = Path(__file__).resolve().parent.parent
# What no command but ``mount``/``serve`` needs: libfuse, the servers, and HTTP for a protocol that is not HTTP.
NEVER_FOR_LS = ("mfusepy", "hpcfs.servers", "hpcfs.frontends.fuse")


def _entry_points(section: str) -> dict:
    config = configparser.ConfigParser()
    config.read(REPOSITORY / "setup.cfg")
    lines = config["options.entry_points"][section].strip().splitlines()
    return dict((part.strip() for part in line.split("=", 1)) for line in lines)


def test_setup_cfg_entry_points_are_the_registrys():
    """Every scheme and its alias hpcfs+<scheme>, for both PyFilesystem2 and fsspec."""
    openers = {name: f"hpcfs.frontends.pyfs:{opener}" for p in PROTOCOLS
               for name, opener in ((p.scheme, p.opener), (p.alias, p.alias_opener))}
    assert _entry_points("fs.opener") == openers
    assert _entry_points("fsspec.specs") == {scheme: "hpcfs.frontends.fsspec:HpcfsFileSystem"
                                             for scheme in SCHEMES + ALIASES}
    for scheme, target in _entry_points("fs.opener").items():
        module, _, name = target.partition(":")
        assert getattr(importlib.import_module(module), name).protocols == [scheme]


def _modules_after(code: str, env: Optional[dict] = None) -> Tuple[set, str]:
    """The modules a fresh interpreter holds after running ``code`` (which may print to stdout)."""
    probe = code + "\nimport sys, json\nprint(json.dumps(sorted(sys.modules)), file=sys.stderr)"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": str(REPOSITORY), **(env or {})})
    assert result.returncode == 0, result.stderr
    return set(json.loads(result.stderr.strip().splitlines()[-1])), result.stdout


def _loaded(modules: set, prefixes) -> list:
    return sorted(name for name in modules if name.startswith(tuple(prefixes)))


def test_importing_the_cli_loads_no_protocol_server_or_fuse_code():
    modules, _ = _modules_after("import hpcfs.cli, hpcfs.registry")
    assert _loaded(modules, NEVER_FOR_LS + tuple(p.package for p in PROTOCOLS) + ("requests",)) == []


def test_hpcfs_ls_loads_only_the_protocol_it_lists(uftp_server):
    Path(uftp_server.root, "listed.txt").write_bytes(b"x" * 10)
    code = f"from hpcfs.cli import main\nassert main(['ls', {uftp_server.plain_url('/')!r}]) == 0"
    modules, stdout = _modules_after(code, uftp_server.env)
    assert stdout.split() == ["listed.txt"]
    others = tuple(p.package for p in PROTOCOLS if p.scheme != "uftp")
    assert _loaded(modules, NEVER_FOR_LS + others) == []
    assert "hpcfs.uftp.backend" in modules


def test_em_sizes_take_units_and_uploads_respect_them(em_server):
    large = open_tree(em_server.url("/pod-a"), max_upload="2G")
    assert large.capabilities.max_upload == 2 << 30
    large.close()
    tree = open_tree(em_server.url("/pod-a"), max_upload="1M")
    assert tree.capabilities.max_upload == 1 << 20
    data = os.urandom(512 << 10)
    handle = tree.open("/half.bin", writable=True, create=True, truncate=True)
    handle.write(0, data)
    handle.release()
    tree.close()
    stored = Path(em_server.root, "pod-a", "half.bin").read_bytes()
    assert hashlib.sha256(stored).hexdigest() == hashlib.sha256(data).hexdigest()


def test_old_option_names_are_aliases_of_the_shared_vocabulary(uftp_server, firecrest_server, em_server,
                                                               monkeypatch):
    for url, names in ((uftp_server.url("/"), ("sessions", "parallel")),
                       (firecrest_server.url("/"), ("max_parallel", "parallel"))):
        for name in names:
            tree = open_tree(url, **{name: "3"})
            assert tree.capabilities.max_parallel == 3
            tree.close()
    Path(em_server.root, "pod-a", "seen.txt").write_bytes(b"seen")
    monkeypatch.delenv("EM_USERNAME", raising=False)
    for name in ("username", "user"):
        tree = open_tree(f"em://127.0.0.1:{em_server.server.port}/pod-a", password=EM_PASSWORD, **{name: EM_USER})
        assert [entry.name for entry in tree.listdir("/")] == ["seen.txt"]
        tree.close()


def test_one_precedence_rule_explicit_query_environment_profile_default():
    layers = {"explicit": {"user": "a"}, "query": {"user": "b"}, "profile": {"user": "d", "sessions": "2"}}
    environ = {"UFTP_USER": "c"}
    assert UFTPOptions.parse(layers["explicit"], layers["query"], layers["profile"], environ).user == "a"
    assert UFTPOptions.parse({}, layers["query"], layers["profile"], environ).user == "b"
    assert UFTPOptions.parse({}, {}, layers["profile"], environ).user == "c"
    from_profile = UFTPOptions.parse({}, {}, layers["profile"], {})
    assert (from_profile.user, from_profile.parallel) == ("d", 2)
    assert UFTPOptions.parse({}, {}, {}, {}).user is None
    # the current name beats its old alias given beside it; an empty value gives nothing
    assert UFTPOptions.parse({"sessions": "2", "parallel": "5"}, {}, {}, {}).parallel == 5
    assert UFTPOptions.parse({"user": ""}, {}, {}, {"UFTP_USER": "c"}).user == "c"


def test_an_unknown_option_is_one_line_naming_the_known_ones():
    with pytest.raises(UsageError) as refused:
        check_options("em://someone@127.0.0.1:1/", {"max_uplod": "1G"})
    message = str(refused.value)
    assert message.startswith("unknown option 'max_uplod' for em:// (known: ") and "\n" not in message
    known = set(message.partition("(known: ")[2].rstrip(")").split(", "))
    assert {"max_upload", "user", "username", "block_size", "ca_file"} <= known
    assert "password" not in known and "parallel" not in known  # secrets unlisted; EM has nothing to parallelise
    with pytest.raises(UsageError, match="option max_upload must be a whole number above 0, not '0'"):
        check_options("em://someone@127.0.0.1:1/", {"max_upload": "0"})
    with pytest.raises(UsageError, match="option sessions must be a whole number above 0, not 'many'"):
        check_options("uftp://127.0.0.1:1/rest/auth/TEST:/", {"sessions": "many"})  # named as the user wrote it
    assert EMOptions.parse({"max_upload": "2G", "tls": "no"}, {}, {}, {}).max_upload == 2 << 30
