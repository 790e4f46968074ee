"""The core's tunables: caches, readahead, spool.  The parser and the protocols' options are in
:mod:`hpcfs.options`; the table of all options is docs/guide/options.md."""
import os
from dataclasses import dataclass
from typing import Any, Mapping

from ..errors import UsageError
from ..options import OptionSet, option


@dataclass
class CoreOptions(OptionSet):
    attr_ttl: float = option(30.0, "seconds a listing or file attributes are trusted before hpcfs asks the "
                                   "server again")
    negative_ttl: float = option(5.0, 'seconds "does not exist" is trusted')
    block_size: int = option(2 << 20, "bytes per ranged read (at least 4K)", size=True)
    readahead: int = option(32 << 20, "the most bytes a sequential reader keeps in flight", size=True)
    cache_size: int = option(256 << 20, "memory for cached blocks, shared by all open files (at least twice "
                                        "`readahead`)", size=True)
    file_cache_size: int = option(2 << 30, "local disk for whole-file copies (protocols or files without ranged "
                                           "reads)", size=True)
    spool_dir: str = option("", "where written data waits for its upload (and stays if the upload fails)",
                            default_text="`~/.cache/hpcfs/spool`")

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
