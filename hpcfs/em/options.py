"""Options of ``em://`` URLs (docs/guide/options.md has the table of every protocol's options)."""
from dataclasses import dataclass
from typing import Optional

from ..options import BackendOptions, HTTPOptions, option

GIB = 1 << 30


@dataclass
class EMOptions(HTTPOptions, BackendOptions):
    user: Optional[str] = option(None, "the account", env="EM_USERNAME", aliases=("username",))
    password: Optional[str] = option(None, "the account's password", env="EM_PASSWORD", secret=True)
    pods: str = option("", "more volume names to show, comma-separated, besides those the server lists",
                       env="EM_PODS")
    tls: Optional[bool] = option(None, "https (yes) or plain http (no: one warning, the password crosses the "
                                       "network in clear)", default_text="yes, except to loopback")
    scheme: Optional[str] = option(None, "`http` or `https`, the older spelling of `tls`",
                                   default_text="https, except to loopback")
    upload_timeout: float = option(7200.0, "seconds one upload request may take", positive=True)
    busy_timeout: float = option(120.0, "how long to keep retrying while the account is busy (423)")
    busy_backoff: float = option(0.5, "the first pause after a 423")
    listing_ttl: float = option(5.0, "seconds a volume's listing is trusted")
    volumes_ttl: float = option(30.0, "seconds the list of volumes is trusted")
    max_upload: int = option(2 * GIB, "bytes per upload request", size=True, positive=True)
    max_files: int = option(100, "files per upload request", positive=True)
