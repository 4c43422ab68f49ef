"""Batched generation with a KV cache for all sampling requests in flight.

A worker thread takes the first queued request, waits until the queue has been quiet for a few
milliseconds, and generates everything queued together: each distinct prompt is prefilled once,
its cache is copied to the request's samples, and all rows decode in lockstep (left padding, an
attention mask and true position ids), finished rows being dropped from the batch as they pile
up. Rows per batch are capped by a memory budget. Logprobs are those of the raw logits.
"""

import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tinker import types
from transformers import PreTrainedModel

from .budget import sampling_row_bytes
from .decoding import next_tokens, row_keys, row_uniforms
from .futures import settle
from .kv_cache import reserved_cache
from .losses import selected_logprobs
from .models import forward

SETTLE_S = 0.005
MAX_SETTLE_S = 0.1


@dataclass(frozen=True)
class SamplerModel:
    """One set of weights to generate from, with what stopping and batching need."""

    lm: PreTrainedModel
    tokenizer: Any  # the user's; the engine decodes stop strings with its own copy
    stop_decoder: Any
    eos_token_ids: tuple[int, ...]
    vocab_size: int
    max_context: int | None
    kv_bytes_per_token: int


@dataclass(frozen=True)
class RowParams:
    max_tokens: int
    temperature: float
    top_k: int
    top_p: float
    seed: int
    stop_token_ids: tuple[int, ...]
    stop_strings: tuple[str, ...]


@dataclass(eq=False)
class Request:
    prompt: list[int]
    num_samples: int
    params: RowParams
    prompt_logprobs: bool
    prompt_logprobs_last_n: int | None
    sequence_prefix: str
    future: Future
    sequences: list[types.SampledSequence | None] = field(init=False)
    prompt_logprobs_np: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.sequences = [None] * self.num_samples

    def deliver(self, sample: int, sequence: types.SampledSequence) -> None:
        self.sequences[sample] = sequence
        if all(s is not None for s in self.sequences):
            response = types.SampleResponse(
                sequences=list(self.sequences), prompt_logprobs_np=self.prompt_logprobs_np
            )
            settle(self.future, response)


Item = tuple[Request, list[int]]  # a request and the sample indices this batch generates


class Closed(RuntimeError):
    """The engine was closed before a request finished."""


CLOSED_MESSAGE = "the LocalServiceClient is closed"
# A decoding step takes milliseconds; this only bounds a wait on a wedged device.
_JOIN_TIMEOUT_S = 30.0


class GenerationEngine:
    """Serves `submit`ted requests from one background thread.

    `close` fails what is queued, stops a generation at its next decoding step and joins the
    thread: a thread still running torch while the interpreter tears down aborts the process
    ("terminate called without an active exception"), as Ctrl-C mid-sampling once did.
    """

    def __init__(self, memory_budget_bytes: int):
        self.memory_budget_bytes = memory_budget_bytes
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._closed = threading.Event()

    def submit(self, sampler: SamplerModel, request: Request) -> None:
        with self._lock:
            if self._closed.is_set():
                settle(request.future, error=Closed(CLOSED_MESSAGE))
                return
            if self._thread is None:
                self._thread = threading.Thread(target=self._serve, name="local-sampler")
                self._thread.daemon = True
                self._thread.start()
        self._queue.put((sampler, request))

    def close(self) -> None:
        with self._lock:
            self._closed.set()
            thread = self._thread
        self._queue.put(None)
        if thread is not None and thread is not threading.current_thread():
            thread.join(_JOIN_TIMEOUT_S)

    def _drain(self) -> list:
        """Whatever arrives until the queue has been quiet for SETTLE_S."""
        items, deadline = [], time.monotonic() + MAX_SETTLE_S
        while time.monotonic() < deadline:
            try:
                items.append(self._queue.get(timeout=SETTLE_S))
            except queue.Empty:
                break
        return items

    def _serve(self) -> None:
        while (first := self._queue.get()) is not None:
            work = [first, *self._drain()]
            by_sampler: dict[int, tuple[SamplerModel, list[Request]]] = {}
            for sampler, request in filter(None, work):
                by_sampler.setdefault(id(sampler), (sampler, []))[1].append(request)
            for sampler, requests in by_sampler.values():
                try:
                    if self._closed.is_set():
                        raise Closed(CLOSED_MESSAGE)
                    with torch.inference_mode():
                        for items in batches(sampler, requests, self.memory_budget_bytes):
                            generate(sampler, items, self._closed.is_set)
                except BaseException as error:
                    for request in requests:
                        settle(request.future, error=error)
            if None in work:
                return


def batches(
    sampler: SamplerModel, requests: Sequence[Request], budget_bytes: int
) -> list[list[Item]]:
    """Pack the requests' samples into batches whose KV cache and logits fit the budget."""
    packed: list[list[Item]] = [[]]
    used = 0
    for request in requests:
        row_bytes = sampling_row_bytes(
            sampler.kv_bytes_per_token,
            sampler.vocab_size,
            len(request.prompt),
            request.params.max_tokens,
        )
        samples = list(range(request.num_samples))
        while samples:
            fit = (budget_bytes - used) // row_bytes
            if fit < 1 and packed[-1]:
                packed.append([])
                used = 0
                continue
            taken, samples = samples[: max(fit, 1)], samples[max(fit, 1) :]
            packed[-1].append((request, taken))
            used += len(taken) * row_bytes
    return [batch for batch in packed if batch]


def _left_pad(
    prompts: Sequence[list[int]], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    length = max(map(len, prompts))
    ids_U_L = torch.zeros(len(prompts), length, dtype=torch.long)
    mask_U_L = torch.zeros(len(prompts), length, dtype=torch.long)
    for u, prompt in enumerate(prompts):
        ids_U_L[u, length - len(prompt) :] = torch.tensor(prompt)
        mask_U_L[u, length - len(prompt) :] = 1
    positions_U_L = (mask_U_L.cumsum(-1) - 1).clamp(min=0)
    return ids_U_L.to(device), mask_U_L.to(device), positions_U_L.to(device)


def _record_prompt_logprobs(
    items: Sequence[Item], logits_U_L_V: torch.Tensor, ids_U_L: torch.Tensor
) -> None:
    """Prompt token i's logprob given tokens < i; NaN at 0 and before the last n if asked."""
    logprobs_U_L = selected_logprobs(logits_U_L_V[:, :-1], ids_U_L[:, 1:]).cpu().numpy()
    length = ids_U_L.shape[1]
    for u, (request, _) in enumerate(items):
        if not request.prompt_logprobs or request.prompt_logprobs_np is not None:
            continue
        n = len(request.prompt)
        values = np.full(n, np.nan, dtype=np.float32)
        values[1:] = logprobs_U_L[u, length - n :]
        if request.prompt_logprobs_last_n is not None:
            values[: n - request.prompt_logprobs_last_n] = np.nan
        request.prompt_logprobs_np = values


@dataclass
class _Rows:
    """Per-row decoding state, aligned with the batch dimension of the cache."""

    ids: np.ndarray  # index of each row in the batch's row list
    keys: np.ndarray
    mask: torch.Tensor
    next_position: torch.Tensor
    temperature: torch.Tensor
    top_k: torch.Tensor
    top_p: torch.Tensor
    stop_ids: torch.Tensor  # (R, S) padded with -1

    def select(self, keep: torch.Tensor) -> "_Rows":
        keep_np = keep.cpu().numpy()
        return _Rows(
            ids=self.ids[keep_np],
            keys=self.keys[keep_np],
            mask=self.mask[keep],
            next_position=self.next_position[keep],
            temperature=self.temperature[keep],
            top_k=self.top_k[keep],
            top_p=self.top_p[keep],
            stop_ids=self.stop_ids[keep],
        )


def _rows(
    items: Sequence[Item], mask_U_L: torch.Tensor, item_of_row: torch.Tensor
) -> tuple[_Rows, list[tuple[Request, int]]]:
    owners = [(request, j) for request, samples in items for j in samples]
    device = mask_U_L.device
    params = [request.params for request, _ in owners]
    widest = max(1, *(len(p.stop_token_ids) for p in params))
    stop_ids = [list(p.stop_token_ids) + [-1] * (widest - len(p.stop_token_ids)) for p in params]
    keys = np.concatenate(
        [row_keys(request.params.seed, np.asarray(samples)) for request, samples in items]
    )
    rows = _Rows(
        ids=np.arange(len(owners)),
        keys=keys,
        mask=mask_U_L[item_of_row],
        next_position=mask_U_L.sum(-1)[item_of_row],
        temperature=torch.tensor([p.temperature for p in params], device=device),
        top_k=torch.tensor([p.top_k for p in params], device=device),
        top_p=torch.tensor([p.top_p for p in params], device=device),
        stop_ids=torch.tensor(stop_ids, device=device),
    )
    return rows, owners


def _ends_with_stop_string(tokenizer: Any, tokens: list[int], strings: Sequence[str]) -> bool:
    """Whether the text of the latest tokens contains a stop string (checked every step, so
    any match is new); a window of 4 tokens per character covers byte-level pieces."""
    window = tokens[-(4 * max(map(len, strings)) + 4) :]
    text = tokenizer.decode(window, skip_special_tokens=False)
    return any(s in text for s in strings)


def _stop_reason(
    tokenizer: Any, params: RowParams, tokens: list[int], at_stop_id: bool
) -> types.StopReason | None:
    if at_stop_id or (
        params.stop_strings and _ends_with_stop_string(tokenizer, tokens, params.stop_strings)
    ):
        return "stop"
    return "length" if len(tokens) >= params.max_tokens else None


def generate(
    sampler: SamplerModel, items: Sequence[Item], closed: Callable[[], bool] = lambda: False
) -> None:
    """Generate every sample in `items` and deliver each to its request; stop with `Closed`
    at the first decoding step after `closed()` turns true."""
    lm = sampler.lm
    ids_U_L, mask_U_L, positions_U_L = _left_pad([r.prompt for r, _ in items], lm.device)
    wants_prompt_logprobs = any(r.prompt_logprobs for r, _ in items)
    steps = max(r.params.max_tokens for r, _ in items)
    logits, cache = forward(
        lm,
        ids_U_L,
        mask_U_L,
        positions_U_L,
        cache=reserved_cache(lm.config, ids_U_L.shape[1] + steps),
        use_cache=True,
        last_only=not wants_prompt_logprobs,
    )
    if wants_prompt_logprobs:
        _record_prompt_logprobs(items, logits, ids_U_L)
    item_of_row = torch.tensor(
        [u for u, (_, samples) in enumerate(items) for _ in samples], device=lm.device
    )
    cache.batch_select_indices(item_of_row)
    logits_R_V = logits[:, -1][item_of_row]
    rows, owners = _rows(items, mask_U_L, item_of_row)
    tokens: list[list[int]] = [[] for _ in owners]
    logprobs: list[list[float]] = [[] for _ in owners]
    reasons: list[types.StopReason | None] = [None] * len(owners)
    for step in range(steps):
        if closed():
            raise Closed(CLOSED_MESSAGE)
        uniforms_R = torch.from_numpy(row_uniforms(rows.keys, step)).to(lm.device)
        chosen_R = next_tokens(logits_R_V, rows.temperature, rows.top_k, rows.top_p, uniforms_R)
        chosen_logprobs_R = selected_logprobs(logits_R_V, chosen_R)
        at_stop_id_R = (chosen_R.unsqueeze(-1) == rows.stop_ids).any(-1)
        for r, token, logprob, at_stop_id in zip(
            rows.ids,
            chosen_R.tolist(),
            chosen_logprobs_R.tolist(),
            at_stop_id_R.tolist(),
            strict=True,
        ):
            if reasons[r] is None:
                tokens[r].append(token)
                logprobs[r].append(logprob)
                params = owners[r][0].params
                reasons[r] = _stop_reason(sampler.stop_decoder, params, tokens[r], at_stop_id)
        live = np.array([reasons[r] is None for r in rows.ids])
        if not live.any():
            break
        # Copying the cache costs about one decoding step, so drop finished rows in bulk.
        if 8 * (~live).sum() >= len(live):
            keep = torch.from_numpy(np.flatnonzero(live)).to(lm.device)
            cache.batch_select_indices(keep)
            rows, chosen_R = rows.select(keep), chosen_R[keep]
        rows.mask = torch.cat([rows.mask, rows.mask.new_ones(len(rows.ids), 1)], dim=-1)
        logits, cache = forward(
            lm,
            chosen_R.unsqueeze(-1),
            rows.mask,
            rows.next_position.unsqueeze(-1),
            cache=cache,
            use_cache=True,
            last_only=True,
        )
        logits_R_V = logits[:, -1]
        rows.next_position = rows.next_position + 1
    for r, (request, sample) in enumerate(owners):
        sequence = types.SampledSequence(
            stop_reason=reasons[r] or "length",
            sequence_id=f"{request.sequence_prefix}:{sample}",
            tokens_np=np.asarray(tokens[r], dtype=np.int32),
            logprobs_np=np.asarray(logprobs[r], dtype=np.float32),
        )
        request.deliver(sample, sequence)
