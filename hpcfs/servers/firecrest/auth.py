"""The identity side of the local FirecREST server: an OIDC client-credentials token endpoint and the JWT
check FirecREST v2 does on every request (RS256 with a ``kid``, ``exp`` enforced, ``aud``/``iss`` not
checked, at least ``min_ttl`` seconds left, username from ``preferred_username``).
"""
import base64
import math
import threading
import time
import uuid
from typing import Dict, Optional, Tuple
from urllib.parse import parse_qsl

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa


class TokenRejected(Exception):
    """A bearer token FirecREST refuses: 401 with this message."""


class TokenIssuer:
    """Issues and checks RS256 JWTs.  ``clients`` maps client id to ``(secret, username)``."""

    def __init__(self, clients: Dict[str, Tuple[str, str]], lifetime: float = 300, min_ttl: float = 30):
        self.clients = clients
        self.lifetime = lifetime
        self.min_ttl = min_ttl
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self._kid = uuid.uuid4().hex
        self._revoked_before = 0.0
        self._lock = threading.Lock()
        self.issued = 0

    def revoke_all(self):
        """Invalidate every token issued so far, as an IdP key rotation or a revoked session would."""
        self._revoked_before = time.time()
        time.sleep(0.001)  # tokens issued from now on have a later iat

    # -- token endpoint -----------------------------------------------------------------------------------
    def grant(self, form_body: bytes, authorization: Optional[str], refuse: bool) -> Tuple[int, dict]:
        """The token endpoint's reply (status, JSON) to a client-credentials request."""
        form = dict(parse_qsl(form_body.decode("utf-8", "replace")))
        client_id, secret = form.get("client_id"), form.get("client_secret")
        if authorization and authorization.lower().startswith("basic "):
            decoded = base64.b64decode(authorization[6:].strip()).decode("utf-8", "replace")
            client_id, _, secret = decoded.partition(":")
        if form.get("grant_type") != "client_credentials":
            return 400, {"error": "unsupported_grant_type", "error_description": "Unsupported grant_type"}
        client_id = client_id or ""
        known = self.clients.get(client_id)
        if refuse or known is None or known[0] != secret:
            return 401, {"error": "unauthorized_client",
                         "error_description": "Invalid client or Invalid client credentials"}
        token = self.mint(client_id, known[1])
        return 200, {"access_token": token, "expires_in": int(self.lifetime), "refresh_expires_in": 0,
                     "token_type": "Bearer", "not-before-policy": 0, "scope": "profile email"}

    def mint(self, client_id: str, username: str, lifetime: Optional[float] = None) -> str:
        now = time.time()
        expiry = math.ceil(now + (self.lifetime if lifetime is None else lifetime))  # never shorter than said
        claims = {"exp": expiry, "iat": now,
                  "jti": str(uuid.uuid4()), "iss": "hpcfs-local-idp", "azp": client_id, "typ": "Bearer",
                  "preferred_username": username, "scope": "profile email"}
        token = jwt.encode(claims, self._key, algorithm="RS256", headers={"kid": self._kid})
        with self._lock:
            self.issued += 1
        return token

    # -- resource-server check ------------------------------------------------------------------------------
    def verify(self, authorization: Optional[str]) -> str:
        """The username a request's ``Authorization`` header authenticates, else :class:`TokenRejected`."""
        if not authorization or not authorization.lower().startswith("bearer "):
            raise TokenRejected("Not authenticated")
        token = authorization[7:].strip()
        try:
            if jwt.get_unverified_header(token).get("kid") != self._kid:
                raise TokenRejected("Token's public key not found.")
            # the claims are checked below, each with the message the real server gives
            claims = jwt.decode(token, self._key.public_key(), algorithms=["RS256"],
                                options={"verify_exp": False, "verify_iat": False, "verify_aud": False,
                                         "verify_iss": False})
        except jwt.PyJWTError:
            raise TokenRejected("Access token is invalid.") from None
        now = time.time()
        if claims.get("iat", 0) <= self._revoked_before:
            raise TokenRejected("Access token is invalid.")
        if claims.get("exp", 0) <= now:
            raise TokenRejected("Access token expired")
        if claims["exp"] - now < self.min_ttl:
            raise TokenRejected(f"Access token expires too soon (less than {self.min_ttl:g}s remaining).")
        return claims["preferred_username"]
