"""What a command-line argument names: a URL, ``PROFILE:/path`` from the config file, or a local path.

Profiles live in ``$XDG_CONFIG_HOME/hpcfs/config.ini`` (``~/.config/hpcfs/config.ini``)::

    [myhpc]
    url = uftp://alice@uftp.example.org:9000/rest/auth/TEST:/
    password_env = MYHPC_PASSWORD      # or password_file = ~/.myhpc-pw, password_command = pass show myhpc,
                                       # or password_prompt = yes
    block_size = 4M                    # any -o option

The ``password_*`` keys say where the secret comes from: the password (UFTP, EM API) or the client secret
(FirecREST, whose API URL is ``api_url`` there).  A file holding a secret (the config itself or a password
file) must not be readable by others; no file hpcfs takes credentials or their whereabouts from may be
changed by others, nor sit in a directory others may change (:func:`read_trusted`).
"""
import configparser
import errno
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
from .core import SECRET_NAMES, open_tree
from .urls import parse, redact, split_service

SECRET_SOURCES = ("password_env", "password_file", "password_command", "password_prompt")
SECRET_SOURCES_AND_NAMES = set(SECRET_SOURCES) | SECRET_NAMES  # a profile gives at most one of these
OTHERS_MAY_WRITE = stat.S_IWGRP | stat.S_IWOTH
OTHERS_MAY_ACCESS = stat.S_IRWXG | stat.S_IRWXO
HOLDS_CREDENTIALS = "holds credentials"


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
        refuse_secret_options({**url.params, **({"password": url.password} if url.password is not None else {})})
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


def refuse_secret_options(options):
    """Secrets never travel on the command line: other users see it in ``ps``.  A token named by
    reference (``token=@FILE``, ``token=@@VARIABLE``) is fine."""
    secret = sorted(name for name, value in options.items()
                    if name in SECRET_NAMES and not (name == "token" and str(value).startswith("@")))
    if secret:
        raise errors.UsageError(
            f"do not put '{secret[0]}' on the command line (other users see it in 'ps'); "
            "use an environment variable or a profile"
        )
    check_token_file(options)


def check_token_file(options):
    """A token read from a file (``token=@FILE``; ``@@VARIABLE`` is the environment) must be private."""
    token = str(options.get("token", ""))
    if token.startswith("@") and not token.startswith("@@"):
        try:
            read_trusted(os.path.expanduser(token[1:])).require(HOLDS_CREDENTIALS, OTHERS_MAY_ACCESS)
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
    sources = sorted(SECRET_SOURCES_AND_NAMES & set(section))
    if len(sources) > 1:
        raise errors.UsageError(f"{path}: profile [{name}] gives its secret twice ({' and '.join(sources)}); keep one")
    options = {key: value for key, value in section.items() if key not in SECRET_SOURCES}
    check_token_file(options)
    password = _profile_password(name, section)
    if password is not None:
        options["password"] = password
    return url, options


def _config_rules(sections):
    """What the config's owner and mode must allow, by what it holds: a secret keeps others out; the places
    secrets come from, or the servers that get the environment's secrets, keep others from changing it."""
    if any(_holds_secret(section) for section in sections):
        return HOLDS_CREDENTIALS, OTHERS_MAY_ACCESS
    if any(SECRET_SOURCES_AND_NAMES & set(section) for section in sections):
        return "says where credentials come from", OTHERS_MAY_WRITE
    return "says which servers hpcfs logs in to", OTHERS_MAY_WRITE


def _holds_secret(section):
    url = parse(section["url"]) if "://" in section.get("url", "") else None
    in_url = url is not None and (url.password is not None or SECRET_NAMES & set(url.params))
    return bool(SECRET_NAMES & set(section) or in_url)


def _profile_password(name, section):
    if "password_env" in section:
        value = os.environ.get(section["password_env"])
        if value is None:
            raise errors.UsageError(f"profile [{name}]: environment variable {section['password_env']} is not set")
        return value
    if "password_file" in section:
        password_file = read_trusted(os.path.expanduser(section["password_file"]))
        password_file.require(HOLDS_CREDENTIALS, OTHERS_MAY_ACCESS)
        return password_file.text.strip()
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


# -- files that hold or name secrets ---------------------------------------------------------------------
DIRECTORY_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC  # O_PATH: search permission is enough
# O_NONBLOCK: a FIFO in place of the file must not hang us before fstat refuses it.
FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


@dataclass(frozen=True)
class TrustedFile:
    """A file's text and the owner and mode of the one descriptor it was read from: what is checked is
    what was read, however the path changes meanwhile."""

    path: str
    text: str
    status: os.stat_result

    def require(self, what: str, forbidden_bits: int) -> None:
        """Refuse a file that another user owns or may change (or read, per ``forbidden_bits``), as OpenSSH
        does for its config and keys: whoever can change it can send our secret elsewhere."""
        if self.status.st_uid not in (os.getuid(), 0):
            raise errors.UsageError(f"{self.path} {what} but belongs to another user (uid {self.status.st_uid}); "
                                    f"run: chown {os.getuid()} {self.path} && chmod 600 {self.path}")
        if self.status.st_mode & forbidden_bits:
            access = "read or change" if forbidden_bits & (stat.S_IRGRP | stat.S_IROTH) else "change"
            raise errors.UsageError(f"{self.path} {what} but other users may {access} it; "
                                    f"run: chmod 600 {self.path}")


def read_trusted(path: str) -> TrustedFile:
    """Read a file that holds or names credentials through one descriptor, opened without following a
    symbolic link, in directories only we or root may change; the caller checks what its content asks
    for with :meth:`TrustedFile.require`.  A missing file raises FileNotFoundError."""
    try:
        fd = _open_trusted(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise errors.UsageError(f"{path} is a symbolic link, which could be pointed anywhere; "
                                    "replace it with the file it points to") from None
        raise OSError(exc.errno, exc.strerror, path) from None  # named in full, not by its last part
    with os.fdopen(fd) as handle:
        status = os.fstat(fd)
        if not stat.S_ISREG(status.st_mode):
            raise errors.UsageError(f"{path} is not a regular file")
        return TrustedFile(path, handle.read(), status)


def _open_trusted(path: str) -> int:
    """A descriptor on ``path``, reached from / one directory at a time without following a link, each
    directory checked as ssh's StrictModes does: whoever may change a directory above the file may swap it."""
    real = os.path.realpath(os.path.dirname(os.path.abspath(path)))
    fd = os.open("/", DIRECTORY_FLAGS)
    try:
        _require_trusted_directory(fd, "/", path)
        directory = "/"
        for name in filter(None, real.split("/")):
            child = os.open(name, DIRECTORY_FLAGS | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = child
            directory = os.path.join(directory, name)
            _require_trusted_directory(fd, directory, path)
        return os.open(os.path.basename(path), FILE_FLAGS, dir_fd=fd)
    finally:
        os.close(fd)


def _require_trusted_directory(fd: int, directory: str, path: str) -> None:
    """Ours or root's, and changeable by nobody else unless sticky (then others may add entries, but
    not replace ours: /tmp)."""
    status = os.fstat(fd)
    if status.st_uid not in (os.getuid(), 0):
        raise errors.UsageError(f"{path} is in {directory}, which belongs to another user (uid {status.st_uid}) "
                                "who could swap the file; keep it in a directory of your own")
    if status.st_mode & OTHERS_MAY_WRITE and not status.st_mode & stat.S_ISVTX:
        raise errors.UsageError(f"{path} is in {directory}, which other users may change (they could swap "
                                f"the file); run: chmod go-w {directory}")
