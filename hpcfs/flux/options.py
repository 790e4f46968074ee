"""Options of ``flux://`` URLs (docs/guide/options.md has the table of every protocol's options)."""
from dataclasses import dataclass
from typing import ClassVar, Dict, Optional

from ..options import BackendOptions, HTTPOptions, option, with_default


@dataclass
class FluxOptions(HTTPOptions, BackendOptions):
    user: Optional[str] = option(None, "the Flux user (multi-user mode)", env="FLUX_USER")
    token: Optional[str] = option(None, "that user's token (multi-user mode)", env="FLUX_TOKEN", secret=True)
    secret_key: Optional[str] = option(None, "the key that signs the token exchange (multi-user mode)",
                                       env="FLUX_SECRET_KEY", secret=True)
    insecure_http: bool = option(False, "plain http to a host that is not loopback (one warning)")
    timeout: float = with_default(BackendOptions, "timeout", 30.0)
    listing_ttl: float = option(2.0, "seconds the job list is trusted")
    live_ttl: float = option(0.5, "seconds a running job's attributes are trusted")

    SECRET_OPTION: ClassVar[str] = "token"  # flux://USER:TOKEN@HOST, and a profile's password_env, ...
    # The default attr_ttl would keep attributes 30 s: the kernel must ask again each second to see output grow.
    CORE_DEFAULTS: ClassVar[Dict[str, str]] = {"attr_ttl": "1"}
