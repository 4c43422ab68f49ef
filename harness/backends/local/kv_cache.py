"""A KV cache that writes into reserved capacity instead of concatenating.

transformers' DynamicCache appends by `torch.cat`, copying the whole cache at every decoding
step; with hundreds of rows that copy costs more than the model. This layer reserves the
capacity the batch will need once and returns views of it.
"""

import functools

import torch
from transformers import PretrainedConfig
from transformers.cache_utils import Cache, DynamicLayer

_ATTENTION_LAYERS = {"full_attention", "sliding_attention"}


class ReservedLayer(DynamicLayer):
    """A DynamicLayer whose keys and values are prefixes of preallocated buffers."""

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity = capacity
        self.length = 0
        self.buffers: tuple[torch.Tensor, torch.Tensor] | None = None

    def _reserve(self, states: tuple[torch.Tensor, torch.Tensor], end: int) -> None:
        capacity = max(self.capacity, 2 * end if self.buffers is not None else end)
        grown = []
        for old, new in zip(self.buffers or (None, None), states, strict=True):
            buffer = new.new_empty(*new.shape[:2], capacity, new.shape[-1])
            if old is not None:
                buffer[:, :, : self.length] = old[:, :, : self.length]
            grown.append(buffer)
        self.buffers = (grown[0], grown[1])
        self.capacity = capacity

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self.length + key_states.shape[-2]
        if self.buffers is None or end > self.buffers[0].shape[-2]:
            self._reserve((key_states, value_states), end)
        for buffer, states in zip(self.buffers, (key_states, value_states), strict=True):
            buffer[:, :, self.length : end] = states
        self.length = end
        self.keys, self.values = (buffer[:, :, :end] for buffer in self.buffers)
        return self.keys, self.values

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.buffers is not None:
            self.buffers = (self.buffers[0][indices], self.buffers[1][indices])
            self.keys, self.values = (buffer[:, :, : self.length] for buffer in self.buffers)


def reserved_cache(config: PretrainedConfig, capacity: int) -> Cache | None:
    """A cache reserving `capacity` tokens per row, or None (the model's own cache) for models
    with layers other than attention, such as linear-attention hybrids."""
    layer_types = getattr(config.get_text_config(), "layer_types", None) or ["full_attention"]
    if not set(layer_types) <= _ATTENTION_LAYERS:
        return None
    return Cache(layer_class_to_replicate=functools.partial(ReservedLayer, capacity))
