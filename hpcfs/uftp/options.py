"""Options of ``uftp://`` URLs (docs/guide/options.md has the table of every protocol's options)."""
from dataclasses import dataclass
from typing import Optional

from ..options import BackendOptions, HTTPOptions, option, with_default


@dataclass
class UFTPOptions(HTTPOptions, BackendOptions):
    user: Optional[str] = option(None, "the account", env="UFTP_USER")
    password: Optional[str] = option(None, "the account's password", env="UFTP_PASSWORD", secret=True)
    token: Optional[str] = option(None, "a bearer token, `@FILE`, `@@VARIABLE` or `oidc-agent:ACCOUNT`",
                                    env="UFTP_TOKEN", secret=True)
    identity: Optional[str] = option(None, "SSH key file (relative: in `~/.uftp/`) or `SHA256:` fingerprint of a "
                                           "key in ssh-agent", env="UFTP_IDENTITY")
    encrypt: bool = option(False, "encrypt file data on the wire (AES-256, a key per secret, as `pyuftp -E`); "
                                  "commands and listings are not encrypted", env="UFTP_ENCRYPT")
    compress: bool = option(False, "gzip file data on the wire (as `pyuftp -C`): for slow links and compressible "
                                   "data", env="UFTP_COMPRESS")
    streams: int = option(1, "TCP connections per file transfer in one session (as `pyuftp cp -n`): for links "
                             "with a high round-trip time, where one connection cannot fill the pipe; on loopback "
                             "or a LAN they only cost CPU", positive=True, env="UFTP_STREAMS")
    timeout: float = with_default(BackendOptions, "timeout", 30.0)
    parallel: Optional[int] = option(None, "requests or data sessions in flight at once", positive=True,
                                     aliases=("sessions",),
                                     default_text="4, or 1 with `streams` > 1 (at most `max_sessions` - 1)")
    max_sessions: Optional[int] = option(
        None, "UFTP sessions that all your hpcfs processes on this machine hold at once on one server, keepers "
              "included (at least 2); a process waits for a free one, or uses fewer in parallel", positive=True,
        default_text="the server's session limit (16 if it does not say) minus 2")
