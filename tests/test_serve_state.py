"""The server's bookkeeping on its own: request ordering, sampling batches, result lifetimes,
silent sessions; and, through the SDK, what a session's end and the sampler cap release."""

from __future__ import annotations

import asyncio
import os
import random
import warnings

import httpx
import pytest
import tinker
from tinker import types

from harness.backends.local import LocalServiceClient
from harness.serve import Limits, LocalTinkerServer
from harness.serve import client as local_server
from harness.serve.futures import Failure, FutureStore, Payload
from harness.serve.ordering import SampleBatcher, SeqQueue
from harness.serve.state import HttpError, ServerState
from tests.support.serve import KEY, MODEL, sdk_client, start_server

TIMEOUT_S = 30


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_seq_queue_starts_in_order_once_and_gives_up_on_a_gap():
    async def scenario() -> tuple[list[int], list[str]]:
        started: list[int] = []
        gave_up: list[str] = []
        queue = SeqQueue(first_seq_id=1, gap_timeout_s=0.05)
        for seq_id in (3, 1, 2):
            queue.submit(seq_id, f"r{seq_id}", lambda s=seq_id: started.append(s), gave_up.append)
        assert queue.request_id(2) == "r2"
        queue.submit(6, "r6", lambda: started.append(6), gave_up.append)  # 4 and 5 never come
        await asyncio.sleep(0.1)
        queue.submit(7, "r7", lambda: started.append(7), gave_up.append)
        return started, gave_up

    started, gave_up = asyncio.run(scenario())
    assert started == [1, 2, 3, 7]
    assert gave_up == ["seq_id 6 waited 0 s for seq_id 4, which never arrived (a request of"
                       " this model was lost before reaching the server)"]  # fmt: skip


def test_sample_batcher_waits_for_holes_then_starts_one_ordered_batch():
    async def scenario() -> list[list[tuple[str, int]]]:
        batches: list[list[tuple[str, int]]] = [[]]
        batcher = SampleBatcher(window_s=0.02, max_wait_s=5.0)
        arrivals = [("a", i) for i in range(6)] + [("b", 1_000_000_000 + i) for i in range(3)]
        random.Random(0).shuffle(arrivals)
        for sampler, seq_id in arrivals:
            batcher.submit(sampler, seq_id, lambda s=sampler, i=seq_id: batches[-1].append((s, i)))
            await asyncio.sleep(0.005)  # shuffled and spread out, as the SDK's requests arrive
        await asyncio.sleep(0.1)
        batches.append([])
        batcher.submit("a", 7, lambda: batches[-1].append(("a", 7)))  # 6 is missing
        await asyncio.sleep(0.1)
        held = list(batches[-1])
        batcher.submit("a", 6, lambda: batches[-1].append(("a", 6)))
        await asyncio.sleep(0.1)
        return [*batches, held]

    first, second, held = asyncio.run(scenario())
    assert first == [("a", i) for i in range(6)] + [("b", 1_000_000_000 + i) for i in range(3)]
    assert held == [] and second == [("a", 6), ("a", 7)]


def test_results_are_forgotten_a_while_after_they_settle():
    clock = Clock()
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


def test_a_silent_session_is_dropped_and_a_finished_one_refused(tmp_path):
    clock = Clock()
    state = ServerState(
        LocalServiceClient(tmp_path), {}, Limits(session_timeout_s=60.0), clock=clock
    )
    silent, finished = state.create_session(), state.create_session()
    state.finish(finished)
    clock.now = 30.0
    state.heartbeat(silent)  # keeps it alive
    clock.now = 80.0
    state.create_session()  # sweeps sessions silent for 60 s: not this one yet
    state.heartbeat(silent)
    clock.now = 200.0
    state.create_session()
    for session_id in (silent, finished):
        with pytest.raises(HttpError, match="has finished") as error:
            state.heartbeat(session_id)
        assert error.value.status == 410  # the SDK stops its heartbeat on 410
    with pytest.raises(HttpError, match="does not exist") as error:
        state.heartbeat("nobody")
    assert error.value.status == 404


@pytest.fixture
def server(tmp_path, monkeypatch):
    monkeypatch.setenv("TINKER_TELEMETRY", "0")
    server = start_server(tmp_path, Limits(max_samplers=2))
    yield server
    server.stop()


def test_samplers_beyond_the_cap_and_models_of_a_finished_session_are_released(server):
    client = sdk_client(server)
    trainer = client.create_lora_training_client(base_model=MODEL, rank=2).result(TIMEOUT_S)
    samplers = [trainer.save_weights_and_get_sampling_client().result() for _ in range(3)]
    prompt, params = types.ModelInput.from_ints([1, 2, 3]), types.SamplingParams(max_tokens=2)
    assert samplers[2].sample(prompt, 1, params).result(TIMEOUT_S).sequences
    with pytest.raises(tinker.NotFoundError, match="keeps the 2 most recently used samplers"):
        samplers[0].sample(prompt, 1, params).result(TIMEOUT_S)

    client.close("success").result(timeout=TIMEOUT_S)
    answer = httpx.post(
        f"{server.base_url}/api/v1/get_info",
        headers={"X-API-Key": KEY},
        json={"model_id": trainer.model_id},
    )
    assert answer.status_code == 404


def test_loading_into_an_existing_model_is_refused_in_its_turn(server):
    client = sdk_client(server)
    trainer = client.create_lora_training_client(base_model=MODEL, rank=2).result(TIMEOUT_S)
    path = trainer.save_state("here").result(TIMEOUT_S).path
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        refused = trainer.load_state(path)
    after = trainer.save_state("after")
    with pytest.raises(tinker.RequestFailedError, match="not supported by the local backend"):
        refused.result(timeout=TIMEOUT_S)
    assert after.result(timeout=TIMEOUT_S).path.endswith("/after")  # the next one still runs
    client.close("success").result(timeout=TIMEOUT_S)


def test_the_local_server_backend_starts_a_server_and_stops_it(tmp_path, monkeypatch):
    started: list[LocalTinkerServer] = []

    class Recorded(LocalTinkerServer):
        def start(self):
            started.append(self)
            return super().start()

    monkeypatch.setattr(local_server, "LocalTinkerServer", Recorded)
    monkeypatch.delenv("TINKER_TELEMETRY", raising=False)
    with local_server.local_server_service_client(MODEL, tmp_path, seed=0) as client:
        assert isinstance(client, tinker.ServiceClient)
        assert os.environ["TINKER_TELEMETRY"] == "0"
        trainer = client.create_lora_training_client(base_model=MODEL, rank=2).result(TIMEOUT_S)
        assert trainer.save_state("kept").result(TIMEOUT_S).path.endswith("/weights/kept")
    assert "TINKER_TELEMETRY" not in os.environ
    assert list(tmp_path.rglob("kept/adapter_model.safetensors"))
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{started[0].base_url}/api/v1/healthz")
