"""Options of ``em://`` URLs (docs/guide/options.md has the table of every protocol's options)."""
from dataclasses import dataclass
from typing import ClassVar, Dict, Optional, Set

from ..core.options import BackendOptions, secret, size

GIB = 1 << 30


@dataclass
class EMOptions(BackendOptions):
    user: Optional[str] = None
    password: Optional[str] = secret()
    pods: str = ""  # extra pod names, comma-separated (EM_PODS adds more)
    tls: Optional[bool] = None  # https (yes) or http (no); None: https except to a loopback host
    scheme: Optional[str] = None  # http or https, the older spelling of tls
    upload_timeout: float = 7200.0  # seconds one upload request may take
    busy_timeout: float = 120.0  # total wait while the server answers 423 (busy)
    busy_backoff: float = 0.5  # first pause after a 423
    listing_ttl: float = 5.0  # seconds a whole-volume listing is reused
    volumes_ttl: float = 30.0  # seconds the list of volumes is reused
    max_upload: int = size(2 * GIB)  # bytes per upload request
    max_files: int = 100  # files per upload request

    ALIASES: ClassVar[Dict[str, str]] = {"username": "user"}
    ENVIRONMENT: ClassVar[Dict[str, str]] = {**BackendOptions.ENVIRONMENT, "user": "EM_USERNAME",
                                             "password": "EM_PASSWORD"}
    POSITIVE: ClassVar[Set[str]] = {"timeout", "upload_timeout", "max_upload", "max_files"}
