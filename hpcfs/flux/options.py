"""Options of ``flux://`` URLs (docs/guide/options.md has the table of every protocol's options)."""
from dataclasses import dataclass
from typing import ClassVar, Dict, Optional

from ..core.options import BackendOptions, secret


@dataclass
class FluxOptions(BackendOptions):
    user: Optional[str] = None  # multi-user mode: the Flux user
    token: Optional[str] = secret()  # multi-user mode: that user's token
    secret_key: Optional[str] = secret()  # multi-user mode: the key that signs the token exchange
    insecure_http: bool = False  # plain http to a host that is not loopback
    timeout: float = 30.0
    listing_ttl: float = 2.0  # seconds the job list is reused
    live_ttl: float = 0.5  # seconds a running job's output size is trusted

    ENVIRONMENT: ClassVar[Dict[str, str]] = {**BackendOptions.ENVIRONMENT, "user": "FLUX_USER",
                                             "token": "FLUX_TOKEN", "secret_key": "FLUX_SECRET_KEY"}
    # The default attr_ttl would keep attributes 30 s: the kernel must ask again each second to see output grow.
    CORE_DEFAULTS: ClassVar[Dict[str, str]] = {"attr_ttl": "1"}
