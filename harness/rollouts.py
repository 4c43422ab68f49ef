"""Sampling: prompts in, groups of responses out, every request in flight at once."""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
import tinker

from harness.resilience import Waits

# Waits on futures in order; the loop passes one that draws a progress bar.
Collect = Callable[[Sequence[Any], str], list[Any]]


def collect_quietly(futures: Sequence[Any], description: str) -> list[Any]:
    return [future.result() for future in futures]


def encode_prompts(tokenizer: Any, prompts_P: Sequence[str]) -> list[tinker.ModelInput]:
    return [tinker.ModelInput.from_ints(tokenizer.encode(text)) for text in prompts_P]


def response_arrays(sequence: tinker.SampledSequence) -> tuple[np.ndarray, np.ndarray]:
    """A response's tokens and sampler logprobs as arrays, without a detour through lists."""
    tokens_S = sequence.tokens_np
    if tokens_S is None:
        tokens_S = np.asarray(sequence.tokens, dtype=np.int64)
    logprobs_S = sequence.logprobs_np
    if logprobs_S is None:
        logprobs_S = np.asarray(sequence.logprobs, dtype=np.float32)
    return tokens_S, logprobs_S


# The end of a document in Qwen's vocabulary: a base model ends a completion with it, and a
# chat model's generation config stops on it besides its end of turn (`<|im_end|>`, its EOS).
DOCUMENT_END = "<|endoftext|>"


def stop_sequences(tokenizer: Any, use_r1_zero_format: bool) -> list[str] | None:
    """R1-Zero responses end at `</answer>`; both formats end at the end-of-sequence token.

    An explicit stop list replaces Tinker's implicit EOS stop, so it names EOS too, and the
    end of a document where the vocabulary has one apart from EOS.
    """
    if not use_r1_zero_format:
        return None
    ends = [tokenizer.eos_token]
    if tokenizer.eos_token != DOCUMENT_END and DOCUMENT_END in tokenizer.get_added_vocab():
        ends.append(DOCUMENT_END)
    return ["</answer>", *ends]


Purpose = Literal["rollout", "evaluation"]
"""What a sample request is for: a rollout the step trains on, or an evaluation (validation)."""

# Validation samples draw from a stream of their own, never repeating a rollout's draws.
_SEED_STREAMS = {"rollout": (), "evaluation": (1,)}

_PURPOSE: contextvars.ContextVar[Purpose | None] = contextvars.ContextVar(
    "sampling_purpose", default=None
)


def sampling_purpose() -> Purpose | None:
    """The purpose of the sample request being submitted here (None outside `submit_groups`):
    a recording keeps it with the call, so that a recording says which requests were rollouts."""
    return _PURPOSE.get()


def request_seed(run_seed: int, step: int, index: int, purpose: Purpose = "rollout") -> int:
    """A seed per request, so a resumed run samples exactly what the original would have."""
    sequence = np.random.SeedSequence([run_seed, step, index], spawn_key=_SEED_STREAMS[purpose])
    return int(sequence.generate_state(1)[0] >> 1)


def submit_groups(
    sampling_client: Any,
    prompts_P: Sequence[tinker.ModelInput],
    group_size: int,
    params_P: Sequence[tinker.SamplingParams],
    *,
    purpose: Purpose,
    description: str = "sampling",
    waits: Waits | None = None,
) -> list[Any]:
    """One `sample(num_samples=group_size)` request per prompt, all submitted, none waited
    for, each marked with its `purpose` (`sampling_purpose`); with `waits`, each under its
    deadline and sent again, unchanged, when it fails (each one's `result()` is its response)."""

    def sender(prompt: tinker.ModelInput, params: tinker.SamplingParams) -> Callable[[], Any]:
        def send() -> Any:
            # Set around the submission itself, so that a resend from another thread has it too.
            marked = _PURPOSE.set(purpose)
            try:
                return sampling_client.sample(
                    prompt=prompt, num_samples=group_size, sampling_params=params
                )
            finally:
                _PURPOSE.reset(marked)

        return send

    senders_P = [sender(p, params) for p, params in zip(prompts_P, params_P, strict=True)]
    if waits is None:
        return [send() for send in senders_P]
    return [
        waits.resendable(send, f"{description} request {i}", "sampling_resends")
        for i, send in enumerate(senders_P)
    ]
