"""How hpcfs treats an HTTP server it shares with everyone else: one policy, in one place, for every protocol.

Every request to a server (scheme, host and port) passes that server's :class:`ServerGuard`, shared by all
trees of the process:

- **a cap on requests in flight** (``max_in_flight``): a burst of reads queues here, not on the server;
  a protocol whose server limits each account (FirecREST: SSH channels per user) also passes a
  :func:`request_budget`, the same cap shared by every process of this user that reaches the server as
  that account;
- **global back-off**: 424 (no SSH channel), 429 (rate limit) and 503 (unhealthy) pause *every* request to
  that server, for ``Retry-After`` when given, else for an exponential, jittered delay;
- **a circuit breaker**: after ``breaker_threshold`` such answers (or 408, the server's own time-out) in a
  row, requests fail at once with EAGAIN for ``breaker_cooldown`` seconds instead of adding to the load;
  the next failure after the cool-down opens it again, a success closes it;
- **bounded retries** (:func:`send`): at most ``attempts`` tries within ``deadline`` seconds; a time-out or
  408 or a broken connection is repeated only where that is harmless (``idempotent``: the server may
  have acted on it; busy answers mean it did not), and a request that failed slowly (after
  ``slow`` seconds: the server is struggling) is repeated at most once.

The loop is :mod:`.pacer`'s, as every transport's, rather than tenacity's or urllib3's ``Retry``: its
decisions depend on state shared by all requests to a server (pause, breaker, slots), which those model per
request only; :func:`send` classifies each outcome and keeps that state.  Renewing a refused token stays
with each protocol (it knows its credentials).
"""
import contextlib
import random
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Dict, Optional, Tuple, Union
from urllib.parse import urlsplit

import requests
import urllib3

from .. import errors
from .errors import server_of, transport_error
from .pacer import Schedule, Verdict, retry
from .slots import SlotBudget

BUSY_STATUSES = (424, 429, 503)
TIMEOUT_STATUS = 408
REQUEST_POLL = 0.01  # a request waiting for another process's slot looks again this often: requests are short


@dataclass(frozen=True)
class Policy:
    max_in_flight: int = 8
    attempts: int = 6
    deadline: float = 60.0  # no new try starts later than this after the first
    backoff: float = 0.2  # first pause after a busy answer; doubles per answer in a row
    max_backoff: float = 8.0
    max_retry_after: float = 60.0
    slow: float = 5.0  # a failure after this long is repeated at most once
    breaker_threshold: int = 5
    breaker_cooldown: float = 10.0

    @property
    def schedule(self) -> Schedule:
        """Back-off after busy answers: for one request's retries, and for the pause of its whole server."""
        return Schedule(self.backoff, growth=2.0, longest=self.max_backoff, jitter=0.5)


class ServerGuard:
    """Slots, pause and breaker of one server."""

    def __init__(self, server: str, policy: Policy):
        self.server = server
        self.policy = policy
        self._slots = threading.BoundedSemaphore(policy.max_in_flight)
        self._lock = threading.Lock()
        self._paused_until = 0.0
        self._open_until = 0.0
        self._unhealthy_in_a_row = 0
        self._last_unhealthy = 0.0

    def admit(self, deadline: float, path: Optional[str] = None):
        """Return when a request may go: after a global pause; at once with Busy while the breaker is open
        or when the pause outlasts ``deadline``."""
        with self._lock:
            now = time.monotonic()
            if now < self._open_until:
                raise errors.Busy(f"{self.server} answered busy or unhealthy {self._unhealthy_in_a_row} times "
                                  f"in a row; hpcfs holds requests back for {self._open_until - now:.0f} s more",
                                  path)
            pause = self._paused_until - now
        if pause > 0:
            if now + pause > deadline:
                raise errors.Busy(f"{self.server} asked to wait {pause:.0f} s, longer than the time left", path)
            time.sleep(pause * random.uniform(1.0, 2.0))  # spread the waiters: not all back at one instant

    @contextmanager
    def slot(self):
        with self._slots:
            yield

    def unhealthy(self, sent_at: float, retry_after: Optional[float] = None):
        """A busy answer or a time-out to a request sent at ``sent_at``: pause everyone, and open the breaker
        after enough in a row.  Requests already in flight at the previous such answer do not count again:
        a burst refused at once is one sign of trouble, not many."""
        with self._lock:
            now = time.monotonic()
            if sent_at >= self._last_unhealthy:
                self._unhealthy_in_a_row += 1
            self._last_unhealthy = now
            pause = retry_after if retry_after is not None else self._backoff()
            self._paused_until = max(self._paused_until, now + pause)
            if self._unhealthy_in_a_row >= self.policy.breaker_threshold:
                self._open_until = now + max(self.policy.breaker_cooldown, pause)

    def healthy(self):
        with self._lock:
            self._unhealthy_in_a_row = 0
            self._open_until = 0.0

    def _backoff(self) -> float:
        return self.policy.schedule.pause(self._unhealthy_in_a_row - 1)


_guards: Dict[Tuple[str, str, Optional[int]], ServerGuard] = {}
_guards_lock = threading.Lock()


def guard_for(url: str) -> ServerGuard:
    """The guard of ``url``'s server (with the default policy until :func:`set_policy` says otherwise)."""
    with _guards_lock:
        guard = _guards.get(_server_key(url))
        if guard is None:
            guard = _guards[_server_key(url)] = ServerGuard(server_of(url), Policy())
        return guard


def set_policy(url: str, policy: Policy) -> ServerGuard:
    """A fresh guard under ``policy`` for ``url``'s server (tests make retries fast or count them)."""
    with _guards_lock:
        guard = _guards[_server_key(url)] = ServerGuard(server_of(url), policy)
        return guard


def _server_key(url: str) -> Tuple[str, str, Optional[int]]:
    parts = urlsplit(url)
    return parts.scheme, parts.hostname or "", parts.port


def request_budget(url: str, account: str) -> SlotBudget:
    """The cap on requests in flight to ``url``'s server (its policy's ``max_in_flight`` when called) as
    one budget of every process of this user on the machine that acts there as ``account``.  The caller
    closes it."""
    scheme, host, port = _server_key(url)
    return SlotBudget(f"requests {scheme}://{host}:{port} {account}", guard_for(url).policy.max_in_flight,
                      grace=0.0, poll=REQUEST_POLL)


def send(session: requests.Session, method: str, url: str, *, idempotent: bool = True, replayable: bool = True,
         timeout=None, path: Optional[str] = None, what: Optional[str] = None, budget: Optional[SlotBudget] = None,
         **kwargs) -> requests.Response:
    """One HTTP request under its server's guard, repeated as the policy allows.  Returns the last
    response (the caller maps its status); raises hpcfs errors for failures below HTTP.  A request whose
    body is a stream (not ``replayable``) is sent once: a repeat would send what is left of it.  With a
    ``budget`` (:func:`request_budget`) each try also holds one of its slots, after the process's own."""
    guard = guard_for(url)
    policy = guard.policy
    deadline = time.monotonic() + policy.deadline
    started = 0.0
    slow_failures = 0

    def attempt() -> requests.Response:
        nonlocal started
        guard.admit(deadline, path)
        machine_wide = (budget.holding(deadline, f"requests in flight to {guard.server}") if budget
                        else contextlib.nullcontext())
        with guard.slot(), machine_wide:
            started = time.monotonic()  # after waiting for a slot: only the server's time counts
            return session.request(method, url, timeout=timeout, **kwargs)

    def classify(outcome: Union[requests.Response, Exception]) -> Verdict:
        nonlocal slow_failures
        if isinstance(outcome, requests.RequestException):
            # A time-out is slow by definition (repeated once at most), yet no mark against the server's
            # health: callers set short time-outs on purpose.
            slow_failures += isinstance(outcome, requests.Timeout) or time.monotonic() - started >= policy.slow
            harmless = idempotent and slow_failures <= 1 and not _not_listening(outcome)
            return Verdict.BACK_OFF if harmless else Verdict.FAIL
        if isinstance(outcome, Exception):  # the guard's own refusal (breaker open, pause too long)
            return Verdict.FAIL
        status = outcome.status_code
        if status not in BUSY_STATUSES + (TIMEOUT_STATUS,):
            guard.healthy()
            return Verdict.DONE
        guard.unhealthy(started, _retry_after(outcome, policy))
        slow_failures += status == TIMEOUT_STATUS or time.monotonic() - started >= policy.slow
        if slow_failures > 1 or (status == TIMEOUT_STATUS and not idempotent):
            return Verdict.FAIL
        return Verdict.BACK_OFF

    try:
        return retry(attempt, classify, policy.schedule, deadline=deadline,
                     attempts=policy.attempts if replayable else 1, discard=requests.Response.close)
    except requests.RequestException as exc:
        raise transport_error(exc, what or f"{method} {urlsplit(url).path}", url, timeout, path) from None


def _not_listening(exc: requests.RequestException) -> bool:
    """Nothing to retry: the connection was refused or the name did not resolve (not a pooled connection
    the server closed, which a retry on a new one cures)."""
    reason = getattr(exc.args[0], "reason", None) if exc.args else None
    return isinstance(reason, urllib3.exceptions.NewConnectionError)


def _retry_after(response: requests.Response, policy: Policy) -> Optional[float]:
    value = response.headers.get("Retry-After", "")
    return min(float(value), policy.max_retry_after) if value.isdigit() else None
