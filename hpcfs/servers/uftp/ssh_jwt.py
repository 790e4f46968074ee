"""Verify the JWTs UFTP clients self-sign with an SSH key (pyunicore/pyuftp ``identity=``), as the Auth
server does against a user's authorized_keys: RS256 (RSA), ES256 (EC P-256) or EdDSA (Ed25519)."""
import base64
import json
import time
from typing import Optional

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

KEY_TYPES = ("ssh-rsa", "ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521")


def verify_ssh_jwt(token: str, authorized_keys_path: str, now: Optional[float] = None) -> Optional[str]:
    """The token's user (``sub``) if a key in the file signed it and it has not expired, else None."""
    try:
        header_part, payload_part, signature_part = token.split(".")
        header = json.loads(_unb64(header_part))
        payload = json.loads(_unb64(payload_part))
        signature = _unb64(signature_part)
    except (ValueError, TypeError):
        return None
    if float(payload.get("exp", 0)) < (now or time.time()) or not payload.get("sub"):
        return None
    signed = f"{header_part}.{payload_part}".encode()
    for key in load_authorized_keys(authorized_keys_path):
        if _verifies(key, header.get("alg"), signature, signed):
            return payload["sub"]
    return None


def load_authorized_keys(path):
    """Public keys from an authorized_keys file; option prefixes and unknown lines are skipped."""
    keys = []
    with open(path) as handle:
        for line in handle:
            fields = line.split()
            for index, word in enumerate(fields[:-1]):
                if word in KEY_TYPES:
                    try:
                        keys.append(serialization.load_ssh_public_key(f"{word} {fields[index + 1]}".encode()))
                    except (ValueError, UnsupportedAlgorithm):
                        pass
                    break
    return keys


def _verifies(key, alg, signature, signed) -> bool:
    try:
        if alg == "RS256" and isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, signed, padding.PKCS1v15(), hashes.SHA256())
        elif alg == "ES256" and isinstance(key, ec.EllipticCurvePublicKey):
            half = len(signature) // 2  # JWS carries raw r||s, cryptography wants DER
            der = encode_dss_signature(int.from_bytes(signature[:half], "big"), int.from_bytes(signature[half:], "big"))
            key.verify(der, signed, ec.ECDSA(hashes.SHA256()))
        elif alg == "EdDSA" and isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(signature, signed)
        else:
            return False
    except InvalidSignature:
        return False
    return True


def _unb64(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
