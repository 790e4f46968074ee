"""Options of ``unicore://`` URLs (docs/guide/options.md has the table of every protocol's options)."""
from dataclasses import dataclass
from typing import Optional

from ..options import BackendOptions, HTTPOptions, option


@dataclass
class UnicoreOptions(HTTPOptions, BackendOptions):
    user: Optional[str] = option(None, "the account", env="UNICORE_USER")
    password: Optional[str] = option(None, "the account's password", env="UNICORE_PASSWORD", secret=True)
    token: Optional[str] = option(None, "a bearer token, `@FILE`, `@@VARIABLE` or `oidc-agent:ACCOUNT` (instead of "
                                        "user and password)", env="UNICORE_TOKEN", secret=True)
    tls: Optional[bool] = option(None, "https (yes) or plain http (no: one warning, the password crosses the "
                                       "network in clear)", default_text="yes, except to loopback")
    parallel: int = option(4, "requests in flight at once", positive=True)
    upload_timeout: float = option(7200.0, "seconds one upload request may take", positive=True)
