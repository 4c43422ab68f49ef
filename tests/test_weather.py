"""The weather profile and its pure pieces: loading, the training timeline (clock cycles), the
sampling slots and the fault schedule, driven as state machines on a fake clock."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from harness.weather import (
    CALLS,
    Fault,
    FaultSchedule,
    Latency,
    SampleSlots,
    TrainingTimeline,
    WeatherError,
    load_weather,
    parse_weather,
)

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "weather"


# -- profiles ---------------------------------------------------------------------------------


def test_the_committed_profiles_load():
    calm = load_weather(FIXTURES / "tinker-like.toml")
    assert calm.latency.cycle_s == 10.0 and calm.time_scale == 1.0
    assert calm.faults == ()  # faults are off in the cloud-like profile
    stormy = load_weather(FIXTURES / "stormy.toml")
    assert stormy.time_scale == 0.001 and stormy.seconds(stormy.latency.cycle_s) == 0.01
    assert {f.error for f in stormy.faults} >= {"status", "disconnect", "failed", "hang"}
    assert (
        stormy.without_faults().faults == () and stormy.without_faults().latency == stormy.latency
    )


def test_every_tinker_like_number_names_its_source():
    lines = (FIXTURES / "tinker-like.toml").read_text().splitlines()
    for i, line in enumerate(lines):
        if "=" in line and not line.lstrip().startswith("#"):
            assert lines[i - 1].lstrip().startswith("#"), f"no comment above {line!r}"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("time_scale = 0", "bad.toml: time_scale: must be positive"),
        ("tiem_scale = 1", "bad.toml: tiem_scale: unknown key"),
        ("[latency]\ncycle_s = 'ten'", "bad.toml: latency.cycle_s: must be a number"),
        ("[latency]\ncycle = 1", "bad.toml: latency.cycle: unknown key"),
        ("[latency]\nsave_s = -1", "bad.toml: latency.save_s: must be >= 0"),
        ("[[faults]]\nerror = 'hang'\nat = 1", "bad.toml: faults[0].call: missing"),
        ("[[faults]]\ncall = 'sampel'\nerror = 'hang'\nat = 1", "faults[0].call: 'sampel' is not"),
        ("[[faults]]\ncall = 'sample'\nerror = 'checkpoint_expired'\nat = 1", "faults[0].error:"),
        ("[[faults]]\ncall = 'sample'\nerror = 'status'\nstatus = 404\nat = 1", ".status: must be"),
        ("[[faults]]\ncall = 'sample'\nerror = 'hang'", "faults[0]: give exactly one of 'at'"),
        ("[[faults]]\ncall = 'sample'\nerror = 'hang'\nat = 0", "faults[0].at: calls count from 1"),
        ("[[faults]]\ncall = 'sample'\nerror = 'hang'\nrate = 2", "faults[0].rate: must lie in"),
        ("[[faults]]\ncall = 'sample'\nerror = 'hang'\nwhen = 'later'\nat = 1", "faults[0].when"),
        ("seed = 1.5", "bad.toml: seed: must be an integer"),
        ("time_scale = [", "bad.toml: not TOML"),
    ],
)
def test_a_bad_profile_is_one_line_naming_file_and_key(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(WeatherError) as caught:
        load_weather(path)
    assert message in str(caught.value) and "\n" not in str(caught.value)
    assert str(caught.value).startswith(str(path))


def test_a_missing_profile_is_one_line(tmp_path):
    with pytest.raises(WeatherError, match="no such weather profile"):
        load_weather(tmp_path / "none.toml")


def test_a_checkpoint_expires_only_after_its_save():
    weather = parse_weather(
        {"faults": [{"call": "save_state", "error": "checkpoint_expired", "at": 2}]}
    )
    assert weather.faults[0].when == "after"
    with pytest.raises(WeatherError, match="drop 'when'"):
        parse_weather(
            {
                "faults": [
                    {"call": "save_state", "error": "checkpoint_expired", "at": 2, "when": "before"}
                ]
            }
        )


# -- the training timeline ------------------------------------------------------------------


def test_back_to_back_requests_share_a_cycle_and_a_late_one_waits_for_the_next():
    timeline = TrainingTimeline(cycle_s=10.0)
    assert timeline.queue(3.0) == 20.0  # waits for the cycle starting at 10, ends at 20
    assert timeline.queue(3.0) == 20.0  # optim_step right behind: the same cycle
    assert timeline.queue(10.0) == 20.0  # queued as the cycle starts: runs in it
    assert timeline.queue(10.5) == 30.0  # just missed it


def test_a_save_runs_after_the_requests_ahead_and_holds_back_those_behind():
    timeline = TrainingTimeline(cycle_s=10.0, save_s=4.0)
    assert timeline.queue(1.0) == 20.0
    assert timeline.queue(1.0, save=True) == 24.0
    assert timeline.queue(1.0) == 40.0  # the first cycle starting after the save


def test_a_cycle_trains_cycle_tokens_and_more_spill_into_the_next():
    timeline = TrainingTimeline(cycle_s=10.0, cycle_tokens=100)
    assert timeline.queue(1.0, tokens=60) == 20.0  # the cycle at 10 has room for it
    assert timeline.queue(2.0, tokens=60) == 30.0  # 40 tokens fit there, 20 spill to 20
    assert timeline.queue(3.0) == 30.0  # an optim_step right behind shares the last cycle
    assert timeline.queue(25.0, tokens=250) == 60.0  # three cycles from 30: 100, 100, 50
    assert timeline.queue(31.0, tokens=50) == 60.0  # the half-filled cycle at 50 takes it
    assert timeline.queue(31.0, tokens=1) == 70.0  # it is full: the next one


def test_no_cycles_means_no_wait():
    timeline = TrainingTimeline(cycle_s=0.0)
    assert timeline.queue(3.5) == 3.5


class TimelineMachine(RuleBasedStateMachine):
    """Requests queued at arbitrary moments of a fake clock finish as the cycle rules say."""

    @initialize(cycle_s=st.sampled_from([0.01, 1.0, 10.0]), save_s=st.floats(0, 20))
    def start(self, cycle_s, save_s):
        self.timeline = TrainingTimeline(cycle_s, save_s)
        self.cycle_s, self.save_s = cycle_s, save_s
        self.now = 0.0
        self.last_finish = -math.inf
        self.last_save = -math.inf
        self.last_cycle_request: tuple[float, float] | None = None  # (queued at, finish)

    @rule(seconds=st.floats(0, 30))
    def wait(self, seconds):
        self.now += seconds

    @rule()
    def cycle_request(self):
        finish = self.timeline.queue(self.now)
        ready = max(self.now, self.last_save)
        start = finish - self.cycle_s
        assert finish >= self.last_finish  # never before a request ahead of it
        assert start >= ready - 1e-9  # its cycle starts once it is queued, after the saves
        assert start - self.cycle_s < ready  # ... and it is the first such cycle
        assert abs(start / self.cycle_s - round(start / self.cycle_s)) < 1e-6  # a cycle start
        back_to_back = self.last_cycle_request and self.last_cycle_request[0] == self.now
        if back_to_back:  # queued together, no save between: the same cycle
            assert finish == self.last_cycle_request[1]
        self.last_cycle_request = (self.now, finish)
        self.last_finish = finish

    @rule()
    def save(self):
        finish = self.timeline.queue(self.now, save=True)
        assert finish == pytest.approx(max(self.now, self.last_finish) + self.save_s)
        self.last_finish = self.last_save = finish
        self.last_cycle_request = None


TestTimelineMachine = TimelineMachine.TestCase
TestTimelineMachine.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)


# -- the sampling slots -----------------------------------------------------------------------


def test_a_full_house_queues_the_next_request():
    slots = SampleSlots(capacity=2)
    for key in "abc":
        slots.arrive(key, 0.0)
    assert slots.served("b", 5.0) == []  # "a" ahead of it is still generating
    assert slots.served("a", 3.0) == [("a", 3.0), ("b", 5.0)]
    assert slots.served("c", 1.0) == [("c", 4.0)]  # waited for a's slot


class SlotsMachine(RuleBasedStateMachine):
    """Requests arrive and are generated in any order; their modelled service never breaks
    the cap, starts in arrival order, never before arrival, and never leaves a slot idle."""

    @initialize(capacity=st.integers(0, 3))
    def start(self, capacity):
        self.slots = SampleSlots(capacity)
        self.capacity = capacity
        self.now = 0.0
        self.arrived: list[tuple[int, float]] = []
        self.unserved: set[int] = set()
        self.service: dict[int, float] = {}
        self.finish: dict[int, float] = {}

    @rule(seconds=st.floats(0, 5))
    def wait(self, seconds):
        self.now += seconds

    @rule()
    def arrive(self):
        key = len(self.arrived)
        self.arrived.append((key, self.now))
        self.unserved.add(key)
        self.slots.arrive(key, self.now)

    @precondition(lambda self: self.unserved)
    @rule(data=st.data(), service=st.floats(0.1, 10))
    def generated(self, data, service):
        key = data.draw(st.sampled_from(sorted(self.unserved)))
        self.unserved.remove(key)
        self.service[key] = service
        for settled, finish in self.slots.served(key, service):
            assert settled not in self.finish  # each settles once
            self.finish[settled] = finish

    @invariant()
    def settled_exactly_the_served_prefix(self):
        prefix = []
        for key, _ in self.arrived:
            if key not in self.service:
                break
            prefix.append(key)
        assert sorted(self.finish) == prefix

    @invariant()
    def the_schedule_is_fifo_capped_and_work_conserving(self):
        if not hasattr(self, "finish"):
            return
        arrival = dict(self.arrived)
        starts = {k: self.finish[k] - self.service[k] for k in self.finish}
        order = sorted(self.finish)
        for a, b in itertools.pairwise(order):
            assert starts[a] <= starts[b] + 1e-9  # first come, first served
        for key, start in starts.items():
            assert start >= arrival[key] - 1e-9
            if self.capacity == 0:
                assert start == pytest.approx(arrival[key])
                continue
            busy = sum(1 for k in starts if starts[k] <= start + 1e-9 < self.finish[k] - 1e-9)
            assert busy <= self.capacity
            # It started on arrival or when a slot freed.
            assert start == pytest.approx(arrival[key]) or any(
                self.finish[k] == pytest.approx(start) for k in starts if k != key
            )


TestSlotsMachine = SlotsMachine.TestCase
TestSlotsMachine.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)


# -- the fault schedule -----------------------------------------------------------------------


def fault(**fields) -> Fault:
    return Fault(**{"call": "forward_backward", "error": "failed", **fields})


def test_a_named_call_fails_and_its_neighbours_do_not():
    schedule = FaultSchedule([fault(at=3, count=2)], seed=0)
    hits = [schedule.next("forward_backward") is not None for _ in range(6)]
    assert hits == [False, False, True, True, False, False]
    assert [(f.call, f.n) for f in schedule.fired] == [
        ("forward_backward", 3),
        ("forward_backward", 4),
    ]


def test_a_rate_strikes_about_that_often_and_the_same_calls_for_a_seed():
    faults = [fault(call="sample", error="hang", rate=0.1)]
    schedule = FaultSchedule(faults, 5)
    hits = [schedule.next("sample") is not None for _ in range(5000)]
    assert 0.08 < sum(hits) / len(hits) < 0.12
    again = FaultSchedule(faults, 5)
    assert [again.next("sample") is not None for _ in range(5000)] == hits
    other = FaultSchedule(faults, 6)
    assert [other.next("sample") is not None for _ in range(5000)] != hits


class ScheduleMachine(RuleBasedStateMachine):
    """Whatever the interleaving of call kinds, each kind's n-th call meets the first fault
    of the profile that names it and hits n; one schedule per kind agrees with the shared one."""

    faults = (
        fault(at=2),
        fault(call="sample", error="status", status=503, rate=0.3),
        fault(call="sample", error="hang", at=4, count=3),
        fault(call="optim_step", error="disconnect", when="after", rate=0.5),
    )

    @initialize(seed=st.integers(0, 1000))
    def start(self, seed):
        self.seed = seed
        self.schedule = FaultSchedule(self.faults, seed)
        self.alone = {call: FaultSchedule(self.faults, seed) for call in CALLS}
        self.counts: dict[str, int] = {}

    @rule(call=st.sampled_from(["forward_backward", "sample", "optim_step", "save_state"]))
    def call(self, call):
        n = self.counts[call] = self.counts.get(call, 0) + 1
        fired = self.schedule.next(call)
        expected = next(
            (f for i, f in enumerate(self.faults) if f.call == call and f.hits(n, self.seed, i)),
            None,
        )
        assert (fired.fault if fired else None) == expected
        assert fired is None or fired.n == n
        alone = self.alone[call].next(call)
        assert (alone.fault if alone else None) == expected


TestScheduleMachine = ScheduleMachine.TestCase
TestScheduleMachine.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)


def test_latency_defaults_answer_at_once():
    assert all(getattr(Latency(), f) == 0 for f in Latency.__dataclass_fields__)
