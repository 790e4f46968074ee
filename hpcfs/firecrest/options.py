"""Options of ``firecrest://`` URLs (docs/guide/options.md has the table of every protocol's options)."""
from dataclasses import dataclass
from typing import ClassVar, Optional

from ..options import BackendOptions, HTTPOptions, option


@dataclass
class FirecrestOptions(HTTPOptions, BackendOptions):
    # A profile's ``url`` is the location, so the API URL had to be named otherwise there.
    api_url: Optional[str] = option(None, "the API, e.g. `https://api.example.org`", env="FIRECREST_URL",
                                    aliases=("url",))
    token_url: Optional[str] = option(None, "the OIDC token endpoint (client credentials grant)", env="AUTH_TOKEN_URL")
    # FirecREST's account is its API client: ``user`` (and a URL's USER@) names it, as every protocol's account.
    client_id: Optional[str] = option(None, "your API client", env="FIRECREST_CLIENT_ID", aliases=("user",))
    client_secret: Optional[str] = option(None, "its secret", env="FIRECREST_CLIENT_SECRET", secret=True,
                                          aliases=("password",))
    token: Optional[str] = option(None, "a bearer token instead of client credentials: `oidc-agent:ACCOUNT` (asked "
                                        "of a running oidc-agent), `@FILE` or `@@VARIABLE`", env="FIRECREST_TOKEN",
                                  secret=True)
    parallel: int = option(8, "requests or data sessions in flight at once", positive=True,
                           aliases=("max_parallel",))
    tz: Optional[str] = option(None, "the cluster's time zone when it differs from yours, e.g. `Europe/Zurich`",
                               default_text="your own")
    account: Optional[str] = option(None, "the project that rename and copy jobs are charged to, where the site "
                                          "asks for one")

    USER_OPTION: ClassVar[str] = "client_id"
    SECRET_OPTION: ClassVar[str] = "client_secret"
