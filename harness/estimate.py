"""`--estimate_cost`: what a run will send and what it will cost, before any paid call.

The plan is exact where the run is decided in advance (which prompts each step sends, so the
prefill tokens; how many requests of each kind) and bounded where the model decides (response
lengths): sampled tokens lie between 1 and `sampling_max_tokens` per response, trained tokens
between none (no group with reward variance) and every response's Datum. The expected
estimate names its assumption: a mean response length (by default that of GSM8K's reference
solutions in the model's tokenizer) and every group trained on.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from harness.config import Config
from harness.cost import Price, Tokens, cost_usd
from harness.data import BatchCursor, Problem, next_batch
from harness.data.gsm8k import hub_reachable
from harness.evaluation import validation_subset
from harness.prompts import PromptName, format_prompt
from harness.qwen3_tokenizer import QWEN3_TOKENIZER_DIR

# The SDK splits a forward_backward into requests of at most this many Datums.
SDK_DATUMS_PER_REQUEST = 1024


class EstimateError(ValueError):
    """The estimate cannot be made (a tokenizer that cannot be loaded); one line."""


def shares_qwen3_vocabulary(model_name: str) -> bool:
    """Qwen3's text models (dense, MoE, base, instruct) share the fixture's vocabulary."""
    return model_name.startswith("Qwen/Qwen3-") and not model_name.startswith("Qwen/Qwen3-VL")


def load_tokenizer(model_name: str) -> tuple[Any, str]:
    """The model's tokenizer and where it came from: a model folder, the Hugging Face cache,
    the hub, or (offline, for Qwen3) the Qwen3-vocabulary fixture shipped with the harness."""
    from transformers import AutoTokenizer

    if Path(model_name).is_dir():
        return AutoTokenizer.from_pretrained(model_name), f"the tokenizer in {model_name}"
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_name, local_files_only=True)
        return tokenizer, f"{model_name}'s tokenizer from the local Hugging Face cache"
    except OSError:
        pass
    if hub_reachable():
        return AutoTokenizer.from_pretrained(model_name), f"{model_name}'s tokenizer from the hub"
    if shares_qwen3_vocabulary(model_name):
        return AutoTokenizer.from_pretrained(QWEN3_TOKENIZER_DIR), (
            f"the Hugging Face hub is unreachable, so the Qwen3-vocabulary fixture "
            f"(harness/qwen3_tokenizer, the same 151,669 tokens as {model_name}'s) stands in"
        )
    raise EstimateError(
        f"{model_name}'s tokenizer is not in the Hugging Face cache and the hub is unreachable; "
        "pass --model_name=DIR of a model folder with its tokenizer"
    )


@dataclasses.dataclass(frozen=True)
class Plan:
    """A run's requests and tokens, from its config and data alone."""

    steps: int
    validations: int
    """Validation passes: every `eval_every` steps from step 0, and the final one."""
    rollout_requests_per_step: int
    samples_per_request: int
    validation_requests: int
    """Per validation pass (greedy, one sample each)."""
    max_datums_per_forward_backward: int
    forward_backwards_per_step: int
    """One per optimizer step: each minibatch of each epoch."""
    epochs: int
    """Passes over each step's Datums: each is trained on (and billed) that many times."""
    checkpoints: int
    rollout_prompt_tokens: int
    """Prefill of every rollout request of the run (exact)."""
    validation_prompt_tokens: int
    """Prefill of one validation pass (exact)."""
    max_tokens: int
    assumed_response_tokens: float
    assumption: str

    @property
    def sample_requests(self) -> int:
        return (
            self.steps * self.rollout_requests_per_step
            + self.validations * self.validation_requests
        )

    @property
    def rollout_sequences(self) -> int:
        return self.steps * self.rollout_requests_per_step * self.samples_per_request

    @property
    def sequences(self) -> int:
        return self.rollout_sequences + self.validations * self.validation_requests

    @property
    def prefill(self) -> int:
        return self.rollout_prompt_tokens + self.validations * self.validation_prompt_tokens

    def tokens(self, response_tokens: float, trained: bool) -> Tokens:
        """The run's tokens if every response had `response_tokens` tokens, with every group
        trained on or none. A Datum holds its prompt and all but the last response token."""
        datum_tokens = (
            self.rollout_prompt_tokens * self.samples_per_request
            + self.rollout_sequences * (response_tokens - 1)
        )
        return Tokens(
            prefill=self.prefill,
            sampled=round(self.sequences * response_tokens),
            trained=round(datum_tokens * self.epochs) if trained else 0,
        )

    @property
    def lower(self) -> Tokens:
        return self.tokens(1, trained=False)

    @property
    def expected(self) -> Tokens:
        return self.tokens(self.assumed_response_tokens, trained=True)

    @property
    def upper(self) -> Tokens:
        return self.tokens(self.max_tokens, trained=True)


def plan_run(
    config: Config,
    tokenizer: Any,
    train_problems: Sequence[Problem],
    test_problems: Sequence[Problem],
) -> Plan:
    """Every prompt the run will send, encoded with the real tokenizer; the rest counted."""
    train_lengths = prompt_lengths(tokenizer, train_problems, config.prompt_name)
    cursor = BatchCursor()
    rollout_prompt_tokens = 0
    for _ in range(config.n_grpo_steps):
        indices, cursor = next_batch(
            cursor, len(train_problems), config.rollout_batch_size, config.seed
        )
        rollout_prompt_tokens += int(train_lengths[indices].sum())
    val_indices = validation_subset(len(test_problems), config.eval_n, config.seed)
    val_problems = [test_problems[i] for i in val_indices]
    val_lengths = prompt_lengths(tokenizer, val_problems, config.prompt_name)
    if config.assumed_response_tokens is not None:
        assumed = float(config.assumed_response_tokens)
        assumption = f"responses of {config.assumed_response_tokens} tokens on average"
    else:
        solutions = tokenizer([p.answer for p in train_problems])["input_ids"]
        assumed = float(np.mean([len(ids) for ids in solutions]))
        assumption = (
            f"responses as long as the train split's reference solutions ({assumed:.1f} tokens "
            "on average in this tokenizer; --assumed_response_tokens=N sets another)"
        )
    if assumed > config.sampling_max_tokens:
        assumed = float(config.sampling_max_tokens)
        assumption += ", capped at --sampling_max_tokens"
    return Plan(
        steps=config.n_grpo_steps,
        validations=math.ceil(config.n_grpo_steps / config.eval_every) + 1,
        rollout_requests_per_step=config.rollout_batch_size,
        samples_per_request=config.group_size,
        validation_requests=len(val_indices),
        max_datums_per_forward_backward=config.minibatch_size,
        forward_backwards_per_step=config.optimizer_steps_per_rollout_batch,
        epochs=config.epochs_per_rollout_batch,
        checkpoints=config.n_grpo_steps // config.save_every
        + (config.n_grpo_steps % config.save_every != 0),
        rollout_prompt_tokens=rollout_prompt_tokens,
        validation_prompt_tokens=int(val_lengths.sum()),
        max_tokens=config.sampling_max_tokens,
        assumed_response_tokens=assumed,
        assumption=assumption,
    )


def prompt_lengths(tokenizer: Any, problems: Sequence[Problem], prompt: PromptName) -> np.ndarray:
    """Each problem's prompt length in tokens, encoded as the loop encodes it."""
    prompts = [format_prompt(p.question, prompt) for p in problems]
    return np.array([len(ids) for ids in tokenizer(prompts)["input_ids"]], dtype=np.int64)


def format_plan(config: Config, plan: Plan, tokenizer_note: str, price: Price | None) -> str:
    """The plan as the terminal shows it."""
    fb_requests = math.ceil(plan.max_datums_per_forward_backward / SDK_DATUMS_PER_REQUEST)
    per_step = plan.forward_backwards_per_step
    lines = [
        f"Cost estimate for {config.model_name}: {plan.steps} steps of "
        f"{plan.rollout_requests_per_step} questions x {plan.samples_per_request} samples "
        f"(max_tokens {plan.max_tokens}), validation on {plan.validation_requests} questions "
        f"{plan.validations} times. Nothing was sent to any service.",
        f"tokenizer: {tokenizer_note}",
        "",
        "requests per step: 1 save_weights_and_get_sampling_client, "
        f"{plan.rollout_requests_per_step} sample (num_samples={plan.samples_per_request}), "
        f"{per_step} forward_backward of up to {plan.max_datums_per_forward_backward:,} Datums"
        f" (the SDK sends {fb_requests} request{'s' if fb_requests > 1 else ''} of <= "
        f"{SDK_DATUMS_PER_REQUEST:,}{' each' if per_step > 1 else ''}), {per_step} optim_step;"
        " on validation steps "
        f"{plan.validation_requests} more sample requests (greedy, 1 sample)",
        f"requests in the run: {plan.sample_requests:,} sample "
        f"({plan.sequences:,} responses), up to {plan.steps * per_step:,} forward_backward and "
        f"{plan.steps * per_step:,} optim_step, {plan.checkpoints} checkpoints (save_state + "
        "save_weights_for_sampler)",
        "",
    ]
    columns = ("lower", "expected", "upper")
    bounds = (plan.lower, plan.expected, plan.upper)
    header = f"{'tokens in the run':<26}" + "".join(f"{c:>16}" for c in columns)
    lines.append(header)
    for name, field in (
        ("prefill (prompts)", "prefill"),
        ("sampled", "sampled"),
        ("trained", "trained"),
    ):
        lines.append(f"{name:<26}" + "".join(f"{getattr(t, field):>16,}" for t in bounds))
    if price is None:
        lines.append(f"{'cost':<26}" + "".join(f"{'no price':>16}" for _ in columns))
    else:
        costs = [cost_usd(t, price) for t in bounds]
        lines.append(f"{'cost (USD)':<26}" + "".join(f"{c:>16,.2f}" for c in costs))
        lines.append(f"{'  per step':<26}" + "".join(f"{c / plan.steps:>16,.2f}" for c in costs))
    lines += [
        "",
        "prefill is exact: every prompt the run sends, once per sample request.",
        f"lower: 1-token responses and no group trained on; upper: every response "
        f"{plan.max_tokens} tokens and every group trained on.",
        f"expected: {plan.assumption}, every group trained on.",
    ]
    if price is None:
        lines.append(
            f"no price for {config.model_name} in the price table (--price_table=FILE adds one)"
        )
    else:
        lines.append(
            f"prices (USD per million tokens): prefill {price.prefill:g}, sample "
            f"{price.sample:g}, train {price.train:g}; {price.source}, read {price.date}. "
            "Not included: checkpoint "
            + (
                f"storage (${price.storage_gb_month:.2f} per GB-month), "
                if price.storage_gb_month is not None
                else "storage, "
            )
            + "the discount on cached prefill tokens."
        )
    return "\n".join(lines)
