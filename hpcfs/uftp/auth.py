"""The UFTP auth step: credentials, and the REST call that buys a UFTPD address and a one-time secret.

``POST https://HOST:PORT[/SITE]/rest/auth/SERVER`` with ``{"serverPath": base + "/", "persistent": true}``
answers ``{"serverHost", "serverPort", "secret"}`` (/work/shared/reference/uftp.md §2).  Credentials are
HTTP Basic, a bearer token, or a JWT that we sign ourselves with an SSH private key (what pyunicore and
pyuftp do with pyjwt, done here with ``cryptography`` alone).  Nothing here ever puts a password, token,
key or secret into a message, a log line or a repr.
"""
import base64
import json
import os
import time
from dataclasses import dataclass, field
from typing import Dict, Optional, Union
from urllib.parse import urlsplit

from .. import errors, net

JWT_LIFETIME = 300  # seconds, as pyunicore and pyuftp issue them


@dataclass(frozen=True)
class Grant:
    """Where to log in, and with which one-time secret."""

    host: str
    port: int
    secret: str = field(repr=False)


# -- credentials ---------------------------------------------------------------------------------------
class Credential:
    """Produces the ``Authorization`` header; ``secrets`` are scrubbed from any server message."""

    kind = "none"

    def header(self) -> str:
        raise NotImplementedError

    def secrets(self):
        return ()

    def __repr__(self):
        return f"<{self.kind} credential>"


class BasicCredential(Credential):
    kind = "password"

    def __init__(self, user: str, password: str):
        self.user = user
        self._password = password

    def header(self):
        pair = f"{self.user}:{self._password}".encode("utf-8")
        return "Basic " + base64.b64encode(pair).decode("ascii")

    def secrets(self):
        return (self._password,)


class BearerCredential(Credential):
    kind = "token"

    def __init__(self, token: str):
        self._token = token

    def header(self):
        return "Bearer " + self._token

    def secrets(self):
        return (self._token,)


class SSHKeyCredential(Credential):
    """A JWT signed with the user's SSH key, fresh for every request (it lives five minutes)."""

    kind = "ssh-key"

    def __init__(self, user: str, key_path: str, passphrase: Optional[str] = None):
        self.user = user
        self.key_path = key_path
        self._key = load_private_key(key_path, passphrase)

    def header(self):
        return "Bearer " + signed_jwt(self.user, self._key)


def load_private_key(path: str, passphrase: Optional[str] = None):
    """An OpenSSH or PEM private key (RSA, ECDSA, Ed25519), decrypted with ``passphrase`` if needed."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization

    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        raise errors.UsageError(f"cannot read the identity file {path}: {exc.strerror}") from None
    # The password doubles as the passphrase, so an unencrypted key is also tried without it.
    passwords = [passphrase.encode("utf-8"), None] if passphrase else [None]
    for loader in (serialization.load_ssh_private_key, serialization.load_pem_private_key):
        for password in passwords:
            try:
                return loader(data, password=password)
            except (ValueError, TypeError, UnsupportedAlgorithm):
                continue
    raise errors.UsageError(f"cannot load the identity {path}: wrong passphrase or not an RSA, ECDSA or "
                            "Ed25519 private key")


def signed_jwt(user: str, key, lifetime: int = JWT_LIFETIME, now: Optional[float] = None) -> str:
    """The self-signed token UFTP Auth servers accept for key-based login:
    ``{"etd": "false", "sub": user, "iss": user, "iat": now, "exp": now + lifetime}``."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

    issued = int(time.time() if now is None else now)
    if isinstance(key, rsa.RSAPrivateKey):
        algorithm = "RS256"
    elif isinstance(key, ec.EllipticCurvePrivateKey):
        digest_bits = {256: 256, 384: 384, 521: 512}.get(key.curve.key_size)
        if digest_bits is None:
            raise errors.UsageError(f"unsupported elliptic curve {key.curve.name} for a JWT")
        algorithm = f"ES{digest_bits}"
    elif isinstance(key, ed25519.Ed25519PrivateKey):
        algorithm = "EdDSA"
    else:
        raise errors.UsageError("the identity must be an RSA, ECDSA or Ed25519 key")
    header = {"alg": algorithm, "typ": "JWT"}
    payload = {"etd": "false", "sub": user, "iss": user, "iat": issued, "exp": issued + lifetime}
    signing_input = f"{_b64url_json(header)}.{_b64url_json(payload)}".encode("ascii")
    if algorithm == "RS256":
        signature = key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
    elif algorithm == "EdDSA":
        signature = key.sign(signing_input)
    else:
        digest = {"ES256": hashes.SHA256(), "ES384": hashes.SHA384(), "ES512": hashes.SHA512()}[algorithm]
        r, s = decode_dss_signature(key.sign(signing_input, ec.ECDSA(digest)))
        width = (key.curve.key_size + 7) // 8  # JWS wants fixed-width r || s, not DER
        signature = r.to_bytes(width, "big") + s.to_bytes(width, "big")
    return signing_input.decode("ascii") + "." + _b64url(signature)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_json(value) -> str:
    return _b64url(json.dumps(value, separators=(",", ":")).encode("utf-8"))


def read_token(spec: str) -> str:
    """A token given as a literal, ``@file`` or ``@@ENVVAR`` (pyunicore's convention)."""
    if spec.startswith("@@"):
        value = os.environ.get(spec[2:])
        if not value:
            raise errors.UsageError(f"the token variable {spec[2:]} is not set")
        return value.strip()
    if spec.startswith("@"):
        path = os.path.expanduser(spec[1:])
        try:
            with open(path) as handle:
                return handle.read().strip()
        except OSError as exc:
            raise errors.UsageError(f"cannot read the token file {path}: {exc.strerror}") from None
    return spec


# -- the REST call -------------------------------------------------------------------------------------
class AuthClient:
    """Talks to one Auth server endpoint ``.../rest/auth/SERVER`` over a reused HTTPS session."""

    def __init__(self, auth_url: str, credential: Credential, *, verify: Union[bool, str] = True,
                 timeout: float = 30.0):
        if "/rest/auth/" not in auth_url:
            raise errors.UsageError(f"not an Auth server URL (…/rest/auth/SERVER): {auth_url}")
        self.auth_url = auth_url.rstrip("/")
        self.server_name = self.auth_url.rsplit("/rest/auth/", 1)[1]
        self.credential = credential
        self.timeout = timeout
        self._http = net.new_session(verify)

    def __repr__(self):
        return f"<AuthClient {self.auth_url} {self.credential!r}>"

    def authenticate(self, base_dir: str) -> Grant:
        """A persistent secret whose sessions start in ``base_dir``."""
        server_path = base_dir.rstrip("/") + "/"  # UFTPD takes dirname(serverPath) as the base
        body = self._request("POST", self.auth_url, json={"serverPath": server_path, "persistent": True})
        if str(body.get("success", True)).lower() == "false":
            reason = self._scrub(str(body.get("reason") or "the Auth server refused the request"))
            raise (errors.Busy if "Too many" in reason else errors.Unavailable)(reason)
        try:
            return Grant(host=body.get("serverHost") or urlsplit(self.auth_url).hostname, port=int(body["serverPort"]),
                         secret=str(body["secret"]))
        except (KeyError, TypeError, ValueError):
            raise errors.ProtocolError("the Auth server's reply lacks serverPort or secret") from None

    def server_info(self) -> Dict:
        """This server's entry of ``GET .../rest/auth`` (version, sessionLimit, ...); {} if unavailable."""
        info_url = self.auth_url.rsplit("/rest/auth/", 1)[0] + "/rest/auth"
        try:
            body = self._request("GET", info_url)
        except errors.Unavailable:
            raise  # the POST would not get through either
        except errors.HpcfsError:
            return {}
        entry = body.get(self.server_name)
        return entry if isinstance(entry, dict) else {}

    def close(self):
        self._http.close()

    def _request(self, method: str, url: str, **kwargs) -> Dict:
        headers = {"Authorization": self.credential.header(), "Accept": "application/json"}
        # a GET is safe to repeat; a POST asks for a new secret, which the server may already have issued
        response = net.send(self._http, method, url, idempotent=method == "GET", headers=headers,
                            timeout=self.timeout, what=f"Auth server {method}", **kwargs)
        with response:
            if response.status_code >= 400:
                raise self._error(response)
            try:
                body = response.json()
            except ValueError:
                raise errors.ProtocolError(f"the Auth server at {net.server_of(url)} did not answer JSON") from None
        if not isinstance(body, dict):
            raise errors.ProtocolError(f"the Auth server at {net.server_of(url)} answered unexpected JSON")
        return body

    def _error(self, response) -> errors.HpcfsError:
        status = response.status_code
        try:
            detail = response.json().get("errorMessage")
        except (ValueError, AttributeError):
            detail = None
        detail = self._scrub(str(detail)) if detail else response.reason or "error"
        message = f"Auth server answered {status}: {detail}"
        if status in (401, 403):
            return errors.AuthenticationFailed(message)
        if status == 404:
            return errors.NotFound(f"no such server '{self.server_name}' at the Auth server ({detail})")
        if status in (429, 503) or "Too many" in detail:  # the session limit comes back as a 500
            return errors.Busy(message)
        if status >= 500:
            return errors.Unavailable(message)
        return errors.HpcfsError(message)

    def _scrub(self, text: str) -> str:
        for secret in self.credential.secrets():
            if secret:
                text = text.replace(secret, "***")
        return text
