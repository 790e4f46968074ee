"""Access tokens from oidc-agent (https://github.com/indigo-dc/oidc-agent), for ``token=oidc-agent:ACCOUNT``.

The agent listens on the UNIX socket named by ``$OIDC_SOCK`` and answers one JSON request per connection:
``{"request": "access_token", "account": NAME, "min_valid_period": SECONDS, "application_hint": "hpcfs"}``
-> ``{"status": "success", "access_token": ..., "expires_at": EPOCH}`` or ``{"status": "failure", "error": ...}``
(as ``pyuftp -O`` and ``oidc-token`` ask).  The agent keeps the refresh token and renews the access token
itself; ``min_valid_period`` makes it hand out only a token that lives that much longer.  A token is never
logged nor shown in a repr.
"""
import json
import os
import socket
import threading
import time
from collections import deque
from typing import Deque, Dict, Optional, Tuple

from . import errors

PREFIX = "oidc-agent:"  # token=oidc-agent:ACCOUNT
SOCKET_VARIABLE = "OIDC_SOCK"
# FirecREST refuses a token with less than 30 s to live; a minute also covers a request that waits a while.
MIN_VALID_PERIOD = 60
TIMEOUT = 10.0  # the agent answers at once unless it must ask the provider, which it bounds itself
MAX_REPLY = 1 << 20  # a JWT access token is a few KiB; more than this is not the agent


def is_agent_spec(spec: str) -> bool:
    return spec.startswith(PREFIX)


def account_of(spec: str) -> str:
    """``ACCOUNT`` of ``oidc-agent:ACCOUNT``; UsageError when it is empty."""
    account = spec[len(PREFIX):].strip()
    if not account:
        raise errors.UsageError("token=oidc-agent: needs the account's short name: token=oidc-agent:ACCOUNT")
    return account


def access_token(account: str, min_valid_period: int = MIN_VALID_PERIOD,
                 timeout: float = TIMEOUT) -> Tuple[str, Optional[float]]:
    """``(token, expires_at)`` for ``account``: a token valid at least ``min_valid_period`` more seconds,
    and when it expires (epoch seconds; None if the agent does not say)."""
    reply = _ask({"request": "access_token", "account": account, "min_valid_period": int(min_valid_period),
                  "application_hint": "hpcfs"}, timeout, _start_hint(account))
    if str(reply.get("status", "")).lower() != "success":
        raise errors.AuthenticationFailed(_failure_text(account, reply))
    token = reply.get("access_token")
    if not isinstance(token, str) or not token:
        raise errors.ProtocolError(f"oidc-agent sent no access token for account '{account}'")
    expires_at = reply.get("expires_at")
    return token, float(expires_at) if isinstance(expires_at, (int, float)) and expires_at > 0 else None


def _failure_text(account: str, reply: Dict) -> str:
    error = " ".join(str(reply.get("error") or "no reason given").split())
    hint = f"; run: oidc-add {account}" if "not loaded" in error else ""
    return f"oidc-agent refused a token for account '{account}': {error}{hint}"


def _ask(request: Dict, timeout: float, start_hint: str) -> Dict:
    """One request on a new connection to the agent, and its JSON reply."""
    path = _socket_path(start_hint)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
        connection.settimeout(timeout)
        try:
            connection.connect(path)
            connection.sendall(json.dumps(request).encode("utf-8"))
            return _read_reply(connection, time.monotonic() + timeout)
        except socket.timeout:
            raise errors.TimedOut(f"oidc-agent at {path} did not answer within {timeout:g} s") from None
        except (FileNotFoundError, ConnectionRefusedError):
            raise errors.AuthenticationFailed(f"oidc-agent is not running at {path} (${SOCKET_VARIABLE}); "
                                              f"{start_hint}") from None
        except OSError as exc:
            raise errors.Unavailable(f"cannot talk to oidc-agent at {path}: {exc.strerror or exc}") from None


def _start_hint(account: str) -> str:
    return f"start it with: eval $(oidc-agent) and load the account with: oidc-add {account}"


def _socket_path(start_hint: str) -> str:
    path = os.environ.get(SOCKET_VARIABLE)
    if not path:
        raise errors.AuthenticationFailed(f"oidc-agent is not running (${SOCKET_VARIABLE} is not set); {start_hint}")
    return path


def _read_reply(connection: socket.socket, deadline: float) -> Dict:
    """The agent's reply: it sends one JSON object and may keep the connection open, so the bytes so far are
    parsed after each piece, until they make a whole object."""
    received = b""
    while len(received) <= MAX_REPLY:
        connection.settimeout(max(deadline - time.monotonic(), 0.001))
        piece = connection.recv(65536)
        received += piece
        try:
            reply = json.loads(received)
        except ValueError:
            if piece:
                continue
            raise errors.ProtocolError("oidc-agent closed the connection without a whole reply") from None
        if not isinstance(reply, dict):
            raise errors.ProtocolError("oidc-agent answered unexpected JSON")
        return reply
    raise errors.ProtocolError("oidc-agent's reply is too long")


class AgentTokens:
    """The access tokens of one oidc-agent account: one is reused while it lives more than
    ``min_valid_period`` seconds, and a token the server refused is replaced by a new one.  Thread-safe;
    the same ``token()``/``discard()`` as FirecREST's client credentials."""

    def __init__(self, account: str, min_valid_period: int = MIN_VALID_PERIOD, timeout: float = TIMEOUT):
        self.account = account
        self._min_valid = min_valid_period
        self._timeout = timeout
        self._lock = threading.Lock()
        self._token: Optional[str] = None
        self._expires_at: Optional[float] = None
        self._force = False  # the current token was refused: the agent must not hand it out again
        self._issued: Deque[str] = deque(maxlen=4)  # for scrubbing server messages that echo one

    def __repr__(self):
        return f"AgentTokens(account={self.account!r})"

    def token(self) -> str:
        with self._lock:
            if self._token is None or self._force or self._expiring():
                self._token, self._expires_at = access_token(self.account, self._wanted_validity(), self._timeout)
                self._force = False
                if self._token not in self._issued:
                    self._issued.append(self._token)
            return self._token

    def discard(self, token: str) -> None:
        """The server refused ``token``: the next ``token()`` asks for a new one.  Threads that saw the same
        refusal discard only once."""
        with self._lock:
            if token == self._token:
                self._force = True

    def issued(self) -> Tuple[str, ...]:
        return tuple(self._issued)

    def _expiring(self) -> bool:
        # None: the agent did not say when it expires, so it is asked every time (it caches the token itself)
        return self._expires_at is None or self._expires_at - time.time() < self._min_valid

    def _wanted_validity(self) -> int:
        """``min_valid_period`` for the request.  The agent has no "give me a new one" request, but it
        refreshes when the token it holds would not live as long as asked: after a refusal, ask for longer
        than the refused token has left."""
        if self._force and self._expires_at is not None:
            return max(self._min_valid, int(self._expires_at - time.time()) + 1)
        return self._min_valid
