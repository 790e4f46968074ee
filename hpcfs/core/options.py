"""Tunables of the core, settable as mount ``-o`` options, URL query parameters or fsspec kwargs."""
import os
import re
from dataclasses import dataclass, fields

from ..errors import UsageError

_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


@dataclass
class CoreOptions:
    attr_ttl: float = 30.0  # seconds a listing or stat stays valid
    negative_ttl: float = 5.0  # seconds a "does not exist" answer stays valid
    block_size: int = 2 << 20  # bytes per ranged read
    readahead: int = 32 << 20  # most bytes a sequential reader keeps in flight
    cache_size: int = 256 << 20  # memory for blocks, shared by all open files
    file_cache_size: int = 2 << 30  # disk for whole-file copies (backends without ranged reads)
    spool_dir: str = ""  # where written data waits for upload; kept there if the upload fails

    @classmethod
    def from_strings(cls, values):
        """Build from ``{"block_size": "4M", "attr_ttl": "60"}``; unknown keys are the caller's."""
        kwargs = {}
        for field in fields(cls):
            if field.name in values:
                kwargs[field.name] = _convert(field.name, field.type, values[field.name])
        options = cls(**kwargs)
        options.validate()
        return options

    @classmethod
    def names(cls):
        return {field.name for field in fields(cls)}

    def validate(self):
        if self.block_size < 4096:
            raise UsageError("block_size must be at least 4K")
        if self.cache_size < 2 * self.readahead or self.cache_size < 2 * self.block_size:
            raise UsageError("cache_size must be at least twice readahead and twice block_size")
        if self.attr_ttl < 0 or self.negative_ttl < 0:
            raise UsageError("attr_ttl and negative_ttl must not be negative")

    @property
    def spool_directory(self):
        if self.spool_dir:
            return self.spool_dir
        cache_home = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        return os.path.join(cache_home, "hpcfs", "spool")


def parse_size(text):
    match = re.fullmatch(r"\s*(\d+)\s*([kmg]?)i?b?\s*", str(text).lower())
    if not match:
        raise UsageError(f"not a size: {text!r} (examples: 4096, 512K, 4M, 1G)")
    return int(match.group(1)) * _UNITS[match.group(2)]


def _convert(name, kind, text):
    if kind in (int, "int"):
        return parse_size(text)
    if kind in (float, "float"):
        try:
            return float(text)
        except ValueError:
            raise UsageError(f"{name} must be a number of seconds, not {text!r}") from None
    return str(text)
