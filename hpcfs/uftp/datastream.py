"""What UFTPD does to a data connection's bytes when the grant asks for it: gzip, then AES encryption.

The grant (the Auth request's ``compress`` and ``encryptionKey``/``encryptionAlgorithm``) fixes both for every
transfer of its sessions.  From UFTPD's ``GzipConnector.py`` and ``CryptUtil.py``, which PyUFTP mirrors:

- compression is one gzip stream (``wbits=31``) per transfer;
- encryption is one AES-CBC stream per transfer, the IV the key's first 16 bytes and the AES key the rest,
  the last block padded as PKCS#7 (1 to 16 bytes, each holding the count);
- gzip is applied first when sending (encryption wraps it) and undone last when receiving;
- a transformed transfer ends with its connection: the sender closes it, so each transfer opens a new one;
- with several streams (hpcfs/uftp/multistream.py) each connection has its own gzip and AES streams, below
  the framing; UFTPD's sender flushes gzip after each frame and never ends either stream (no gzip trailer,
  no padding), so a framed decoder takes its ends from the frames and checks neither.

UFTPD also offers Blowfish, PyUFTP's default; hpcfs asks for AES only (Blowfish is deprecated cryptography).
"""
import base64
import secrets
import zlib
from dataclasses import dataclass, field
from typing import Optional

from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from .. import errors

AES_KEY_BYTES = 32  # AES-256, as PyUFTP's UFTP_ENCRYPTION_AES_KEYSIZE default
IV_BYTES = 16
GZIP = 31  # zlib's wbits for a gzip stream


@dataclass(frozen=True)
class Transform:
    """The grant's transforms: ``key`` (IV + AES key) for encryption, ``compress`` for gzip."""

    key: Optional[bytes] = field(default=None, repr=False)
    compress: bool = False

    @classmethod
    def new(cls, encrypt: bool, compress: bool) -> Optional["Transform"]:
        """A fresh random key where ``encrypt``; None where nothing is transformed."""
        if not (encrypt or compress):
            return None
        return cls(secrets.token_bytes(IV_BYTES + AES_KEY_BYTES) if encrypt else None, compress)

    def grant_fields(self) -> dict:
        """What the Auth request says of it (the key travels to the Auth server inside TLS, never logged)."""
        fields = {"compress": "true"} if self.compress else {}
        if self.key is not None:
            fields.update(encryptionKey=base64.b64encode(self.key).decode(), encryptionAlgorithm="AES")
        return fields

    def _cipher(self) -> Cipher:
        assert self.key is not None
        return Cipher(algorithms.AES(self.key[IV_BYTES:]), modes.CBC(self.key[:IV_BYTES]))

    def encoder(self) -> "Encoder":
        return Encoder(self)

    def decoder(self, framed: bool = False) -> "Decoder":
        return Decoder(self, framed)


class Encoder:
    """Plain bytes in, the bytes to send out; ``finish`` gives the end of the stream."""

    def __init__(self, transform: Transform):
        self._gzip = zlib.compressobj(wbits=GZIP) if transform.compress else None
        self._encrypt = transform._cipher().encryptor() if transform.key is not None else None
        self._pad = padding.PKCS7(algorithms.AES.block_size).padder() if self._encrypt else None

    def update(self, data) -> bytes:
        return self._encrypted(self._gzip.compress(data) if self._gzip is not None else data)

    def sync(self) -> bytes:
        """A gzip sync flush: all given so far decodable before more comes (UFTPD's multi-stream reader waits
        for whole frames, one connection after the other)."""
        return self._encrypted(self._gzip.flush(zlib.Z_SYNC_FLUSH)) if self._gzip is not None else b""

    def _encrypted(self, data) -> bytes:
        if self._encrypt is not None and self._pad is not None:
            data = self._encrypt.update(self._pad.update(data))
        return bytes(data)

    def finish(self) -> bytes:
        tail = self._gzip.flush() if self._gzip is not None else b""
        if self._encrypt is not None and self._pad is not None:
            tail = self._encrypt.update(self._pad.update(tail) + self._pad.finalize()) + self._encrypt.finalize()
        return tail


class Decoder:
    """Received bytes in, plain bytes out; ``finish`` at the end of the connection checks that the stream
    was complete (a cut connection or a wrong key is a ProtocolError, never short or garbled data).
    ``framed``: the frames around the plain bytes say where they end, and no padding is taken off."""

    def __init__(self, transform: Transform, framed: bool = False):
        self._decrypt = transform._cipher().decryptor() if transform.key is not None else None
        unpadded = self._decrypt is None or framed
        self._unpad = None if unpadded else padding.PKCS7(algorithms.AES.block_size).unpadder()
        self._gunzip = zlib.decompressobj(wbits=GZIP) if transform.compress else None

    def update(self, data) -> bytes:
        if self._decrypt is not None:
            data = self._decrypt.update(data)
            data = self._unpad.update(data) if self._unpad is not None else data
        return self._gunzipped(data)

    def finish(self) -> bytes:
        tail = b""
        if self._decrypt is not None and self._unpad is not None:
            try:
                tail = self._unpad.update(self._decrypt.finalize()) + self._unpad.finalize()
            except ValueError:
                raise errors.ProtocolError("the encrypted data stream ended early or does not fit the key") from None
        tail = self._gunzipped(tail)
        if self._gunzip is not None:
            tail += self._gunzip.flush()
            if not self._gunzip.eof:
                raise errors.ProtocolError("the compressed data stream ended early")
        return tail

    def _gunzipped(self, data) -> bytes:
        if self._gunzip is None:
            return bytes(data)
        try:
            return self._gunzip.decompress(data)
        except zlib.error as exc:
            raise errors.ProtocolError(f"the compressed data stream is damaged: {exc}") from None
