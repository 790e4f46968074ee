"""The UFTP auth step: credentials, and the REST call that buys a UFTPD address and a one-time secret.

``POST https://HOST:PORT[/SITE]/rest/auth/SERVER`` with ``{"serverPath": base + "/", "persistent": true}``
answers ``{"serverHost", "serverPort", "secret"}`` (UNICORE's Auth server REST API, as pyuftp calls it).
Credentials are HTTP Basic, a bearer token, or a JWT that we sign ourselves with an SSH private key (with
PyJWT, as pyunicore and pyuftp do, or by ssh-agent through paramiko).  Nothing here ever puts
a password, token, key or secret into a message, a log line or a repr.
"""
import base64
import getpass
import hashlib
import json
import os
import stat
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Dict, List, Optional, Union
from urllib.parse import urlsplit

import jwt
from jwt.utils import base64url_encode

from .. import errors, net, oidc_agent
from ..oidc_agent import AgentTokens
from ..trusted import read_token
from .datastream import Transform

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

JWT_LIFETIME = 300  # seconds, as pyunicore and pyuftp issue them


@dataclass(frozen=True)
class Grant:
    """Where to log in, and with which one-time secret."""

    host: str
    port: int
    secret: str = field(repr=False)
    transform: Optional[Transform] = field(default=None, repr=False)  # its data connections' gzip/AES
    streams: int = 1  # data connections per file transfer (its ``streamCount``)


# -- credentials ---------------------------------------------------------------------------------------
class Credential:
    """Produces the ``Authorization`` header; ``secrets`` are scrubbed from any server message."""

    kind = "none"
    renewable = False  # whether a refused request is worth a replay after renew()

    def header(self) -> str:
        raise NotImplementedError

    def secrets(self):
        return ()

    def renew(self, refused: str) -> None:
        """The server refused the header ``refused`` as stale: the next ``header()`` brings a new one.  Only
        for a ``renewable`` credential (a token source that can be asked again); the others would repeat it."""

    def __repr__(self):
        return f"<{self.kind} credential>"


class BasicCredential(Credential):
    kind = "password"

    def __init__(self, user: str, password: str):
        self.user = user
        self._password = password

    def header(self):
        pair = f"{self.user}:{self._password}".encode()
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


class AgentCredential(Credential):
    """Bearer tokens of an oidc-agent account (``token=oidc-agent:ACCOUNT``), asked again before they
    expire and when a server refuses one."""

    kind = "oidc-agent"

    def __init__(self, account: str):
        self.tokens = AgentTokens(account)

    def header(self):
        return "Bearer " + self.tokens.token()

    def secrets(self):
        return self.tokens.issued()

    renewable = True

    def renew(self, refused: str) -> None:
        self.tokens.discard(refused[len("Bearer "):])


class SSHKeyCredential(Credential):
    """A JWT signed with the user's SSH key, fresh for every request (it lives five minutes).  ``identity``
    is a private key file, its public key file (``key.pub``, as ``ssh -i`` takes it) or a fingerprint
    (``SHA256:...``); see ``key_signer`` for where the key comes from."""

    kind = "ssh-key"

    def __init__(self, user: str, identity: str, passphrase: Optional[str] = None):
        self.user = user
        self.identity = identity
        self._signer = key_signer(identity, passphrase)

    def header(self):
        return "Bearer " + signed_jwt(self.user, self._signer)


def jwt_algorithm(key) -> str:
    """The JWS algorithm of a ``cryptography`` private key, as pyuftp picks it; UsageError for other keys."""
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    if isinstance(key, rsa.RSAPrivateKey):
        return "RS256"
    if isinstance(key, ec.EllipticCurvePrivateKey):
        digest_bits = {256: 256, 384: 384, 521: 512}.get(key.curve.key_size)
        if digest_bits is None:
            raise errors.UsageError(f"unsupported elliptic curve {key.curve.name} for a JWT")
        return f"ES{digest_bits}"
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return "EdDSA"
    raise errors.UsageError("the identity must be an RSA, ECDSA or Ed25519 key")


class AgentKeySigner:
    """A key held by ssh-agent (paramiko's agent client): the private key never leaves the agent."""

    # SSH key type -> (JWS algorithm, the signature flavour to ask the agent for, curve bits)
    KINDS = {"ssh-rsa": ("RS256", "rsa-sha2-256", 0), "ssh-ed25519": ("EdDSA", None, 0),
             "ecdsa-sha2-nistp256": ("ES256", None, 256), "ecdsa-sha2-nistp384": ("ES384", None, 384),
             "ecdsa-sha2-nistp521": ("ES512", None, 521)}

    def __init__(self, agent, key):
        if key.get_name() not in self.KINDS:
            raise errors.UsageError(f"the agent's key {key.fingerprint} is a {key.get_name()} key; a JWT needs "
                                    "an RSA, ECDSA or Ed25519 key")
        self._agent, self._key = agent, key  # the agent object keeps the connection the key signs over
        self.algorithm, self._flavour, self._curve_bits = self.KINDS[key.get_name()]
        self._lock = threading.Lock()  # one request at a time on the agent connection

    def sign(self, data: bytes) -> bytes:
        """The JWS signature of ``data`` (the JWT's signing input), made by the agent."""
        import paramiko

        with self._lock:
            reply = paramiko.Message(self._key.sign_ssh_data(data, self._flavour))
        reply.get_text()  # the signature's algorithm name
        signature = reply.get_binary()
        if not self._curve_bits:  # RSA PKCS#1 v1.5 and Ed25519: the SSH blob is the JWS signature
            return signature
        numbers = paramiko.Message(signature)  # ECDSA: mpint r, mpint s
        return _fixed_width_ecdsa(numbers.get_mpint(), numbers.get_mpint(), self._curve_bits)


# what signs a key-based login: ssh-agent, or a private key read from a file
Signer = Union[AgentKeySigner, "rsa.RSAPrivateKey", "ec.EllipticCurvePrivateKey", "ed25519.Ed25519PrivateKey"]


def _fixed_width_ecdsa(r: int, s: int, curve_bits: int) -> bytes:
    width = (curve_bits + 7) // 8  # JWS wants fixed-width r || s, not DER or SSH mpints
    return r.to_bytes(width, "big") + s.to_bytes(width, "big")


def key_signer(identity: str, passphrase: Optional[str] = None) -> Signer:
    """The agent's key when ssh-agent (``SSH_AUTH_SOCK``) holds the key ``identity`` names -- by fingerprint,
    by public key file, or by the ``.pub`` next to a private key file, as ssh matches them -- else the
    private key file, decrypted with ``passphrase`` or, on a terminal, a prompted one."""
    wanted = _fingerprint_of(identity)
    agent_signer = _agent_signer(wanted) if wanted else None
    if agent_signer is not None:
        return agent_signer
    if identity.startswith("SHA256:"):
        where = "the ssh-agent" if os.environ.get("SSH_AUTH_SOCK") else "an ssh-agent (SSH_AUTH_SOCK is not set)"
        raise errors.UsageError(f"no key with fingerprint {identity} in {where}")
    private_path = identity[: -len(".pub")] if identity.endswith(".pub") else identity
    key = load_private_key(private_path, passphrase)
    jwt_algorithm(key)  # refuse a key no JWT can be signed with now, not at the first request
    return key


def _fingerprint_of(identity: str) -> Optional[str]:
    """``SHA256:...`` of the key ``identity`` names, if known without its private part."""
    if identity.startswith("SHA256:"):
        return identity
    public_path = identity if identity.endswith(".pub") else identity + ".pub"
    try:
        with open(public_path) as handle:
            blob = base64.b64decode(handle.read().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode("ascii").rstrip("=")


def _agent_signer(fingerprint: str) -> Optional[AgentKeySigner]:
    if not os.environ.get("SSH_AUTH_SOCK"):
        return None
    import paramiko

    try:
        agent = paramiko.Agent()
        keys = agent.get_keys()
    except (paramiko.SSHException, OSError):
        return None
    match = next((key for key in keys if key.fingerprint == fingerprint), None)
    return AgentKeySigner(agent, match) if match is not None else None


def load_private_key(path: str, passphrase: Optional[str] = None):
    """An OpenSSH or PEM private key (RSA, ECDSA, Ed25519), decrypted with ``passphrase`` if needed (or one
    typed at a prompt when the key is encrypted and stdin is a terminal).  A key file other users may read
    is refused, as ssh refuses it."""
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        raise errors.UsageError(f"cannot read the identity file {path}: {exc.strerror}") from None
    if mode & 0o077:
        raise errors.UsageError(f"UNPROTECTED PRIVATE KEY FILE: permissions {mode:04o} for '{path}' are too open "
                                f"(other users could read the key); run 'chmod 600 {path}'")
    # The password doubles as the passphrase, so an unencrypted key is also tried without it.
    key, encrypted = _decrypted(data, [passphrase.encode("utf-8"), None] if passphrase else [None])
    if key is None and encrypted and not passphrase and sys.stdin.isatty():
        typed = getpass.getpass(f"Enter passphrase for key '{path}': ")
        key, _ = _decrypted(data, [typed.encode("utf-8")])
    if key is None:
        raise errors.UsageError(f"cannot load the identity {path}: wrong passphrase or not an RSA, ECDSA or "
                                "Ed25519 private key")
    return key


def _decrypted(data: bytes, passwords):
    """(the key or None, whether a loader said the key needs a passphrase)."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization

    encrypted = False
    for loader in (serialization.load_ssh_private_key, serialization.load_pem_private_key):
        for password in passwords:
            try:
                return loader(data, password=password), encrypted
            except TypeError:  # "Password was not given but private key is encrypted"
                encrypted = encrypted or password is None
            except (ValueError, UnsupportedAlgorithm):
                continue
    return None, encrypted


def signed_jwt(user: str, key: Signer, lifetime: int = JWT_LIFETIME, now: Optional[float] = None) -> str:
    """The self-signed token UFTP Auth servers accept for key-based login:
    ``{"etd": "false", "sub": user, "iss": user, "iat": now, "exp": now + lifetime}``, signed by PyJWT
    with a ``cryptography`` private key, or by ssh-agent."""
    issued = int(time.time() if now is None else now)
    payload = {"etd": "false", "sub": user, "iss": user, "iat": issued, "exp": issued + lifetime}
    if isinstance(key, AgentKeySigner):
        return _agent_signed_jwt(payload, key)
    return jwt.encode(payload, key, algorithm=jwt_algorithm(key))


def _agent_signed_jwt(payload: Dict[str, object], signer: AgentKeySigner) -> str:
    """A JWT whose signature ssh-agent makes: PyJWT cannot hand the agent the signing input, so the
    segments are joined here, encoded as PyJWT encodes them."""
    header = {"alg": signer.algorithm, "typ": "JWT"}
    signing_input = b".".join(base64url_encode(json.dumps(part, separators=(",", ":")).encode("utf-8"))
                              for part in (header, payload))
    return (signing_input + b"." + base64url_encode(signer.sign(signing_input))).decode("ascii")


def token_credential(spec: str) -> Credential:
    """The credential of a ``token`` option: ``oidc-agent:ACCOUNT``, else a token ``read_token`` reads."""
    if oidc_agent.is_agent_spec(spec):
        return AgentCredential(oidc_agent.account_of(spec))
    return BearerCredential(read_token(spec))


# -- the REST call -------------------------------------------------------------------------------------
class AuthClient:
    """Talks to one Auth server endpoint ``.../rest/auth/SERVER`` over a reused HTTPS session."""

    def __init__(self, auth_url: str, credential: Credential, *, verify: Union[bool, str] = True,
                 timeout: float = 30.0, encrypt: bool = False, compress: bool = False, streams: int = 1):
        if "/rest/auth/" not in auth_url:
            raise errors.UsageError(f"not an Auth server URL (…/rest/auth/SERVER): {auth_url}")
        self.auth_url = auth_url.rstrip("/")
        self.server_name = self.auth_url.rsplit("/rest/auth/", 1)[1]
        self.credential = credential
        self.timeout = timeout
        self.encrypt, self.compress, self.streams = encrypt, compress, streams
        self._http = net.new_session(verify)

    def __repr__(self):
        return f"<AuthClient {self.auth_url} {self.credential!r}>"

    def authenticate(self, base_dir: str) -> Grant:
        """A persistent secret whose sessions start in ``base_dir``."""
        # a fresh key per secret
        return self._grant(base_dir, True, Transform.new(self.encrypt, self.compress), self.streams)

    def one_login(self, base_dir: str, transform: Optional[Transform]) -> Grant:
        """A secret for a single login in ``base_dir`` whose data connections ``transform`` as given: for
        UFTPD's own transfer process, which logs in with it and undoes the transform of the session that
        forked it."""
        return self._grant(base_dir, False, transform)

    def _grant(self, base_dir: str, persistent: bool, transform: Optional[Transform], streams: int = 1) -> Grant:
        server_path = base_dir.rstrip("/") + "/"  # UFTPD takes dirname(serverPath) as the base
        request = {"serverPath": server_path, "persistent": persistent,
                   **(transform.grant_fields() if transform else {}),
                   **({"streamCount": streams} if streams > 1 else {})}
        body = self._request("POST", self.auth_url, json=request)
        if str(body.get("success", True)).lower() == "false":
            reason = self._scrub(str(body.get("reason") or "the Auth server refused the request"))
            raise (errors.Busy if "Too many" in reason else errors.Unavailable)(reason)
        try:
            return Grant(host=str(body.get("serverHost") or urlsplit(self.auth_url).hostname),
                         port=int(body["serverPort"]), secret=str(body["secret"]), transform=transform,
                         streams=streams)
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
        sent: List[str] = []  # the Authorization of each try

        def send() -> net.Response:
            sent.append(self.credential.header())
            headers = {"Authorization": sent[-1], "Accept": "application/json"}
            # a GET is safe to repeat; a POST asks for a new secret, which the server may already have issued
            return net.send(self._http, method, url, idempotent=method == "GET", headers=headers,
                            timeout=self.timeout, what=f"Auth server {method}", **kwargs)

        # a 401 issued no secret, so even the POST is replayed once with a renewed token
        response = net.renew_and_replay(send, (401,), lambda: self.credential.renew(sent[0]),
                                        may_renew=lambda _: self.credential.renewable)
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
