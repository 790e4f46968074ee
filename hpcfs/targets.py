"""What a command-line argument names: a URL, ``PROFILE:/path`` from the config file, or a local path.

Profiles live in ``$XDG_CONFIG_HOME/hpcfs/config.ini`` (``~/.config/hpcfs/config.ini``)::

    [myhpc]
    url = uftp://alice@uftp.example.org:9000/rest/auth/TEST:/
    password_env = MYHPC_PASSWORD      # or password_file = ~/.myhpc-pw, password_command = pass show myhpc,
                                       # or password_prompt = yes
    block_size = 4M                    # any -o option

A file holding a secret (the config itself or a password file) must not be readable by others.
"""
import configparser
import getpass
import os
import re
import stat
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Optional

from . import errors
from .backend import normalize
from .core import open_tree
from .urls import parse, redact, split_service

SECRET_KEYS = ("password_env", "password_file", "password_command", "password_prompt")


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
        if url.password is not None or "token=" in argument:
            raise errors.UsageError(
                "do not put passwords or tokens on the command line (other users see them in 'ps'); "
                "use an environment variable or a profile"
            )
        service, path = split_service(argument)
        return Target(url=service, path=path, display=redact(argument))
    profile_name, colon, path = argument.partition(":")
    if colon and re.fullmatch(r"[A-Za-z0-9_.-]+", profile_name) and len(profile_name) > 1:
        profiles = load_profiles()
        if profile_name in profiles:
            url, options = profiles[profile_name]
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
    return open_tree(target.url, subpath=subpath, **{**target.options, **options})


# -- profiles -------------------------------------------------------------------------------------------
def config_path():
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(base, "hpcfs", "config.ini")


def load_profiles():
    """``{name: (url, options)}``; options include the password when the profile says where it is."""
    path = config_path()
    if not os.path.exists(path):
        return {}
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read(path)
    except configparser.Error as exc:
        raise errors.UsageError(f"{path}: {' '.join(str(exc).split())}") from None
    profiles = {}
    for name in parser.sections():
        section = dict(parser[name])
        if "url" not in section:
            raise errors.UsageError(f"{path}: profile [{name}] has no url")
        if any(key in section for key in ("password", "secret", "token")):
            require_private(path)
        url = section.pop("url")
        options = {k: v for k, v in section.items() if k not in SECRET_KEYS}
        password = _profile_password(name, section)
        if password is not None:
            options["password"] = password
        profiles[name] = (url, options)
    return profiles


def _profile_password(name, section):
    if "password_env" in section:
        value = os.environ.get(section["password_env"])
        if value is None:
            raise errors.UsageError(f"profile [{name}]: environment variable {section['password_env']} is not set")
        return value
    if "password_file" in section:
        path = os.path.expanduser(section["password_file"])
        require_private(path)
        with open(path) as handle:
            return handle.read().strip()
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


def require_private(path):
    """Refuse a file with secrets that others may read (as ssh does for keys)."""
    mode = os.stat(path).st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise errors.UsageError(f"{path} holds credentials but is readable by others; run: chmod 600 {path}")
