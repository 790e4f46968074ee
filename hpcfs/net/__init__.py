"""The one HTTP transport of hpcfs: sessions with TLS settings parsed once (:mod:`.session`), one map of
transport failures and statuses to :mod:`hpcfs.errors` (:mod:`.errors`), and one policy for retries,
back-off, a per-server cap on requests in flight and a circuit breaker (:mod:`.policy`), one pacer that
every retry or poll of every protocol waits by (:mod:`.pacer`), and a budget of
sessions or requests in flight that every process of the user on the machine shares (:mod:`.slots`); the
choice of http or https for a host (:mod:`.endpoint`), and the one replay after renewing stale credentials
(:mod:`.renewal`).  Outside ``hpcfs/servers``, only this package imports requests."""
from .endpoint import base_url, http_scheme, is_loopback
from .errors import STREAM_ERRORS, error_for_status, server_of, transport_error
from .pacer import Schedule, Verdict, retry, until
from .policy import Policy, request_budget, send, set_policy
from .renewal import renew_and_replay
from .session import (UNREADABLE_JSON, RequestException, Response, accepted, iter_chunks, json_body, new_session,
                      parse_verify, stream_into)
from .slots import Slot, SlotBudget

__all__ = [
                      "STREAM_ERRORS",
                      "UNREADABLE_JSON",
                      "Policy",
                      "RequestException",
                      "Response",
                      "Schedule",
                      "Slot",
                      "SlotBudget",
                      "Verdict",
                      "accepted",
                      "base_url",
                      "error_for_status",
                      "http_scheme",
                      "is_loopback",
                      "iter_chunks",
                      "json_body",
                      "new_session",
                      "parse_verify",
                      "renew_and_replay",
                      "request_budget",
                      "retry",
                      "send",
                      "server_of",
                      "set_policy",
                      "stream_into",
                      "transport_error",
                      "until",
]
