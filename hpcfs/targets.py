"""What a command-line argument names: a URL, ``PROFILE:/path`` from the config file, or a local path.

Profiles live in ``$XDG_CONFIG_HOME/hpcfs/config.ini`` (``~/.config/hpcfs/config.ini``)::

    [myhpc]
    url = uftp://alice@uftp.example.org:9000/rest/auth/TEST:/
    password_env = MYHPC_PASSWORD      # or password_file = ~/.myhpc-pw, password_command = pass show myhpc,
                                       # or password_prompt = yes
    block_size = 4M                    # any -o option

The ``password_*`` keys say where the secret comes from; it becomes the option the protocol names for it
(``SECRET_OPTION``: the password of UFTP and the EM API, FirecREST's client secret, Flux's token).
FirecREST's API URL is ``api_url`` there.  A file holding a secret (the config itself or a password
file) must not be readable by others; no file hpcfs takes credentials or their whereabouts from may be
changed by others, nor sit in a directory others may change (:func:`read_trusted`).
"""
import configparser
import getpass
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Optional, Set

from . import errors
from .backend import normalize
from .core import open_tree
from .oidc_agent import is_agent_spec
from .registry import PROTOCOLS, protocol_for
from .trusted import (
    HOLDS_CREDENTIALS, OTHERS_MAY_ACCESS, OTHERS_MAY_WRITE, read_secret_file, read_trusted,
)
from .urls import parse, redact, split_service, url_options

SECRET_SOURCES = ("password_env", "password_file", "password_command", "password_prompt")


@dataclass
class Target:
    url: Optional[str]  # None for a local path
    path: str  # the local path, or the path inside the tree at ``url``
    display: str
    options: dict = field(default_factory=dict, repr=False)

    @property
    def is_local(self):
        return self.url is None


def resolve(argument, local_ok=False):
    if "://" in argument:
        url = parse(argument)
        refuse_secret_options(url_options(url), url.scheme)
        service, path = split_service(argument)
        return Target(url=service, path=path, display=redact(argument))
    profile_name, colon, path = argument.partition(":")
    if colon and re.fullmatch(r"[A-Za-z0-9_.-]+", profile_name) and len(profile_name) > 1:
        profile = load_profile(profile_name)
        if profile is not None:
            url, options = profile
            return Target(url=url, path=normalize(path or "/"), display=argument, options=options)
        if not local_ok:
            raise errors.UsageError(f"no profile named '{profile_name}' in {config_path()}")
    if local_ok:
        return Target(url=None, path=argument, display=argument)
    raise errors.UsageError(f"not a remote location (expected a URL or PROFILE:/path): {argument}")


def tree_for(target, rooted=False, **options):
    """The RemoteTree in which ``target.path`` names what the user asked for; with ``rooted``, the tree
    whose root is ``target.path`` (what a mount shows)."""
    subpath = target.path if rooted else "/"
    return open_tree(target.url, subpath=subpath, profile=target.options, **options)


class Trees:
    """One RemoteTree per service and options, shared by every argument that names it (one login, one
    set of sessions), closed together: ``with Trees() as trees: trees.get(target)``."""

    def __init__(self):
        self._open = {}

    def get(self, target):
        key = (target.url, tuple(sorted(target.options.items())))
        if key not in self._open:
            self._open[key] = tree_for(target)
        return self._open[key]

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        for tree in self._open.values():
            tree.close()


def secret_names(scheme: Optional[str] = None) -> Set[str]:
    """The options that hold a credential (their fields say so): the protocol's, or without a scheme any
    protocol's.  Only the protocol a command opens is loaded, so a URL's scheme is given where known."""
    protocols = (protocol_for(scheme),) if scheme else PROTOCOLS
    return set().union(*(protocol.options().secret_names() for protocol in protocols))


def refuse_secret_options(options, scheme=None):
    """Secrets never travel on the command line: other users see it in ``ps``.  A token named by
    reference (``token=@FILE``, ``token=@@VARIABLE``, ``token=oidc-agent:ACCOUNT``) is fine."""
    secrets = secret_names(scheme)
    secret = sorted(name for name, value in options.items()
                    if name in secrets and not (name == "token" and _token_reference(str(value))))
    if secret:
        raise errors.UsageError(
            f"do not put '{secret[0]}' on the command line (other users see it in 'ps'); "
            "use an environment variable or a profile"
        )
    check_token_file(options)


def _token_reference(value: str) -> bool:
    return value.startswith("@") or is_agent_spec(value)


def check_token_file(options):
    """A token read from a file (``token=@FILE``; ``@@VARIABLE`` is the environment) must be private."""
    token = str(options.get("token", ""))
    if token.startswith("@") and not token.startswith("@@"):
        try:
            read_secret_file(os.path.expanduser(token[1:]))
        except FileNotFoundError:  # a missing file is the backend's to report
            pass


# -- profiles -------------------------------------------------------------------------------------------
def config_path():
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(base, "hpcfs", "config.ini")


def load_profile(name):
    """``(url, options)`` of one profile, or None; options include the secret when the profile says where
    it comes from (only this profile's secret is fetched: no prompts or commands for the others)."""
    path = config_path()
    if not os.path.lexists(path):  # (only a shortcut: a file that appears now is still checked below)
        return None
    config = read_trusted(path)
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read_string(config.text, source=path)
    except configparser.Error as exc:
        raise errors.UsageError(f"{path}: {' '.join(str(exc).split())}") from None
    config.require(*_config_rules([parser[section] for section in parser.sections()]))
    if not parser.has_section(name):
        return None
    section = dict(parser[name])
    url = section.pop("url", None)
    if url is None:
        raise errors.UsageError(f"{path}: profile [{name}] has no url")
    option_set = protocol_for(parse(url).scheme).options()
    secret_option = option_set.SECRET_OPTION
    sources = sorted((set(SECRET_SOURCES) | option_set.names_for(secret_option)) & set(section))
    if len(sources) > 1:
        raise errors.UsageError(f"{path}: profile [{name}] gives its secret twice ({' and '.join(sources)}); keep one")
    options = {key: value for key, value in section.items() if key not in SECRET_SOURCES}
    check_token_file(options)
    password = _profile_password(name, section)
    if password is not None:
        options[secret_option] = password
    return url, options


def _config_rules(sections):
    """What the config's owner and mode must allow, by what it holds: a secret keeps others out; the places
    secrets come from, or the servers that get the environment's secrets, keep others from changing it."""
    secrets = secret_names()  # any protocol's: a section's secret counts even if its URL is wrong or missing
    if any(_holds_secret(section, secrets) for section in sections):
        return HOLDS_CREDENTIALS, OTHERS_MAY_ACCESS
    if any(set(SECRET_SOURCES) & set(section) for section in sections):
        return "says where credentials come from", OTHERS_MAY_WRITE
    return "says which servers hpcfs logs in to", OTHERS_MAY_WRITE


def _holds_secret(section, secrets):
    url = parse(section["url"]) if "://" in section.get("url", "") else None
    in_url = url is not None and (url.password is not None or secrets & set(url.params))
    return bool(secrets & set(section) or in_url)


def _profile_password(name, section):
    if "password_env" in section:
        value = os.environ.get(section["password_env"])
        if value is None:
            raise errors.UsageError(f"profile [{name}]: environment variable {section['password_env']} is not set")
        return value
    if "password_file" in section:
        return read_secret_file(os.path.expanduser(section["password_file"]))
    if "password_command" in section:
        result = subprocess.run(section["password_command"], shell=True, capture_output=True, text=True)
        if result.returncode != 0:
            raise errors.UsageError(f"profile [{name}]: password_command failed (exit {result.returncode})")
        return result.stdout.strip()
    if section.get("password_prompt", "").lower() in ("1", "yes", "true"):
        if not sys.stdin.isatty():
            raise errors.UsageError(f"profile [{name}] asks for a password, but there is no terminal")
        return getpass.getpass(f"Password for {name}: ")
    return None


