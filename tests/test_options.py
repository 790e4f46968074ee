"""Options that describe themselves (hpcfs/options.py): what the parser, the CLI, profiles and
docs/guide/options.md take from the fields' declarations, against the local servers or in a fresh interpreter."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fixtures_em import PASSWORD as EM_PASSWORD, USER as EM_USER
from fixtures_flux import CREDENTIALS as FLUX_CREDENTIALS
from hpcfs.core import CoreOptions, open_tree
from hpcfs.errors import UsageError
from hpcfs.options import spec_of
from hpcfs.options_doc import PAGE, render
from hpcfs.registry import PROTOCOLS
from hpcfs.targets import resolve, secret_names
from hpcfs.urls import backend_options, parse
from test_cli import cli, isolated, ok, write_config  # noqa: F401 (fixtures)

REPOSITORY = Path(__file__).resolve().parent.parent
OPTION_SETS = [CoreOptions] + [protocol.options() for protocol in PROTOCOLS]


def test_the_options_page_is_written_from_the_fields():
    assert PAGE == REPOSITORY / "docs" / "guide" / "options.md"
    assert PAGE.read_text() == render(), "docs/guide/options.md is stale: run python -m hpcfs.options_doc"


def test_every_option_describes_itself():
    for option_set in OPTION_SETS:
        for name, spec in option_set.specs().items():
            assert spec.help and "\n" not in spec.help, (option_set.__name__, name)
    for protocol in PROTOCOLS:
        option_set = protocol.options()
        assert option_set.USER_OPTION in option_set.specs(), protocol.scheme
        assert spec_of(option_set.__dataclass_fields__[option_set.SECRET_OPTION]).secret, protocol.scheme


def test_a_protocols_options_load_neither_the_core_nor_a_transport():
    """A program that only reads options (the CLI's secret check, a profile) pays for no cache or HTTP code."""
    modules = ", ".join(protocol.options_module for protocol in PROTOCOLS)
    probe = f"import json, sys, {modules}\nprint(json.dumps(sorted(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True,
                            env={**os.environ, "PYTHONPATH": str(REPOSITORY)})
    loaded = json.loads(result.stdout)
    assert [name for name in loaded if name.startswith(("hpcfs.core", "hpcfs.net", "requests"))] == []


def test_secret_fields_are_refused_on_the_command_line():
    """The secret flags of a protocol's fields (and their other names) are what the CLI refuses in its URLs;
    a URL's password is refused as the option it gives."""
    for protocol in PROTOCOLS:
        option_set = protocol.options()
        declared = {name for name, spec in option_set.specs().items() if spec.secret}
        assert declared and declared <= secret_names(protocol.scheme) == option_set.secret_names()
        for name in secret_names(protocol.scheme):
            with pytest.raises(UsageError, match=f"do not put '{name}' on the command line"):
                resolve(f"{protocol.scheme}://127.0.0.1:1/?{name}=x")
        with pytest.raises(UsageError, match=f"do not put '{option_set.SECRET_OPTION}' on the command line"):
            resolve(f"{protocol.scheme}://someone:x@127.0.0.1:1/")
    assert secret_names() == set().union(*(secret_names(protocol.scheme) for protocol in PROTOCOLS))


def test_explicit_options_beat_the_urls_user_and_password(em_server, monkeypatch):
    """As in rclone and sshfs, what the command says now beats what the location says; the URL's user and
    password still beat the environment, as its query does."""
    os.makedirs(os.path.join(em_server.root, "pod-a"), exist_ok=True)
    wrong = f"em://nobody:wrong@127.0.0.1:{em_server.server.port}/pod-a"
    tree = open_tree(wrong, user=EM_USER, password=EM_PASSWORD)
    assert tree.listdir("/") == []
    tree.close()
    monkeypatch.setenv("EM_USERNAME", "nobody")
    monkeypatch.setenv("EM_PASSWORD", "wrong")
    tree = open_tree(em_server.url("/pod-a"))
    assert tree.listdir("/") == []
    tree.close()
    for protocol in PROTOCOLS:  # each protocol names the options its URL's USER:PASSWORD@ give
        option_set = protocol.options()
        user, secret = option_set.USER_OPTION, option_set.SECRET_OPTION
        url = parse(f"{protocol.scheme}://in-url:url-secret@127.0.0.1:1/")
        from_url = backend_options(url, {})
        assert (getattr(from_url, user), getattr(from_url, secret)) == ("in-url", "url-secret"), protocol.scheme
        explicit = backend_options(url, {user: "explicit", secret: "explicit-secret"})
        assert (getattr(explicit, user), getattr(explicit, secret)) == ("explicit", "explicit-secret")


def test_a_flux_profile_gives_its_secret_as_the_token(cli, isolated, make_flux_server):  # noqa: F811 (fixtures)
    """``password_env`` (or password_file, ...) gives the option the protocol names for its secret: Flux's
    token.  Its other secret, ``secret_key``, may sit beside it in the profile: that is no second token."""
    server = make_flux_server(auth=True)
    job = server.run("echo hello")
    profile = f"[cluster]\nurl = {server.url('/')}\nuser = {FLUX_CREDENTIALS['user']}\npassword_env = MY_FLUX_TOKEN\n"
    for config, key in ((profile, {"FLUX_SECRET_KEY": FLUX_CREDENTIALS["secret_key"]}),
                        (profile + f"secret_key = {FLUX_CREDENTIALS['secret_key']}\n", {})):
        write_config(isolated, config)
        listing = ok(cli("ls", "cluster:/jobs", env={"MY_FLUX_TOKEN": FLUX_CREDENTIALS["token"], **key}))
        assert str(job) in listing.stdout.split()
