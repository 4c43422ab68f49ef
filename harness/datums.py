"""One sampled rollout -> one `tinker.types.Datum` for the `ppo` / `importance_sampling` losses,
or for `cross_entropy` with signed weights.

For prompt tokens p (P), sampled tokens s (S), sampler logprobs l (S) and advantage A, position i
of `model_input = p + s[:-1]` predicts `target_tokens[i]` of `p[1:] + s`; only the S response
targets carry logprobs and advantage (or weight A), so prompt positions add nothing to the loss.
"""

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import numpy.typing as npt
from tinker import types

from harness.objectives import SignalInput

Tokens = Sequence[int] | npt.NDArray[np.integer]


def _token_array(tokens: Tokens, name: str) -> npt.NDArray[np.int64]:
    array = np.asarray(tokens)
    if array.ndim != 1 or (array.size and array.dtype.kind not in "iu"):
        raise ValueError(f"{name} must be a flat sequence of integer token ids")
    if array.size and array.min() < 0:
        raise ValueError(f"{name} holds a negative token id ({array.min()})")
    return array.astype(np.int64, copy=False)


def response_only(
    num_prompt_tokens: int, num_response_tokens: int, response_values: npt.ArrayLike
) -> npt.NDArray[np.float32]:
    """Per-target values: zero on the P - 1 prompt targets, then the S response values (or one
    value repeated S times)."""
    values_N = np.zeros(num_prompt_tokens - 1 + num_response_tokens, dtype=np.float32)
    values_N[num_prompt_tokens - 1 :] = response_values
    return values_N


class _Prompt(NamedTuple):
    tokens_P: npt.NDArray[np.int64]
    chunk: types.EncodedTextChunk
    """Shared by the model inputs of every Datum of the prompt's group."""


def _prompt(tokens: Tokens, name: str) -> _Prompt:
    tokens_P = _token_array(tokens, name)
    if tokens_P.size == 0:
        raise ValueError(f"{name} is empty: the first sampled token needs a context")
    return _Prompt(tokens_P, _chunk(tokens_P))


def _chunk(tokens_T: npt.NDArray[np.int64]) -> types.EncodedTextChunk:
    # The ids are already checked as a flat array of non-negative integers; pydantic's
    # per-element re-validation was the largest single cost of building a step's Datums.
    return types.EncodedTextChunk.model_construct(tokens=tokens_T.tolist())


def rollout_to_datum(
    prompt_tokens: Tokens,
    sampled_tokens: Tokens,
    sampler_logprobs: Sequence[float] | npt.NDArray[np.floating],
    advantage: float,
    signal_input: SignalInput = "advantages",
) -> types.Datum | None:
    """The Datum of one rollout (all fields of length P + S - 1), or None when S == 0. With
    `signal_input="weights"` it carries the advantage as cross_entropy's per-token weight and no
    logprobs (that loss takes none)."""
    return _datum(
        _prompt(prompt_tokens, "prompt_tokens"),
        sampled_tokens,
        sampler_logprobs,
        advantage,
        signal_input,
    )


def _datum(
    prompt: _Prompt,
    sampled_tokens: Tokens,
    sampler_logprobs: Sequence[float] | npt.NDArray[np.floating],
    advantage: float,
    signal_input: SignalInput,
) -> types.Datum | None:
    prompt_P = prompt.tokens_P
    sampled_S = _token_array(sampled_tokens, "sampled_tokens")
    num_prompt, num_sampled = prompt_P.size, sampled_S.size
    if sampler_logprobs is None:
        raise ValueError("sampler_logprobs is None: sample with logprobs returned")
    if len(sampler_logprobs) != num_sampled:
        raise ValueError(
            f"{len(sampler_logprobs)} sampler logprobs for {num_sampled} sampled tokens"
        )
    if not math.isfinite(advantage):
        raise ValueError(f"advantage must be finite, got {advantage}")
    if num_sampled == 0:
        return None
    logprobs_N = response_only(num_prompt, num_sampled, sampler_logprobs)
    if not np.isfinite(logprobs_N).all():
        raise ValueError("sampler_logprobs must all be finite")
    chunks = [prompt.chunk, _chunk(sampled_S[:-1])] if num_sampled > 1 else [prompt.chunk]
    signal_N = response_only(num_prompt, num_sampled, advantage)
    targets_N = np.concatenate([prompt_P[1:], sampled_S])
    if signal_input == "weights":
        inputs = {"target_tokens": targets_N, "weights": signal_N}
    else:
        inputs = {"target_tokens": targets_N, "logprobs": logprobs_N, "advantages": signal_N}
    return types.Datum(
        model_input=types.ModelInput.model_construct(chunks=chunks), loss_fn_inputs=inputs
    )


def step_datums(
    prompt_tokens_P: Sequence[Tokens],
    sampled_tokens_P_G: Sequence[Sequence[Tokens]],
    sampler_logprobs_P_G: Sequence[Sequence[Sequence[float]]],
    advantages_P_G: Sequence[Sequence[float]],
    signal_input: SignalInput = "advantages",
) -> tuple[list[types.Datum], list[tuple[int, int]]]:
    """All Datums of one step, and the (problem, member) each came from.

    `advantages_P_G` holds each response's per-token value (the advantage, or the weight of
    `signal_input="weights"`), a (P, G) sequence, tensor or array. Groups whose values are all
    zero carry no gradient and are skipped, as are empty responses.
    """
    if hasattr(advantages_P_G, "tolist"):
        advantages_P_G = advantages_P_G.tolist()
    groups = (prompt_tokens_P, sampled_tokens_P_G, sampler_logprobs_P_G, advantages_P_G)
    if len({len(per_problem) for per_problem in groups}) != 1:
        raise ValueError(f"per-problem inputs differ in length: {[len(g) for g in groups]}")
    datums_D, sources_D = [], []
    for p, (prompt, tokens_G, logprobs_G, advantages_G) in enumerate(zip(*groups, strict=True)):
        if len({len(tokens_G), len(logprobs_G), len(advantages_G)}) != 1:
            raise ValueError(f"problem {p}: group members differ in count between inputs")
        if not any(advantages_G):
            continue
        prepared = _prompt(prompt, f"prompt_tokens_P[{p}]")
        for g, member in enumerate(zip(tokens_G, logprobs_G, advantages_G, strict=True)):
            datum = _datum(prepared, *member, signal_input)
            if datum is not None:
                datums_D.append(datum)
                sources_D.append((p, g))
    return datums_D, sources_D
