"""The local backend's losses equal docs/DESIGN.md §3's formulas (and, for dro and gspo, those of
Tinker's documentation, tinker-docs.thinkingmachines.ai/tinker/losses/), values and gradients.
stable_reinforce, whose formula Tinker does not publish, is the importance-sampling REINFORCE
objective here (harness/backends/local/losses.py says why)."""

import numpy as np
import pytest
import torch
from tinker import types

from harness.backends.local import LocalServiceClient
from harness.backends.local import losses as local_losses
from harness.datums import rollout_to_datum
from harness.grpo import compute_grpo_clip_loss

RNG = np.random.default_rng(0)


BETA = 0.3  # dro's option, which has no documented default


def design_loss(name: str, target_lp, inputs: dict, lo: float = 0.8, hi: float = 1.2):
    """docs/DESIGN.md §3 and Tinker's docs, written out independently of the backend, for one Datum
    (1-D tensors)."""
    if name == "cross_entropy":
        return -(target_lp * inputs["weights"]).sum()
    ratio = torch.exp(target_lp - inputs["logprobs"])
    advantages = inputs["advantages"]
    if name in ("importance_sampling", "stable_reinforce"):
        return -(ratio * advantages).sum()
    if name == "ppo":
        return -torch.min(ratio * advantages, torch.clamp(ratio, lo, hi) * advantages).sum()
    if name == "dro":
        penalty = (target_lp - inputs["logprobs"]) ** 2
        return -(target_lp * advantages - 0.5 * BETA * penalty).sum()
    if name == "gspo":
        marked = inputs["sequence_ratio_mask"] != 0
        log_ratio = (target_lp.detach() - inputs["logprobs"])[marked].mean()
        ratio = torch.exp(log_ratio + target_lp - target_lp.detach())
        return -torch.min(ratio * advantages, torch.clamp(ratio, lo, hi) * advantages).sum()
    assert name == "cispo"
    return -(torch.clamp(ratio, lo, hi).detach() * target_lp * advantages).sum()


def loss_config(name: str, bounds: tuple[float, float] | None = None) -> dict | None:
    if name == "dro":
        return {"beta": BETA}
    if name in ("ppo", "cispo", "gspo") and bounds is not None:
        return {"clip_low_threshold": bounds[0], "clip_high_threshold": bounds[1]}
    return None


@pytest.fixture(scope="module")
def service(tmp_path_factory) -> LocalServiceClient:
    return LocalServiceClient(tmp_path_factory.mktemp("storage"), seed=0)


@pytest.fixture(scope="module")
def tokens_D() -> list[np.ndarray]:
    lengths = [5, 9, 14]
    return [RNG.integers(1, 2000, size=n) for n in lengths]


def random_inputs(name: str, n: int) -> dict[str, np.ndarray]:
    inputs = {"target_tokens": RNG.integers(1, 2000, size=n)}
    if name == "cross_entropy":
        inputs["weights"] = RNG.uniform(-1, 2, size=n).astype(np.float32)
    else:
        # Sampler logprobs near the model's (about -7.6 for the random tiny model), so
        # ratios straddle the clip bounds on both sides.
        inputs["logprobs"] = RNG.uniform(-8.2, -7.0, size=n).astype(np.float32)
        inputs["advantages"] = RNG.normal(size=n).astype(np.float32)
    if name == "gspo":  # the response tokens: a random nonempty subset
        mask = RNG.integers(0, 2, size=n).astype(np.float32)
        mask[RNG.integers(n)] = 1.0
        inputs["sequence_ratio_mask"] = mask
    return inputs


def reference_logprobs(model, tokens: np.ndarray, targets: np.ndarray) -> torch.Tensor:
    logits = model(input_ids=torch.tensor(tokens)[None]).logits[0]
    return torch.log_softmax(logits.float(), -1).gather(-1, torch.tensor(targets)[:, None])[:, 0]


ALL_LOSSES = [
    "cross_entropy",
    "importance_sampling",
    "ppo",
    "cispo",
    "dro",
    "gspo",
    "stable_reinforce",
]


@pytest.mark.parametrize("name", ALL_LOSSES)
def test_loss_and_gradient_match_design(service, tiny_model_dir, tokens_D, name):
    clipped = name in ("ppo", "cispo", "gspo")
    config = loss_config(name, (0.9, 1.05))
    bounds = {"lo": 0.9, "hi": 1.05} if clipped else {}
    client = service.create_lora_training_client(str(tiny_model_dir), rank=4, seed=1).result()
    # A first step makes the LoRA B matrices nonzero, so every adapter gets a gradient.
    warmup = [
        types.Datum(model_input=types.ModelInput.from_ints(t.tolist()), loss_fn_inputs=inputs)
        for t, inputs in ((t, random_inputs("cross_entropy", len(t))) for t in tokens_D)
    ]
    client.forward_backward(warmup, "cross_entropy")
    client.optim_step(types.AdamParams(learning_rate=0.05)).result()

    inputs_D = [random_inputs(name, len(t)) for t in tokens_D]
    data = [
        types.Datum(model_input=types.ModelInput.from_ints(t.tolist()), loss_fn_inputs=inputs)
        for t, inputs in zip(tokens_D, inputs_D, strict=True)
    ]
    output = client.forward_backward(data, name, config).result()
    backend_grads = [p.grad.clone() for p in client.model.parameters() if p.requires_grad]

    params = [p for p in client.model.parameters() if p.requires_grad]
    expected = 0.0
    for tokens, inputs, out in zip(tokens_D, inputs_D, output.loss_fn_outputs, strict=True):
        target_lp = reference_logprobs(client.model, tokens, inputs["target_tokens"])
        torch_inputs = {k: torch.tensor(v) for k, v in inputs.items() if k != "target_tokens"}
        expected = expected + design_loss(name, target_lp, torch_inputs, **bounds)
        np.testing.assert_allclose(out["logprobs"].to_numpy(), target_lp.detach(), atol=1e-5)
    expected_grads = torch.autograd.grad(expected, params)

    assert output.metrics["loss:sum"] == pytest.approx(expected.item(), rel=1e-5, abs=1e-5)
    assert any(g.abs().sum() > 0 for g in expected_grads)
    for got, want in zip(backend_grads, expected_grads, strict=True):
        # float32 sums in a different order: compare against the tensor's own scale
        assert (got - want).abs().max() <= 1e-5 * want.abs().max() + 1e-7


@pytest.mark.parametrize("name", ALL_LOSSES[1:])
def test_pure_losses_match_design_on_random_tensors(name):
    target_lp = torch.tensor(RNG.uniform(-3, 0, size=(4, 7)), requires_grad=True)
    inputs = {
        "logprobs": torch.tensor(RNG.uniform(-3, 0, size=(4, 7))),
        "advantages": torch.tensor(RNG.normal(size=(4, 7))),
        "sequence_ratio_mask": torch.tensor(RNG.integers(0, 2, size=(4, 7)) | np.eye(4, 7, 1, int)),
    }
    spec, config = local_losses.resolve(name, loss_config(name))
    got = local_losses.per_token_loss(spec, config, target_lp, inputs).sum()
    rows = [{key: value[row] for key, value in inputs.items()} for row in range(4)]
    want = sum(design_loss(name, target_lp[row], rows[row]) for row in range(4))
    torch.testing.assert_close(got, want)
    (got_grad,) = torch.autograd.grad(got, target_lp)
    (want_grad,) = torch.autograd.grad(want, target_lp)
    torch.testing.assert_close(got_grad, want_grad)


def test_gspo_clips_whole_sequences_by_their_geometric_mean_ratio():
    # One Datum whose mean log-ratio over the marked tokens is log 2: every token's ratio is 2,
    # beyond the 1.2 clip, so with positive advantages no token gets a gradient.
    target_lp = torch.tensor([[-1.0, -1.0, -1.0]], requires_grad=True)
    logprobs = torch.tensor([[-1.0 - 2 * float(np.log(2)), -1.0, 5.0]])  # the third is unmarked
    inputs = {
        "logprobs": logprobs,
        "advantages": torch.ones(1, 3),
        "sequence_ratio_mask": torch.tensor([[1.0, 1.0, 0.0]]),
    }
    spec, config = local_losses.resolve("gspo", None)
    loss = local_losses.per_token_loss(spec, config, target_lp, inputs)
    torch.testing.assert_close(loss, torch.full((1, 3), -1.2))
    (grad,) = torch.autograd.grad(loss.sum(), target_lp)
    assert not grad.any()
    inputs["sequence_ratio_mask"] = torch.zeros(1, 3)
    with pytest.raises(ValueError, match="sequence_ratio_mask to mark at least one token"):
        local_losses.per_token_loss(spec, config, target_lp, inputs)


def test_loss_options_are_checked_by_name():
    with pytest.raises(ValueError, match=r"'dro' needs loss_fn_config \['beta'\]"):
        local_losses.resolve("dro", None)
    with pytest.raises(ValueError, match=r"keys \['eps'\] are not options of 'gspo'"):
        local_losses.resolve("gspo", {"eps": 0.2})
    with pytest.raises(ValueError, match=r"keys \['kl_coeff'\] are not options of 'stable_r"):
        local_losses.resolve("stable_reinforce", {"kl_coeff": 0.01})
    with pytest.raises(ValueError, match="unknown loss_fn 'reinforce_plus_plus'"):
        local_losses.resolve("reinforce_plus_plus", None)
    assert local_losses.resolve("dro", {"beta": 0.05})[1] == {"beta": 0.05}


def test_ppo_agrees_with_grpo_clip_loss(service, tiny_model_dir):
    client = service.create_lora_training_client(str(tiny_model_dir), rank=4, seed=2).result()
    cliprange = 0.05
    prompt = RNG.integers(1, 2000, size=6).tolist()
    responses_B_T = RNG.integers(1, 2000, size=(3, 8))
    old_B_T = RNG.uniform(-7.8, -7.4, size=(3, 8)).astype(np.float32)
    advantages_B = np.array([1.0, -0.5, 2.0], dtype=np.float32)
    data = [
        rollout_to_datum(prompt, tokens, old, float(a))
        for tokens, old, a in zip(responses_B_T, old_B_T, advantages_B, strict=True)
    ]
    output = client.forward(
        data, "ppo", {"clip_low_threshold": 1 - cliprange, "clip_high_threshold": 1 + cliprange}
    ).result()
    policy_B_T = torch.tensor(
        np.stack([out["logprobs"].to_numpy()[len(prompt) - 1 :] for out in output.loss_fn_outputs])
    )
    loss_B_T, metadata = compute_grpo_clip_loss(
        torch.tensor(advantages_B)[:, None], policy_B_T, torch.tensor(old_B_T), cliprange
    )
    assert metadata["clipped"].any() and not metadata["clipped"].all()
    assert output.metrics["loss:sum"] == pytest.approx(loss_B_T.sum().item(), rel=1e-5)
