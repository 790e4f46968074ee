"""Verify the JWTs UFTP clients self-sign with an SSH key (pyunicore/pyuftp ``identity=``), as the Auth
server does against a user's authorized_keys: RS256 (RSA), ES256 (EC P-256) or EdDSA (Ed25519)."""
from typing import Iterator, List, Optional, Tuple, Union

import jwt
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

JWTKey = Union[rsa.RSAPublicKey, ec.EllipticCurvePublicKey, ed25519.Ed25519PublicKey]
JWT_KEY_CLASSES = (rsa.RSAPublicKey, ec.EllipticCurvePublicKey, ed25519.Ed25519PublicKey)
KEY_TYPES = ("ssh-rsa", "ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521")


def verify_ssh_jwt(token: str, authorized_keys_path: str) -> Optional[str]:
    """The token's user (``sub``) if a key in the file signed it and it has not expired, else None."""
    for key, algorithm in _jwt_keys(authorized_keys_path):
        try:
            claims = jwt.decode(token, key, algorithms=[algorithm], options={"require": ["exp", "sub"]})
        except jwt.PyJWTError:
            continue
        return claims["sub"] or None
    return None


def _jwt_keys(authorized_keys_path: str) -> Iterator[Tuple[JWTKey, str]]:
    """Each authorized key with the one JWS algorithm the Auth server accepts for its kind (ECDSA only
    on P-256)."""
    for key in load_authorized_keys(authorized_keys_path):
        if isinstance(key, rsa.RSAPublicKey):
            yield key, "RS256"
        elif isinstance(key, ec.EllipticCurvePublicKey) and key.curve.key_size == 256:
            yield key, "ES256"
        elif isinstance(key, ed25519.Ed25519PublicKey):
            yield key, "EdDSA"


def load_authorized_keys(path: str) -> List[JWTKey]:
    """The keys of an authorized_keys file that can sign a JWT; option prefixes, unknown lines and other
    kinds of key (DSA, post-quantum hybrids: no JWS algorithm) are skipped."""
    keys: List[JWTKey] = []
    with open(path) as handle:
        for line in handle:
            fields = line.split()
            for index, word in enumerate(fields[:-1]):
                if word in KEY_TYPES:
                    try:
                        key = serialization.load_ssh_public_key(f"{word} {fields[index + 1]}".encode())
                    except (ValueError, UnsupportedAlgorithm):
                        break
                    if isinstance(key, JWT_KEY_CLASSES):
                        keys.append(key)
                    break
    return keys
