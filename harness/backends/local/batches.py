"""Datums -> validated arrays -> padded, masked chunks for `forward` / `forward_backward`."""

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from tinker import types


@dataclass(frozen=True)
class Example:
    tokens: np.ndarray  # (N,) model input
    inputs: dict[str, np.ndarray]  # (N,) each, `target_tokens` included


def _field(datum: types.Datum, index: int, key: str, length: int) -> np.ndarray:
    array = datum.loss_fn_inputs[key].to_numpy()
    if array.shape != (length,):
        raise ValueError(
            f"datum {index}: loss_fn_inputs[{key!r}] has shape {tuple(array.shape)}, but"
            f" model_input has {length} tokens; every field must have shape ({length},)"
        )
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise ValueError(f"datum {index}: loss_fn_inputs[{key!r}] holds non-finite values")
    return array


def _check_ids(ids: np.ndarray, vocab_size: int, index: int, what: str) -> None:
    if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
        bad = ids[(ids < 0) | (ids >= vocab_size)][0]
        raise ValueError(
            f"datum {index}: {what} holds token id {bad}, outside the vocabulary [0, {vocab_size})"
        )


def examples(
    data: Sequence[types.Datum], input_keys: Sequence[str], vocab_size: int
) -> list[Example]:
    """Check every datum against the loss's inputs and the vocabulary; clear errors if not."""
    checked = []
    for index, datum in enumerate(data):
        tokens = np.asarray(datum.model_input.to_ints(), dtype=np.int64)
        if tokens.size == 0:
            raise ValueError(f"datum {index}: model_input is empty")
        missing = [key for key in input_keys if key not in datum.loss_fn_inputs]
        if missing:
            raise ValueError(
                f"datum {index}: loss_fn_inputs lacks {missing}; this loss needs {list(input_keys)}"
            )
        inputs = {key: _field(datum, index, key, tokens.size) for key in input_keys}
        inputs["target_tokens"] = inputs["target_tokens"].astype(np.int64)
        _check_ids(tokens, vocab_size, index, "model_input")
        _check_ids(inputs["target_tokens"], vocab_size, index, "target_tokens")
        checked.append(Example(tokens, inputs))
    return checked


def chunks(lengths: Sequence[int], token_budget: int) -> list[list[int]]:
    """Datum indices grouped, longest first, so each padded chunk stays within the budget."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    grouped: list[list[int]] = []
    for i in order:
        # Sorted longest first, so a chunk's padded size is its size times its first length.
        if grouped and (len(grouped[-1]) + 1) * lengths[grouped[-1][0]] <= token_budget:
            grouped[-1].append(i)
        else:
            grouped.append([i])
    return grouped


@dataclass(frozen=True)
class Batch:
    tokens_B_T: torch.Tensor
    mask_B_T: torch.Tensor
    inputs_B_T: dict[str, torch.Tensor]
    lengths_B: list[int]


def collate(chunk: Sequence[Example], device: torch.device) -> Batch:
    """Right-pad to the longest; padded targets are token 0 with zero inputs and are masked."""
    lengths = [example.tokens.size for example in chunk]
    width = max(lengths)

    def pad(arrays: Sequence[np.ndarray]) -> torch.Tensor:
        out = np.zeros((len(arrays), width), dtype=arrays[0].dtype)
        for row, array in enumerate(arrays):
            out[row, : array.size] = array
        return torch.from_numpy(out).to(device)

    keys = chunk[0].inputs.keys()
    return Batch(
        tokens_B_T=pad([example.tokens for example in chunk]),
        mask_B_T=torch.arange(width, device=device) < torch.tensor(lengths, device=device)[:, None],
        inputs_B_T={key: pad([example.inputs[key] for example in chunk]) for key in keys},
        lengths_B=lengths,
    )
