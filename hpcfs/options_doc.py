"""docs/guide/options.md, written from the options' own descriptions (:mod:`hpcfs.options`).

``python -m hpcfs.options_doc`` rewrites the page; tests/test_options.py fails while the page is not what
this module writes, so the table cannot drift from the fields.
"""
from dataclasses import Field, fields
from pathlib import Path
from typing import Any, Dict, List, Tuple

from .core.options import CoreOptions
from .options import spec_of
from .registry import PROTOCOLS
from .targets import SECRET_SOURCES

PAGE = Path(__file__).resolve().parent.parent / "docs" / "guide" / "options.md"
ALL = "all"
_UNITS = (("T", 1 << 40), ("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10))
Owner = Tuple[str, Any, "Field[Any]"]  # (who: a protocol's title or ALL, its options class, the field)

HEADER = """\
# Options

<!-- Written by `python -m hpcfs.options_doc` from the option fields (hpcfs/options.py, hpcfs/core/options.py,
hpcfs/<protocol>/options.py); edit those, then run it. -->

Every option of every protocol, in one table. The same names work everywhere: `-o name=value` for a mount
(comma-separated, `-o` may be repeated), `?name=value` in a URL, keys in a
[profile](../user-guide.md#profiles), lines in `/etc/fstab`, keyword arguments of `open_fs`'s URL and of
fsspec. An unknown name is refused with one line that lists the known ones, so a typo cannot pass silently.

**Which value wins**: an explicit option (`-o`, keyword argument) over the URL, over the environment
variable, over the profile, over the default. An empty value counts as not given. A user and password inside
the URL (`uftp://USER:PASSWORD@HOST...`) count as the URL's: an explicit option beats them. They give
{userinfo}.

**Values**: sizes take units (`4096`, `512K`, `4M`, `2G`); times are seconds (`0.5`, `60`); yes/no options take
`1/0`, `true/false`, `yes/no`, `on/off`.

**Secrets** ({secrets}) are refused on the command line: give them through the environment or a profile.
A profile's {sources} gives {profile_secret}.

**Other names** stay accepted beside the current ones (profiles and fstab lines keep working); the table
lists them with the option they stand for.

| option | protocols | default | environment | meaning |
|---|---|---|---|---|
"""

# The mount's own options, which the FUSE front end reads (hpcfs/frontends/fuse.py; hpcfs/cli.py's FUSE_OPTIONS).
MOUNT_ROWS = """\
| `read_ahead_kb` | mounts | 1024 | | the kernel's readahead for the mount (root only; others keep 128) |
| `direct_io` | mounts | off | | reads bypass the kernel's page cache and arrive as the program asked (up to 1 MiB): \
a big sequential read ran 1.6-2.3x faster, for a normal user too, whose requests are otherwise cut to 128 KiB \
(docs/benchmarks.md); but a shared `mmap` of a file fails (`ENODEV`: numpy `memmap`, Python's `mmap`) and every \
read goes to hpcfs, so it is not the default |
| `allow_other`, `uid`, `gid`, `umask`, `ro`, `nonempty`, ... | mounts | | | passed to FUSE (`allow_other` needs \
`user_allow_other` in `/etc/fuse.conf`) |
"""

FOOTER = """
For developers: each option is a field made by `hpcfs.options.option(default, help, env=..., secret=...,
size=..., positive=..., aliases=...)`. The core's are `CoreOptions` (`hpcfs/core/options.py`); each
protocol's are one dataclass, `hpcfs/<protocol>/options.py`, on `hpcfs.options.BackendOptions` and the
mixin of its transport (`HTTPOptions`: `verify`, `ca_file`), naming the options a URL's user and password
give (`USER_OPTION`, `SECRET_OPTION`). `hpcfs/options.py` holds the one parser
([architecture](../architecture.md#urls-and-options)).
"""


def render() -> str:
    """The whole page."""
    protocols = [(protocol.title, protocol.options()) for protocol in PROTOCOLS]
    header = HEADER.format(userinfo=_userinfo(protocols), secrets=_secrets(protocols),
                           sources=", ".join(f"`{source}`" for source in SECRET_SOURCES[:-1])
                           + f" or `{SECRET_SOURCES[-1]}`", profile_secret=_profile_secret(protocols))
    return header + "".join(_row(owners, protocols) for owners in _owners(protocols).values()) + MOUNT_ROWS + FOOTER


def _owners(protocols: List[Tuple[str, Any]]) -> Dict[str, List[Owner]]:
    """Every option name, core first, then in the order the protocols declare them, with who has it."""
    owners: Dict[str, List[Owner]] = {}
    for title, option_set in [(ALL, CoreOptions)] + protocols:
        for item in fields(option_set):
            owners.setdefault(item.name, []).append((title, option_set, item))
    return owners


def _row(owners: List[Owner], protocols: List[Tuple[str, Any]]) -> str:
    name = owners[0][2].name
    titles = [title for title, _, _ in owners]
    everywhere = titles == [ALL] or len(titles) == len(protocols)
    variables = list(dict.fromkeys(spec_of(item).env for _, _, item in owners if spec_of(item).env))
    cells = (f"`{name}`", ALL if everywhere else ", ".join(titles), _default(owners, protocols),
             ", ".join(f"`{variable}`" for variable in variables), _meaning(owners))
    return "| " + " | ".join(cells) + " |\n"


def _default(owners: List[Owner], protocols: List[Tuple[str, Any]]) -> str:
    """One default, or each protocol's where they differ; a core option notes the protocols that change it."""
    shown = {title: _shown(item) for title, _, item in owners}
    if len(set(shown.values())) > 1:
        return ", ".join(f"{title} {text}" for title, text in shown.items())
    text = next(iter(shown.values()))
    name = owners[0][2].name
    changed = [f"{title}: {option_set.CORE_DEFAULTS[name]}" for title, option_set in protocols
               if name in option_set.CORE_DEFAULTS]
    return f"{text} ({', '.join(changed)})" if owners[0][0] == ALL and changed else text


def _shown(item: "Field[Any]") -> str:
    spec, value = spec_of(item), item.default
    if spec.default_text is not None:
        return spec.default_text
    if value is None or value == "":
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if spec.size and isinstance(value, int):
        return next((f"{value // unit}{letter}" for letter, unit in _UNITS if value % unit == 0), str(value))
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def _meaning(owners: List[Owner]) -> str:
    """The help text; where protocols say different things, each says its own."""
    by_text: Dict[str, List[str]] = {}
    for title, _, item in owners:
        by_text.setdefault(spec_of(item).help, []).append(title)
    if len(by_text) == 1:
        text = next(iter(by_text))
    else:
        text = "; ".join(f"{', '.join(titles)}: {help}" for help, titles in by_text.items())
    aliases = [(alias, title) for title, _, item in owners for alias in spec_of(item).aliases]
    if not aliases:
        return text
    several = len(owners) > 1
    named = ", ".join(f"`{alias}`" + (f" ({title})" if several else "") for alias, title in aliases)
    return f"{text} (also: {named})"


def _userinfo(protocols: List[Tuple[str, Any]]) -> str:
    return ", ".join(f"{title} `{option_set.USER_OPTION}` and `{option_set.SECRET_OPTION}`"
                     for title, option_set in protocols)


def _secrets(protocols: List[Tuple[str, Any]]) -> str:
    names: Dict[str, None] = {}
    for _, option_set in protocols:
        names.update(dict.fromkeys(name for name, spec in option_set.specs().items() if spec.secret))
    return ", ".join(f"`{name}`" for name in names)


def _profile_secret(protocols: List[Tuple[str, Any]]) -> str:
    by_option: Dict[str, List[str]] = {}
    for title, option_set in protocols:
        by_option.setdefault(option_set.SECRET_OPTION, []).append(title)
    return ", ".join(f"`{name}` ({', '.join(titles)})" for name, titles in by_option.items())


def main() -> None:
    PAGE.write_text(render())
    print(f"wrote {PAGE}")


if __name__ == "__main__":
    main()
