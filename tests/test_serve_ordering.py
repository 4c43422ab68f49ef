"""The server's request bookkeeping as state machines on a fake clock: `SeqQueue` (a model's
training requests in `seq_id` order), `SampleBatcher` (sampling requests in batches) and
`FutureStore` (request ids and their outcomes). Requests arrive in any order, some never, and
time moves in steps of any size; the invariants are the ones the SDK's callers rely on."""

from __future__ import annotations

import asyncio

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from harness.serve.future_store import Failure, FutureStore, Payload
from harness.serve.ordering import SampleBatcher, SeqQueue
from tests.support.strategies import waits
from tests.support.timers import FakeTimers

MACHINE = settings(max_examples=60, stateful_step_count=40)
EPS = 1e-9

# -- SeqQueue ---------------------------------------------------------------------------------

GAP_S = 5.0
FIRST = 1


def test_seq_queue_starts_in_order_once_and_gives_up_on_a_gap():
    timers = FakeTimers()
    started: list[int] = []
    gave_up: list[str] = []
    queue = SeqQueue(first_seq_id=1, gap_timeout_s=5.0, timers=timers)
    for seq_id in (3, 1, 2):
        queue.submit(seq_id, f"r{seq_id}", lambda s=seq_id: started.append(s), gave_up.append)
    assert queue.request_id(2) == "r2"
    queue.submit(6, "r6", lambda: started.append(6), gave_up.append)  # 4 and 5 never come
    timers.advance(4.9)
    assert gave_up == []
    timers.advance(0.1)
    queue.submit(7, "r7", lambda: started.append(7), gave_up.append)
    assert started == [1, 2, 3, 7]
    assert gave_up == ["seq_id 6 waited 5 s for seq_id 4, which never arrived (a request of"
                       " this model was lost before reaching the server)"]  # fmt: skip


class SeqQueueMachine(RuleBasedStateMachine):
    """A model's requests arrive in any order, some never, some again (the SDK resends one
    whose answer was lost). Each is answered once: started, or given up on. Starts run in
    `seq_id` order, a request waits only behind a hole, a hole is passed only once a request
    behind it has waited `gap_timeout_s`, and no request waits longer than that."""

    def __init__(self):
        super().__init__()
        self.timers = FakeTimers()
        self.queue = SeqQueue(FIRST, GAP_S, self.timers)
        self.requests: dict[str, tuple[int, float]] = {}  # request id -> (seq_id, arrival)
        self.remembered: dict[int, str] = {}  # seq_id -> the request id a resend gets
        # (request id, "start" | "gap" | "late", time, timer callbacks run by then)
        self.answers: list[tuple[str, str, float, int]] = []
        self.submitting = False

    def answer(self, request_id: str, how: str) -> None:
        assert request_id not in {a[0] for a in self.answers}, f"{request_id} answered twice"
        if how == "gap" and self.submitting:
            how = "late"  # refused as it arrived: its seq_id was passed already
        self.answers.append((request_id, how, self.timers.now, self.timers.fired))

    def passed(self) -> int:
        """The highest seq_id started or given up on while waiting (FIRST - 1 if none)."""
        done = [self.requests[r][0] for r, how, *_ in self.answers if how != "late"]
        return max(done, default=FIRST - 1)

    def waiting(self) -> dict[int, float]:
        answered = {a[0] for a in self.answers}
        return {s: t for r, (s, t) in self.requests.items() if r not in answered}

    @rule(seq_id=st.integers(FIRST, FIRST + 9))
    def submit(self, seq_id):
        remembered = self.queue.request_id(seq_id)
        assert remembered == self.remembered.get(seq_id)
        if remembered is not None:
            return  # a resend: the server answers it with the request it already took
        passed = self.passed()
        request_id = f"r{len(self.requests)}"
        self.requests[request_id] = (seq_id, self.timers.now)
        self.submitting = True
        self.queue.submit(
            seq_id,
            request_id,
            lambda: self.answer(request_id, "start"),
            lambda _: self.answer(request_id, "gap"),
        )
        self.submitting = False
        late = any(r == request_id and how == "late" for r, how, *_ in self.answers)
        assert late == (seq_id <= passed)
        if not late:
            self.remembered[seq_id] = request_id

    @rule(seconds=waits(GAP_S))
    def wait(self, seconds):
        self.timers.advance(seconds)

    @invariant()
    def starts_increase(self):
        starts = [self.requests[r][0] for r, how, *_ in self.answers if how == "start"]
        assert starts == sorted(set(starts))  # so each seq_id starts at most once

    @invariant()
    def a_hole_is_passed_only_after_a_deadline(self):
        started: set[int] = set()
        for request_id, how, at, _ in self.answers:
            seq_id = self.requests[request_id][0]
            if how != "start":
                continue
            for hole in set(range(FIRST, seq_id)) - started:
                assert any(
                    kind == "gap" and self.requests[r][0] >= hole and t <= at
                    for r, kind, t, _ in self.answers
                ), f"seq_id {seq_id} started at {at} past the hole at {hole}"
            started.add(seq_id)

    @invariant()
    def giving_up_waits_out_a_deadline(self):
        batches: dict[int, list[tuple[str, float]]] = {}
        for request_id, how, at, fired in self.answers:
            if how == "gap":
                batches.setdefault(fired, []).append((request_id, at))
        for gave_up in batches.values():
            at = gave_up[0][1]
            assert any(self.requests[r][1] + GAP_S <= at + EPS for r, _ in gave_up)

    @invariant()
    def a_request_waits_only_behind_a_hole_and_not_past_its_deadline(self):
        waiting = self.waiting()
        for seq_id, arrival in waiting.items():
            assert arrival + GAP_S > self.timers.now, f"seq_id {seq_id} waits past its deadline"
            below = range(self.passed() + 1, seq_id)
            assert any(s not in waiting for s in below), f"seq_id {seq_id} waits for nothing"


TestSeqQueueMachine = SeqQueueMachine.TestCase
TestSeqQueueMachine.settings = MACHINE


# -- SampleBatcher ----------------------------------------------------------------------------

WINDOW_S = 0.02
MAX_WAIT_S = 1.0
CLONE = 1_000_000_000


def test_sample_batcher_waits_for_holes_then_starts_one_ordered_batch():
    timers = FakeTimers()
    batches: list[list[tuple[str, int]]] = [[]]
    batcher = SampleBatcher(window_s=0.02, max_wait_s=5.0, timers=timers)
    # Shuffled and spread out, as the SDK's requests arrive.
    arrivals = [("a", 3), ("b", CLONE + 1), ("a", 0), ("a", 5), ("b", CLONE), ("a", 1)]
    arrivals += [("a", 4), ("b", CLONE + 2), ("a", 2)]
    for sampler, seq_id in arrivals:
        batcher.submit(sampler, seq_id, lambda s=sampler, i=seq_id: batches[-1].append((s, i)))
        timers.advance(0.005)
    assert batches == [[]]  # not quiet for the window yet
    timers.advance(0.1)
    batches.append([])
    batcher.submit("a", 7, lambda: batches[-1].append(("a", 7)))  # 6 is missing
    timers.advance(0.1)
    held = list(batches[-1])
    batcher.submit("a", 6, lambda: batches[-1].append(("a", 6)))
    timers.advance(0.1)
    first, second = batches
    assert first == [("a", i) for i in range(6)] + [("b", CLONE + i) for i in range(3)]
    assert held == [] and second == [("a", 6), ("a", 7)]


class SampleBatcherMachine(RuleBasedStateMachine):
    """Requests of two samplers, each with a clone (ids from 1e9), arrive in any order, some
    never. Everything queued starts together, once, ordered by client and `seq_id`; a batch
    starts when no request came for the window and no client's ids have a hole, or else once
    its first request has waited `max_wait_s`; and none waits longer."""

    def __init__(self):
        super().__init__()
        self.timers = FakeTimers()
        self.batcher = SampleBatcher(WINDOW_S, MAX_WAIT_S, self.timers)
        self.arrived: dict[tuple[int, int], float] = {}
        self.starts: list[tuple[tuple[int, int], float, int]] = []  # (request, time, batch)

    def client(self, request: tuple[int, int]) -> tuple[int, int]:
        sampler, seq_id = request
        return sampler, seq_id // CLONE

    def queued(self) -> list[tuple[int, int]]:
        started = {request for request, *_ in self.starts}
        return [request for request in self.arrived if request not in started]

    @rule(data=st.data())
    def submit(self, data):
        fresh = [
            (sampler, clone * CLONE + n)
            for sampler in (0, 1)
            for clone in (0, 1)
            for n in range(5)
            if (sampler, clone * CLONE + n) not in self.arrived
        ]
        if not fresh:
            return
        request = data.draw(st.sampled_from(fresh))
        self.arrived[request] = self.timers.now
        self.batcher.submit(*request, lambda: self.start(request))

    def start(self, request: tuple[int, int]) -> None:
        assert request not in {r for r, *_ in self.starts}, f"{request} started twice"
        self.starts.append((request, self.timers.now, self.timers.fired))

    @rule(seconds=waits(MAX_WAIT_S))
    def wait(self, seconds):
        queued = self.queued()
        batches_before = {batch for *_, batch in self.starts}
        self.timers.advance(seconds)
        batches = {batch for *_, batch in self.starts} - batches_before
        assert len(batches) <= 1  # a batch takes every queued request: none is left for another
        if batches:
            assert self.queued() == [] and {r for r, *_, b in self.starts if b in batches} == set(
                queued
            )

    def batches(self) -> list[list[tuple[tuple[int, int], float]]]:
        grouped: dict[int, list[tuple[tuple[int, int], float]]] = {}
        for request, at, batch in self.starts:
            grouped.setdefault(batch, []).append((request, at))
        return list(grouped.values())

    @invariant()
    def a_batch_starts_in_client_and_seq_id_order(self):
        for batch in self.batches():
            requests = [request for request, _ in batch]
            assert requests == sorted(requests)

    def hole(self, requests: list[tuple[int, int]], next_id: dict[tuple[int, int], int]) -> bool:
        """Whether some client's ids among `requests` do not run on from where its last batch
        ended (`next_id`, updated to where this one ends); late ids below it do not count."""
        hole = False
        for client in {self.client(request) for request in requests}:
            first = next_id.get(client, client[1] * CLONE)
            ids = sorted(r[1] for r in requests if self.client(r) == client and r[1] >= first)
            hole |= ids != list(range(first, first + len(ids)))
            if ids:
                next_id[client] = ids[-1] + 1
        return hole

    @invariant()
    def a_batch_starts_after_the_quiet_window_if_whole_and_at_its_deadline_if_not(self):
        next_id: dict[tuple[int, int], int] = {}
        for batch in self.batches():
            at = batch[0][1]
            arrivals = [self.arrived[request] for request, _ in batch]
            deadline = min(arrivals) + MAX_WAIT_S
            if self.hole([request for request, _ in batch], next_id):
                assert abs(at - deadline) < EPS, f"a batch with a hole started at {at}"
            else:
                assert abs(at - min(max(arrivals) + WINDOW_S, deadline)) < EPS

    @invariant()
    def starts_increase_per_client_unless_a_request_came_late(self):
        for i, (request, _, _) in enumerate(self.starts):
            for earlier, at, _ in self.starts[:i]:
                if self.client(earlier) == self.client(request) and earlier[1] > request[1]:
                    assert self.arrived[request] >= at, f"{request} overtaken by {earlier}"

    @invariant()
    def nothing_waits_past_its_deadline_or_a_quiet_window_with_no_hole(self):
        queued = self.queued()
        if queued:
            arrivals = [self.arrived[request] for request in queued]
            assert self.timers.now < min(arrivals) + MAX_WAIT_S
            next_id: dict[tuple[int, int], int] = {}
            for batch in self.batches():
                self.hole([request for request, _ in batch], next_id)
            if not self.hole(queued, next_id):
                assert self.timers.now < max(arrivals) + WINDOW_S


TestSampleBatcherMachine = SampleBatcherMachine.TestCase
TestSampleBatcherMachine.settings = MACHINE


# -- FutureStore ------------------------------------------------------------------------------

KEEP_S = 10.0
OUTCOMES = st.one_of(
    st.builds(Payload, st.binary(max_size=4), st.just("application/json")),
    st.builds(Failure, st.text(max_size=4), st.sampled_from(["user", "server"])),
)


def test_results_are_forgotten_a_while_after_they_settle():
    clock = FakeTimers()
    store = FutureStore(hold_s=0.01, keep_s=10.0, clock=clock)
    settled, pending = store.open(), store.open()
    store.settle(settled, Payload(b"{}", "application/json"))
    store.settle(settled, Failure("too late", "server"))  # the first outcome stands
    assert asyncio.run(store.retrieve(settled)) == Payload(b"{}", "application/json")
    assert asyncio.run(store.retrieve(pending)) is None  # held for hold_s, then try again
    clock.now = 11.0
    store.open()
    assert settled not in store and pending in store
    store.close(Failure("stopped", "server"))
    assert asyncio.run(store.retrieve(pending)) == Failure("stopped", "server")
    assert asyncio.run(store.retrieve(store.open())) == Failure("stopped", "server")


class FutureStoreMachine(RuleBasedStateMachine):
    """Requests open, settle (some more than once, some never), are polled, and the store may
    close. Every request resolves exactly once: its first outcome, or the close's failure if it
    was pending; a pending request is never forgotten, a settled one is kept `keep_s`, and one
    settled longer ago is gone after the next open."""

    def __init__(self):
        super().__init__()
        self.clock = FakeTimers()
        self.store = FutureStore(hold_s=0.0, keep_s=KEEP_S, clock=self.clock)
        self.loop = asyncio.new_event_loop()
        self.opened: list[str] = []
        self.outcomes: dict[str, tuple[Payload | Failure, float]] = {}  # first outcome, when
        self.last_open = 0.0
        self.closed: Failure | None = None

    def teardown(self):
        self.loop.close()

    @rule()
    def open(self):
        self.last_open = self.clock.now
        request_id = self.store.open()
        assert request_id not in self.opened
        self.opened.append(request_id)
        if self.closed is not None:
            self.outcomes[request_id] = (self.closed, self.clock.now)

    @precondition(lambda self: self.opened)
    @rule(data=st.data(), outcome=OUTCOMES)
    def settle(self, data, outcome):
        request_id = data.draw(st.sampled_from(self.opened))
        known = request_id in self.store
        self.store.settle(request_id, outcome)
        if known and request_id not in self.outcomes:
            self.outcomes[request_id] = (outcome, self.clock.now)

    @precondition(lambda self: self.closed is None)
    @rule(message=st.text(max_size=4))
    def close(self, message):
        self.closed = Failure(message, "server")
        self.store.close(self.closed)
        for request_id in self.opened:
            if request_id in self.store and request_id not in self.outcomes:
                self.outcomes[request_id] = (self.closed, self.clock.now)

    @rule(seconds=waits(KEEP_S))
    def wait(self, seconds):
        self.clock.advance(seconds)

    @invariant()
    def every_request_resolves_exactly_once_to_its_first_outcome(self):
        for request_id in self.opened:
            if request_id in self.store:
                polled = self.loop.run_until_complete(self.store.retrieve(request_id))
                expected = self.outcomes.get(request_id)
                assert polled == (expected[0] if expected else None)
                assert self.closed is None or polled is not None  # closed: nothing pending

    @invariant()
    def a_request_is_kept_while_pending_and_keep_s_after_it_settled(self):
        for request_id in self.opened:
            settled = self.outcomes.get(request_id)
            # (EPS: at the very moment keep_s runs out, float rounding decides.)
            if settled is None or self.clock.now - settled[1] < KEEP_S - EPS:
                assert request_id in self.store
            elif settled[1] < self.last_open - KEEP_S - EPS:
                assert request_id not in self.store  # forgotten at the last open


TestFutureStoreMachine = FutureStoreMachine.TestCase
TestFutureStoreMachine.settings = MACHINE
