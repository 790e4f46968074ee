"""Options that describe themselves, and the one parser: the base of the core's and every protocol's options.

Every option is a dataclass field made by :func:`option`, which says what the option means, the environment
variable it reads, whether it holds a credential, whether it is a size with units, whether it must be above 0
and its old names.  The parser, the CLI's refusal of secrets on the command line, the profile's secret and
docs/guide/options.md (``python -m hpcfs.options_doc``) all read these declarations.  Options of one
transport live in its mixin (:class:`HTTPOptions`), so a protocol has only the options it reads.

A value may come from (first wins) an explicit keyword or ``-o`` option, the URL (its query string, and its
``USER:PASSWORD@``), an environment variable, a profile, and else the field's default.  Values arrive as
strings and are converted by the field's type: sizes take units (``4M``, ``2G``), seconds and counts are
numbers, flags are ``1/true/yes/on``.

Protocol options modules import this module only (it imports nothing of hpcfs but the errors), so reading a
protocol's options loads neither the core nor a transport.
"""
import os
import re
from dataclasses import Field, dataclass, field, fields
from typing import Any, ClassVar, Dict, Iterable, Mapping, Optional, Set, Tuple, Type, TypeVar, Union, get_args

from .errors import UsageError

_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
FLAG_WORDS = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}
SPEC = "hpcfs"  # the key of a field's Spec in its metadata

Options = TypeVar("Options", bound="OptionSet")


@dataclass(frozen=True)
class Spec:
    """What an option says about itself."""

    help: str  # what it means, one line (the options table and help texts show it)
    env: Optional[str] = None  # the environment variable read when no option gives a value
    secret: bool = False  # a credential: refused on the command line, left out of reprs and lists of names
    size: bool = False  # bytes: 4096, 512K, 4M, 2G
    positive: bool = False  # a number that must be above 0 (sockets refuse to wait 0 s)
    aliases: Tuple[str, ...] = ()  # old names, still accepted (profiles and fstab lines keep working)
    default_text: Optional[str] = None  # the default in words, where it is decided at run time


def option(default: Any, help: str, *, env: Optional[str] = None, secret: bool = False, size: bool = False,
           positive: bool = False, aliases: Tuple[str, ...] = (), default_text: Optional[str] = None) -> Any:
    """A dataclass field that describes itself (the keywords are :class:`Spec`'s)."""
    spec = Spec(help, env=env, secret=secret, size=size, positive=positive, aliases=aliases,
                default_text=default_text)
    return field(default=default, repr=not secret, metadata={SPEC: spec})


def with_default(owner: Any, name: str, default: Any) -> Any:
    """``owner``'s option ``name`` with another default (UFTP's timeout is 30 s): one description, not two."""
    inherited = next(item for item in fields(owner) if item.name == name)
    return field(default=default, repr=inherited.repr, metadata=inherited.metadata)


def spec_of(item: "Field[Any]") -> Spec:
    return item.metadata[SPEC]


@dataclass
class OptionSet:
    """What the core's and the protocols' option dataclasses share: the one parser."""

    @classmethod
    def specs(cls) -> Dict[str, Spec]:
        """Every option by name, in declaration order."""
        return {item.name: spec_of(item) for item in fields(cls)}

    @classmethod
    def aliases(cls) -> Dict[str, str]:
        """Old name -> current name."""
        return {old: name for name, spec in cls.specs().items() for old in spec.aliases}

    @classmethod
    def environment(cls) -> Dict[str, str]:
        """Option -> the environment variable it reads."""
        return {name: spec.env for name, spec in cls.specs().items() if spec.env}

    @classmethod
    def names(cls) -> Set[str]:
        """Every accepted name, aliases included."""
        return set(cls.specs()) | set(cls.aliases())

    @classmethod
    def names_for(cls, name: str) -> Set[str]:
        """``name`` and its old names."""
        return {name} | {old for old, new in cls.aliases().items() if new == name}

    @classmethod
    def secret_names(cls) -> Set[str]:
        """The options that hold a credential, by every name they are accepted as."""
        return set().union(*(cls.names_for(name) for name, spec in cls.specs().items() if spec.secret))

    @classmethod
    def parse(cls: Type[Options], explicit: Mapping[str, Any] = {}, query: Mapping[str, Any] = {},
              profile: Mapping[str, Any] = {}, environ: Optional[Mapping[str, str]] = None) -> Options:
        """Build from the layers, first wins: ``explicit`` > ``query`` (the URL) > environment > ``profile`` >
        default; an empty value counts as not given.

        Names outside :meth:`names` in any layer are the caller's (``check_known`` refuses them)."""
        environ = os.environ if environ is None else environ
        from_env = {name: environ[variable] for name, variable in cls.environment().items() if environ.get(variable)}
        chosen: Dict[str, Tuple[str, Any]] = {}  # field -> (the name it was given as, its value)
        for layer in (explicit, query, from_env, profile):
            for name, given in cls._canonical(layer).items():
                if given[1] not in (None, "") and name not in chosen:  # an empty value gives nothing
                    chosen[name] = given
        kwargs = {item.name: _convert(item, *chosen[item.name]) for item in fields(cls) if item.name in chosen}
        options = cls(**kwargs)
        options.validate()
        return options

    @classmethod
    def _canonical(cls, layer: Mapping[str, Any]) -> Dict[str, Tuple[str, Any]]:
        """The layer by field, each with the name it was given as; a current name beats its alias given in the
        same layer."""
        named, aliases = cls.specs(), cls.aliases()
        renamed = {aliases[name]: (name, value) for name, value in layer.items() if name in aliases}
        return {**renamed, **{name: (name, value) for name, value in layer.items() if name in named}}

    def validate(self) -> None:
        """Checks across fields; single values are checked while converting."""


@dataclass
class BackendOptions(OptionSet):
    """What every protocol reads; each protocol's options (hpcfs/<proto>/options.py) extend it with the same
    words for the same things: ``user``, ``password``, ``parallel`` (requests in flight), sizes with units."""

    timeout: float = option(60.0, "seconds a request or socket waits", positive=True)

    # The options a URL's ``USER:PASSWORD@`` gives; the second is also what a profile's password_env,
    # password_file, password_command or password_prompt gives.
    USER_OPTION: ClassVar[str] = "user"
    SECRET_OPTION: ClassVar[str] = "password"
    CORE_DEFAULTS: ClassVar[Dict[str, str]] = {}  # core tunables that suit the protocol better than the defaults

    @classmethod
    def from_userinfo(cls, user: Optional[str], password: Optional[str]) -> Dict[str, str]:
        """A URL's ``USER:PASSWORD@`` as options (they rank with its query: an explicit option beats them)."""
        given = {cls.USER_OPTION: user, cls.SECRET_OPTION: password}
        return {name: value for name, value in given.items() if value is not None}


@dataclass
class HTTPOptions:
    """The options of a protocol that speaks HTTP (UFTP too: its Auth server does), mixed into its options."""

    verify: Optional[str] = option(None, "TLS certificate check: `false` skips it (test servers only), a path "
                                         "names a CA bundle", default_text="true")
    ca_file: Optional[str] = option(None, "CA bundle of a server with a self-signed certificate",
                                    env="HPCFS_CA_FILE")


def check_known(scheme: str, given: Iterable[str], *option_sets: Type[OptionSet]) -> None:
    """One line naming the known options when a name is not one: a typo must not pass silently."""
    known = set().union(*(option_set.names() for option_set in option_sets))
    unknown = sorted(set(given) - known)
    if unknown:
        secrets = set().union(*(option_set.secret_names() for option_set in option_sets))
        names = ", ".join(sorted(known - secrets))
        raise UsageError(f"unknown option '{unknown[0]}' for {scheme}:// (known: {names})")


def parse_size(text: Union[str, int]) -> int:
    match = re.fullmatch(r"\s*(\d+)\s*([kmgt]?)i?b?\s*", str(text).lower())
    if not match:
        raise UsageError(f"not a size: {text!r} (examples: 4096, 512K, 4M, 1G)")
    return int(match.group(1)) * _UNITS[match.group(2)]


def parse_flag(name: str, text: Union[str, bool]) -> bool:
    word = str(text).strip().lower()
    if word not in FLAG_WORDS:
        raise UsageError(f"option {name} must be yes or no (1/0, true/false, on/off), not {text!r}")
    return FLAG_WORDS[word]


def _convert(item: "Field[Any]", name: str, value: Any) -> Any:
    """A string (or an already typed value from Python callers) as the field's type; errors say ``name``,
    the name the user gave (an old alias, maybe)."""
    kind, spec = base_type(item.type), spec_of(item)
    if kind is bool:
        return value if isinstance(value, bool) else parse_flag(name, value)
    if kind is int and spec.size:
        number = parse_size(value)
    elif kind in (int, float):
        number = _number(name, value, kind, spec.positive)
    else:
        return value if isinstance(value, (list, tuple, set)) else str(value)  # EM's pods may be a list
    if spec.positive and number <= 0:
        raise UsageError(f"option {name} must be {_NUMBER_WORDS[kind]} above 0, not {value!r}")
    return number


_NUMBER_WORDS = {int: "a whole number", float: "a number of seconds"}


def _number(name: str, value: Any, kind: type, positive: bool) -> Any:
    try:
        return kind(value)
    except (TypeError, ValueError):
        above = " above 0" if positive else ""
        raise UsageError(f"option {name} must be {_NUMBER_WORDS[kind]}{above}, not {value!r}") from None


def base_type(annotation: Any) -> Any:
    """``Optional[int]`` -> ``int``."""
    arguments = [argument for argument in get_args(annotation) if argument is not type(None)]
    return arguments[0] if arguments else annotation
