"""One pacer for every transport: when hpcfs tries again, how long it waits first, and when it gives up.

As rclone's ``lib/pacer`` serves every backend, this module owns the waiting: the growth of the pauses,
their jitter and the bounds (attempts, deadline).  A caller says only what an outcome means, with a
classifier that returns a :class:`Verdict`; an outcome is what the action returned or the exception it
raised.  On giving up, a raised outcome is raised again and a returned one returned, or handed to
``exhausted`` (which may raise an error that says more).

Whether an outcome also counts against the server's health (a pause for every request to it, its circuit
breaker) is state shared by all calls to that server, so it lives in the server's guard
(:class:`.policy.ServerGuard`), which :func:`.policy.send` consults around each try.  A busy answer that
is about one account, not the server (UFTPD's session limit, the EM's one request slot), backs off here
without touching the guard.

:func:`until` is the polling form: ask until there is an answer (a job ended, a port listens).
"""
import enum
import itertools
import math
import random
import time
from dataclasses import dataclass
from typing import Callable, Optional, TypeVar, Union

T = TypeVar("T")


class Verdict(enum.Enum):
    DONE = enum.auto()  # the outcome is the answer
    AGAIN = enum.auto()  # try again at once: nothing to wait for (another session, a new secret)
    BACK_OFF = enum.auto()  # the other side is busy: pause by the schedule, then try again
    FAIL = enum.auto()  # give up now, though the outcome is not an answer


@dataclass(frozen=True)
class Schedule:
    """Pauses growing from ``first`` by ``growth`` per pause up to ``longest``.  Each is drawn between
    ``jitter`` times its nominal length and that length (1.0: none), so that clients refused together do
    not all come back together."""
    first: float
    growth: float = 2.0
    longest: float = math.inf
    jitter: float = 1.0

    def nominal(self, n: int) -> float:
        """The ``n``-th pause (0: the first) before jitter; multiplied out, as ``growth ** n`` would
        overflow a float after a few thousand polls."""
        pause = self.first
        for _ in range(n):
            if pause >= self.longest:
                break
            pause *= self.growth
        return min(pause, self.longest)

    def pause(self, n: int) -> float:
        return self.nominal(n) * random.uniform(self.jitter, 1.0)


AT_ONCE = Schedule(0.0)  # for callers that only ever try again at once


Deadline = Union[float, Callable[[], float]]  # a time.monotonic() instant, or a function that moves it (progress)


def retry(action: Callable[[], T], classify: Callable[[Union[T, Exception]], Verdict],
          schedule: Schedule = AT_ONCE, *, deadline: Deadline = math.inf, attempts: Optional[int] = None,
          discard: Callable[[T], None] = lambda outcome: None, exhausted: Optional[Callable[[T], T]] = None) -> T:
    """``action()`` until ``classify`` calls its outcome DONE or FAIL, or the bounds are reached: at most
    ``attempts`` tries, and no pause that would end after ``deadline`` (:func:`time.monotonic`; a function
    is asked anew after each try, for a deadline that progress pushes back).  A returned outcome tried again
    is ``discard``-ed first (a response to close).  ``classify`` may also act on an outcome before the next
    try (drop a stale staged copy)."""
    if attempts is None and deadline == math.inf:
        raise ValueError("a retry needs a bound: attempts, a deadline, or both")
    pauses = 0
    for attempt in itertools.count(1):
        try:
            outcome: Union[T, Exception] = action()
        except Exception as exc:  # the classifier decides: one it does not retry is raised again
            outcome = exc
        verdict = classify(outcome)
        pause = 0.0
        if verdict is Verdict.BACK_OFF:
            pause, pauses = schedule.pause(pauses), pauses + 1
        if verdict in (Verdict.DONE, Verdict.FAIL):
            return _give(outcome)
        if attempt == attempts or time.monotonic() + pause > (deadline() if callable(deadline) else deadline):
            return _give(outcome, exhausted)
        if not isinstance(outcome, Exception):
            discard(outcome)
        time.sleep(pause)
    raise AssertionError("unreachable: itertools.count never ends")


def until(check: Callable[[], Optional[T]], schedule: Schedule, deadline: Deadline,
          timed_out: Callable[[], Exception]) -> T:
    """``check()`` until it answers (anything but None), pausing by ``schedule`` between asks; raises
    ``timed_out()`` when the next pause would end after ``deadline``.  An error ``check`` raises ends it."""
    def give_up(_) -> Optional[T]:
        raise timed_out()

    answer = retry(check, lambda answer: Verdict.BACK_OFF if answer is None else Verdict.DONE, schedule,
                   deadline=deadline, exhausted=give_up)
    assert answer is not None  # only an answer is DONE
    return answer


def _give(outcome, exhausted=None):
    if isinstance(outcome, Exception):
        raise outcome
    return exhausted(outcome) if exhausted is not None else outcome
