"""The warm start: its reference completions, and the local backend's full fine-tuning client
it trains through (every weight trains; checkpoints, resume, sampling and export follow)."""

import shlex
from pathlib import Path

import numpy as np
import pytest
import torch
import tyro
from tinker import types
from transformers import AutoModelForCausalLM

from harness.backends.local import LocalServiceClient
from harness.data import load_problems
from harness.rewards import gsm8k_reward_fn
from harness.tiny_model import ModelShape
from scripts.warm_start import Args, command_line, reference_completion, sft_datum

WARM_START_README = Path(__file__).resolve().parent.parent / "fixtures" / "tiny-arith" / "README.md"

TOKENS = list(range(20, 40))
ADAM = types.AdamParams(learning_rate=0.01)


@pytest.mark.parametrize("use_r1_zero_format", [True, False])
def test_reference_completions_earn_the_full_reward(use_r1_zero_format):
    for problem in load_problems("arith", "train")[:200]:
        completion = reference_completion(problem.answer, use_r1_zero_format)
        reward = gsm8k_reward_fn(completion, problem.answer, use_r1_zero_format)
        assert reward["reward"] == 1.0, (completion, problem.answer)


def test_sft_datum_predicts_every_next_token():
    datum = sft_datum(TOKENS)
    assert datum.model_input.to_ints() == TOKENS[:-1]
    assert datum.loss_fn_inputs["target_tokens"].to_numpy().tolist() == TOKENS[1:]
    assert datum.loss_fn_inputs["weights"].to_numpy().tolist() == [1.0] * (len(TOKENS) - 1)


def test_the_committed_warm_start_was_made_by_the_default_command():
    assert f"    {command_line(Args())}\n" in WARM_START_README.read_text()


def test_the_readme_command_parses_back_to_every_changed_argument():
    args = Args(
        out=Path("a dir"), use_r1_zero_format=True, eval_every=10, shape=ModelShape(hidden=32)
    )
    command = shlex.split(command_line(args))
    assert command[:2] == ["python", "scripts/warm_start.py"]
    assert tyro.cli(Args, args=command[2:]) == args


@pytest.fixture(scope="module")
def service(tmp_path_factory) -> LocalServiceClient:
    return LocalServiceClient(tmp_path_factory.mktemp("storage"), seed=0)


def train_steps(client, n: int) -> float:
    for _ in range(n):
        loss = client.forward_backward([sft_datum(TOKENS)], "cross_entropy")
        client.optim_step(ADAM)
    return loss.result().metrics["loss:sum"]


def weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def test_full_fine_tuning_trains_every_weight_and_leaves_the_base_alone(service, tiny_model_dir):
    client = service.create_full_training_client(str(tiny_model_dir)).result()
    assert not client.get_info().is_lora and client.get_info().lora_rank is None
    before = weights(client.model)
    first = train_steps(client, 1)
    assert train_steps(client, 5) < first
    changed = [
        name for name, w in weights(client.model).items() if not torch.equal(w, before[name])
    ]
    assert set(changed) == set(before)  # embeddings and norms included
    fresh = service.create_full_training_client(str(tiny_model_dir)).result()
    for name, w in weights(fresh.model).items():
        assert torch.equal(w, before[name]), name


def test_full_checkpoints_resume_sample_and_export(service, tiny_model_dir, tmp_path):
    client = service.create_full_training_client(str(tiny_model_dir)).result()
    train_steps(client, 3)
    state = client.save_state("full").result().path
    sampler_path = client.save_weights_for_sampler("full").result().path
    expected = client.forward([sft_datum(TOKENS)], "cross_entropy").result()
    expected_T = expected.loss_fn_outputs[0]["logprobs"].to_numpy()

    resumed = service.create_training_client_from_state_with_optimizer(state).result()
    assert train_steps(resumed, 1) == pytest.approx(train_steps(client, 1), rel=1e-6)

    sampler = service.create_sampling_client(model_path=sampler_path).result()
    sampled_T = sampler.compute_logprobs(types.ModelInput.from_ints(TOKENS)).result()[1:]
    np.testing.assert_allclose(sampled_T, expected_T, atol=1e-5)

    out_dir = service.export_merged_model(sampler_path, tmp_path / "exported")
    exported = AutoModelForCausalLM.from_pretrained(out_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        logits = exported(input_ids=torch.tensor([TOKENS[:-1]])).logits[0]
    got_T = torch.log_softmax(logits, -1).gather(-1, torch.tensor(TOKENS[1:])[:, None])[:, 0]
    np.testing.assert_allclose(got_T.numpy(), expected_T, atol=1e-5)
    assert exported.config.tie_word_embeddings  # full fine-tuning keeps the ties
