"""Training client of the local backend: accumulation, AdamW, ordering, checkpoints, errors."""

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from tinker import types

from harness.backends.local import LocalServiceClient
from tests.support.local_training import (
    ADAM,
    PROBE,
    adapted_modules,
    adapter,
    batch,
    probe_logprobs,
    step,
)

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def service(tmp_path_factory) -> LocalServiceClient:
    return LocalServiceClient(tmp_path_factory.mktemp("storage"), seed=0)


@pytest.fixture(scope="module")
def base(tiny_model_dir) -> str:
    return str(tiny_model_dir)


def new_client(service, base, seed=3):
    return service.create_lora_training_client(base, rank=4, seed=seed).result()


def test_two_forward_backwards_then_one_step_equal_one_combined_call(service, base):
    split, combined = new_client(service, base), new_client(service, base)
    first, second = batch(1), batch(2)
    loss_a = split.forward_backward(first, "ppo").result().metrics["loss:sum"]
    loss_b = split.forward_backward(second, "ppo").result().metrics["loss:sum"]
    split.optim_step(ADAM).result()
    loss_ab = combined.forward_backward(first + second, "ppo").result().metrics["loss:sum"]
    combined.optim_step(ADAM).result()
    assert loss_a + loss_b == pytest.approx(loss_ab, rel=1e-6)
    for got, want in zip(adapter(split), adapter(combined), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(probe_logprobs(split), probe_logprobs(combined), atol=1e-6)


def test_optim_step_zeroes_gradients_and_reports_metrics(service, base):
    client = new_client(service, base)
    client.forward_backward(batch(1), "ppo").result()
    response = client.optim_step(ADAM).result()
    assert set(response.metrics) == {"grad_norm:mean", "learning_rate:mean"}
    assert response.metrics["grad_norm:mean"] > 0
    assert all(p.grad is None for p in client.model.parameters())
    # With no new gradients a step moves nothing (AdamW skips weights without a gradient, decay
    # included) and reports no gradient norm.
    before = adapter(client)
    assert client.optim_step(ADAM).result().metrics["grad_norm:mean"] == 0.0
    assert all(torch.equal(a, b) for a, b in zip(adapter(client), before, strict=True))


def test_only_the_adapter_changes_and_the_seed_fixes_its_init(service, base):
    client, twin = new_client(service, base, 7), new_client(service, base, 7)
    other = new_client(service, base, 8)
    for a, b in zip(adapter(client), adapter(twin), strict=True):
        assert torch.equal(a, b)
    assert not all(torch.equal(a, b) for a, b in zip(adapter(client), adapter(other), strict=True))
    frozen = {
        n: p.detach().clone() for n, p in client.model.named_parameters() if not p.requires_grad
    }
    step(client, batch(1))
    for name, param in client.model.named_parameters():
        if not param.requires_grad:
            assert torch.equal(param, frozen[name]), name
    assert not all(torch.equal(a, b) for a, b in zip(adapter(client), adapter(twin), strict=True))
    assert adapted_modules(client) == {
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
        "lm_head",
    }


def test_train_flags_choose_the_adapted_modules(service, base):
    client = service.create_lora_training_client(
        base, rank=2, seed=0, train_mlp=False, train_unembed=False
    ).result()
    assert adapted_modules(client) == {"q_proj", "k_proj", "v_proj", "o_proj"}
    assert client.get_info().lora_rank == 2 and client.get_info().model_data.model_name == base


def test_submitted_calls_run_in_order_before_any_wait(service, base):
    eager, sequential = new_client(service, base), new_client(service, base)
    data = batch(4)
    before = probe_logprobs(sequential)
    fwd_bwd = eager.forward_backward(data, "ppo")
    optim = eager.optim_step(ADAM)
    after = eager.forward(PROBE, "ppo")
    sampler = eager.save_weights_and_get_sampling_client()
    step(sequential, data)
    expected_after = probe_logprobs(sequential)
    assert fwd_bwd.result().metrics["loss:sum"] != 0
    assert optim.result().metrics["grad_norm:mean"] > 0
    got_after = np.concatenate([o["logprobs"].to_numpy() for o in after.result().loss_fn_outputs])
    np.testing.assert_allclose(got_after, expected_after, atol=1e-6)
    assert np.abs(got_after - before).max() > 1e-4
    prompt = types.ModelInput.from_ints(PROBE[0].model_input.to_ints())
    sampled = sampler.result().compute_logprobs(prompt).result()[1:]
    np.testing.assert_allclose(sampled, expected_after[: len(sampled)], atol=1e-5)


def test_futures_are_awaitable(service, base):
    client = new_client(service, base)

    async def run():
        fwd = await client.forward(PROBE, "ppo")
        return fwd, await client.optim_step(ADAM).result_async(timeout=60)

    fwd, optim = asyncio.run(run())
    assert len(fwd.loss_fn_outputs) == len(PROBE) and optim.metrics is not None


def test_resume_from_state_continues_exactly(service, base, tmp_path):
    original = new_client(service, base)
    step(original, batch(5))
    path = original.save_state("step-1").result().path
    assert path == f"tinker://{original.model_id}/weights/step-1"
    resumed = service.create_training_client_from_state_with_optimizer(path).result()
    weights_only = service.create_training_client_from_state(path).result()
    losses = [step(client, batch(6)) for client in (original, resumed, weights_only)]
    assert losses[1] == pytest.approx(losses[0], rel=1e-6, abs=1e-6)
    # The same gradient, so the loss agrees; the Adam moments make the step differ.
    assert losses[2] == pytest.approx(losses[0], rel=1e-6, abs=1e-6)
    for got, want in zip(adapter(resumed), adapter(original), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    assert not all(
        torch.allclose(a, b, atol=1e-6)
        for a, b in zip(adapter(weights_only), adapter(original), strict=True)
    )

    # A fresh process with the same storage_dir resolves the path and takes the same step.
    script = f"""
import json, sys
import numpy as np
from tests.support.local_training import batch, probe_logprobs, step
from harness.backends.local import LocalServiceClient
service = LocalServiceClient({str(service.store.root)!r})
client = service.create_training_client_from_state_with_optimizer({path!r}).result()
loss = step(client, batch(6))
print(json.dumps({{"loss": loss, "probe": probe_logprobs(client).tolist()}}))
"""
    run = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    )
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["loss"] == pytest.approx(losses[0], rel=1e-6, abs=1e-6)
    np.testing.assert_allclose(result["probe"], probe_logprobs(original), atol=1e-6)


def test_checkpoint_names_and_overwrite(service, base):
    client = new_client(service, base)
    client.save_state("a").result()
    with pytest.raises(FileExistsError, match="overwrite"):
        client.save_state("a").result()
    client.save_state("a", overwrite=True).result()
    with pytest.raises(ValueError, match="one path segment"):
        client.save_state("../escape").result()
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        service.create_training_client_from_state("tinker://nobody/weights/none").result()
    sampler_path = client.save_weights_for_sampler("s").result().path
    assert sampler_path == f"tinker://{client.model_id}/sampler_weights/s"
    with pytest.raises(FileNotFoundError, match="no optimizer state"):
        service.create_training_client_from_state_with_optimizer(sampler_path).result()


def datum_with(inputs: dict, tokens=(5, 6, 7)) -> types.Datum:
    return types.Datum(model_input=types.ModelInput.from_ints(list(tokens)), loss_fn_inputs=inputs)


GOOD = {"target_tokens": [6, 7, 8], "logprobs": [-1.0] * 3, "advantages": [1.0] * 3}


@pytest.mark.parametrize(
    ("data", "loss_fn", "config", "message"),
    [
        ([datum_with(GOOD)], "dpo", None, r"unknown loss_fn 'dpo'.*'ppo'"),
        ([datum_with({**GOOD, "logprobs": [-1.0] * 2})], "ppo", None, r"'logprobs'.*shape \(2,\)"),
        ([datum_with({"target_tokens": [6, 7, 8]})], "ppo", None, r"lacks \['logprobs', 'adv"),
        ([datum_with({**GOOD, "target_tokens": [6, 7, 4096]})], "ppo", None, "token id 4096"),
        ([datum_with(GOOD, tokens=(5, -1, 7))], "ppo", None, "token id -1"),
        ([datum_with(GOOD)], "ppo", {"clip": 0.2}, r"\['clip'\] are not options"),
        ([datum_with(GOOD)], "cross_entropy", None, r"lacks \['weights'\]"),
    ],
)
def test_bad_input_fails_with_a_clear_error(service, base, data, loss_fn, config, message):
    client = new_client(service, base)
    with pytest.raises(ValueError, match=message):
        client.forward_backward(data, loss_fn, config).result(timeout=60)
    # The client still works afterwards.
    assert client.forward([datum_with(GOOD)], "ppo").result(timeout=60).metrics["loss:sum"]


def test_only_adamw_and_some_adapted_modules_are_accepted(service, base):
    dimuon = types.DimuonOptimizerConfig()
    with pytest.raises(ValueError, match="AdamW only"):
        service.create_lora_training_client(base, rank=2, optimizer=dimuon).result(timeout=60)
    path = new_client(service, base).save_state("for-dimuon").result().path
    with pytest.raises(ValueError, match="AdamW only"):
        service.create_training_client_from_state(path, optimizer=dimuon).result(timeout=60)
    with pytest.raises(ValueError, match="At least one of train_mlp"):
        service.create_lora_training_client(
            base, train_mlp=False, train_attn=False, train_unembed=False
        )


def test_empty_data_and_bad_optimizer_params(service, base):
    client = new_client(service, base)
    with pytest.raises(ValueError, match="No data"):
        client.forward_backward([], "ppo")
    with pytest.raises(ValueError, match="learning_rate"):
        client.optim_step(types.AdamParams(learning_rate=-1.0)).result(timeout=60)
