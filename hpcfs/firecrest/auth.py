"""OIDC client-credentials tokens for FirecREST, renewed well before they expire.

FirecREST rejects a token with less than 30 s to live (401 "Access token expires too soon"), so a token
is reused only while more than ``margin`` seconds (60 by default, at most three quarters of its lifetime)
remain.  There is no refresh token in this flow: a new token is simply requested.
"""
import threading
import time
from typing import Optional, Protocol

from .. import errors, net, oidc_agent
from ..trusted import read_token


class TokenSource(Protocol):
    """Where the client's bearer tokens come from."""

    def token(self) -> str: ...

    def discard(self, token: str) -> None: ...


class ClientCredentials:
    """Bearer tokens for one client id from ``token_url`` (``client_secret_post``)."""

    def __init__(self, token_url: str, client_id: str, client_secret: str, session,
                 timeout: float = 30.0, margin: float = 60.0):
        self.token_url = token_url
        self.client_id = client_id
        self._secret = client_secret
        self._session = session
        self._timeout = timeout
        self._margin = margin
        self._lock = threading.Lock()
        self._token: Optional[str] = None
        self._fresh_until = 0.0

    def __repr__(self):
        return f"ClientCredentials(token_url={self.token_url!r}, client_id={self.client_id!r})"

    def token(self) -> str:
        """A token with comfortably more than the server's minimum lifetime left."""
        with self._lock:
            if self._token is None or time.monotonic() >= self._fresh_until:
                self._token = self._fetch()
            return self._token

    def discard(self, token: str):
        """Forget ``token`` after the server refused it; the next call fetches a new one.  Threads that
        saw the same refusal discard only once."""
        with self._lock:
            if self._token == token:
                self._token = None

    def _fetch(self) -> str:
        started = time.monotonic()
        form = {"grant_type": "client_credentials", "client_id": self.client_id, "client_secret": self._secret}
        reply = net.send(self._session, "POST", self.token_url, data=form, timeout=self._timeout,
                         what="token request")
        if reply.status_code in (400, 401, 403):
            raise errors.AuthenticationFailed(
                f"token endpoint refused client '{self.client_id}': {_oauth_error(reply)}")
        if reply.status_code != 200:
            raise errors.Unavailable(f"token endpoint {self.token_url} answered {reply.status_code}")
        try:
            body = reply.json()
            token, lifetime = body["access_token"], float(body.get("expires_in", 300))
        except (ValueError, KeyError, TypeError):
            raise errors.ProtocolError(f"token endpoint {self.token_url} sent no access_token") from None
        self._fresh_until = started + lifetime - min(self._margin, 0.75 * lifetime)
        return token


class FixedToken:
    """A bearer token the user gave (``token=@FILE``, ``@@VARIABLE``): nothing to renew when it is refused."""

    def __init__(self, token: str):
        self._token = token

    def __repr__(self):
        return "FixedToken()"

    def token(self) -> str:
        return self._token

    def discard(self, token: str) -> None:
        pass


def token_source(spec: str) -> TokenSource:
    """The tokens of a ``token`` option: from oidc-agent (``oidc-agent:ACCOUNT``), else the one given."""
    if oidc_agent.is_agent_spec(spec):
        return oidc_agent.AgentTokens(oidc_agent.account_of(spec))
    return FixedToken(read_token(spec))


def _oauth_error(reply: net.Response) -> str:
    try:
        body = reply.json()
        return body.get("error_description") or body.get("error") or f"HTTP {reply.status_code}"
    except ValueError:
        return f"HTTP {reply.status_code}"
