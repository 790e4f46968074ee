"""Options of ``uftp://`` URLs (docs/guide/options.md has the table of every protocol's options)."""
from dataclasses import dataclass
from typing import ClassVar, Dict, Optional, Set

from ..core.options import BackendOptions, secret


@dataclass
class UFTPOptions(BackendOptions):
    user: Optional[str] = None
    password: Optional[str] = secret()
    token: Optional[str] = secret()  # a bearer token, or @FILE holding one
    identity: Optional[str] = None  # an SSH key file (relative: in ~/.uftp) or SHA256:fingerprint in ssh-agent
    timeout: float = 30.0
    parallel: Optional[int] = None  # data sessions at once; None: as many as the server's session limit allows
    # sessions all of this user's hpcfs processes on this machine hold at once on the server, keepers included;
    # None: the server's per-user limit (16 if unknown) minus 2 left to other tools
    max_sessions: Optional[int] = None

    ALIASES: ClassVar[Dict[str, str]] = {"sessions": "parallel"}
    ENVIRONMENT: ClassVar[Dict[str, str]] = {**BackendOptions.ENVIRONMENT, "user": "UFTP_USER",
                                             "password": "UFTP_PASSWORD", "token": "UFTP_TOKEN",
                                             "identity": "UFTP_IDENTITY"}
    POSITIVE: ClassVar[Set[str]] = {"timeout", "parallel", "max_sessions"}
