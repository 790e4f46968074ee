"""The one HTTP transport of hpcfs: sessions with TLS settings parsed once (:mod:`.session`), one map of
transport failures and statuses to :mod:`hpcfs.errors` (:mod:`.errors`), and one policy for retries,
back-off, a per-server cap on requests in flight and a circuit breaker (:mod:`.policy`), one pacer that
every retry or poll of every protocol waits by (:mod:`.pacer`), and a budget of
sessions that every process of the user on the machine shares (:mod:`.slots`).  Outside
``hpcfs/servers``, only this package imports requests."""
from .errors import STREAM_ERRORS, error_for_status, server_of, transport_error
from .pacer import Schedule, Verdict, retry, until
from .policy import Policy, send, set_policy
from .session import RequestException, Response, iter_chunks, new_session, parse_verify, stream_into
from .slots import Slot, SlotBudget

__all__ = ["STREAM_ERRORS", "Policy", "RequestException", "Response", "Schedule", "Slot", "SlotBudget", "Verdict",
           "error_for_status", "iter_chunks", "new_session", "parse_verify", "retry", "send", "server_of",
           "set_policy", "stream_into", "transport_error", "until"]
