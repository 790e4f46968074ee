"""Options of ``firecrest://`` URLs (docs/guide/options.md has the table of every protocol's options)."""
from dataclasses import dataclass
from typing import ClassVar, Dict, Optional, Set

from ..core.options import BackendOptions, secret


@dataclass
class FirecrestOptions(BackendOptions):
    api_url: Optional[str] = None
    token_url: Optional[str] = None
    client_id: Optional[str] = None
    client_secret: Optional[str] = secret()
    parallel: int = 8  # requests in flight at once
    tz: Optional[str] = None  # the server's time zone, when its listings give local times
    account: Optional[str] = None  # the project charged for transfer jobs

    # A profile names the API URL ``api_url`` (its ``url`` is the location) and gives the secret as ``password``.
    ALIASES: ClassVar[Dict[str, str]] = {"url": "api_url", "password": "client_secret", "max_parallel": "parallel"}
    ENVIRONMENT: ClassVar[Dict[str, str]] = {**BackendOptions.ENVIRONMENT, "api_url": "FIRECREST_URL",
                                             "token_url": "AUTH_TOKEN_URL", "client_id": "FIRECREST_CLIENT_ID",
                                             "client_secret": "FIRECREST_CLIENT_SECRET"}
    POSITIVE: ClassVar[Set[str]] = {"timeout", "parallel"}
