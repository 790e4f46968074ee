"""Options: the core's tunables and each protocol's typed options, parsed by one function with one rule.

Every option is a dataclass field.  A value may come from (first wins) an explicit keyword or ``-o``
option, the URL's query string, an environment variable (the protocol's ``ENVIRONMENT``), a profile, and
else the field's default.  Values arrive as strings and are converted by the field's type: sizes take units
(``4M``, ``2G``), seconds and counts are numbers, flags are ``1/true/yes/on``.  Old option names stay
accepted through ``ALIASES``.  The table of all options is docs/guide/options.md.
"""
import os
import re
from dataclasses import Field, dataclass, field, fields
from typing import Any, ClassVar, Dict, Iterable, Mapping, Optional, Set, Tuple, Type, TypeVar, Union, get_args

from ..errors import UsageError

_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
FLAG_WORDS = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}

Options = TypeVar("Options", bound="OptionSet")


def size(default: Optional[int]) -> Any:
    """A field holding bytes: ``4096``, ``512K``, ``4M``, ``2G``."""
    return field(default=default, metadata={"size": True})


def secret(default: Optional[str] = None) -> Any:
    """A field holding a credential: never shown in a repr or in the list of known names."""
    return field(default=default, repr=False, metadata={"secret": True})


class OptionSet:
    """What the core's and the protocols' option dataclasses share: the one parser."""

    ALIASES: ClassVar[Dict[str, str]] = {}  # old name -> current name (profiles and fstab lines keep working)
    ENVIRONMENT: ClassVar[Dict[str, str]] = {}  # field -> environment variable read when no option gives it
    POSITIVE: ClassVar[Set[str]] = set()  # numbers that must be above 0 (sockets refuse to wait 0 s)

    @classmethod
    def names(cls) -> Set[str]:
        """Every accepted name, aliases included."""
        return {item.name for item in fields(cls)} | set(cls.ALIASES)  # type: ignore[arg-type]

    @classmethod
    def secret_names(cls) -> Set[str]:
        secrets = {item.name for item in fields(cls) if item.metadata.get("secret")}  # type: ignore[arg-type]
        return secrets | {old for old, new in cls.ALIASES.items() if new in secrets}

    @classmethod
    def parse(cls: Type[Options], explicit: Mapping[str, Any] = {}, query: Mapping[str, Any] = {},
              profile: Mapping[str, Any] = {}, environ: Optional[Mapping[str, str]] = None) -> Options:
        """Build from the layers, first wins: ``explicit`` > ``query`` > environment > ``profile`` > default;
        an empty value counts as not given.

        Names outside :meth:`names` in any layer are the caller's (``check_known`` refuses them)."""
        environ = os.environ if environ is None else environ
        from_env = {name: environ[variable] for name, variable in cls.ENVIRONMENT.items() if environ.get(variable)}
        chosen: Dict[str, Tuple[str, Any]] = {}  # field -> (the name it was given as, its value)
        for layer in (explicit, query, from_env, profile):
            for name, given in cls._canonical(layer).items():
                if given[1] not in (None, "") and name not in chosen:  # an empty value gives nothing
                    chosen[name] = given
        kwargs = {item.name: _convert(item, *chosen[item.name], item.name in cls.POSITIVE)
                  for item in fields(cls) if item.name in chosen}  # type: ignore[arg-type]
        options = cls(**kwargs)
        options.validate()
        return options

    @classmethod
    def _canonical(cls, layer: Mapping[str, Any]) -> Dict[str, Tuple[str, Any]]:
        """The layer by field, each with the name it was given as; a current name beats its alias given in the
        same layer."""
        named = {item.name for item in fields(cls)}  # type: ignore[arg-type]
        renamed = {cls.ALIASES[name]: (name, value) for name, value in layer.items() if name in cls.ALIASES}
        return {**renamed, **{name: (name, value) for name, value in layer.items() if name in named}}

    def validate(self) -> None:
        """Checks across fields; single values are checked while converting."""


def check_known(scheme: str, given: Iterable[str], *option_sets: Type[OptionSet]) -> None:
    """One line naming the known options when a name is not one: a typo must not pass silently."""
    known = set().union(*(option_set.names() for option_set in option_sets))
    unknown = sorted(set(given) - known)
    if unknown:
        secrets = set().union(*(option_set.secret_names() for option_set in option_sets))
        names = ", ".join(sorted(known - secrets))
        raise UsageError(f"unknown option '{unknown[0]}' for {scheme}:// (known: {names})")


@dataclass
class CoreOptions(OptionSet):
    attr_ttl: float = 30.0  # seconds a listing or stat stays valid
    negative_ttl: float = 5.0  # seconds a "does not exist" answer stays valid
    block_size: int = size(2 << 20)  # bytes per ranged read
    readahead: int = size(32 << 20)  # most bytes a sequential reader keeps in flight
    cache_size: int = size(256 << 20)  # memory for blocks, shared by all open files
    file_cache_size: int = size(2 << 30)  # disk for whole-file copies (backends without ranged reads)
    spool_dir: str = ""  # where written data waits for upload; kept there if the upload fails

    @classmethod
    def from_strings(cls, values: Mapping[str, Any]) -> "CoreOptions":
        """Build from ``{"block_size": "4M", "attr_ttl": "60"}``; unknown keys are the caller's."""
        return cls.parse(values, environ={})

    def validate(self) -> None:
        if self.block_size < 4096:
            raise UsageError("block_size must be at least 4K")
        if self.cache_size < 2 * self.readahead or self.cache_size < 2 * self.block_size:
            raise UsageError("cache_size must be at least twice readahead and twice block_size")
        if self.attr_ttl < 0 or self.negative_ttl < 0:
            raise UsageError("attr_ttl and negative_ttl must not be negative")

    @property
    def spool_directory(self) -> str:
        if self.spool_dir:
            return self.spool_dir
        cache_home = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        return os.path.join(cache_home, "hpcfs", "spool")


@dataclass
class BackendOptions(OptionSet):
    """What every protocol reads; each protocol's options (hpcfs/<proto>/options.py) extend it with the same
    words for the same things: ``user``, ``password``, ``parallel`` (requests in flight), sizes with units."""

    verify: Optional[str] = None  # TLS check: true (default), false (test servers only) or a CA file
    ca_file: Optional[str] = None  # CA bundle for a self-signed server
    timeout: float = 60.0  # seconds a request or socket waits

    ENVIRONMENT: ClassVar[Dict[str, str]] = {"ca_file": "HPCFS_CA_FILE"}
    CORE_DEFAULTS: ClassVar[Dict[str, str]] = {}  # core tunables that suit the protocol better than the defaults

    POSITIVE: ClassVar[Set[str]] = {"timeout"}


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


def _convert(item: "Field[Any]", name: str, value: Any, positive: bool = False) -> Any:
    """A string (or an already typed value from Python callers) as the field's type; errors say ``name``,
    the name the user gave (an old alias, maybe)."""
    kind = _base_type(item.type)
    if kind is bool:
        return value if isinstance(value, bool) else parse_flag(name, value)
    if kind is int and item.metadata.get("size"):
        number = parse_size(value)
    elif kind in (int, float):
        number = _number(name, value, kind, positive)
    else:
        return value if isinstance(value, (list, tuple, set)) else str(value)  # EM's pods may be a list
    if positive and number <= 0:
        raise UsageError(f"option {name} must be {_NUMBER_WORDS[kind]} above 0, not {value!r}")
    return number


_NUMBER_WORDS = {int: "a whole number", float: "a number of seconds"}


def _number(name: str, value: Any, kind: type, positive: bool) -> Any:
    try:
        return kind(value)
    except (TypeError, ValueError):
        above = " above 0" if positive else ""
        raise UsageError(f"option {name} must be {_NUMBER_WORDS[kind]}{above}, not {value!r}") from None


def _base_type(annotation: Any) -> Any:
    """``Optional[int]`` -> ``int``."""
    arguments = [argument for argument in get_args(annotation) if argument is not type(None)]
    return arguments[0] if arguments else annotation
