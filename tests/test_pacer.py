"""hpcfs/net/pacer: the one pacer every transport waits by.  The schedule as pure functions; the bounds,
the verdicts and the deadline with actions that count their calls; and the pacer behind each protocol
against the local servers (a busy answer retried a bounded number of times, an error not retried, an
account's busy answer kept apart from the server's health).  Tests count tries, never time them."""
import dataclasses
import errno
import socket
import time

import pytest

from fixtures_firecrest import start_firecrest
from hpcfs import errors, net
from hpcfs.firecrest import streamer
from hpcfs.servers.firecrest import server as fc
from hpcfs.urls import open_backend

pytestmark = pytest.mark.timeout(60)


class Counting:
    """An action that returns (or raises) the next of ``outcomes``, then the last one forever."""

    def __init__(self, *outcomes):
        self.outcomes, self.calls = list(outcomes), 0

    def __call__(self):
        outcome = self.outcomes[min(self.calls, len(self.outcomes) - 1)]
        self.calls += 1
        if isinstance(outcome, Exception):
            raise outcome
        return outcome


class Expired(Exception):
    pass


def busy_if(*busy):
    return lambda outcome: net.Verdict.BACK_OFF if outcome in busy or isinstance(outcome, errors.Busy) \
        else net.Verdict.DONE


# -- the schedule -----------------------------------------------------------------------------------------
def test_pauses_grow_by_the_factor_up_to_the_longest():
    staging = net.Schedule(0.2, growth=1.25, longest=1.0)
    assert [round(staging.nominal(n), 4) for n in range(9)] == [0.2, 0.25, 0.3125, 0.3906, 0.4883, 0.6104,
                                                                 0.7629, 0.9537, 1.0]
    assert net.Policy(backoff=0.2, max_backoff=8.0).schedule.nominal(10) == 8.0
    assert staging.nominal(100_000) == 1.0  # hours of polling overflow nothing


def test_jitter_stays_within_its_bounds():
    schedule = net.Schedule(1.0, growth=2.0, jitter=0.5)
    pauses = [schedule.pause(3) for _ in range(2000)]
    assert all(4.0 <= pause <= 8.0 for pause in pauses)
    assert max(pauses) - min(pauses) > 1.0  # spread, not one instant for every client
    assert {net.Schedule(1.0).pause(3) for _ in range(100)} == {8.0}  # no jitter: the nominal pause


# -- bounds and verdicts -----------------------------------------------------------------------------------
def test_attempts_bound_the_tries_and_the_last_outcome_is_returned():
    action = Counting("busy")
    assert net.retry(action, busy_if("busy"), net.Schedule(0.0), attempts=4) == "busy"
    assert action.calls == 4


def test_a_busy_error_is_raised_again_when_the_tries_run_out():
    action = Counting(errors.Busy("full"))
    with pytest.raises(errors.Busy):
        net.retry(action, busy_if(), net.Schedule(0.0), attempts=3)
    assert action.calls == 3


def test_busy_then_an_answer():
    action = Counting("busy", "busy", "answer")
    assert net.retry(action, busy_if("busy"), net.Schedule(0.001), attempts=10) == "answer"
    assert action.calls == 3


@pytest.mark.parametrize("outcome", ["refused", errors.NotFound("gone")])
def test_a_fail_or_done_outcome_is_not_retried(outcome):
    action = Counting(outcome)
    verdict = net.Verdict.FAIL if outcome == "refused" else net.Verdict.DONE
    try:
        assert net.retry(action, lambda _: verdict, net.Schedule(0.0), attempts=5) == "refused"
    except errors.NotFound:
        pass
    assert action.calls == 1


def test_again_is_retried_at_once_within_the_attempts():
    action, expired = Counting(Expired("staged copy")), []

    def classify(outcome):
        expired.append(outcome)  # a classifier may act on the outcome: drop what expired
        return net.Verdict.AGAIN if isinstance(outcome, Expired) else net.Verdict.DONE

    with pytest.raises(Expired):
        net.retry(action, classify, attempts=2)
    assert action.calls == len(expired) == 2


def test_no_pause_ends_after_the_deadline():
    action = Counting("busy")
    # the first pause would end an hour from now, past the deadline: give up at once rather than sleep
    assert net.retry(action, busy_if("busy"), net.Schedule(3600.0), deadline=time.monotonic() + 60) == "busy"
    assert action.calls == 1
    short = Counting("busy")
    assert net.retry(short, busy_if("busy"), net.Schedule(0.01, growth=1.0), deadline=time.monotonic() + 0.3)
    assert short.calls >= 2  # retried, and stopped by the deadline alone: no attempts given


def test_a_retry_without_any_bound_is_refused():
    with pytest.raises(ValueError):
        net.retry(Counting("busy"), busy_if("busy"))


def test_only_retried_outcomes_are_discarded():
    discarded = []
    action = Counting("busy-1", "busy-2", "busy-3")
    assert net.retry(action, busy_if("busy-1", "busy-2", "busy-3"), net.Schedule(0.0), attempts=3,
                     discard=discarded.append) == "busy-3"
    assert discarded == ["busy-1", "busy-2"]  # the one returned is the caller's to close


def test_until_polls_until_an_answer_then_times_out():
    poll = Counting(None, None, None, "ended")
    assert net.until(poll, net.Schedule(0.001, growth=1.25, longest=0.01), time.monotonic() + 30,
                     lambda: errors.TimedOut("never")) == "ended"
    assert poll.calls == 4
    never = Counting(None)
    with pytest.raises(errors.TimedOut):
        net.until(never, net.Schedule(3600.0), time.monotonic() + 60, lambda: errors.TimedOut("never"))
    assert never.calls == 1


def test_a_deadline_that_progress_moves_is_asked_anew_after_each_try():
    """A poll of something that grows (a server's copy) goes on while it grows: here the deadline lies an
    hour ahead after each of the first three polls, then in the past, as when the growth stopped."""
    poll = Counting(None)
    ahead = iter([3600.0, 3600.0, 3600.0, -1.0])
    with pytest.raises(errors.TimedOut):
        net.until(poll, net.Schedule(0.001), lambda: time.monotonic() + next(ahead), lambda: errors.TimedOut("stalled"))
    assert poll.calls == 4


# -- the pacer behind each protocol, on the wire -----------------------------------------------------------
def test_em_423_is_retried_a_bounded_number_of_times_and_spares_the_servers_health(make_em_server):
    em_server = make_em_server()
    backend, _ = open_backend(em_server.url("/"), busy_timeout=0.6, busy_backoff=0.05)
    try:
        em_server.knobs.busy_responses = 100
        with pytest.raises(errors.Busy) as busy:
            backend.list("/pod-a")
        assert busy.value.errno == errno.EAGAIN
        # pauses of at least 0.025, 0.05, 0.1, 0.2 s fit in 0.6 s: at most five tries
        assert 2 <= em_server.server.statuses[423] <= 5
        em_server.knobs.busy_responses = 0
        assert backend.list("/pod-a") == []  # one account's slot was taken: the server's breaker stays shut
    finally:
        backend.close()


@pytest.fixture
def firecrest(tmp_path):
    handle = start_firecrest(str(tmp_path))
    backend, _ = open_backend(handle.url("/"))
    handle.log.reset()
    yield handle, backend
    backend.close()
    handle.server.stop()


def test_firecrest_503_is_retried_within_the_attempts(firecrest):
    handle, backend = firecrest
    net.set_policy(backend.client.api_url, net.Policy(attempts=3, backoff=0.001, max_backoff=0.01,
                                                      breaker_threshold=100))
    handle.knobs.extra.update(busy_status=503, retry_after=0)
    handle.knobs.busy_responses = 100
    with pytest.raises(errors.HpcfsError):
        backend.stat("/")
    assert handle.log.total(fc.STAT) == 3


def test_firecrest_error_status_is_not_retried(firecrest):
    handle, backend = firecrest
    net.set_policy(backend.client.api_url, dataclasses.replace(net.Policy(), backoff=0.001))
    with pytest.raises(errors.NotFound):
        backend.stat("/missing")
    assert handle.log.total(fc.STAT) == 1


@pytest.fixture
def nothing_listening() -> streamer.Coordinates:
    """Coordinates of a local port nobody listens on: every sweep is refused at once."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return streamer.Coordinates(["127.0.0.1"], port, port, "secret")


def test_a_streamer_sweep_is_repeated_until_the_job_says_it_ended(nothing_listening):
    asked = Counting(None, None, errors.NotFound("the transfer job ended"))
    with pytest.raises(errors.NotFound):
        streamer.open_stream(nothing_listening, asked, time.monotonic() + 60, 1.0, "/f")
    assert asked.calls == 3  # swept three times, asking the job after each; its error ends the poll


def test_a_streamer_sweep_gives_up_at_the_deadline(nothing_listening):
    asked = Counting(None)
    with pytest.raises(errors.TimedOut):  # the next sweep's pause (0.25 s) would end after the deadline
        streamer.open_stream(nothing_listening, asked, time.monotonic() + 0.1, 1.0, "/f")
    assert asked.calls == 1


def test_the_protocols_keep_their_schedules():
    from hpcfs.firecrest import client as firecrest_client
    from hpcfs.uftp import backend as uftp_backend

    def shape(schedule):
        return schedule.first, schedule.growth, schedule.longest, schedule.jitter

    assert shape(firecrest_client.SIGN_POLLS) == (0.2, 1.25, 1.0, 1.0)  # staging looks: 0.2 s growing to 1 s
    assert shape(firecrest_client.JOB_POLLS) == (0.01, 2.0, 2.0, 1.0)
    assert shape(uftp_backend.BUSY_SCHEDULE) == (0.05, 2.0, 2.0, 0.5) and uftp_backend.BUSY_WAIT == 10.0
