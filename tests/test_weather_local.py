"""Weather in process: `LocalServiceClient(weather=...)` takes the profile's time and fails where
it says, with the errors the SDK raises once its retries are spent; a fault `after` a call
leaves the call's effect applied, one `before` leaves nothing."""

from __future__ import annotations

import time

import httpx
import numpy as np
import pytest
import tinker
import torch
from tinker import types
from tinker.lib.retryable_exception import RetryableException

from harness.backends.local import LocalServiceClient
from harness.backends.local.engine import Closed
from harness.weather import Weather, parse_weather
from tests.support.local_training import ADAM, adapter, batch

MODEL = "fixtures/tiny-qwen3"
PARAMS = types.SamplingParams(max_tokens=6, temperature=1.0, seed=11)
PROMPT = types.ModelInput.from_ints([5, 17, 42, 7])


def weather(**table) -> Weather:
    return parse_weather(table, "test.toml")


@pytest.fixture
def open_service(tmp_path):
    services = []

    def make(profile: Weather | None = None) -> LocalServiceClient:
        services.append(LocalServiceClient(tmp_path / "storage", seed=0, weather=profile))
        return services[-1]

    yield make
    for service in services:
        service.close()


def trainer_of(service):
    return service.create_lora_training_client(base_model=MODEL, rank=2, seed=0).result()


def grads(trainer) -> list[torch.Tensor | None]:
    return [p.grad for p in trainer.model.parameters() if p.requires_grad]


def has_gradients(trainer) -> bool:
    return any(g is not None and bool(g.abs().sum() > 0) for g in grads(trainer))


def fault(call: str, error: str, **fields) -> Weather:
    return weather(faults=[{"call": call, "error": error, "at": 1, **fields}])


# -- latency ------------------------------------------------------------------------------


def test_back_to_back_training_requests_share_one_clock_cycle(open_service):
    cycle = 0.4
    trainer = trainer_of(open_service(weather(latency={"cycle_s": cycle})))
    # Submitted just after a cycle starts, the two requests have most of a cycle to be queued
    # in before the next one starts, however loaded the machine is.
    time.sleep(cycle - time.monotonic() % cycle + 0.01)
    submitted = time.monotonic()
    fwd_bwd = trainer.forward_backward(batch(1), "ppo")
    optim = trainer.optim_step(ADAM)
    fwd_bwd.result()
    fwd_bwd_done = time.monotonic()
    optim.result()
    optim_done = time.monotonic()
    cycle_end = (np.floor(submitted / cycle) + 2) * cycle  # the next cycle starts, then ends
    assert fwd_bwd_done >= cycle_end - 1e-3
    assert optim_done - fwd_bwd_done < cycle / 2  # the same cycle, not the next
    late = trainer.forward_backward(batch(2), "ppo")  # queued mid-cycle: waits for the next
    queued = time.monotonic()
    late.result()
    assert time.monotonic() >= (np.floor(queued / cycle) + 2) * cycle - 1e-3


def test_time_scale_shrinks_the_cloud_latency(open_service):
    service = open_service(weather(time_scale=0.01, latency={"cycle_s": 10.0, "save_s": 5.0}))
    trainer = trainer_of(service)
    start = time.monotonic()
    trainer.forward_backward(batch(1), "ppo").result()
    trainer.save_state("scaled").result()
    elapsed = time.monotonic() - start
    assert elapsed >= 0.1 + 0.05 - 1e-3  # at least one 0.1 s cycle and a 0.05 s save
    assert elapsed < 5.0  # not the cloud's 15 s


def test_sampling_waits_for_a_slot_and_takes_ttft_plus_tokens(open_service):
    ttft, per_token = 0.15, 0.01
    capped = open_service(
        weather(latency={"ttft_s": ttft, "per_token_s": per_token, "max_concurrent_samples": 1})
    )
    sampler = capped.create_sampling_client(base_model=MODEL).result()
    start = time.monotonic()
    futures = [sampler.sample(PROMPT, 1, PARAMS) for _ in range(3)]
    results = [f.result() for f in futures]
    elapsed = time.monotonic() - start
    tokens = [len(r.sequences[0].tokens) for r in results]
    assert elapsed >= sum(ttft + per_token * n for n in tokens) - 1e-3  # one at a time

    free = open_service(weather(latency={"ttft_s": ttft, "per_token_s": per_token}))
    sampler = free.create_sampling_client(base_model=MODEL).result()
    start = time.monotonic()
    uncapped = [f.result() for f in [sampler.sample(PROMPT, 1, PARAMS) for _ in range(3)]]
    assert time.monotonic() - start < elapsed  # all three at once
    assert [r.sequences[0].tokens for r in uncapped] == [r.sequences[0].tokens for r in results]


# -- faults -------------------------------------------------------------------------------


def test_a_5xx_before_applying_skips_the_forward_backward(open_service):
    trainer = trainer_of(open_service(fault("forward_backward", "status", status=503)))
    with pytest.raises(tinker.InternalServerError) as caught:
        trainer.forward_backward(batch(1), "ppo").result()
    assert caught.value.status_code == 503
    assert isinstance(caught.value.response, httpx.Response)
    assert "the 1st forward_backward" in str(caught.value)
    assert not has_gradients(trainer)  # never applied
    trainer.forward_backward(batch(1), "ppo").result()  # the 2nd is fine
    assert has_gradients(trainer)


def test_a_408_is_the_sdks_plain_status_error(open_service):
    trainer = trainer_of(open_service(fault("optim_step", "status", status=408)))
    with pytest.raises(tinker.APIStatusError) as caught:
        trainer.optim_step(ADAM).result()
    assert caught.value.status_code == 408
    assert not isinstance(caught.value, tinker.InternalServerError)


def test_a_failure_after_applying_leaves_the_gradients_applied(open_service):
    trainer = trainer_of(open_service(fault("forward_backward", "failed", when="after")))
    with pytest.raises(tinker.RequestFailedError) as caught:
        trainer.forward_backward(batch(1), "ppo").result()
    assert caught.value.category == types.RequestErrorCategory.Server
    assert has_gradients(trainer)  # applied, then the answer failed


def test_a_dropped_connection_after_the_optimizer_step_still_stepped(open_service):
    trainer = trainer_of(open_service(fault("optim_step", "disconnect", when="after")))
    trainer.forward_backward(batch(1), "ppo").result()
    before = adapter(trainer)
    with pytest.raises(tinker.APIConnectionError):
        trainer.optim_step(ADAM).result()
    assert any(not torch.equal(a, b) for a, b in zip(before, adapter(trainer), strict=True))


def test_a_dropped_connection_before_the_optimizer_step_did_not_step(open_service):
    trainer = trainer_of(open_service(fault("optim_step", "disconnect")))
    trainer.forward_backward(batch(1), "ppo").result()
    before = adapter(trainer)
    with pytest.raises(tinker.APIConnectionError):
        trainer.optim_step(ADAM).result()
    assert all(torch.equal(a, b) for a, b in zip(before, adapter(trainer), strict=True))


def test_an_expired_promise_on_a_training_call_is_the_sdks_retryable_exception(open_service):
    trainer = trainer_of(open_service(fault("forward_backward", "expired", when="after")))
    with pytest.raises(RetryableException, match="Promise expired"):
        trainer.forward_backward(batch(1), "ppo").result()
    assert has_gradients(trainer)


def test_a_hung_request_never_answers_until_the_client_closes(open_service):
    service = open_service(fault("sample", "hang"))
    sampler = service.create_sampling_client(base_model=MODEL).result()
    hung = sampler.sample(PROMPT, 1, PARAMS)
    assert sampler.sample(PROMPT, 1, PARAMS).result(timeout=10).sequences  # the next answers
    with pytest.raises(TimeoutError):
        hung.result(timeout=0.3)
    service.close()
    with pytest.raises(Closed):
        hung.result(timeout=5)


def test_a_failed_sample_is_a_server_category_request_failure(open_service):
    service = open_service(weather(faults=[{"call": "sample", "error": "failed", "at": 2}]))
    sampler = service.create_sampling_client(base_model=MODEL).result()
    first, second = sampler.sample(PROMPT, 1, PARAMS), sampler.sample(PROMPT, 1, PARAMS)
    assert first.result().sequences
    with pytest.raises(tinker.RequestFailedError) as caught:
        second.result()
    assert caught.value.category == types.RequestErrorCategory.Server
    assert "the 2nd sample" in str(caught.value)


def test_http_errors_on_sampling_end_as_the_sdks_stuck_connection_error(open_service):
    service = open_service(fault("sample", "status", status=502))
    sampler = service.create_sampling_client(base_model=MODEL).result()
    with pytest.raises(tinker.APIConnectionError, match="Requests appear to be stuck"):
        sampler.sample(PROMPT, 1, PARAMS).result()


def test_an_expired_sampling_promise_is_sent_again_with_the_same_result(open_service):
    calm = open_service().create_sampling_client(base_model=MODEL).result()
    expected = calm.sample(PROMPT, 2, PARAMS).result()
    ttft = 0.2
    stormy = open_service(
        weather(latency={"ttft_s": ttft}, faults=[{"call": "sample", "error": "expired", "at": 1}])
    )
    sampler = stormy.create_sampling_client(base_model=MODEL).result()
    start = time.monotonic()
    response = sampler.sample(PROMPT, 2, PARAMS).result()
    assert time.monotonic() - start >= 2 * ttft - 1e-3  # served twice
    assert [s.tokens for s in response.sequences] == [s.tokens for s in expected.sequences]


def test_a_checkpoint_can_expire_as_the_profile_says(open_service):
    service = open_service(
        weather(faults=[{"call": "save_state", "error": "checkpoint_expired", "at": 2}])
    )
    trainer = trainer_of(service)
    kept = trainer.save_state("kept").result().path
    gone = trainer.save_state("gone").result().path  # saved: the save itself answers
    service.create_training_client_from_state_with_optimizer(kept).result()
    with pytest.raises(FileNotFoundError, match="expired"):
        service.create_training_client_from_state_with_optimizer(gone).result()


def test_a_load_takes_the_load_time_and_can_fail(open_service):
    service = open_service(
        weather(
            latency={"load_s": 0.2},
            faults=[{"call": "load_state", "error": "status", "status": 500, "at": 2}],
        )
    )
    path = trainer_of(service).save_state("s").result().path
    start = time.monotonic()
    service.create_training_client_from_state(path).result()
    assert time.monotonic() - start >= 0.2 - 1e-3
    with pytest.raises(tinker.InternalServerError):
        service.create_training_client_from_state(path).result()


def test_the_server_process_dying_is_not_an_in_process_fault(open_service):
    service = open_service(fault("forward_backward", "die"))
    trainer = trainer_of(service)
    assert trainer.forward_backward(batch(1), "ppo").result().metrics
    assert service.weather.schedule.fired == []


def test_each_injected_fault_is_announced_as_it_happens(open_service, caplog):
    service = open_service(weather(faults=[{"call": "sample", "error": "failed", "at": 2}]))
    sampler = service.create_sampling_client(base_model=MODEL).result()
    with caplog.at_level("WARNING", logger="harness.weather"):
        sampler.sample(PROMPT, 1, PARAMS).result()
        assert caplog.messages == []
        with pytest.raises(tinker.RequestFailedError):
            sampler.sample(PROMPT, 1, PARAMS).result()
    assert caplog.messages == ["weather: injected weather test.toml: failed before the 2nd sample"]
