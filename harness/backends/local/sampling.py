"""The sampling client: `sample` and `compute_logprobs` over one fixed set of weights."""

import dataclasses
import itertools
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

import numpy as np
from tinker import types
from tinker.lib.public_interfaces.api_future import APIFuture, AwaitableConcurrentFuture

from .engine import GenerationEngine, Request, RowParams, SamplerModel
from .futures import run_now

if TYPE_CHECKING:
    from .weather import Calm, LocalWeather


def _is_token_id(item: object) -> bool:
    return isinstance(item, int | np.integer) and not isinstance(item, bool)


def stop_rule(
    stop: str | list[str] | list[int] | None, eos_token_ids: tuple[int, ...]
) -> tuple[tuple[int, ...], tuple[str, ...]]:
    """(stop token ids, stop strings). None keeps EOS; a given list replaces it ([] = none)."""
    if stop is None:
        return eos_token_ids, ()
    items = [stop] if isinstance(stop, str) else list(stop)
    strings = tuple(s for s in items if isinstance(s, str))
    ids = tuple(int(i) for i in items if _is_token_id(i))
    if len(strings) + len(ids) != len(items) or (strings and ids):
        raise ValueError(f"stop must be a string, a list of strings or a list of token ids: {stop}")
    if any(not s for s in strings):
        raise ValueError("stop strings must be non-empty")
    return ids, strings


def row_params(
    params: types.SamplingParams, sampler: SamplerModel, prompt_length: int, seed: int
) -> RowParams:
    """Validated per-request sampling parameters (unseeded requests get `seed`)."""
    if params.max_tokens is None or params.max_tokens < 1:
        raise ValueError(
            f"SamplingParams.max_tokens must be a positive int (got {params.max_tokens});"
            " the local backend has no default length"
        )
    if sampler.max_context is not None and prompt_length + params.max_tokens > sampler.max_context:
        raise ValueError(
            f"prompt ({prompt_length} tokens) + max_tokens ({params.max_tokens}) exceeds the"
            f" model's context of {sampler.max_context} tokens"
        )
    if not params.temperature >= 0:
        raise ValueError(f"temperature must be >= 0, got {params.temperature}")
    if not 0 < params.top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {params.top_p}")
    stop_ids, stop_strings = stop_rule(params.stop, sampler.eos_token_ids)
    return RowParams(
        max_tokens=params.max_tokens,
        temperature=float(params.temperature),
        top_k=int(params.top_k),
        top_p=float(params.top_p),
        seed=params.seed if params.seed is not None else seed,
        stop_token_ids=stop_ids,
        stop_strings=stop_strings,
    )


def check_prompt(prompt: types.ModelInput, vocab_size: int) -> list[int]:
    tokens = prompt.to_ints()
    if not tokens:
        raise ValueError("prompt is empty")
    bad = [t for t in tokens if not 0 <= t < vocab_size]
    if bad:
        raise ValueError(f"prompt token id {bad[0]} is outside the vocabulary [0, {vocab_size})")
    return tokens


def _then(future: APIFuture, fn: Callable[[Any], Any]) -> APIFuture:
    chained: Future = Future()

    def forward_result(done: Future) -> None:
        if done.exception() is not None:
            chained.set_exception(done.exception())
        else:
            chained.set_result(fn(done.result()))

    future.future().add_done_callback(forward_result)
    return AwaitableConcurrentFuture(chained)


class LocalSamplingClient:
    """Mirror of `tinker.SamplingClient` for one snapshot of weights."""

    def __init__(
        self,
        engine: GenerationEngine,
        sampler: SamplerModel,
        base_model: str,
        next_seed: Callable[[], int],
        weather: "LocalWeather | Calm",
    ):
        self._engine = engine
        self._sampler = sampler
        self._base_model = base_model
        self._next_seed = next_seed
        self._weather = weather
        self._sampling_session_id = f"local-sampler-{uuid.uuid4().hex[:12]}"
        self._request_ids = itertools.count()

    def sample(
        self,
        prompt: types.ModelInput,
        num_samples: int,
        sampling_params: types.SamplingParams,
        include_prompt_logprobs: bool = False,
        topk_prompt_logprobs: int = 0,
        topk_sample_logprobs: int = 0,
        target_prompt_logprobs: types.TensorData | None = None,
        prompt_alt_tokens_k: int = 0,
        prompt_logprobs_last_n: int | None = None,
    ) -> APIFuture[types.SampleResponse]:
        unsupported = {
            "topk_prompt_logprobs": topk_prompt_logprobs != 0,
            "topk_sample_logprobs": topk_sample_logprobs != 0,
            "target_prompt_logprobs": target_prompt_logprobs is not None,
            "prompt_alt_tokens_k": prompt_alt_tokens_k != 0,
        }
        if any(unsupported.values()):
            names = [name for name, used in unsupported.items() if used]
            raise NotImplementedError(f"the local backend does not implement {names}")
        if prompt_logprobs_last_n is not None and not include_prompt_logprobs:
            raise ValueError(
                "prompt_logprobs_last_n applies to prompt logprobs; set include_prompt_logprobs"
            )
        seed = self._next_seed()  # drawn at submission, so unseeded runs replay in order
        request_id = next(self._request_ids)

        def make_request() -> Request:
            tokens = check_prompt(prompt, self._sampler.vocab_size)
            if num_samples < 1:
                raise ValueError(f"num_samples must be >= 1, got {num_samples}")
            last_n = prompt_logprobs_last_n
            if last_n is not None and not 1 <= last_n <= len(tokens) - 1:
                raise ValueError(f"prompt_logprobs_last_n must be in [1, {len(tokens) - 1}]")
            return Request(
                prompt=tokens,
                num_samples=num_samples,
                params=row_params(sampling_params, self._sampler, len(tokens), seed),
                prompt_logprobs=include_prompt_logprobs,
                prompt_logprobs_last_n=last_n,
                sequence_prefix=f"{self._sampling_session_id}:{request_id}",
                future=Future(),
            )

        checked = run_now(make_request)
        if checked.future().exception() is not None:
            return checked

        def submit() -> APIFuture[types.SampleResponse]:
            request = dataclasses.replace(checked.result(), future=Future())
            self._engine.submit(self._sampler, request)
            return AwaitableConcurrentFuture(request.future)

        return self._weather.sample(submit)

    def compute_logprobs(
        self, prompt: types.ModelInput, prompt_logprobs_last_n: int | None = None
    ) -> APIFuture[list[float | None]]:
        """Each prompt token's logprob given the tokens before it; None for the first."""
        response = self.sample(
            prompt,
            num_samples=1,
            sampling_params=types.SamplingParams(max_tokens=1),
            include_prompt_logprobs=True,
            prompt_logprobs_last_n=prompt_logprobs_last_n,
        )
        return _then(response, lambda r: r.prompt_logprobs)

    def get_tokenizer(self) -> Any:
        return self._sampler.tokenizer

    def get_base_model(self) -> str:
        return self._base_model
